"""vgic.unicorn: the GIC embedded in a Unicorn engine the caller owns (docs/embedding.md)."""

from __future__ import annotations

import ctypes
import mmap
import re
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, UC_PROT_ALL, Uc
from unicorn import arm64_const as A

from vgic import ucnative
from vgic.gic import Gic, GicConfig
from vgic.memory import GuestMemory
from vgic.unicorn import GicAttachment, Sysregs, _exception_offset, attach

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"
RAM = 0x4000_0000


def _example() -> str:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, "docs/embedding.md has no Python example"
    return match.group(1)


def test_the_documented_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    scope: dict[str, object] = {"__name__": "example"}
    exec(compile(_example(), str(DOC), "exec"), scope)
    uc = scope["uc"]
    assert isinstance(uc, Uc)
    assert uc.reg_read(A.UC_ARM64_REG_X20) == 1  # the IRQ handler ran
    assert uc.reg_read(A.UC_ARM64_REG_X19) == 0  # and acknowledged SGI 0
    assert "handler ran: True INTID 0" in capsys.readouterr().out


def _msr(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int, read: bool = False) -> int:
    """MSR/MRS (register) encoding, Arm ARM C6.2.194/C6.2.193."""
    return 0xD5000000 | read << 21 | (op0 & 3) << 19 | op1 << 16 | crn << 12 | crm << 8 | op2 << 5 | rt


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_icc_registers_answered_and_the_pc_stepped(native: bool) -> None:
    """Both dispatch paths: an owned register is answered and the next instruction runs;
    a register vgic does not own (TPIDR_EL1) stays Unicorn's."""
    if native and not ucnative.available():
        pytest.skip("no C compiler for the native helper")
    mem = GuestMemory()
    mem.add_ram(RAM, 1 << 20)
    code = [
        0xD2801E01,  # mov x1, #0xf0
        _msr(3, 0, 4, 6, 0, 1),  # msr ICC_PMR_EL1, x1
        _msr(3, 0, 4, 6, 0, 2, read=True),  # mrs x2, ICC_PMR_EL1
        0xD2800543,  # mov x3, #42
        _msr(3, 0, 13, 0, 4, 3),  # msr TPIDR_EL1, x3
        _msr(3, 0, 13, 0, 4, 4, read=True),  # mrs x4, TPIDR_EL1
        0xD2800025,  # mov x5, #1
    ]
    mem.write_bytes(RAM, b"".join(w.to_bytes(4, "little") for w in code))
    gic = Gic(mem, GicConfig(num_cpus=1))
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    for r in mem.regions:
        uc.mem_map_ptr(r.base, r.size, UC_PROT_ALL, r.address)
    att = GicAttachment(uc, gic, 0, native=native)
    assert att.sysregs.native is native
    uc.emu_start(RAM, RAM + 4 * len(code))
    assert uc.reg_read(A.UC_ARM64_REG_X2) == 0xF0  # PMR: 5 priority bits, as QEMU's
    assert gic.cpus[0].pmr == 0xF0
    assert uc.reg_read(A.UC_ARM64_REG_X4) == 42
    assert uc.reg_read(A.UC_ARM64_REG_X5) == 1


def test_guest_memory_over_a_buffer_the_embedder_owns() -> None:
    buf = mmap.mmap(-1, 1 << 20)
    mem = GuestMemory()
    region = mem.add_ram(RAM, 1 << 20, buf)
    assert region.address == ctypes.addressof(ctypes.c_char.from_buffer(buf))
    mem.write32(RAM + 0x100, 0xDEADBEEF)
    assert buf[0x100:0x104] == b"\xef\xbe\xad\xde"
    buf[0x200:0x204] = b"\x01\x02\x03\x04"
    assert mem.read32(RAM + 0x200) == 0x04030201
    with pytest.raises(ValueError, match="fewer than"):
        GuestMemory().add_ram(RAM, 2 << 20, buf)


def test_attach_maps_every_gic_frame() -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, 1 << 20)
    gic = Gic(mem, GicConfig(num_cpus=2))
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    attach(uc, gic, 1)
    mapped = {(begin, end + 1) for begin, end, _ in uc.mem_regions()}
    assert mapped == {(base, base + size) for base, size, _, _ in gic.regions}


def test_exception_state_is_found_in_unicorns_context() -> None:
    """The calibration behind ExceptionInfo finds one place, the same every time."""
    assert _exception_offset() == _exception_offset() > 0


def test_sysregs_without_native_helper_has_no_block_hook() -> None:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    s = Sysregs(uc, native=False)
    with pytest.raises(RuntimeError, match="native helper"):
        s.watch_blocks()
