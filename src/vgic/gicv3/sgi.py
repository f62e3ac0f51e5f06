"""The SGI_base frame of a redistributor: one CPU's SGIs and PPIs (IHI 0069 12.10, 12.11).

The registers of GICD_* for INTIDs 0-31 are banked here per CPU (ARE=1): group, enable,
pending, active, priority and configuration, over an :class:`InterruptBank`. The frame
is an InterruptSource for its CPU interface; PPIs are input lines (the generic timer),
SGIs are raised by ICC_SGI*R_EL1 writes through the GIC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vgic.checks import FieldError, at, mapping, only, req
from vgic.gicv3.banked import InterruptBank, InterruptBankState, bitmap_handlers
from vgic.gicv3.cpu_interface import InterruptSource
from vgic.gicv3.redistributor import Redistributor
from vgic.regs import Access, Register, RegisterBank, RegisterBankState

GICR_SGI_REGISTERS: list[Register] = [
    Register("IGROUPR0", 0x0080, 4),
    Register("ISENABLER0", 0x0100, 4),
    Register("ICENABLER0", 0x0180, 4),
    Register("ISPENDR0", 0x0200, 4),
    Register("ICPENDR0", 0x0280, 4),
    Register("ISACTIVER0", 0x0300, 4),
    Register("ICACTIVER0", 0x0380, 4),
    Register("IPRIORITYR", 0x0400, 4, count=8, byte_access=True),
    Register("ICFGR", 0x0C00, 4, count=2),
    Register("IGRPMODR0", 0x0D00, 4, access=Access.RAZ_WI),  # one security state (DS=1)
    Register("NSACR", 0x0E00, 4, access=Access.RAZ_WI),
]
SGI_EDGE = 0xFFFF  # SGIs are always edge-triggered (ICFGR0 is RO)


@dataclass(frozen=True)
class SgiFrameState:
    """The saved SGI_base frame of one CPU: its registers and its SGI/PPI state."""

    regs: RegisterBankState
    bank: InterruptBankState

    def to_dict(self) -> dict[str, object]:
        return {"regs": self.regs.to_dict(), "bank": self.bank.to_dict()}

    @classmethod
    def from_dict(cls, d: object) -> SgiFrameState:
        """SGIs stay edge-triggered (IHI 0069: GICR_ICFGR0 is read-only) and have no
        input line: only PPIs (16-31) are driven by devices."""
        m = mapping(d)
        only(m, ("regs", "bank"))
        with at("regs"):
            regs = RegisterBankState.from_dict(req(m, "regs"), GICR_SGI_REGISTERS)
        with at("bank"):
            bank = InterruptBankState.from_dict(req(m, "bank"), 0, 32)
            if bank.edge & SGI_EDGE != SGI_EDGE:
                raise FieldError("edge", "makes an SGI level-sensitive; SGIs are always edge-triggered")
            if bank.level & SGI_EDGE:
                raise FieldError("level", "drives an SGI's input line; SGIs have none")
        return cls(regs, bank)


class SgiFrame(InterruptSource):
    """The SGI_base frame and the SGI/PPI state of one CPU; an InterruptSource."""

    def __init__(self, rd: Redistributor, group_enabled: Callable[[int], bool]) -> None:
        self.rd = rd
        self.bank = InterruptBank(0, 32)
        self.bank.edge = SGI_EDGE
        self.group_enabled = group_enabled  # GICD_CTLR.EnableGrp<n>
        handlers = {
            **bitmap_handlers(self.bank, suffix="0", word=0, after=lambda: self.rd.on_change()),
            "IPRIORITYR": (self.read_IPRIORITYR, self.write_IPRIORITYR),
            "ICFGR": (self.read_ICFGR, self.write_ICFGR),
        }
        self.regs = RegisterBank(GICR_SGI_REGISTERS, rd.log, rd.source, handlers, device=self)

    def read(self, offset: int, size: int) -> int:
        """A load from this SGI_base frame (offset within the frame)."""
        with self.rd.lock:
            return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.rd.lock:
            self.regs.write(offset, size, value)

    def save_state(self) -> SgiFrameState:
        with self.rd.lock:
            return SgiFrameState(self.regs.save_state(), self.bank.save_state())

    def load_state(self, state: SgiFrameState) -> None:
        with self.rd.lock:
            self.regs.load_state(state.regs)
            self.bank.load_state(state.bank)

    def read_IPRIORITYR(self, index: int) -> int:
        return int.from_bytes(self.bank.priority[4 * index : 4 * index + 4], "little")

    def write_IPRIORITYR(self, index: int, value: int, mask: int) -> None:
        for i in range(4):
            if mask >> (8 * i) & 0xFF:
                self.bank.priority[4 * index + i] = (value >> (8 * i)) & 0xF8  # 5 priority bits
        self.rd.on_change()

    def read_ICFGR(self, index: int) -> int:
        return self.bank.icfgr(index)

    def write_ICFGR(self, index: int, value: int, mask: int) -> None:
        self.bank.write_icfgr(index, value & mask | self.bank.icfgr(index) & ~mask, fixed_edge=SGI_EDGE)

    # InterruptSource
    def highest_pending(self, group: int) -> tuple[int, int] | None:
        best = self.bank.best(group)  # cheap when nothing is pending: look at that first
        return best if best is not None and self.group_enabled(group) else None

    def acknowledge(self, intid: int) -> None:
        self.bank.acknowledge(intid)

    def deactivate(self, intid: int) -> bool:
        return intid < 32 and self.bank.deactivate(intid)

    def set_ppi(self, intid: int, level: bool) -> None:
        """A PPI input line (e.g. the generic timer)."""
        with self.rd.lock:
            if self.bank.set_level(intid, level):
                self.rd.on_change()

    def raise_sgi(self, intid: int) -> None:
        with self.rd.lock:
            self.bank.latched |= 1 << intid
            self.rd.on_change()
