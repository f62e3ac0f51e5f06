"""Unmodified third-party guests: Debian's arm64 Linux kernel and busybox, on vgic and on QEMU.

The kernel (an arm64 Image for, among others, QEMU's virt machine) boots on 4 CPUs with
the device tree, PSCI CPU_ON, the MMU, the arch timer, GICv3 with its ITS and the PL011,
then runs an initramfs built here (tests/linux_guest.py) with Debian's busybox-static,
whose /init shell script prints one line and runs ``poweroff -f`` (reboot(2), i.e. PSCI
SYSTEM_OFF). Nothing is downloaded at test time: ``make third-party``
(scripts/fetch-third-party.sh) fills the cache with ``apt-get download``; without it the
boot test is skipped.

The key lines of the two boots must agree: GIC and ITS probing, the timer, the CPUs
brought up, the console, /init's line and the power-off (timestamps and addresses the
kernel allocates are not compared). So must the ITS commands Linux sends (vgic's
``--decode`` of the queue against QEMU's ``-trace 'gicv3_its_cmd*'``), and vgic's
``--report`` must question nothing Linux did with the GIC.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from linux_guest import (
    BUSYBOX,
    ITS_TRACE,
    KERNEL,
    QEMU,
    CpioEntry,
    busybox_initramfs,
    gic_questions,
    its_command_differences,
    missing_third_party,
    newc_archive,
    qemu_command,
    qemu_its_commands,
    read_newc,
    vgic_command,
    vgic_env,
    vgic_its_commands,
    without_resends,
)

APPEND = "console=ttyAMA0 panic=-1"
SMP = 4
VGIC_TIMEOUT = float(os.environ.get("VGIC_THIRD_PARTY_TIMEOUT", "600"))
INIT_MESSAGE = "vgic-init: hello from userspace"
INIT_SCRIPT = f'echo "{INIT_MESSAGE}"\npoweroff -f\n'
MISSING = missing_third_party(KERNEL, BUSYBOX)

# Lines compared between the two boots, after the timestamp is removed; each pattern's
# matching lines must be the same list on both (addresses the kernel allocates, marked
# <addr>, are blanked).
KEY_LINES = [
    r"psci: PSCIv\S+ detected in firmware\.",
    r"psci: Using standard PSCI v0\.2 function IDs",
    r"GICv3: \d+ SPIs implemented",
    r"GICv3: CPU\d+: found redistributor \d+ region 0:0x[0-9a-f]+",
    r"ITS \[mem 0x[0-9a-f]+-0x[0-9a-f]+\]",
    r"ITS@0x[0-9a-f]+: allocated \d+ (Devices|Interrupt Collections) @<addr> .*",
    r"Platform MSI: its@8080000 domain created",
    r"arch_timer: cp15 timer\(s\) running at [\d.]+MHz \(virt\)\.",
    r"CPU\d+: Booted secondary processor 0x[0-9a-f]+ \[0x[0-9a-f]+\]",
    r"smp: Brought up 1 node, \d+ CPUs",
    r"\S+ ttyAMA0 at MMIO 0x9000000 \(irq = \d+, base_baud = 0\) is a PL011 rev1",
    r"Run /init as init process",
    re.escape(INIT_MESSAGE),
    r"reboot: Power down",
]


# -- the initramfs ----------------------------------------------------------------------------


def test_newc_archive_round_trips_dirs_symlinks_and_files() -> None:
    entries = [
        CpioEntry.dir("bin"),
        CpioEntry.file("bin/tool", b"\x7fELF" + bytes(range(7)), 0o755),
        CpioEntry.symlink("bin/sh", "tool"),
        CpioEntry.file("init", b"#!/bin/sh\n"),
    ]
    archive = newc_archive(entries)
    assert len(archive) % 512 == 0 and archive.startswith(b"070701")
    assert b"TRAILER!!!\0" in archive
    members = read_newc(archive)
    assert list(members) == ["bin", "bin/tool", "bin/sh", "init"]
    assert members["bin"] == (0o040755, b"")
    assert members["bin/tool"] == (0o100755, b"\x7fELF" + bytes(range(7)))
    assert members["bin/sh"] == (0o120777, b"tool")
    # every header starts on a 4-byte boundary, as the kernel's unpacker requires
    assert [m.start() % 4 for m in re.finditer(b"070701", archive)] == [0] * 5


def test_busybox_initramfs_layout(tmp_path: Path) -> None:
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF busybox")
    members = read_newc(busybox_initramfs("echo hi\n", fake, applets=("sh", "dd")))
    assert members["bin/busybox"] == (0o100755, b"\x7fELF busybox")
    assert members["bin/sh"] == members["bin/dd"] == (0o120777, b"busybox")
    assert members["init"] == (0o100755, b"#!/bin/sh\necho hi\n")
    assert {"dev", "proc", "sys", "tmp", "sbin", "usr/bin"} <= {n for n, (m, _) in members.items() if m >> 12 == 4}


def test_without_resends_takes_out_lazy_disable_resends_only() -> None:
    resend = ["INV D EventID=0", "SYNC", "INV D EventID=0", "SYNC", "INT D EventID=0", "SYNC"]
    before, after = ["MOVI D EventID=0 ICID=3", "SYNC"], ["INV D EventID=4", "SYNC"]
    assert without_resends(before + resend + after) == (before + after, ["INT D EventID=0"])
    other = ["INV D EventID=1", "SYNC", "INV D EventID=2", "SYNC", "INT D EventID=1", "SYNC"]
    assert without_resends(other) == (other, [])  # not one event throughout: kept


def test_gic_questions_keeps_the_gic_entries_of_a_real_report() -> None:
    from vgic.events import EventLog, Kind
    from vgic.tools.report import report

    log = EventLog()
    log.record(Kind.DIAGNOSTIC, "pl011", "unsupported 8-byte read at 0x30: RAZ", rule="PL011 TRM 3.2")
    log.record(
        Kind.DIAGNOSTIC, "cpu2", "external abort: nothing at physical address 0x2d9ed000 (PC 0xffff8000080ddfec)"
    )
    assert gic_questions(report(log)) == []
    log.record(Kind.DIAGNOSTIC, "its0", "MAPTI over an existing mapping", rule="IHI0069 5.3")
    log.record(Kind.DIAGNOSTIC, "cpu1", "EOI of INTID 30 with no active priority: UNPREDICTABLE, ignored")
    log.record(Kind.COMMAND_ERROR, "its0", "MAPD: DeviceID out of range", offset=0x40, code=0x10801)
    log.record(Kind.LPI_DROPPED, "gicr3", "LPI 8192 ignored: EnableLPIs=0")
    found = gic_questions(report(log))
    assert len(found) == 4, found
    assert [q.split(":")[0] for q in found] == [
        "ITS command errors", "Questionable guest actions", "Questionable guest actions", "LPIs the redistributors ignored",
    ]  # fmt: skip
    assert not any("pl011" in q or "external abort" in q for q in found)


# -- comparing boots -----------------------------------------------------------------------

_STAMP = re.compile(r"^\[\s*\d+\.\d+\] ")
_ALLOC = re.compile(r"@[0-9a-f]{6,16}\b")


def key_lines(transcript: str) -> dict[str, list[str]]:
    lines = [_STAMP.sub("", line.rstrip("\r")) for line in transcript.split("\n")]
    lines = [_ALLOC.sub("@<addr>", line) for line in lines]
    found: dict[str, list[str]] = {}
    for pattern in KEY_LINES:
        rx = re.compile(pattern)
        found[pattern] = sorted(line.strip() for line in lines if rx.fullmatch(line.strip()))
    return found


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if MISSING:
        pytest.skip(MISSING)
    path = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    path.write_bytes(busybox_initramfs(INIT_SCRIPT))
    return path


def _boot_vgic(initrd: Path, report: Path, *options: str) -> tuple[int, str, str]:
    cmd = vgic_command(initrd, APPEND, SMP, timeout=VGIC_TIMEOUT,
                       extra=["--report-to", str(report), "--decode", *options])  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=VGIC_TIMEOUT + 60, env=vgic_env())
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def _boot_qemu(initrd: Path, trace: Path) -> tuple[int, str]:
    cmd = qemu_command(initrd, APPEND, SMP, extra=["-trace", ITS_TRACE, "-D", str(trace)])
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    return p.returncode, p.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def qemu_boot(initrd: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], str] | None:
    """QEMU's key lines and ITS trace, once for both vgic modes."""
    if QEMU is None:
        return None
    trace = tmp_path_factory.mktemp("qemu") / "qemu-its.log"
    qstatus, qout = _boot_qemu(initrd, trace)
    assert qstatus == 0, f"QEMU exited {qstatus}:\n{qout[-3000:]}"
    return key_lines(qout), trace.read_text()


