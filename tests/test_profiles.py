"""Named profiles (vgic.profiles): what each one presents, and guests that depend on it.

Register values are the facts each profile stands for: QEMU 7.2's as its virt machine
reads them (guests/src/its_compat.c prints them on QEMU), Linux KVM's from its vITS
(GITS_TYPER = PLPIS | 16 DeviceID bits | 16 EventID bits | 8-byte ITEs, CIL=0, IIDR
ProductID 'K'; GITS_BASER forced to 64 KB pages), Arm GIC-600's from its TRM and a
silicon instance (GITS_TYPER 0x130001ef31, IIDR 0x0201743b, BASER0 reset
0x0107000000000000, 2-byte collection entries).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GITS_BASER, GITS_CTLR, GITS_CWRITER, GITS_IIDR, GITS_TYPER, LPI, RAM_BASE, RAM_SIZE
from vgic import snapshot
from vgic.driver import Allocator, ItsDriver
from vgic.events import Kind
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy, ItsConfig
from vgic.its.errors import ItsError
from vgic.memory import GuestMemory
from vgic.profiles import PROFILES, gic_config, its_config, profile
from vgic.tools import inspector, report

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "guests" / "out"
QUIESCENT, ENABLED = 1 << 31, 1
GICR_TYPER, GICD_IIDR = 0x080A_0008, 0x0800_0008


def machine(name: str, num_cpus: int = 2, errors: ErrorPolicy | None = None) -> tuple[Gic, ItsDriver]:
    mem = GuestMemory()
    mem.add_ram(RAM_BASE, RAM_SIZE)
    gic = Gic(mem, gic_config(name, num_cpus, errors))
    return gic, ItsDriver(gic, Allocator(RAM_BASE, RAM_SIZE))


def read64(gic: Gic, offset: int) -> int:
    its = gic.its[0]
    return its.read(offset, 4) | its.read(offset + 4, 4) << 32


RESET = {  # profile: (GITS_TYPER, GITS_IIDR, GITS_BASER0, GITS_BASER1, GICD_IIDR)
    "qemu": (0x1F_0001_EFB1, 0x0000_043B, 0x0107_0000_0000_0200, 0x0407_0000_0000_0200, 0x0000_043B),
    "kvm": (0x0000_0001_EF71, 0x4B00_043B, 0x0107_0000_0000_0200, 0x0407_0000_0000_0200, 0x4B00_343B),
    "gic-600": (0x13_0001_EF31, 0x0201_743B, 0x0107_0000_0000_0000, 0x0401_0000_0000_0000, 0x0201_743B),
    "strict": (0x1F_0001_EF71, 0x5600_043B, 0x0107_0000_0000_0000, 0x0407_0000_0000_0000, 0x5600_043B),
}


def test_every_profile_is_tested_and_documented() -> None:
    assert set(RESET) == set(PROFILES)
    choices = (ROOT / "docs" / "choices.md").read_text()
    for name in PROFILES:
        assert f"`{name}`" in choices, f"docs/choices.md has no column for {name}"


@pytest.mark.parametrize("name", sorted(RESET))
def test_reset_values(name: str) -> None:
    gic, _ = machine(name)
    typer, iidr, baser0, baser1, gicd_iidr = RESET[name]
    assert read64(gic, GITS_TYPER) == typer
    assert gic.its[0].read(GITS_IIDR, 4) == iidr
    assert read64(gic, GITS_BASER) == baser0
    assert read64(gic, GITS_BASER + 8) == baser1
    assert all(read64(gic, GITS_BASER + 8 * n) == 0 for n in range(2, 8))
    assert gic.its[0].read(GITS_CTLR, 4) == QUIESCENT
    assert gic.read(GICD_IIDR, 4) == gicd_iidr
    direct_lpi = gic.read(GICR_TYPER, 4) >> 3 & 1
    assert direct_lpi == (name == "strict"), "only strict offers GICR_TYPER.DirectLPI"


def test_the_default_config_is_the_qemu_profile() -> None:
    assert ItsConfig() == profile("qemu").its
    assert GicConfig().profile == "qemu"
    gic, _ = machine("qemu")
    assert gic.config == gic_config("qemu", 2)


@pytest.mark.parametrize(("name", "quiescent"), [("qemu", True), ("kvm", True), ("gic-600", True), ("strict", False)])
def test_quiescent_while_enabled_and_idle(name: str, quiescent: bool) -> None:
    gic, d = machine(name, errors=ErrorPolicy.STALL)
    d.setup_lpis(id_bits=16)
    d.setup_its()
    assert gic.its[0].read(GITS_CTLR, 4) == ENABLED | (QUIESCENT if quiescent else 0)
    d.send(C.Int(0x99, 0))  # a stalled queue is never quiescent, whatever the profile
    assert gic.its[0].stalled
    assert gic.its[0].read(GITS_CTLR, 4) == ENABLED


@pytest.mark.parametrize(("name", "stalls"), [("qemu", False), ("kvm", False), ("gic-600", True), ("strict", True)])
def test_command_errors_skip_or_stall(name: str, stalls: bool) -> None:
    gic, d = machine(name)
    d.setup_lpis(id_bits=16)
    d.setup_its()
    d.send(C.Mapc(0, 0, True))
    d.map_device(1, 2)
    d.send(C.Mapti(1, 0, LPI, 0), C.Discard(1, 0), C.Int(1, 0), C.Mapti(1, 1, LPI + 1, 0), C.Int(1, 1))
    its = gic.its[0]
    assert [e.code for e in gic.log.errors] == [ItsError.INT_UNMAPPED_INTERRUPT]
    error = gic.log.errors[0]
    assert error.command == "INT DeviceID=0x1 EventID=0"
    assert error.message.endswith("queue stalled" if stalls else "command skipped")
    assert its.error_history[-1][:2] == (error.offset, ItsError.INT_UNMAPPED_INTERRUPT)
    assert its.stalled == stalls
    assert d.drain(0) == ([] if stalls else [LPI + 1]), "the commands after the error ran (or not)"


@pytest.mark.parametrize(("name", "stalls"), [("qemu", True), ("kvm", False), ("gic-600", True), ("strict", True)])
def test_memory_faults_stall_as_qemu_does(name: str, stalls: bool) -> None:
    """QEMU stalls on a table it cannot access, KVM keeps its tables in the host and goes on."""
    gic, d = machine(name)
    d.setup_lpis(id_bits=16)
    d.setup_its()
    d.send(C.Mapc(0, 0, True), C.Mapd(5, 1, 0x7F00_0000, True), C.Mapti(5, 0, LPI, 0))
    assert [e.code for e in gic.log.errors] == [ItsError.MEMORY_FAULT]
    assert gic.its[0].stalled == stalls


def test_its_errors_overrides_both_policies() -> None:
    for name in PROFILES:
        for policy in ErrorPolicy:
            c = its_config(name, policy)
            assert c.error_policy is c.memory_fault_policy is policy


def test_kvm_accepts_only_64k_pages_and_checks_pintid_against_propbaser() -> None:
    gic, d = machine("kvm")
    its = gic.its[0]
    for code in (0, 1, 3):
        its.write(GITS_BASER + 4, 4, 0)
        its.write(GITS_BASER, 4, code << 8)
        assert read64(gic, GITS_BASER) >> 8 & 3 == 2, "KVM keeps 64 KB pages"
    d.setup_lpis(id_bits=14)  # PROPBASER.IDbits + 1 = 14: LPIs 8192..16383
    d.setup_its()
    d.send(C.Mapc(0, 0, True))
    d.map_device(1, 2)
    d.send(C.Mapti(1, 0, 20000, 0), C.Mapti(1, 1, 16383, 0))
    assert [e.code for e in gic.log.errors] == [ItsError.MAPTI_PHYSICALID_OOR]
    assert "PROPBASER" in gic.log.errors[0].message
    qemu, dq = machine("qemu")
    dq.setup_lpis(id_bits=14)
    dq.setup_its()
    dq.send(C.Mapc(0, 0, True))
    dq.map_device(1, 2)
    dq.send(C.Mapti(1, 0, 20000, 0))
    assert not qemu.log.errors, "QEMU checks against its own 16 ID bits only"


def test_gic600_packs_4_byte_ites_and_2_byte_collection_entries() -> None:
    gic, d = machine("gic-600", num_cpus=4)
    d.setup_lpis(id_bits=16)
    d.setup_its()
    its = gic.its[0]
    d.send(*(C.Mapc(icid, icid, True) for icid in range(4)))
    itt = d.map_device(3, 4)
    d.send(C.Mapti(3, 7, 0xFFFF, 3), C.Mapti(3, 8, LPI, 2))
    assert not gic.log.errors
    ct = its.table(4)
    assert ct is not None and ct.entry_size == 2
    assert gic.memory.read16(ct.base + 3 * 2) == 1 << 15 | 3  # V, RDbase (processor 3)
    assert gic.memory.read32(itt + 7 * 4) == 1 << 31 | 0xFFFF << 4 | 3  # V, pINTID, ICID (4 bits)
    assert gic.memory.read32(itt + 8 * 4) == 1 << 31 | LPI << 4 | 2
    assert gic.memory.read32(itt + 9 * 4) == 0, "nothing written beyond the 4-byte entry"
    its.write(GITS_CTLR, 4, 0)  # disabling drops the host caches: translation reads the packed entries
    its.write(GITS_CTLR, 4, 1)
    assert its.enabled and its.cached_device(3) is None
    assert its.translate(3, 7) and its.translate(3, 8)
    assert d.drain(3) == [0xFFFF] and d.drain(2) == [LPI]


def test_layouts_that_cannot_hold_the_ids_are_refused() -> None:
    from dataclasses import replace

    from vgic.its.registers import ItsTyper

    with pytest.raises(ValueError, match="cannot pack"):
        ItsConfig(typer=ItsTyper(itt_entry_size=4)).check()  # 16 ID bits + 16 ICID bits + V > 32
    with pytest.raises(ValueError, match="cannot pack"):
        replace(profile("gic-600").its, typer=ItsTyper(itt_entry_size=4, cidbits=4, pta=True)).check()


def test_report_names_the_profile_and_strict_counts_diagnostics_as_errors() -> None:
    for name in ("qemu", "strict"):
        gic, d = machine(name)
        d.setup_lpis(id_bits=16)
        d.setup_its()
        gic.its[0].write(GITS_CWRITER + 4, 4, 0)
        gic.its[0].write(0x50, 4, 1)  # a reserved offset: a diagnostic
        text = report.report(gic.log, gic)
        assert text.splitlines()[0].startswith(f"profile: {name} (ITS command errors: ")
        assert ("Errors in all (strict): " in text) == (name == "strict")
        assert ("error: its0: 32-bit write of reserved offset" in text) == (name == "strict")
        assert inspector.report(gic).splitlines()[0].startswith(f"profile: {name}")


def test_snapshot_keeps_the_profile(tmp_path: Path) -> None:
    gic, d = machine("kvm")
    d.setup_lpis(id_bits=16)
    d.setup_its()
    path = tmp_path / "g.vgic"
    snapshot.save_gic(gic, path)
    back = snapshot.load_gic(path)
    assert back.config.profile == "kvm" and back.config == gic.config
    assert read64(back, GITS_TYPER) == RESET["kvm"][0]


# == guests ==============================================================================


def _run(guest: str, *args: str) -> str:
    elf = OUT / f"{guest}.elf"
    if not elf.exists():
        pytest.skip("guests not built")
    p = subprocess.run([sys.executable, "-m", "vgic.cli", "run", "--timeout", "60", *args, str(elf)],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip
    return p.stdout.decode(errors="replace").replace("\r", "")


BAD = {1: "just discarded", 3: "MAPTI EventID 9", 4: "MAPC ICID 1", 5: "undefined opcode"}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_batch_with_errors_drains_or_stalls_at_each_error(name: str) -> None:
    out = _run("its_skip", "--profile", name)
    assert out.rstrip().endswith("PASS"), out
    stalls = [line for line in out.splitlines() if line.startswith("queue stalled at command")]
    if PROFILES[name].its.error_policy is ErrorPolicy.CONTINUE:
        assert stalls == []
    else:
        assert [int(s.split("[")[1].split("]")[0]) for s in stalls] == sorted(BAD)
        assert all(BAD[int(s.split("[")[1].split("]")[0])] in s for s in stalls)


def test_its_errors_stall_overrides_the_default_profile() -> None:
    out = _run("its_skip", "--its-errors", "stall")
    assert len([line for line in out.splitlines() if line.startswith("queue stalled")]) == len(BAD)


@pytest.mark.parametrize(
    ("name", "failed"),
    [
        ("qemu", []),
        ("kvm", []),
        ("gic-600", ["GITS_BASER0 (Device table) Page_Size", "GITS_BASER1 (Collection table) Page_Size"]),
        ("strict", ["GITS_BASER0 (Device table) Page_Size", "GITS_BASER1 (Collection table) Page_Size",
                    "GITS_CTLR.Quiescent=1 while enabled", "GITS_CTLR.Quiescent=1 again"]),
    ],
)  # fmt: skip
def test_third_party_start_up_checks(name: str, failed: list[str]) -> None:
    out = _run("its_compat", "--profile", name)
    lines = [line.removeprefix("check FAILED: ") for line in out.splitlines() if line.startswith("check FAILED")]
    assert len(lines) == len(failed) and all(f in line for f, line in zip(failed, lines, strict=True)), out
    assert out.rstrip().endswith("PASS" if not failed else f"FAIL: {len(failed)} check(s) failed")


def test_log_records_skipped_commands_like_stalled_ones() -> None:
    gic, d = machine("qemu")
    d.setup_lpis(id_bits=16)
    d.setup_its()
    d.send(C.Int(7, 7))
    (error,) = gic.log.of(Kind.COMMAND_ERROR)
    assert error.code == ItsError.INT_UNMAPPED_DEVICE and error.offset == 0 and error.command
    assert "command skipped" in error.message
