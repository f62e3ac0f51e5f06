"""The GICv3 redistributor: LPI support and the RD_base frame (IHI 0069 5.1, 12.11).

One :class:`Redistributor` per CPU. It owns the CPU's LPI pending state and a cache of the
configuration (priority, enable) of its pending LPIs.

* **Pending state.** While GICR_CTLR.EnableLPIs is 1 the pending LPIs live in a host set
  (the architecture makes the pending table's contents UNKNOWN to software then). On
  EnableLPIs 0 -> 1 the redistributor reads the pending table (unless PENDBASER.PTZ was
  set), so software may seed it; on 1 -> 0 it writes the state back (5.1.2).
* **Configuration.** An LPI's configuration byte is read from the LPI configuration table
  when the LPI becomes pending and is then cached until INV, INVALL, GICR_INVLPIR or
  GICR_INVALLR reloads it (5.1.1 permits the caching). A cached LPI that is no longer
  pending is forgotten, so host memory is bounded by the number of pending LPIs.
* **Priority order.** Pending, enabled LPIs sit in a heap keyed (priority, INTID): the
  highest-priority LPI, ties to the lowest INTID, is found without scanning. Entries made
  stale by acknowledge, CLEAR or a reload are skipped lazily and the heap is rebuilt when
  stale entries outnumber live ones.

The LPI ID space is bounded by ``lpi_id_bits`` (GICD_TYPER.IDbits + 1): the pending-table
scan at enable is at most 2^lpi_id_bits / 8 bytes, a host setting, never a guest's.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from vgic.checks import FieldError, at, boolean, distinct, exactly, items, mapping, only, req, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.attributes import sanitise_attributes
from vgic.memory import GuestMemory, MemoryFault
from vgic.regs import Access, Register, RegisterBank, RegisterBankState, field, id_registers

LPI_BASE = 8192
RD_FRAME_SIZE = 0x20000  # RD_base frame + SGI_base frame (GICv3)
SGI_FRAME_OFFSET = 0x10000

# GICR_TYPER bits (12.11.38)
TYPER_PLPIS = 1 << 0
TYPER_DIRECTLPI = 1 << 3
TYPER_LAST = 1 << 4

# GICR_WAKER bits (12.11.41)
WAKER_PROCESSOR_SLEEP = 1 << 1
WAKER_CHILDREN_ASLEEP = 1 << 2

# The bits GICR_PROPBASER / GICR_PENDBASER keep (12.11.29, 12.11.28): PROPBASER OuterCache,
# PA[51:12], Shareability, InnerCache, IDbits; PENDBASER PTZ, OuterCache, PA[51:16],
# Shareability, InnerCache.
PROPBASER_MASK = 0x070F_FFFF_FFFF_FF9F
PENDBASER_MASK = 0x470F_FFFF_FFFF_0F80
PENDBASER_PTZ = 1 << 62

GICR_IIDR_QEMU = 0x0000043B  # Arm r0p0, ProductID 0: QEMU's virt GIC
GICR_IIDR_VGIC = 0x5600043B  # vgic's own: ProductID 'V' (0x56)
RD_ID_REGISTERS = (0x44, 0x00, 0x00, 0x00, 0x93, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)


def gicr_rd_registers(iidr: int = GICR_IIDR_QEMU) -> tuple[Register, ...]:
    """The RD_base frame's rows (12.11), for a redistributor identifying itself as ``iidr``."""
    return (
        Register("CTLR", 0x0000, 4),
        Register("IIDR", 0x0004, 4, reset=iidr, access=Access.RO),
        Register("TYPER", 0x0008, 8, access=Access.RO),
        Register("STATUSR", 0x0010, 4, access=Access.RAZ_WI),
        Register("WAKER", 0x0014, 4, reset=WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP),
        Register("SETLPIR", 0x0040, 8, access=Access.WO),
        Register("CLRLPIR", 0x0048, 8, access=Access.WO),
        Register("PROPBASER", 0x0070, 8),
        Register("PENDBASER", 0x0078, 8),
        Register("INVLPIR", 0x00A0, 8, access=Access.WO),
        Register("INVALLR", 0x00B0, 8, access=Access.WO),
        Register("SYNCR", 0x00C0, 4, access=Access.RO),
        *id_registers(RD_ID_REGISTERS),
    )


