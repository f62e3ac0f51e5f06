"""An unmodified third-party guest: Debian's arm64 Linux kernel, on vgic and on QEMU.

The kernel (an arm64 Image for, among others, QEMU's virt machine) boots on 4 CPUs with
the device tree, PSCI CPU_ON, the MMU, the arch timer, GICv3 with its ITS and the PL011,
then runs a tiny initramfs built here whose /init (a static AArch64 ELF written by hand)
prints one line and powers off with reboot(2), i.e. PSCI SYSTEM_OFF. Nothing is downloaded
at test time: ``make third-party`` (scripts/fetch-third-party.sh) fills the cache with
``apt-get download``; without it the test is skipped.

The key lines of the two boots must agree: GIC and ITS probing, the timer, the CPUs
brought up, the console, /init's line and the power-off (timestamps and addresses the
kernel allocates are not compared).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VGIC_THIRD_PARTY_DIR", ROOT / ".cache" / "third-party"))
KERNEL = CACHE / "vmlinuz"
QEMU = shutil.which("qemu-system-aarch64")
APPEND = "console=ttyAMA0 panic=-1"
SMP = 4
VGIC_TIMEOUT = float(os.environ.get("VGIC_THIRD_PARTY_TIMEOUT", "600"))
INIT_MESSAGE = "vgic-init: hello from userspace"

pytestmark = pytest.mark.skipif(
    not KERNEL.exists(),
    reason=f"no third-party kernel in {CACHE}: run `make third-party` (scripts/fetch-third-party.sh)",
)

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


# -- a one-file initramfs ------------------------------------------------------------------


def _init_elf() -> bytes:
    """A static AArch64 ELF: write(1, message), reboot(POWER_OFF), loop."""
    msg = (INIT_MESSAGE + "\n").encode()
    code = [
        0xD2800020,  # movz x0, #1
        0x100001A1,  # adr x1, msg (+0x34)
        0xD2800002 | len(msg) << 5,  # movz x2, #len
        0xD2800808,  # movz x8, #64 (write)
        0xD4000001,  # svc #0
        0xD29BD5A0,  # movz x0, #0xdead
        0xF2BFDC20,  # movk x0, #0xfee1, lsl #16 (LINUX_REBOOT_MAGIC1)
        0xD2832D21,  # movz x1, #0x1969
        0xF2A50241,  # movk x1, #0x2812, lsl #16 (LINUX_REBOOT_MAGIC2)
        0xD29FDB82,  # movz x2, #0xfedc
        0xF2A86422,  # movk x2, #0x4321, lsl #16 (LINUX_REBOOT_CMD_POWER_OFF)
        0xD28011C8,  # movz x8, #142 (reboot)
        0xD4000001,  # svc #0
        0x14000000,  # b .
    ]
    text = struct.pack(f"<{len(code)}I", *code) + msg
    base, hdr = 0x400000, 64 + 56
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, base + hdr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, hdr + len(text), hdr + len(text), 0x10000)
    return ehdr + phdr + text


def _cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of regular files {name: (mode, data)}."""
    out = b""
    entries = [(name, mode, data) for name, (mode, data) in files.items()] + [("TRAILER!!!", 0, b"")]
    for ino, (name, mode, data) in enumerate(entries, 1):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        head = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        out += head + bytes(-len(head) % 4) + data + bytes(-len(data) % 4)
    return out + bytes(-len(out) % 512)


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    path.write_bytes(_cpio({"init": (0o100755, _init_elf())}))
    return path


def test_init_elf_is_well_formed() -> None:
    elf = _init_elf()
    assert elf[:4] == b"\x7fELF" and struct.unpack_from("<H", elf, 18)[0] == 183
    assert INIT_MESSAGE.encode() in elf


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


def _boot_vgic(initrd: Path, *options: str) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "vgic.cli", "run", "--smp", str(SMP), "--append", APPEND, "--initrd", str(initrd),
           "--timeout", str(VGIC_TIMEOUT), *options, str(KERNEL)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=VGIC_TIMEOUT + 60)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def _boot_qemu(initrd: Path) -> tuple[int, str]:
    assert QEMU is not None
    cmd = [QEMU, "-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-m", "512M", "-nographic", "-net", "none",
           "-no-reboot", "-smp", str(SMP), "-kernel", str(KERNEL), "-initrd", str(initrd), "-append", APPEND]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    return p.returncode, p.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def qemu_boot(initrd: Path) -> dict[str, list[str]] | None:
    if QEMU is None:
        return None
    qstatus, qout = _boot_qemu(initrd)
    assert qstatus == 0, f"QEMU exited {qstatus}:\n{qout[-3000:]}"
    return key_lines(qout)


@pytest.mark.parametrize("mode", [[], ["--deterministic"]], ids=["timed", "counted"])
def test_linux_boots_to_init_and_powers_off_like_on_qemu(
    mode: list[str], initrd: Path, qemu_boot: dict[str, list[str]] | None
) -> None:
    """In both CPU engine modes (docs/machine.md)."""
    status, out, err = _boot_vgic(initrd, *mode)
    assert status == 0, f"vgic run exited {status}:\n{err}\n--- console (last 60 lines):\n" + "\n".join(
        out.splitlines()[-60:]
    )
    ours = key_lines(out)
    assert ours[re.escape(INIT_MESSAGE)] == [INIT_MESSAGE]
    assert ours[r"smp: Brought up 1 node, \d+ CPUs"] == [f"smp: Brought up 1 node, {SMP} CPUs"]
    assert ours[r"reboot: Power down"] == ["reboot: Power down"]
    if qemu_boot is None:
        return
    theirs = qemu_boot
    for pattern in KEY_LINES:
        assert ours[pattern] == theirs[pattern], f"{pattern}\n  vgic: {ours[pattern]}\n  QEMU: {theirs[pattern]}"
