"""RegisterBank: the one MMIO rule set every GIC block uses (vgic.regs)."""

from __future__ import annotations

import pytest

from vgic.events import EventLog, Kind
from vgic.regs import Access, Reader, Register, RegisterBank, Writer, deposit, field


class Device:
    """A toy device: storage registers, policies and (value, mask) handlers."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, int, int]] = []
        self.handled = 0x1111_2222_3333_4444

    def read_H64(self, index: int) -> int:
        return self.handled

    def write_H64(self, index: int, value: int, mask: int) -> None:
        self.writes.append(("H64", index, value, mask))
        self.handled = (self.handled & ~mask) | (value & mask)

    def read_ARR(self, index: int) -> int:
        return 0xA0 + index

    def write_ARR(self, index: int, value: int, mask: int) -> None:
        self.writes.append(("ARR", index, value, mask))

    def handlers(self) -> dict[str, tuple[Reader | None, Writer | None]]:
        return {"H64": (self.read_H64, self.write_H64), "ARR": (self.read_ARR, self.write_ARR)}


REGISTERS = [
    Register("R32", 0x00, 4, reset=0x0000_00F0, wmask=0x0000_FFFF),
    Register("R64", 0x08, 8, reset=0x0102_0304_0506_0708),
    Register("RO", 0x10, 4, reset=0x1234_5678, access=Access.RO),
    Register("WO", 0x14, 4, access=Access.WO),
    Register("RAZ", 0x18, 4, reset=0xFFFF_FFFF, access=Access.RAZ_WI),
    Register("H64", 0x20, 8),
    Register("ARR", 0x40, 4, count=4),
    Register("BYTES", 0x60, 4, reset=0x4433_2211, byte_access=True),
    Register("NEXT", 0x64, 4, reset=0x8877_6655),
]


@pytest.fixture
def log() -> EventLog:
    return EventLog()


@pytest.fixture
def dev() -> Device:
    return Device()


@pytest.fixture
def bank(dev: Device, log: EventLog) -> RegisterBank:
    return RegisterBank(REGISTERS, log, "toy", dev.handlers(), device=dev)


def diags(log: EventLog) -> list[str]:
    return [e.message for e in log.of(Kind.DIAGNOSTIC)]


# -- storage registers, 64-bit registers as 32-bit halves ------------------------------


def test_reset_values_and_storage(bank: RegisterBank, log: EventLog) -> None:
    assert bank.read(0x00, 4) == 0xF0
    assert bank.read(0x08, 8) == 0x0102_0304_0506_0708
    bank.write(0x00, 4, 0xDEAD_BEEF)
    assert bank.read(0x00, 4) == 0x0000_BEEF  # only wmask bits change
    assert bank.get("R32") == 0xBEEF
    bank.reset()
    assert bank.read(0x00, 4) == 0xF0
    assert diags(log) == []


def test_64bit_register_as_two_halves(bank: RegisterBank) -> None:
    assert bank.read(0x08, 4) == 0x0506_0708
    assert bank.read(0x0C, 4) == 0x0102_0304
    bank.write(0x0C, 4, 0xAABB_CCDD)  # high half only
    assert bank.read(0x08, 8) == 0xAABB_CCDD_0506_0708
    bank.write(0x08, 4, 0x1122_3344)  # low half only
    assert bank.read(0x08, 8) == 0xAABB_CCDD_1122_3344
    bank.write(0x08, 8, 0xFFFF_0000_FFFF_0000)
    assert bank.read(0x08, 4) == 0xFFFF_0000 and bank.read(0x0C, 4) == 0xFFFF_0000


def test_handler_gets_value_and_mask_per_half(bank: RegisterBank, dev: Device) -> None:
    bank.write(0x24, 4, 0x1_DEAD_BEEF)  # high half; the value is truncated to 32 bits
    bank.write(0x20, 4, 0xCAFE_F00D)
    bank.write(0x20, 8, 0x0123_4567_89AB_CDEF)
    assert dev.writes == [
        ("H64", 0, 0xDEAD_BEEF << 32, 0xFFFF_FFFF << 32),
        ("H64", 0, 0xCAFE_F00D, 0xFFFF_FFFF),
        ("H64", 0, 0x0123_4567_89AB_CDEF, 0xFFFF_FFFF_FFFF_FFFF),
    ]
    assert bank.read(0x24, 4) == 0x0123_4567
    assert bank.read(0x20, 8) == 0x0123_4567_89AB_CDEF
    assert bank.peek("H64") == 0x0123_4567_89AB_CDEF


def test_register_arrays_pass_their_index(bank: RegisterBank, dev: Device) -> None:
    assert [bank.read(0x40 + 4 * i, 4) for i in range(4)] == [0xA0, 0xA1, 0xA2, 0xA3]
    bank.write(0x48, 4, 7)
    assert dev.writes == [("ARR", 2, 7, 0xFFFF_FFFF)]


def test_split_64bit_access_to_32bit_registers(bank: RegisterBank, dev: Device, log: EventLog) -> None:
    # 0x40/0x44 are ARR[0]/ARR[1]: one 64-bit store becomes two 32-bit ones, low first
    bank.write(0x40, 8, 0x0000_0005_0000_0004)
    assert dev.writes == [("ARR", 0, 4, 0xFFFF_FFFF), ("ARR", 1, 5, 0xFFFF_FFFF)]
    assert bank.read(0x40, 8) == 0xA1 << 32 | 0xA0
    assert sum("split in two" in m for m in diags(log)) == 2
    # a split access whose upper half is reserved: low half works, upper half RAZ/WI
    bank.write(0x00, 8, 0xFFFF_FFFF_0000_1234)
    assert bank.read(0x00, 8) == 0x1234


# -- access policies ------------------------------------------------------------------


def test_read_only_register(bank: RegisterBank, dev: Device, log: EventLog) -> None:
    bank.write(0x10, 4, 0)
    assert bank.read(0x10, 4) == 0x1234_5678
    assert dev.writes == []  # the writer of an RO register never runs
    assert any("read-only" in m for m in diags(log))


def test_write_only_register_reads_zero(bank: RegisterBank) -> None:
    bank.write(0x14, 4, 0x55)
    assert bank.get("WO") == 0x55
    assert bank.read(0x14, 4) == 0
    assert bank.peek("WO") == 0


def test_raz_wi_register(bank: RegisterBank, log: EventLog) -> None:
    assert bank.read(0x18, 4) == 0  # despite its stored reset value
    bank.write(0x18, 4, 0x1234)
    assert bank.get("RAZ") == 0xFFFF_FFFF
    assert diags(log) == []  # RAZ/WI is architected, not a guest mistake


# -- reserved offsets, widths, alignment -------------------------------------------------


@pytest.mark.parametrize("offset", [0x04, 0x1C, 0x30, 0x100, 0xFFFC])
def test_reserved_offsets_raz_wi(bank: RegisterBank, log: EventLog, offset: int) -> None:
    assert bank.read(offset, 4) == 0
    bank.write(offset, 4, 0xFFFF_FFFF)
    assert bank.read(offset, 4) == 0
    msgs = diags(log)
    assert len(msgs) == 3 and all("reserved" in m for m in msgs)
    assert all(e.offset == offset and e.source == "toy" for e in log.of(Kind.DIAGNOSTIC))


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0x00, 1), (0x00, 2), (0x02, 2), (0x01, 4), (0x0C, 8), (0x08, 3), (0x08, 16), (0x09, 1), (0x0A, 2)],
)
def test_unsupported_width_or_misaligned_is_raz_wi(bank: RegisterBank, log: EventLog, offset: int, size: int) -> None:
    before64 = bank.read(0x08, 8)
    before32 = bank.read(0x00, 4)
    assert bank.read(offset, size) == 0
    bank.write(offset, size, 0xFFFF_FFFF_FFFF_FFFF)
    assert bank.read(0x08, 8) == before64 and bank.read(0x00, 4) == before32
    msgs = diags(log)
    assert len(msgs) == 2 and "unsupported" in msgs[0] and "unsupported" in msgs[1]


def test_byte_access_registers(bank: RegisterBank, log: EventLog) -> None:
    assert [bank.read(0x60 + i, 1) for i in range(4)] == [0x11, 0x22, 0x33, 0x44]
    assert bank.read(0x62, 2) == 0x4433
    bank.write(0x61, 1, 0x1AB)  # truncated to the byte
    assert bank.read(0x60, 4) == 0x4433_AB11
    bank.write(0x62, 2, 0xBEEF)
    assert bank.read(0x60, 4) == 0xBEEF_AB11
    assert bank.read(0x64, 4) == 0x8877_6655  # the neighbour is untouched
    assert diags(log) == []
    # the neighbour is not byte-accessible
    assert bank.read(0x65, 1) == 0
    bank.write(0x64, 1, 0)
    assert bank.read(0x64, 4) == 0x8877_6655
    assert len(diags(log)) == 2
    # a misaligned halfword on a byte-access register is still refused
    assert bank.read(0x61, 2) == 0


def test_bank_set_truncates_to_width(bank: RegisterBank) -> None:
    bank.set("R32", 0x1_0000_0001)
    assert bank.get("R32") == 1
    bank.set("R64", -1)
    assert bank.get("R64") == 0xFFFF_FFFF_FFFF_FFFF


def test_overlapping_registers_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        RegisterBank([Register("A", 0, 8), Register("B", 4, 4)], log, "bad")
    with pytest.raises(ValueError, match="overlaps"):
        RegisterBank([Register("A", 0, 4, count=4), Register("B", 0xC, 4)], log, "bad")


def test_handlers_are_bound_explicitly_and_checked(dev: Device, log: EventLog) -> None:
    """A misspelt, dead or forgotten handler fails when the bank is built, not silently."""
    h = dev.handlers()
    with pytest.raises(ValueError, match="H46, which is no register"):
        RegisterBank(REGISTERS, log, "toy", {**h, "H46": (dev.read_H64, None)})
    with pytest.raises(ValueError, match="WO is WO: a read handler would never run"):
        RegisterBank(REGISTERS, log, "toy", {**h, "WO": (dev.read_H64, None)})
    with pytest.raises(ValueError, match="RO is RO: a write handler would never run"):
        RegisterBank(REGISTERS, log, "toy", {**h, "RO": (None, dev.write_ARR)})
    with pytest.raises(ValueError, match=r"Device.write_ARR is bound to no register"):
        RegisterBank(REGISTERS, log, "toy", {"H64": h["H64"], "ARR": (dev.read_ARR, None)}, device=dev)


def test_every_model_binds_all_its_handlers() -> None:
    """Building a whole GIC and machine devices runs the binding checks on every block."""
    from vgic.gic import Gic, GicConfig
    from vgic.memory import GuestMemory
    from vgic.profiles import PROFILES, gic_config

    for name in PROFILES:
        gic = Gic(GuestMemory(), gic_config(name, 2))
        assert gic.its[0].regs._writers["CWRITER"] == gic.its[0].write_CWRITER
        assert gic.sgi_frames[1].regs._writers["ISENABLER0"] is not None
    assert GicConfig().profile == "qemu"


def test_field_and_deposit() -> None:
    assert field(0xABCD, 11, 4) == 0xBC
    assert field(1 << 63, 63, 63) == 1
    assert deposit(0xABCD, 11, 4, 0x12) == 0xA12D
    assert deposit(0, 3, 0, 0x1F) == 0xF  # excess bits dropped