GICR_RD_REGISTERS: list[Register] = list(gicr_rd_registers())


@dataclass(frozen=True, slots=True)
class RedistributorConfig:
    """Choices the architecture leaves to the implementation (docs/choices.md). The
    defaults are QEMU 7.2's virt machine (the ``qemu`` profile)."""

    lpi_id_bits: int = 16  # GICD_TYPER.IDbits + 1: the largest LPI INTID space
    # GICR_TYPER.DirectLPI: SETLPIR/CLRLPIR/INVLPIR/INVALLR/SYNCR. QEMU and KVM have none;
    # with it, Linux invalidates LPIs through GICR_INVLPIR instead of the ITS's INV command.
    direct_lpi: bool = False
    lpis_disableable: bool = True  # EnableLPIs may be cleared once set (else it sticks at 1)
    iidr: int = GICR_IIDR_QEMU
    common_lpi_aff: int = 1  # GICR_TYPER.CommonLPIAff (QEMU: 1, the redistributors share tables)

    def to_dict(self) -> dict[str, int | bool]:
        return {f: getattr(self, f) for f in ("lpi_id_bits", "direct_lpi", "lpis_disableable", "iidr",
                                               "common_lpi_aff")}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> RedistributorConfig:
        config = cls(
            lpi_id_bits=uint(d["lpi_id_bits"], 6, "lpi_id_bits"),
            direct_lpi=boolean(d["direct_lpi"], "direct_lpi"),
            lpis_disableable=boolean(d["lpis_disableable"], "lpis_disableable"),
            iidr=uint(d["iidr"], 32, "iidr"),
            common_lpi_aff=uint(d["common_lpi_aff"], 2, "common_lpi_aff"),
        )
        if not 14 <= config.lpi_id_bits <= 24:
            raise ValueError("lpi_id_bits must be 14 to 24")
        return config


def lpi_limit(propbaser: int, lpi_id_bits: int) -> int:
    """One past the largest LPI INTID a GICR_PROPBASER value allows, bounded by the GIC's
    ``lpi_id_bits``; 0 when IDbits gives fewer than 14 bits (no LPI in range, 12.11.29)."""
    idbits = min(field(propbaser, 4, 0) + 1, lpi_id_bits)
    return 1 << idbits if idbits >= 14 else 0


