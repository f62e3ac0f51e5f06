"""The GICv3 distributor (IHI 0069 12.9): control, identification and SPIs.

It reports the GIC's capabilities (GICD_TYPER: SPI lines, LPI support, INTID bits),
holds GICD_CTLR's group enables, and owns the SPIs: their enable, pending, active,
priority, configuration and GICD_IROUTER<n> routing. Affinity routing is always enabled
(ARE=1) with a single security state (DS=1), as on QEMU's virt machine. Each CPU sees
the SPIs routed to it through a :class:`SpiView` (an InterruptSource).

Lock order: a CPU interface (holding its redistributor's lock) may take the distributor
lock; the distributor never calls into a CPU interface while holding its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from vgic.checks import FieldError, at, mapping, only, req
from vgic.events import EventLog
from vgic.gicv3.banked import InterruptBank, InterruptBankState, bitmap_handlers
from vgic.gicv3.cpu_interface import InterruptSource
from vgic.regs import Access, Register, RegisterBank, RegisterBankState, id_registers

GICD_FRAME_SIZE = 0x10000

CTLR_ENABLE_GRP0 = 1 << 0
CTLR_ENABLE_GRP1 = 1 << 1
CTLR_ARE = 1 << 4
CTLR_DS = 1 << 6
CTLR_RWP = 1 << 31
TYPER_A3V = 1 << 24  # Aff3 supported in SGI generation and routing
TYPER_NO1N = 1 << 25  # no 1-of-N SPI routing: GICD_IROUTER<n>.IRM is RAZ/WI
IROUTER_AFFINITY = 0xFF_0000_0000 | 0xFFFFFF  # Aff3[39:32], Aff2.Aff1.Aff0[23:0]

GICD_IIDR_QEMU = 0x0000043B  # Arm r0p0, ProductID 0: QEMU's virt GIC
GICD_IIDR_VGIC = 0x5600043B  # vgic's own: ProductID 'V' (0x56)
_ID = (0x44, 0x00, 0x00, 0x00, 0x92, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

GICD_REGISTERS: list[Register] = [
    Register("CTLR", 0x0000, 4, reset=CTLR_ARE | CTLR_DS),
    Register("TYPER", 0x0004, 4, access=Access.RO),
    Register("IIDR", 0x0008, 4, access=Access.RO),
    Register("TYPER2", 0x000C, 4, access=Access.RO),
    Register("STATUSR", 0x0010, 4, access=Access.RAZ_WI),
    Register("IGROUPR", 0x0080, 4, count=32),
    Register("ISENABLER", 0x0100, 4, count=32),
    Register("ICENABLER", 0x0180, 4, count=32),
    Register("ISPENDR", 0x0200, 4, count=32),
    Register("ICPENDR", 0x0280, 4, count=32),
    Register("ISACTIVER", 0x0300, 4, count=32),
    Register("ICACTIVER", 0x0380, 4, count=32),
    Register("IPRIORITYR", 0x0400, 4, count=255, byte_access=True),
    Register("ICFGR", 0x0C00, 4, count=64),
    Register("IGRPMODR", 0x0D00, 4, count=32, access=Access.RAZ_WI),
    Register("IROUTER", 0x6000, 8, count=1020),
    *id_registers(_ID),
]


@dataclass(frozen=True)
class DistributorState:
    """The saved distributor: its registers (GICD_CTLR, GICD_IROUTER<n>) and the SPIs."""

    regs: RegisterBankState
    spis: InterruptBankState

    def to_dict(self) -> dict[str, object]:
        return {"regs": self.regs.to_dict(), "spis": self.spis.to_dict()}

    @classmethod
    def from_dict(cls, d: object, num_spis: int) -> DistributorState:
        """GICD_CTLR with ARE and DS set (RAO/WI with one security state) and nothing but
        EnableGrp0/1 besides; GICD_IROUTER<n> holding only affinity fields (IRM is RAZ/WI
        with GICD_TYPER.No1N=1), and zero for INTIDs that are no SPI of ``num_spis``."""
        m = mapping(d)
        only(m, ("regs", "spis"))
        with at("regs"):
            regs = RegisterBankState.from_dict(req(m, "regs"), GICD_REGISTERS)
            ctlr = regs.values["CTLR"][0]
            fixed = CTLR_ARE | CTLR_DS
            if ctlr & fixed != fixed or ctlr & ~(fixed | CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1):
                raise FieldError("CTLR", f"{ctlr:#x} is not a GICD_CTLR value: ARE and DS set, EnableGrp0/1 only")
            for intid, v in enumerate(regs.values["IROUTER"]):
                spi = 32 <= intid < 32 + num_spis
                if v & ~IROUTER_AFFINITY if spi else v:
                    raise FieldError(f"IROUTER[{intid}]", f"{v:#x} is not an affinity of SPI routing"
                                     if spi else f"{v:#x} routes INTID {intid}, which is no SPI here")  # fmt: skip
        with at("spis"):
            spis = InterruptBankState.from_dict(req(m, "spis"), 32, num_spis)
        return cls(regs, spis)


class Distributor:
    """GICD: control, identification and the SPIs (INTIDs 32 .. 32 + num_spis - 1)."""

    def __init__(self, log: EventLog, lpi_id_bits: int = 16, num_spis: int = 256, iidr: int = GICD_IIDR_QEMU) -> None:
        if num_spis % 32 or not 0 <= num_spis <= 988:
            raise ValueError("num_spis must be a multiple of 32, at most 988")
        self.log = log
        self.iidr = iidr
        self.lpi_id_bits = lpi_id_bits
        self.num_spis = num_spis
        self.lock = threading.RLock()
        self.spis = InterruptBank(32, num_spis)
        self.route: dict[int, int] = {}  # SPI INTID -> CPU index, from GICD_IROUTER
        self.route_masks: list[int] = []  # per CPU: bitmap of SPIs routed there
        self.affinity_to_cpu: dict[int, int] = {}
        self.on_change: Callable[[], None] = lambda: None  # set by the GIC: update CPU interfaces
        handlers = {
            **bitmap_handlers(self.spis),
            "CTLR": (None, self.write_CTLR),
            "TYPER": (self.read_TYPER, None),
            "IIDR": (self.read_IIDR, None),
            "IPRIORITYR": (self.read_IPRIORITYR, self.write_IPRIORITYR),
            "ICFGR": (self.read_ICFGR, self.write_ICFGR),
            "IROUTER": (self.read_IROUTER, self.write_IROUTER),
        }
        self.regs = RegisterBank(GICD_REGISTERS, log, "gicd", handlers, device=self)

    def attach_cpus(self, affinities: list[int]) -> None:
        """The CPUs' affinities (Aff3.Aff2.Aff1.Aff0 as in GICD_IROUTER) for routing."""
        self.affinity_to_cpu = {aff: i for i, aff in enumerate(affinities)}
        self.route_masks = [0] * len(affinities)
        for intid in range(32, 32 + self.num_spis):
            self._route(intid, 0)

    def save_state(self) -> DistributorState:
        with self.lock:
            return DistributorState(self.regs.save_state(), self.spis.save_state())

    def load_state(self, state: DistributorState) -> None:
        with self.lock:
            self.regs.load_state(state.regs)
            self.spis.load_state(state.spis)
            for intid in range(32, 32 + self.num_spis):
                v = self.regs.get("IROUTER", intid)
                aff = (v >> 32 & 0xFF) << 24 | (v & 0xFFFFFF)
                self._route(intid, 0 if v >> 31 & 1 else self.affinity_to_cpu.get(aff, -1))

    def read(self, offset: int, size: int) -> int:
        # acquire/release, not ``with``: a guest access path (see CpuInterface.acknowledge)
        self.lock.acquire()
        try:
            return self.regs.read(offset, size)
        finally:
            self.lock.release()

    def write(self, offset: int, size: int, value: int) -> None:
        self.lock.acquire()
        try:
            self.regs.write(offset, size, value)
        finally:
            self.lock.release()
        self.on_change()

    def read_IIDR(self, index: int) -> int:
        """GICD_IIDR (12.9.17): IMPLEMENTATION DEFINED, the profile's value."""
        return self.iidr

    def read_TYPER(self, index: int) -> int:
        """ITLinesNumber, LPIS[17], IDbits[23:19] (12.9.38)."""
        lines = (self.num_spis + 32) // 32 - 1
        return lines | 1 << 17 | (self.lpi_id_bits - 1) << 19 | TYPER_A3V | TYPER_NO1N

    def write_CTLR(self, index: int, value: int, mask: int) -> None:
        """EnableGrp0/EnableGrp1 are RW; ARE and DS are fixed at 1 (RAO/WI)."""
        v = self.regs.get("CTLR")
        grp = CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1
        v = (v & ~(grp & mask)) | (value & grp & mask)
        self.regs.set("CTLR", v | CTLR_ARE | CTLR_DS)

    def group_enabled(self, group: int) -> bool:
        return bool(self.regs.get("CTLR") & (CTLR_ENABLE_GRP1 if group else CTLR_ENABLE_GRP0))

    def read_IPRIORITYR(self, index: int) -> int:
        if index < 8:
            return 0  # SGIs and PPIs live in the redistributors (ARE=1)
        return int.from_bytes(self.spis.priority[4 * index : 4 * index + 4], "little")

    def write_IPRIORITYR(self, index: int, value: int, mask: int) -> None:
        for i in range(4):
            intid = 4 * index + i
            if mask >> (8 * i) & 0xFF and 32 <= intid < 32 + self.num_spis:
                self.spis.priority[intid] = (value >> (8 * i)) & 0xF8

    def read_ICFGR(self, index: int) -> int:
        return self.spis.icfgr(index)

    def write_ICFGR(self, index: int, value: int, mask: int) -> None:
        self.spis.write_icfgr(index, value & mask | self.spis.icfgr(index) & ~mask)

    def read_IROUTER(self, index: int) -> int:
        return self.regs.get("IROUTER", index)

    def write_IROUTER(self, index: int, value: int, mask: int) -> None:
        """Aff3[39:32], Aff2.Aff1.Aff0[23:0] (12.9.22); IRM is RAZ/WI (GICD_TYPER.No1N=1)."""
        if not 32 <= index < 32 + self.num_spis:
            return
        v = (self.regs.get("IROUTER", index) & ~mask) | (value & mask)
        v &= IROUTER_AFFINITY
        self.regs.set("IROUTER", v, index)
        aff = (v >> 32 & 0xFF) << 24 | (v & 0xFFFFFF)
        self._route(index, 0 if v >> 31 & 1 else self.affinity_to_cpu.get(aff, -1))

    def _route(self, intid: int, cpu: int) -> None:
        old = self.route.get(intid)
        if old is not None and old >= 0:
            self.route_masks[old] &= ~(1 << intid)
        self.route[intid] = cpu
        if cpu >= 0:
            self.route_masks[cpu] |= 1 << intid

    def set_spi(self, intid: int, level: bool) -> None:
        """A device's interrupt line."""
        with self.lock:
            changed = self.spis.set_level(intid, level)
        if changed:
            self.on_change()


class SpiView(InterruptSource):
    """The SPIs routed to one CPU, as an InterruptSource of its CPU interface."""

    def __init__(self, dist: Distributor, cpu: int) -> None:
        self.dist = dist
        self.cpu = cpu

    def highest_pending(self, group: int) -> tuple[int, int] | None:
        d = self.dist
        if not d.route_masks or not d.route_masks[self.cpu] or not d.group_enabled(group):
            return None
        with d.lock:
            return d.spis.best(group, d.route_masks[self.cpu])

    def acknowledge(self, intid: int) -> None:
        with self.dist.lock:
            self.dist.spis.acknowledge(intid)

    def deactivate(self, intid: int) -> bool:
        if not 32 <= intid < 32 + self.dist.num_spis:
            return False
        with self.dist.lock:
            return self.dist.spis.deactivate(intid)