@pytest.mark.parametrize("mode", [[], ["--deterministic"]], ids=["timed", "counted"])
def test_linux_boots_busybox_and_powers_off_like_on_qemu(
    mode: list[str], initrd: Path, tmp_path: Path, qemu_boot: tuple[dict[str, list[str]], str] | None
) -> None:
    """In both CPU engine modes (docs/machine.md)."""
    report = tmp_path / "report.txt"
    status, out, err = _boot_vgic(initrd, report, *mode)
    assert status == 0, f"vgic run exited {status}:\n{err[-3000:]}\n--- console (last 60 lines):\n" + "\n".join(
        out.splitlines()[-60:]
    )
    ours = key_lines(out)
    assert ours[re.escape(INIT_MESSAGE)] == [INIT_MESSAGE]
    assert ours[r"smp: Brought up 1 node, \d+ CPUs"] == [f"smp: Brought up 1 node, {SMP} CPUs"]
    assert ours[r"reboot: Power down"] == ["reboot: Power down"]
    assert gic_questions(report.read_text()) == [], report.read_text()
    our_commands = vgic_its_commands(err)
    assert our_commands, f"no ITS command queue in --decode:\n{err[-2000:]}"
    if qemu_boot is None:
        return
    theirs, trace = qemu_boot
    for pattern in KEY_LINES:
        assert ours[pattern] == theirs[pattern], f"{pattern}\n  vgic: {ours[pattern]}\n  QEMU: {theirs[pattern]}"
    their_commands = qemu_its_commands(trace)
    assert their_commands, "QEMU's trace has no ITS command (is -trace supported?)"
    assert its_command_differences(their_commands, our_commands) == []