@dataclass(frozen=True)
class RedistributorState:
    """The saved LPI state of one redistributor (IHI 0069 5.1).

    ``pending`` are the LPIs pending in the host set while EnableLPIs is 1, ``config``
    their cached configuration bytes (5.1.1), ``table_bits`` the INTIDs whose bit was set
    in the pending table when EnableLPIs was last set (written back as clear on disable),
    ``lpi_limit`` one past the largest INTID GICR_PROPBASER.IDbits allowed then."""

    regs: RegisterBankState
    enable_lpis: bool
    lpi_limit: int
    pending: frozenset[int]
    config: Mapping[int, int]
    table_bits: frozenset[int]

    def to_dict(self) -> dict[str, object]:
        return {
            "regs": self.regs.to_dict(),
            "enable_lpis": self.enable_lpis,
            "lpi_limit": self.lpi_limit,
            "pending": sorted(self.pending),
            "config": [[i, c] for i, c in sorted(self.config.items())],
            "table_bits": sorted(self.table_bits),
        }

    @classmethod
    def from_dict(cls, d: object, config: RedistributorConfig, known: tuple[str, ...] = ()) -> RedistributorState:
        """Checked against the architecture and ``config``: GICR_PROPBASER/PENDBASER hold
        only the bits a write keeps (12.11.29, 12.11.28), PTZ is clear while EnableLPIs=1
        (it is consumed by the enable), GICR_WAKER is asleep or awake (12.11.41); while
        EnableLPIs=1 the LPI limit is the one PROPBASER gives and every pending or table
        INTID is an LPI below it (5.1: LPIs are INTIDs 8192 and up); with EnableLPIs=0 no
        LPI is pending (5.1.2: the state is in the pending table); the configuration
        cache holds exactly the pending LPIs, one byte each. ``known``: other fields the
        caller's layout keeps in the same object (the SGI frame)."""
        m = mapping(d)
        only(m, ("regs", "enable_lpis", "lpi_limit", "pending", "config", "table_bits", *known))
        with at("regs"):
            regs = RegisterBankState.from_dict(req(m, "regs"), gicr_rd_registers(config.iidr))
            prop, pend = regs.values["PROPBASER"][0], regs.values["PENDBASER"][0]
            for name, v, keep in (("PROPBASER", prop, PROPBASER_MASK), ("PENDBASER", pend, PENDBASER_MASK)):
                if v and (v & ~keep or sanitise_attributes(v, 7, 10, 56) != v):  # 0 is the reset value
                    raise FieldError(name, f"{v:#x} is not a value GICR_{name} can hold here")
            waker = regs.values["WAKER"][0]
            if waker not in (0, WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP):
                raise FieldError("WAKER", f"{waker:#x}: ChildrenAsleep follows ProcessorSleep, nothing else is set")
        enable = boolean(req(m, "enable_lpis"), "enable_lpis")
        limit = uint(req(m, "lpi_limit"), 32, "lpi_limit")
        if enable:
            if pend & PENDBASER_PTZ:
                raise FieldError("regs.PENDBASER", "PTZ is set with EnableLPIs=1 (the enable consumes it)")
            if limit != lpi_limit(prop, config.lpi_id_bits):
                raise FieldError("lpi_limit", f"{limit} is not the limit GICR_PROPBASER.IDbits gives "
                                 f"({lpi_limit(prop, config.lpi_id_bits)})")  # fmt: skip
        elif limit not in {0} | {1 << b for b in range(14, config.lpi_id_bits + 1)}:
            raise FieldError("lpi_limit", f"{limit} is not 0 or 2^14 to 2^{config.lpi_id_bits}")
        if not enable:
            for name in ("pending", "config", "table_bits"):
                if req(m, name) != []:
                    raise FieldError(name, "lists LPIs with EnableLPIs=0 (the pending state is in the table then)")
        top = max(limit, LPI_BASE) if enable else LPI_BASE
        pending = distinct(req(m, "pending"), LPI_BASE, top, top - LPI_BASE, "pending")
        table_bits = distinct(req(m, "table_bits"), LPI_BASE, top, top - LPI_BASE, "table_bits")
        cache: dict[int, int] = {}
        with at("config"):
            for n, pair in enumerate(items(req(m, "config"), len(pending), "")):
                with at(n):
                    raw_id, byte = exactly(pair, 2)
                    intid = uint(raw_id, 32, "[0]")
                    if intid not in pending:
                        raise FieldError("[0]", f"caches LPI {intid}, which is not pending")
                    if intid in cache:
                        raise FieldError("[0]", f"caches LPI {intid} twice")
                    cache[intid] = uint(byte, 8, "[1]")
        if len(cache) != len(pending):
            raise FieldError("config", "does not cache the configuration of every pending LPI")
        return cls(regs, enable, limit, pending, MappingProxyType(cache), table_bits)


def _text(why: str | Callable[[], str]) -> str:
    return why if isinstance(why, str) else why()


def _priority(config: int) -> int:
    return config & 0xFC


class Redistributor:
    """A CPU's redistributor. All state is guarded by :attr:`lock` (see vgic.its.its)."""

    def __init__(
        self,
        index: int,
        affinity: int,
        memory: GuestMemory,
        log: EventLog,
        config: RedistributorConfig | None = None,
        last: bool = False,
        base: int | None = None,
    ) -> None:
        self.index = index  # processor number (GICR_TYPER.Processor_Number)
        self.affinity = affinity  # Aff3.Aff2.Aff1.Aff0 as in GICR_TYPER[63:32]
        self.base = base  # physical address of RD_base, for GITS_TYPER.PTA=1
        self.memory = memory
        self.log = log
        self.config = config or RedistributorConfig()
        self.last = last
        self.source = f"gicr{index}"
        self.lock = threading.RLock()
        handlers = {
            "CTLR": (self.read_CTLR, self.write_CTLR),
            "TYPER": (self.read_TYPER, None),
            "WAKER": (None, self.write_WAKER),
            "PROPBASER": (None, self.write_PROPBASER),
            "PENDBASER": (self.read_PENDBASER, self.write_PENDBASER),
            "SETLPIR": (None, self.write_SETLPIR),
            "CLRLPIR": (None, self.write_CLRLPIR),
            "INVLPIR": (None, self.write_INVLPIR),
            "INVALLR": (None, self.write_INVALLR),
        }
        self.regs = RegisterBank(gicr_rd_registers(self.config.iidr), log, self.source, handlers, device=self)
        self.on_change: Callable[[], None] = lambda: None  # set by the CPU interface
        self._enable_lpis = False
        self._pending: set[int] = set()
        self._config: dict[int, int] = {}  # config bytes of pending LPIs
        self._heap: list[tuple[int, int]] = []  # (priority, INTID), lazily cleaned
        self._table_bits: set[int] = set()  # INTIDs whose bit was set in the pending table
        self._lpi_limit = 0  # one past the largest valid LPI INTID while enabled

    # -- state for tools, tests and save/restore --------------------------------------
    @property
    def enable_lpis(self) -> bool:
        return self._enable_lpis

    @property
    def pending_lpis(self) -> frozenset[int]:
        with self.lock:
            return frozenset(self._pending)

    def lpi_config(self, intid: int) -> int | None:
        """The cached configuration byte of a pending LPI (None when not cached)."""
        return self._config.get(intid)

    # -- save/restore ----------------------------------------------------------------
    def save_state(self) -> RedistributorState:
        with self.lock:
            return RedistributorState(self.regs.save_state(), self._enable_lpis, self._lpi_limit,
                                      frozenset(self._pending), MappingProxyType(dict(self._config)),
                                      frozenset(self._table_bits))  # fmt: skip

    def load_state(self, state: RedistributorState) -> None:
        if set(state.config) != state.pending:
            raise ValueError(f"{self.source}: saved configuration cache does not match pending LPIs")
        with self.lock:
            self.regs.load_state(state.regs)
            self._enable_lpis = state.enable_lpis
            self._lpi_limit = state.lpi_limit
            self._pending = set(state.pending)
            self._config = dict(state.config)
            self._table_bits = set(state.table_bits)
            self._heap = [(c & 0xFC, i) for i, c in self._config.items() if c & 1]
            heapq.heapify(self._heap)

    # -- MMIO ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A load from the RD_base frame (the SGI_base frame is :class:`vgic.gicv3.sgi.SgiFrame`)."""
        with self.lock:
            return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self.regs.write(offset, size, value)

    def read_CTLR(self, index: int) -> int:
        """EnableLPIs[0]; CES[1] when it can be cleared; IR[2] with the direct registers."""
        ces = int(self.config.lpis_disableable) << 1
        return int(self._enable_lpis) | ces | int(self.config.direct_lpi) << 2

    def write_CTLR(self, index: int, value: int, mask: int) -> None:
        if mask & 1:
            self.set_enable_lpis(bool(value & 1))

    def read_TYPER(self, index: int) -> int:
        v = TYPER_PLPIS | (self.index & 0xFFFF) << 8 | self.affinity << 32 | (self.config.common_lpi_aff & 3) << 24
        if self.config.direct_lpi:
            v |= TYPER_DIRECTLPI
        if self.last:
            v |= TYPER_LAST
        return v

    def write_WAKER(self, index: int, value: int, mask: int) -> None:
        """ProcessorSleep is RW; ChildrenAsleep follows it at once (12.11.41)."""
        if mask & WAKER_PROCESSOR_SLEEP:
            sleep = value & WAKER_PROCESSOR_SLEEP
            self.regs.set("WAKER", WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP if sleep else 0)

    def write_PROPBASER(self, index: int, value: int, mask: int) -> None:
        if self._enable_lpis:
            self._diag("GICR_PROPBASER written while EnableLPIs=1: ignored", "IHI0069 12.11.29")
            return
        old = self.regs.get("PROPBASER")
        v = (old & ~mask) | (value & mask)
        v &= PROPBASER_MASK
        self.regs.set("PROPBASER", sanitise_attributes(v, 7, 10, 56))

    def write_PENDBASER(self, index: int, value: int, mask: int) -> None:
        if self._enable_lpis:
            self._diag("GICR_PENDBASER written while EnableLPIs=1: ignored", "IHI0069 12.11.28")
            return
        old = self.regs.get("PENDBASER")
        v = (old & ~mask) | (value & mask)
        v &= PENDBASER_MASK
        self.regs.set("PENDBASER", sanitise_attributes(v, 7, 10, 56))

    def read_PENDBASER(self, index: int) -> int:
        return self.regs.get("PENDBASER") & ~(1 << 62)  # PTZ reads as zero

    def _direct(self, reg: str) -> bool:
        if not self.config.direct_lpi:
            self._diag(f"GICR_{reg} written but GICR_TYPER.DirectLPI=0: ignored", "IHI0069 5.1")
            return False
        return True

    def write_SETLPIR(self, index: int, value: int, mask: int) -> None:
        if mask & 0xFFFFFFFF and self._direct("SETLPIR"):
            self.set_lpi_pending(value & 0xFFFFFFFF)

    def write_CLRLPIR(self, index: int, value: int, mask: int) -> None:
        if mask & 0xFFFFFFFF and self._direct("CLRLPIR"):
            self.clear_lpi_pending(value & 0xFFFFFFFF)

    def write_INVLPIR(self, index: int, value: int, mask: int) -> None:
        if mask & 0xFFFFFFFF and self._direct("INVLPIR"):
            self.invalidate_lpi(value & 0xFFFFFFFF)

    def write_INVALLR(self, index: int, value: int, mask: int) -> None:
        if mask & 0xFFFFFFFF and self._direct("INVALLR"):
            self.invalidate_all()

    # -- LPI enable ------------------------------------------------------------------
    def set_enable_lpis(self, enable: bool) -> None:
        """GICR_CTLR.EnableLPIs writes (5.1.2, 12.11.2)."""
        with self.lock:
            if enable == self._enable_lpis:
                return
            if not enable and not self.config.lpis_disableable:
                self._diag("EnableLPIs cannot be cleared once set on this GIC: ignored", "IHI0069 12.11.2")
                return
            if enable:
                self._enable()
            else:
                self._disable()
            self.log.record(Kind.STATE, self.source, f"EnableLPIs={int(enable)}", cpu=self.index)
            self.on_change()

    def _enable(self) -> None:
        prop = self.regs.get("PROPBASER")
        idbits = min(field(prop, 4, 0) + 1, self.config.lpi_id_bits)
        self._lpi_limit = lpi_limit(prop, self.config.lpi_id_bits)
        if not self._lpi_limit:
            self._diag(f"GICR_PROPBASER.IDbits gives {idbits} ID bits, fewer than 14: no LPI is in range",
                       "IHI0069 12.11.29")  # fmt: skip
        self._enable_lpis = True
        pend = self.regs.get("PENDBASER")
        ptz = bool(pend >> 62 & 1)
        self.regs.set("PENDBASER", pend & ~(1 << 62))
        self._table_bits.clear()
        if not ptz and self._lpi_limit:
            self._scan_pending_table(pend & 0x000F_FFFF_FFFF_0000)

    def _scan_pending_table(self, table: int) -> None:
        """Load the pending bits of LPIs [8192, limit) from the pending table (5.1.2)."""
        start, end = LPI_BASE // 8, self._lpi_limit // 8
        chunk = 4096
        for off in range(start, end, chunk):
            n = min(chunk, end - off)
            try:
                data = self.memory.read_bytes(table + off, n)
            except MemoryFault as fault:
                self._diag(f"pending table read faulted ({fault}); its bits read as zero", "IHI0069 5.1.2")
                return
            if not any(data):
                continue
            bits = int.from_bytes(data, "little")
            while bits:
                low = bits & -bits
                intid = off * 8 + low.bit_length() - 1
                bits ^= low
                self._table_bits.add(intid)
                self._make_pending(intid)

    def _disable(self) -> None:
        table = self.regs.get("PENDBASER") & 0x000F_FFFF_FFFF_0000
        try:
            for intid in self._table_bits - self._pending:
                self.memory.set_bit(table + intid // 8, intid % 8, False)
            for intid in self._pending:
                self.memory.set_bit(table + intid // 8, intid % 8, True)
        except MemoryFault as fault:
            self._diag(f"pending table write-back faulted ({fault}); pending state lost", "IHI0069 5.1.2")
        self._table_bits.clear()
        self._pending.clear()
        self._config.clear()
        self._heap.clear()
        self._enable_lpis = False

    # -- LPI pending state -----------------------------------------------------------
    def set_lpi_pending(self, intid: int, why: str | Callable[[], str] = "") -> bool:
        """Make an LPI pending. Returns False when the architecture says it is ignored.

        ``why`` says where it came from, for the log; a callable is only called when a
        record is made (the MSI hot path need not format it)."""
        with self.lock:
            if not self._enable_lpis:
                self.log.record(Kind.LPI_DROPPED, self.source, f"LPI {intid} ignored: EnableLPIs=0 {_text(why)}",
                                intid=intid, cpu=self.index, rule="IHI0069 5.1")  # fmt: skip
                return False
            if not LPI_BASE <= intid < self._lpi_limit:
                self.log.record(Kind.LPI_DROPPED, self.source,
                                f"LPI {intid} ignored: outside the range GICR_PROPBASER.IDbits allows {_text(why)}",
                                intid=intid, cpu=self.index, rule="IHI0069 5.1.1")  # fmt: skip
                return False
            if intid in self._pending:
                return True
            self._make_pending(intid)
            if self.log.wants(Kind.LPI_PENDING):
                self.log.record(Kind.LPI_PENDING, self.source, f"LPI {intid} pending {_text(why)}".rstrip(),
                                intid=intid, cpu=self.index)  # fmt: skip
            self.on_change()
            return True

    def _make_pending(self, intid: int) -> None:
        self._pending.add(intid)
        cfg = self._read_config(intid)
        self._config[intid] = cfg
        if cfg & 1:
            heapq.heappush(self._heap, (cfg & 0xFC, intid))

    def _read_config(self, intid: int) -> int:
        prop = self.regs.get("PROPBASER") & 0x000F_FFFF_FFFF_F000
        try:
            return self.memory.read8(prop + intid - LPI_BASE)
        except MemoryFault as fault:
            self._diag(f"LPI {intid} configuration read faulted ({fault}); treated as disabled",
                       "IHI0069 5.1.1")  # fmt: skip
            return 0

    def clear_lpi_pending(self, intid: int) -> bool:
        """Remove an LPI's pending state. Returns whether it was pending."""
        with self.lock:
            if intid not in self._pending:
                return False
            self._pending.discard(intid)
            del self._config[intid]
            self._compact()  # CLEAR/CLRLPIR cycles must not grow the heap (no one may pop it)
            self.on_change()
            return True

    def invalidate_lpi(self, intid: int) -> None:
        """Reload one LPI's configuration (INV, GICR_INVLPIR)."""
        with self.lock:
            if intid in self._pending:
                self._reload(intid)
                self._compact()
                self.on_change()

    def invalidate_all(self) -> None:
        """Reload every cached configuration (INVALL, GICR_INVALLR): O(pending LPIs)."""
        with self.lock:
            if not self._pending:
                return
            self._heap = []
            for intid in self._pending:
                cfg = self._read_config(intid)
                self._config[intid] = cfg
                if cfg & 1:
                    self._heap.append((cfg & 0xFC, intid))
            heapq.heapify(self._heap)
            self.on_change()

    def _reload(self, intid: int) -> None:
        old = self._config[intid]
        cfg = self._read_config(intid)
        self._config[intid] = cfg
        if cfg & 1 and (not old & 1 or _priority(old) != _priority(cfg)):
            heapq.heappush(self._heap, (cfg & 0xFC, intid))

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._pending) + 32:
            self._heap = [(c & 0xFC, i) for i, c in self._config.items() if c & 1]
            heapq.heapify(self._heap)

    def propbaser_limit(self) -> int:
        """One past the largest LPI INTID GICR_PROPBASER.IDbits allows (12.11.29)."""
        return 1 << min(field(self.regs.get("PROPBASER"), 4, 0) + 1, self.config.lpi_id_bits)

    def accepts(self, intid: int) -> bool:
        """Whether an LPI sent here now would become pending (5.1)."""
        return self._enable_lpis and LPI_BASE <= intid < self._lpi_limit

    def move_pending_to(self, other: Redistributor, intids: list[int] | None = None) -> int:
        """Move pending LPIs (all, or those of ``intids``) to ``other``, ORed into its state.

        The MOVI and MOVALL side of the redistributor (6.3.11, 6.3.12). Both locks are held,
        in processor-number order, so an LPI is never pending on both nor on neither. An LPI
        that ``other`` would ignore (EnableLPIs=0, out of range) stays pending here.
        Returns the number moved.
        """
        first, second = (self, other) if self.index <= other.index else (other, self)
        with first.lock, second.lock:
            candidates = sorted(self._pending) if intids is None else [i for i in intids if i in self._pending]
            moved = 0
            for intid in candidates:
                if not other.accepts(intid):
                    self._diag(f"LPI {intid} not moved to CPU {other.index}, which would ignore it "
                               f"(EnableLPIs={int(other._enable_lpis)}); it stays pending here",
                               "IHI0069 6.3.12")  # fmt: skip
                    continue
                self._pending.discard(intid)
                del self._config[intid]
                if intid not in other._pending:
                    other._make_pending(intid)
                moved += 1
            if moved:
                self._compact()
                self.on_change()
                other.on_change()
            return moved

    # -- the CPU interface's view ----------------------------------------------------
    def highest_pending_lpi(self) -> tuple[int, int] | None:
        """(priority, INTID) of the highest-priority pending enabled LPI, or None."""
        heap = self._heap
        config = self._config
        while heap:
            prio, intid = heap[0]
            cfg = config.get(intid)
            if cfg is not None and cfg & 1 and cfg & 0xFC == prio:
                return heap[0]
            heapq.heappop(heap)
        return None

    def acknowledge_lpi(self, intid: int) -> None:
        """An acknowledged LPI stops being pending; LPIs have no active state (5.1)."""
        self._pending.discard(intid)
        self._config.pop(intid, None)
        self._compact()

    # InterruptSource for the CPU interface: LPIs are always Group 1 (5.1).
    def highest_pending(self, group: int) -> tuple[int, int] | None:
        return self.highest_pending_lpi() if group == 1 else None

    def acknowledge(self, intid: int) -> None:
        self.acknowledge_lpi(intid)

    def deactivate(self, intid: int) -> bool:
        return False

    def _diag(self, message: str, rule: str) -> None:
        self.log.record(Kind.DIAGNOSTIC, self.source, message, cpu=self.index, rule=rule)
