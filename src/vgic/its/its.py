"""The Interrupt Translation Service (IHI 0069 5.2 and chapter 6).

An :class:`Its` translates an MSI, a (DeviceID, EventID) pair written to GITS_TRANSLATER
by a device, into an LPI on the redistributor of the event's collection:

    DeviceID --device table--> ITT --ITE--> (pINTID, ICID) --collection table--> RDbase

The tables live in guest memory (formats in :mod:`vgic.its.tables`); the ITS keeps host
caches of the entries it has used, which the architecture permits (5.2) and which every
command that changes a mapping updates. A translation is three dictionary lookups.
Commands are read from the guest's ring when GITS_CWRITER moves and run synchronously,
so GITS_CREADR equals GITS_CWRITER when the write returns (unless the queue stalled).

Lock order, outermost first (acquire in this order, release in reverse; never the other
way round):

1. ``Its.lock``: ITS registers, command queue, table caches (one per ITS).
2. ``Redistributor.lock``: one CPU's LPI state and CPU interface. A command that touches
   two redistributors (MOVI, MOVALL) holds at most one at a time, or both in ascending
   processor-number order (:meth:`Redistributor.move_pending_to`). A CPU interface never
   takes another CPU's lock while holding its own: ICC_SGI*R_EL1 writes raise the SGIs
   after releasing it (two CPUs signalling each other would otherwise deadlock).
3. ``Distributor.lock``: the SPIs; taken last (a CPU interface asking for its best SPI),
   and the distributor calls into CPU interfaces only after releasing it.

Nothing holding a redistributor or distributor lock ever takes an ``Its.lock``, and no
ITS holds two ``Its.lock``s: ITSes share only the redistributors.

Event-log listeners run with these locks held and must not call back into the GIC.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vgic.checks import boolean, items, mapping, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.attributes import sanitise_attributes
from vgic.gicv3.redistributor import LPI_BASE, Redistributor
from vgic.its import commands as C
from vgic.its.errors import CommandError, ItsError
from vgic.its.registers import (
    BASER_TYPE_COLLECTION,
    BASER_TYPE_DEVICE,
    BASER_TYPE_NONE,
    GITS_IIDR_QEMU,
    ID_REGISTERS,
    ItsTyper,
    gits_registers,
)
from vgic.its.tables import (
    PAGE_SIZES,
    DeviceEntry,
    EntryLayout,
    InterruptEntry,
    TableGeometry,
    TableWalkError,
    entry_address,
)
from vgic.memory import GuestMemory, MemoryFault
from vgic.regs import RegisterBank
from vgic.regs import field as bits

TABLE_ENTRY_SIZE = 8  # device table entries (GITS_BASER<n>.Entry_Size + 1)
PAGE_SIZE_64K = 2  # GITS_BASER<n>.Page_Size encoding
ERROR_HISTORY = 64  # command errors each ITS remembers (saved in snapshots, marked by decode)
# Host bound on cached table entries (DTEs + ITEs + CTEs) per ITS: past it the caches are
# dropped and refilled from guest memory, so host memory never grows with guest tables.
CACHE_LIMIT = 1 << 16


class ErrorPolicy(enum.Enum):
    """What the ITS does after a command error (IHI 0069 6.3, "Command errors")."""

    STALL = "stall"  # set GITS_CREADR.Stalled, stop until the guest retries or resets
    CONTINUE = "continue"  # ignore the command and go on with the next one


class PintidBound(enum.Enum):
    """What MAPTI/MAPI check a pINTID against (6.3.9, 6.3.10: "out of range")."""

    ITS = "its"  # GITS_TYPER.ID_bits (QEMU)
    PROPBASER = "propbaser"  # the target redistributor's GICR_PROPBASER.IDbits too (KVM)


@dataclass(frozen=True)
class ItsConfig:
    """The choices an implementation makes (docs/choices.md, one column per profile).

    The defaults are what a guest of QEMU 7.2's virt machine observes (the ``qemu``
    profile, :mod:`vgic.profiles`), except where QEMU departs from the architecture.
    """

    typer: ItsTyper = field(default_factory=ItsTyper)
    iidr: int = GITS_IIDR_QEMU
    id_registers: tuple[int, ...] = ID_REGISTERS  # GITS_PIDR4..7, PIDR0..3, CIDR0..3
    # After an error with an architected code (6.3): stall or ignore the command and go on.
    error_policy: ErrorPolicy = ErrorPolicy.CONTINUE
    # After a queue or table access outside guest RAM (IMPLEMENTATION DEFINED): QEMU stalls.
    memory_fault_policy: ErrorPolicy = ErrorPolicy.STALL
    # GITS_CTLR.Quiescent while Enabled=1 is UNKNOWN (12.19.6): report 1 when the queue is
    # empty and not stalled (QEMU, KVM, Xen), or never claim it (0).
    quiescent_when_idle: bool = True
    baser_page_size: int = PAGE_SIZE_64K  # GITS_BASER<n>.Page_Size at reset (0 4K, 1 16K, 2 64K)
    baser_page_sizes: tuple[int, ...] = (0, 1, 2)  # encodings a write may select; others read as the reset one
    indirect_device_table: bool = True  # GITS_BASER.Indirect supported (two-level tables)
    indirect_collection_table: bool = True
    default_device_id: int = 0  # DeviceID of a GITS_TRANSLATER write with no requester
    baser_types: tuple[int, ...] = (BASER_TYPE_DEVICE, BASER_TYPE_COLLECTION) + (BASER_TYPE_NONE,) * 6
    collection_entry_size: int = 8  # GITS_BASER<n>.Entry_Size + 1 of the collection table
    pintid_bound: PintidBound = PintidBound.ITS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (snapshots)."""
        return {
            "typer": dataclasses.asdict(self.typer),
            "iidr": self.iidr,
            "id_registers": list(self.id_registers),
            "error_policy": self.error_policy.value,
            "memory_fault_policy": self.memory_fault_policy.value,
            "quiescent_when_idle": self.quiescent_when_idle,
            "baser_page_size": self.baser_page_size,
            "baser_page_sizes": list(self.baser_page_sizes),
            "indirect_device_table": self.indirect_device_table,
            "indirect_collection_table": self.indirect_collection_table,
            "default_device_id": self.default_device_id,
            "baser_types": list(self.baser_types),
            "collection_entry_size": self.collection_entry_size,
            "pintid_bound": self.pintid_bound.value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItsConfig:
        """The inverse of :meth:`to_dict`; ValueError/TypeError/KeyError on a bad dict."""
        typer: dict[str, Any] = {f.name: _typed(mapping(d["typer"])[f.name], f.type, f"typer.{f.name}")
                                 for f in dataclasses.fields(ItsTyper)}  # fmt: skip
        config = cls(
            typer=ItsTyper(**typer),
            iidr=uint(d["iidr"], 32, "iidr"),
            id_registers=tuple(uint(v, 8, "id_registers") for v in items(d["id_registers"], 12)),
            error_policy=ErrorPolicy(d["error_policy"]),
            memory_fault_policy=ErrorPolicy(d["memory_fault_policy"]),
            quiescent_when_idle=boolean(d["quiescent_when_idle"], "quiescent_when_idle"),
            baser_page_size=uint(d["baser_page_size"], 2, "baser_page_size"),
            baser_page_sizes=tuple(uint(v, 2, "baser_page_sizes") for v in items(d["baser_page_sizes"], 3)),
            indirect_device_table=boolean(d["indirect_device_table"], "indirect_device_table"),
            indirect_collection_table=boolean(d["indirect_collection_table"], "indirect_collection_table"),
            default_device_id=uint(d["default_device_id"], 32, "default_device_id"),
            baser_types=tuple(uint(t, 3, "baser_types") for t in items(d["baser_types"], 8)),
            collection_entry_size=uint(d["collection_entry_size"], 6, "collection_entry_size"),
            pintid_bound=PintidBound(d["pintid_bound"]),
        )
        if len(config.id_registers) != 12:
            raise ValueError("id_registers holds the twelve PIDR/CIDR bytes")
        config.check()
        return config

    def layout(self) -> EntryLayout:
        t = self.typer
        return EntryLayout(t.itt_entry_size, self.collection_entry_size, TABLE_ENTRY_SIZE, t.idbits,
                           t.cidbits if t.cil else 16)  # fmt: skip

    def check(self) -> None:
        """Raise ValueError for a configuration no ITS could have."""
        t = self.typer
        if not 1 <= t.itt_entry_size <= 16 or not 1 <= self.collection_entry_size <= 32:
            raise ValueError("ITT entry size must be 1 to 16 bytes and a collection entry 1 to 32")
        if not (1 <= t.idbits <= 32 and 1 <= t.devbits <= 32 and 1 <= t.cidbits <= 16):
            raise ValueError("GITS_TYPER: ID_bits 1..32, Devbits 1..32, CIDbits 1..16")
        if not 0 <= t.hcc <= 255 or len(self.baser_types) != 8:
            raise ValueError("HCC is 0..255 and there are eight GITS_BASER<n>")
        if self.baser_page_size not in self.baser_page_sizes or not set(self.baser_page_sizes) <= {0, 1, 2}:
            raise ValueError("the reset Page_Size must be one of the accepted encodings 0, 1, 2")
        self.check_layout(1)

    def check_layout(self, num_redistributors: int) -> None:
        """Raise ValueError if the table entries cannot hold the IDs (RDbase: a processor
        number below ``num_redistributors``, or PA[51:16] with PTA=1)."""
        bits = 36 if self.typer.pta else max(1, (num_redistributors - 1).bit_length())
        why = self.layout().check(bits)
        if why is not None:
            raise ValueError(f"vgic cannot pack its table entries: {why}")


def _typed(v: object, annotation: object, name: str) -> int | bool:
    return boolean(v, name) if annotation in (bool, "bool") else uint(v, 8, name)


@dataclass(slots=True)
class _Device:
    """A cached DTE and the ITEs of that device used so far."""

    entry: DeviceEntry
    events: dict[int, InterruptEntry]


# Error codes of the event-translating commands, by check: DeviceID out of range,
# unmapped device, EventID out of range, unmapped interrupt, unmapped collection.
@dataclass(frozen=True, slots=True)
class _EventErrors:
    device_oor: ItsError
    unmapped_device: ItsError
    id_oor: ItsError
    unmapped_interrupt: ItsError
    unmapped_collection: ItsError


_E = ItsError
_EVENT_ERRORS = {
    C.Movi: _EventErrors(_E.MOVI_DEVICE_OOR, _E.MOVI_UNMAPPED_DEVICE, _E.MOVI_ID_OOR,
                         _E.MOVI_UNMAPPED_INTERRUPT, _E.MOVI_UNMAPPED_COLLECTION),
    C.Int: _EventErrors(_E.INT_DEVICE_OOR, _E.INT_UNMAPPED_DEVICE, _E.INT_ID_OOR,
                        _E.INT_UNMAPPED_INTERRUPT, _E.INT_UNMAPPED_COLLECTION),
    C.Clear: _EventErrors(_E.CLEAR_DEVICE_OOR, _E.CLEAR_UNMAPPED_DEVICE, _E.CLEAR_ID_OOR,
                          _E.CLEAR_UNMAPPED_INTERRUPT, _E.CLEAR_UNMAPPED_COLLECTION),
    C.Inv: _EventErrors(_E.INV_DEVICE_OOR, _E.INV_UNMAPPED_DEVICE, _E.INV_ID_OOR,
                        _E.INV_UNMAPPED_INTERRUPT, _E.INV_UNMAPPED_COLLECTION),
    C.Discard: _EventErrors(_E.DISCARD_DEVICE_OOR, _E.DISCARD_UNMAPPED_DEVICE, _E.DISCARD_ID_OOR,
                            _E.DISCARD_UNMAPPED_INTERRUPT, _E.DISCARD_UNMAPPED_COLLECTION),
}  # fmt: skip


class _Miss(Exception):
    """A translation that fails; ``check`` names the failed step."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


class Its:
    """One ITS: its GITS_* registers, command queue and translation."""

    def __init__(
        self,
        memory: GuestMemory,
        log: EventLog,
        redistributors: Sequence[Redistributor],
        config: ItsConfig | None = None,
        index: int = 0,
    ) -> None:
        self.memory = memory
        self.log = log
        self.redistributors = list(redistributors)
        self.config = config or ItsConfig()
        self.config.check()
        self.config.check_layout(len(redistributors))
        self.typer = self.config.typer
        self.layout = self.config.layout()
        self.index = index
        self.source = f"its{index}"
        self.lock = threading.RLock()
        handlers = {
            "CTLR": (self.read_CTLR, self.write_CTLR),
            "TYPER": (self.read_TYPER, None),
            "CBASER": (None, self.write_CBASER),
            "CWRITER": (self.read_CWRITER, self.write_CWRITER),
            "CREADR": (self.read_CREADR, None),
            "BASER": (self.read_BASER, self.write_BASER),
            "TRANSLATER": (None, self.write_TRANSLATER),
        }
        ids = gits_registers(self.config.iidr, self.config.id_registers)
        self.regs = RegisterBank(ids, log, self.source, handlers, device=self)
        self._rd_by_address = {rd.base >> 16: rd for rd in self.redistributors if rd.base is not None}
        self._handlers: dict[type[C.Command], Callable[[Any], None]] = {
            C.Mapd: self.MAPD, C.Mapc: self.MAPC, C.Mapti: self.MAPTI, C.Mapi: self.MAPI,
            C.Movi: self.MOVI, C.Movall: self.MOVALL, C.Discard: self.DISCARD, C.Inv: self.INV,
            C.Invall: self.INVALL, C.Int: self.INT, C.Clear: self.CLEAR, C.Sync: self.SYNC,
        }  # fmt: skip
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.regs.reset()
            for n in range(8):
                self.regs.set("BASER", self._baser_reset(n), n)
            self._enabled = False
            self._stalled = False
            self._queue_invalid = False  # CWRITER written beyond the queue
            self._creadr = 0
            self._cwriter = 0
            self._hcc_collections: dict[int, int] = {}  # ICID -> RDbase, held in the ITS
            self._unsynced: set[int] = set()  # CPUs with mapping changes not yet followed by SYNC
            self.error_history: deque[tuple[int, int, str, str]] = deque(maxlen=ERROR_HISTORY)
            self._requester: int | None = None  # the bus's requester ID during one locked write
            self._invalidate_caches()

    # == save/restore ================================================================
    def save_state(self) -> dict[str, object]:
        """Everything needed to continue exactly: registers, queue position, stall, caches."""
        with self.lock:
            return {
                "regs": self.regs.save_state(),
                "enabled": self._enabled,
                "stalled": self._stalled,
                "queue_invalid": self._queue_invalid,
                "creadr": self._creadr,
                "cwriter": self._cwriter,
                "hcc_collections": sorted(self._hcc_collections.items()),
                "devices": [
                    [dev_id, d.entry.itt_addr, d.entry.size, sorted((e, i.pintid, i.icid) for e, i in d.events.items())]
                    for dev_id, d in sorted(self._devices.items())
                ],
                "collections": sorted((icid, rd.index) for icid, rd in self._collections.items()),
                "unsynced": sorted(self._unsynced),
                "errors": [list(e) for e in self.error_history],
            }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore without side effects: no command runs, no MSI is raised (a restore
        in any register order cannot replay a stale queue)."""
        with self.lock:
            self.regs.load_state(state["regs"])
            self._enabled = bool(state["enabled"])
            self._stalled = bool(state["stalled"])
            self._queue_invalid = bool(state["queue_invalid"])
            self._creadr = int(state["creadr"])
            self._cwriter = int(state["cwriter"])
            self._hcc_collections = {int(i): int(r) for i, r in state["hcc_collections"]}
            self._invalidate_caches()
            for dev_id, itt, size, events in state["devices"]:
                self._devices[int(dev_id)] = _Device(
                    DeviceEntry(int(itt), int(size)), {int(e): InterruptEntry(int(p), int(c)) for e, p, c in events}
                )
            for icid, rd_index in state["collections"]:
                self._collections[int(icid)] = self.redistributors[int(rd_index)]
            self._index_restored_caches()
            self._unsynced = {int(i) for i in state.get("unsynced", [])}
            self.error_history = deque(((int(o), int(c), str(m), str(t)) for o, c, m, t in state.get("errors", [])),
                                       maxlen=ERROR_HISTORY)  # fmt: skip

    # == views for tools (vgic inspect, diagnostics) ===================================
    def table(self, kind: int) -> TableGeometry | None:
        """The table of a GITS_BASER Type (BASER_TYPE_DEVICE, BASER_TYPE_COLLECTION)."""
        return self._geometry(kind)

    def resolve_rdbase(self, rdbase: int) -> Redistributor | None:
        return self._redistributor(rdbase)

    @property
    def hcc_collections(self) -> dict[int, int]:
        """Collections held in the ITS (ICID < HCC): ICID -> RDbase."""
        return dict(self._hcc_collections)

    def cached_device(self, device_id: int) -> DeviceEntry | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.entry

    def _invalidate_caches(self) -> None:
        self._drop_cached_entries()
        self._dt: TableGeometry | None = None
        self._ct: TableGeometry | None = None
        if self._enabled:
            self._dt = self._geometry(BASER_TYPE_DEVICE)
            self._ct = self._geometry(BASER_TYPE_COLLECTION)

    # -- the cache's address index ------------------------------------------------------
    # Every cached entry is indexed by its guest address, so a table write by the ITS drops
    # any *other* cached entry it overlaps. Guest tables may overlap each other (two
    # devices sharing an ITT, an ITT over the device table): that is UNPREDICTABLE (5.2),
    # but the ITS must then answer from memory, never from a stale host copy.
    def _drop_cached_entries(self) -> None:
        self._devices: dict[int, _Device] = {}
        self._collections: dict[int, Redistributor] = {}
        self._cached_at: dict[int, tuple[int, int, int]] = {}  # address -> (0 DTE|1 ITE|2 CTE, ID, EventID)

    def _remember(self, address: int, key: tuple[int, int, int]) -> None:
        """Index a cache entry. At most one cached entry per address: an alias is dropped."""
        if len(self._cached_at) >= CACHE_LIMIT:
            self._drop_cached_entries()  # bounded host memory; the caller re-adds its entry
        old = self._cached_at.get(address)
        if old is not None and old != key:
            self._drop_key(old)
        self._cached_at[address] = key

    def _drop_key(self, key: tuple[int, int, int]) -> None:
        kind, ident, event_id = key
        if kind == 0:
            self._devices.pop(ident, None)
        elif kind == 1:
            dev = self._devices.get(ident)
            if dev is not None:
                dev.events.pop(event_id, None)
        else:
            self._collections.pop(ident, None)

    def _forget(self, address: int, size: int) -> None:
        """Drop every cached entry overlapping guest bytes [address, address + size)."""
        for geo in (self._dt, self._ct):
            if geo is not None and geo.indirect and address < geo.base + geo.bytes and geo.base < address + size:
                self._drop_cached_entries()  # a level-1 entry changed: every walk may differ
                return
        span = max(self.layout.ite_size, self.layout.cte_size, TABLE_ENTRY_SIZE)
        cached_at = self._cached_at
        for start in range(address - span + 1, address + size):
            key = cached_at.pop(start, None)
            if key is not None:
                self._drop_key(key)

    def _write_entry(self, address: int, size: int, raw: int) -> None:
        """Write one table entry (``raw`` then zeros up to ``size`` bytes), all or nothing:
        an entry not wholly in RAM faults before any byte is written (5.2)."""
        if not self.memory.contains(address, size):
            raise MemoryFault(address, size, True)
        self._forget(address, size)
        if size >= 8:
            self.memory.write64(address, raw)
            if size > 8:
                self.memory.fill(address + 8, size - 8)
        else:
            self.memory.write(address, size, raw)

    def _read_ite(self, address: int) -> InterruptEntry | None:
        size = self.layout.ite_size
        return self.layout.decode_ite(self.memory.read64(address) if size >= 8 else self.memory.read(address, size))

    def _read_cte(self, address: int) -> int | None:
        size = self.layout.cte_size
        return self.layout.decode_cte(self.memory.read64(address) if size >= 8 else self.memory.read(address, size))

    def _index_restored_caches(self) -> None:
        """Index cache entries restored by :meth:`load_state`; one that cannot be located
        in the current tables is dropped (it is only a cache)."""
        devices, collections = self._devices, self._collections
        self._cached_at = {}
        for dev_id, dev in list(devices.items()):
            try:
                self._remember(self._dte_address(dev_id), (0, dev_id, 0))
                for ev in list(dev.events):
                    self._remember(self._ite_address(dev, ev), (1, dev_id, ev))
            except (_Miss, MemoryFault):
                devices.pop(dev_id, None)
        for icid in list(collections):
            try:
                addr = self._cte_address(icid)
            except _Miss:
                addr = None
                collections.pop(icid, None)
            if addr is not None:
                self._remember(addr, (2, icid, 0))

    # == registers (12.19) ============================================================
    def read(self, offset: int, size: int) -> int:
        """A guest load from the ITS frames; never raises."""
        with self.lock:
            return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int, requester_id: int | None = None) -> None:
        """A store to the ITS frames; never raises. ``requester_id`` is the DeviceID a bus
        gives a write to GITS_TRANSLATER (a PCIe requester ID, as QEMU's
        ``attrs.requester_id``); a CPU store has none and gets ``default_device_id``."""
        with self.lock:
            self._requester = requester_id
            self.regs.write(offset, size, value)
            self._requester = None

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def stalled(self) -> bool:
        return self._stalled

    def read_CTLR(self, index: int) -> int:
        """Enabled[0]; Quiescent[31] (12.19.6): 1 while disabled (commands run synchronously
        and nothing is in flight); UNKNOWN while enabled, where ``quiescent_when_idle``
        reports 1 when the queue is empty and not stalled, as QEMU, KVM and Xen do."""
        if not self._enabled:
            return 1 << 31
        idle = self.config.quiescent_when_idle and not self._stalled and self._creadr == self._cwriter
        return 1 | int(idle) << 31

    def write_CTLR(self, index: int, value: int, mask: int) -> None:
        if not mask & 1:
            return
        enable = bool(value & 1)
        if enable == self._enabled:
            return
        if enable:
            missing = self._missing_tables()
            if missing:
                self._diag(f"GITS_CTLR.Enabled=1 refused: {missing} not valid", "IHI0069 12.19.6")
                return
            self._enabled = True
            self._invalidate_caches()
            self.log.record(Kind.STATE, self.source, "ITS enabled")
            self._process()
        else:
            self._enabled = False
            self.verify_caches()
            self._invalidate_caches()
            self.log.record(Kind.STATE, self.source, "ITS disabled")

    def _missing_tables(self) -> str:
        missing = []
        if not self.regs.get("CBASER") >> 63:
            missing.append("GITS_CBASER")
        if self._geometry(BASER_TYPE_DEVICE) is None:
            missing.append("the device table (GITS_BASER Type=Device)")
        # Without a collection table type, every collection is held in the ITS (HCC) and
        # there is no table to wait for (GITS_TYPER.CIL: "implementations that do not support
        # Collections in external memory").
        memory_collections = BASER_TYPE_COLLECTION in self.config.baser_types
        if (
            memory_collections
            and self.typer.hcc < self.typer.collections
            and self._geometry(BASER_TYPE_COLLECTION) is None
        ):
            missing.append("the collection table (GITS_BASER Type=Collection)")
        return ", ".join(missing)

    def read_TYPER(self, index: int) -> int:
        """GITS_TYPER (12.19.22). CCT[2] is 1 when HCC != 0 and a collection table exists:
        ICIDs below HCC are held in the ITS and the rest in memory, so the number of
        collections is cumulative (CCT=0 would mean memory alone sets it; RES0 when HCC=0)."""
        memory_collections = BASER_TYPE_COLLECTION in self.config.baser_types
        v = self.typer.value() | int(self.typer.hcc != 0 and memory_collections) << 2
        if not memory_collections:  # CIL (and so CIDbits) is RES0: HCC gives the count
            v &= ~(1 << 36 | 0xF << 32)
        return v

    def write_CBASER(self, index: int, value: int, mask: int) -> None:
        """Writes while enabled are UNPREDICTABLE: ignored. A write resets CREADR (12.19.3).

        CWRITER is not specified after a CBASER write; vgic sets it to CREADR (0), an empty
        queue, as KVM does. So a CWRITER written before CBASER (a restore in the wrong
        order) can never make the ITS re-run commands it has already executed: only a
        CWRITER written after the last CBASER write names commands to run."""
        if self._enabled:
            self._diag("GITS_CBASER written while the ITS is enabled: ignored", "IHI0069 12.19.3")
            return
        v = (self.regs.get("CBASER") & ~mask) | (value & mask)
        v &= 0xB8EF_FFFF_FFFF_FCFF  # Valid, InnerCache, OuterCache, PA[51:12], Shareability, Size
        self.regs.set("CBASER", sanitise_attributes(v, 59, 10, 53))
        if self._cwriter != 0:
            self._diag(f"GITS_CBASER written with CWRITER={self._cwriter:#x}: the queue is reset to empty "
                       "(CREADR = CWRITER = 0); write CWRITER after CBASER", "IHI0069 12.19.3")  # fmt: skip
        self._creadr = 0
        self._cwriter = 0
        self._stalled = False
        self._queue_invalid = False

    def _queue_bytes(self) -> int:
        return (bits(self.regs.get("CBASER"), 7, 0) + 1) * 4096

    def read_CWRITER(self, index: int) -> int:
        return self._cwriter

    def write_CWRITER(self, index: int, value: int, mask: int) -> None:
        """Offset[19:5] and Retry[0] (12.19.5)."""
        if not mask & 0xFFFFF:
            return
        self._cwriter = value & 0xFFFE0
        if self._cwriter >= self._queue_bytes():
            # CONSTRAINED UNPREDICTABLE; vgic takes the first choice: the queue is invalid
            # and no command runs until CWRITER is written with an offset inside it.
            self._queue_invalid = True
            self._diag(f"GITS_CWRITER.Offset {self._cwriter:#x} is beyond the {self._queue_bytes():#x}-byte"
                       " command queue: processing halted until it is written in range",
                       "IHI0069 12.19.5")  # fmt: skip
            return
        self._queue_invalid = False
        if not self._enabled and self._cwriter != self._creadr:
            self._diag(f"commands queued (CWRITER {self._cwriter:#x}) while the ITS is disabled: they wait "
                       "until GITS_CTLR.Enabled is set", "IHI0069 12.19.6")  # fmt: skip
        if value & 1 and self._stalled:
            self._stalled = False
            self.log.record(Kind.STATE, self.source, "command queue retried", offset=self._creadr)
        self._process()

    def read_CREADR(self, index: int) -> int:
        return self._creadr | int(self._stalled)

    def _baser_ro(self, n: int) -> int:
        """The read-only fields of GITS_BASER<n>: Type and Entry_Size (12.19.1)."""
        kind = self.config.baser_types[n]
        if kind == BASER_TYPE_NONE:
            return 0
        size = self.config.collection_entry_size if kind == BASER_TYPE_COLLECTION else TABLE_ENTRY_SIZE
        return kind << 56 | (size - 1) << 48

    def _baser_reset(self, n: int) -> int:
        """GITS_BASER<n> at reset: Type, Entry_Size and the profile's Page_Size."""
        ro = self._baser_ro(n)
        return ro | self.config.baser_page_size << 8 if ro else 0

    def read_BASER(self, index: int) -> int:
        return self.regs.get("BASER", index)

    def write_BASER(self, index: int, value: int, mask: int) -> None:
        kind = self.config.baser_types[index]
        if kind == BASER_TYPE_NONE:
            return  # unimplemented: RES0
        if self._enabled:
            self._diag(f"GITS_BASER{index} written while the ITS is enabled: ignored", "IHI0069 12.19.1")
            return
        v = (self.regs.get("BASER", index) & ~mask) | (value & mask)
        indirect_ok = (
            self.config.indirect_device_table if kind == BASER_TYPE_DEVICE else self.config.indirect_collection_table
        )
        if not indirect_ok:
            v &= ~(1 << 62)
        page_size = bits(v, 9, 8)
        if page_size not in self.config.baser_page_sizes:
            # 0b11 is reserved; a profile may also accept fewer sizes (KVM: 64 KB only)
            page_size = self.config.baser_page_size if page_size != 3 or 2 not in self.config.baser_page_sizes else 2
            v = (v & ~(3 << 8)) | page_size << 8
        # PA: [47:12]; 16 KB pages: [13:12] RES0; 64 KB pages: [15:12] hold PA[51:48].
        pa_mask = 0x0000_FFFF_FFFF_F000 if page_size != 1 else 0x0000_FFFF_FFFF_C000
        v &= 0xC000_0000_0000_0000 | 0x38E0_0000_0000_0000 | pa_mask | 0xFFF
        v = sanitise_attributes(v, 59, 10, 53)
        self.regs.set("BASER", v | self._baser_ro(index), index)
        self._invalidate_caches()

    def _geometry(self, kind: int) -> TableGeometry | None:
        """The table of the given type, from its GITS_BASER<n>, or None if not Valid."""
        for n, k in enumerate(self.config.baser_types):
            if k != kind:
                continue
            v = self.regs.get("BASER", n)
            if not v >> 63:
                return None
            page_size = PAGE_SIZES[bits(v, 9, 8)]
            base = v & 0x0000_FFFF_FFFF_F000 & ~(page_size - 1)
            if page_size == 65536:
                base |= bits(v, 15, 12) << 48
            return TableGeometry(base, page_size, bits(v, 7, 0) + 1, bits(v, 52, 48) + 1, bool(v >> 62 & 1))
        return None

    def write_TRANSLATER(self, index: int, value: int, mask: int) -> None:
        """An MSI: EventID is the data, DeviceID comes from the bus (12.19.21)."""
        if not mask & 1:
            return
        device_id = self._requester
        if device_id is None:
            device_id = self.config.default_device_id
        self._translate(device_id, value & mask & 0xFFFFFFFF)

    # == MSI translation (5.2.2) ======================================================
    def translate(self, device_id: int, event_id: int) -> bool:
        """A device's write of ``event_id`` to GITS_TRANSLATER, with its DeviceID: the
        translation of 5.2.2. True if an LPI was set pending."""
        with self.lock:
            return self._translate(device_id, event_id)

    def _translate(self, device_id: int, event_id: int) -> bool:
        if not self._enabled:
            self._fault(device_id, event_id, "the ITS is disabled (GITS_CTLR.Enabled=0)")
            return False
        try:
            dev = self._devices.get(device_id) or self._load_device(device_id)
            ite = dev.events.get(event_id) or self._load_event(dev, device_id, event_id)
            rd = self._collections.get(ite.icid) or self._load_collection(ite.icid)
        except _Miss as miss:
            self._fault(device_id, event_id, str(miss))
            return False
        except MemoryFault as fault:
            self._fault(device_id, event_id, f"table access faulted: {fault}")
            return False
        if self.log.wants(Kind.TRANSLATION):
            self.log.record(Kind.TRANSLATION, self.source,
                            f"MSI DeviceID={device_id:#x} EventID={event_id} -> LPI {ite.pintid} on CPU {rd.index}",
                            device_id=device_id, event_id=event_id, intid=ite.pintid, cpu=rd.index)  # fmt: skip
        if rd.index in self._unsynced:
            self._unsynced.discard(rd.index)
            self._diag(f"MSI DeviceID={device_id:#x} EventID={event_id} reaches CPU {rd.index} after mapping "
                       f"commands with no SYNC for its redistributor since: delivery is not guaranteed to see "
                       f"them", "IHI0069 6.3.13")  # fmt: skip
        return rd.set_lpi_pending(ite.pintid, lambda: f"(MSI {device_id:#x}/{event_id})")

    def _fault(self, device_id: int, event_id: int, why: str) -> None:
        self.log.record(Kind.TRANSLATION_FAULT, self.source,
                        f"MSI DeviceID={device_id:#x} EventID={event_id} ignored: {why}",
                        device_id=device_id, event_id=event_id, rule="IHI0069 12.19.21")  # fmt: skip

    # -- table walks (each may raise _Miss or MemoryFault) ----------------------------
    def _dte_address(self, device_id: int) -> int:
        if not 0 <= device_id < 1 << self.typer.devbits:  # a bus may hand over any int
            raise _Miss("device_oor", f"DeviceID {device_id:#x} needs more than Devbits={self.typer.devbits}")
        if self._dt is None:
            raise _Miss("device_oor", "no valid device table")
        try:
            return entry_address(self.memory, self._dt, device_id)
        except TableWalkError as e:
            raise _Miss("device_oor", f"DeviceID {device_id:#x} is outside the device table: {e}") from None

    def _load_device(self, device_id: int) -> _Device:
        addr = self._dte_address(device_id)
        entry = DeviceEntry.decode(self.memory.read64(addr))
        if entry is None:
            raise _Miss("unmapped_device", f"DeviceID {device_id:#x} is not mapped (no MAPD V=1)")
        dev = _Device(entry, {})
        self._remember(addr, (0, device_id, 0))
        self._devices[device_id] = dev
        return dev

    def _ite_address(self, dev: _Device, event_id: int) -> int:
        """Address of an ITE that lies wholly in RAM (else MemoryFault, before any access):
        an ITT straddling the end of RAM never yields a half-read or half-written entry."""
        size = self.typer.itt_entry_size
        addr = dev.entry.itt_addr + event_id * size
        if not self.memory.contains(addr, size):
            raise MemoryFault(addr, size, False)
        return addr

    def _load_event(self, dev: _Device, device_id: int, event_id: int) -> InterruptEntry:
        if not 0 <= event_id < dev.entry.events:  # negative: never an entry below the ITT
            raise _Miss("id_oor", f"EventID {event_id} is beyond the {dev.entry.events} events MAPD gave "
                                  f"DeviceID {device_id:#x}")  # fmt: skip
        addr = self._ite_address(dev, event_id)
        ite = self._read_ite(addr)
        if ite is None:
            raise _Miss("unmapped_interrupt", f"EventID {event_id} of DeviceID {device_id:#x} is not mapped")
        self._remember(addr, (1, device_id, event_id))
        dev.events[event_id] = ite
        return ite

    def _cte_address(self, icid: int) -> int | None:
        """Address of the CTE of ``icid``, or None for a collection held in the ITS (HCC)."""
        if not 0 <= icid < self.typer.collections:
            raise _Miss("collection_oor", f"ICID {icid} needs more than {self.typer.collections} collections")
        if icid < self.typer.hcc:
            return None
        if self._ct is None:
            raise _Miss("collection_oor", "no valid collection table")
        try:
            return entry_address(self.memory, self._ct, icid - self.typer.hcc)
        except TableWalkError as e:
            raise _Miss("collection_oor", f"ICID {icid} is outside the collection table: {e}") from None

    def _load_collection(self, icid: int) -> Redistributor:
        addr = self._cte_address(icid)
        rdbase = self._hcc_collections.get(icid) if addr is None else self._read_cte(addr)
        rd = None if rdbase is None else self._redistributor(rdbase)
        if rd is None:
            raise _Miss("unmapped_collection", f"collection {icid} is not mapped (no MAPC V=1)")
        if addr is not None:
            self._remember(addr, (2, icid, 0))
        self._collections[icid] = rd
        return rd

    def _redistributor(self, rdbase: int) -> Redistributor | None:
        """The redistributor an RDbase names (GITS_TYPER.PTA), or None."""
        if self.typer.pta:
            return self._rd_by_address.get(rdbase)
        return self.redistributors[rdbase] if rdbase < len(self.redistributors) else None

    # == the command queue (6.2) =======================================================
    def _process(self) -> None:
        """Run commands from CREADR up to CWRITER. At most one pass over the queue."""
        if not self._enabled or self._stalled or self._queue_invalid:
            return
        cbaser = self.regs.get("CBASER")
        base = cbaser & 0x000F_FFFF_FFFF_F000
        size = self._queue_bytes()
        while self._creadr != self._cwriter:
            offset = self._creadr
            cmd: C.Command | None = None
            try:
                cmd = C.decode(self.memory.read_bytes(base + offset, C.COMMAND_SIZE))
                handler = self._handlers.get(type(cmd))
                if handler is None:
                    raise CommandError(ItsError.UNKNOWN_COMMAND, f"{cmd.name} is not a command this ITS implements")
                handler(cmd)
            except CommandError as err:
                if self._command_error(err, offset, cmd):
                    return
            except MemoryFault as fault:
                if self._command_error(CommandError(ItsError.MEMORY_FAULT, str(fault)), offset, cmd):
                    return
            else:
                if self.log.wants(Kind.COMMAND):
                    self.log.record(Kind.COMMAND, self.source, cmd.name, offset=offset,
                                    command=C.format_command(cmd))  # fmt: skip
            self._creadr = (offset + C.COMMAND_SIZE) % size

    def _command_error(self, err: CommandError, offset: int, cmd: C.Command | None) -> bool:
        """Record a command error; True if the queue stalls (the profile's error policies).
        A skipped command is recorded exactly as a stalling one: code, offset, command."""
        fault = err.error is ItsError.MEMORY_FAULT
        policy = self.config.memory_fault_policy if fault else self.config.error_policy
        stall = policy is ErrorPolicy.STALL
        then = "queue stalled" if stall else "command skipped"
        text = C.format_command(cmd) if cmd else ""
        message = f"{err.error.name}: {err.explanation}; {then}"
        self.error_history.append((offset, int(err.error), message, text))
        self.log.record(Kind.COMMAND_ERROR, self.source, message, code=int(err.error), offset=offset,
                        command=text or None, rule="IHI0069 6.3")  # fmt: skip
        if stall:
            self._stalled = True
            return True
        return False

    # -- shared checks for the commands --------------------------------------------
    def _check_device(self, device_id: int, oor: ItsError) -> int:
        try:
            return self._dte_address(device_id)
        except _Miss as miss:
            raise CommandError(oor, str(miss)) from None

    def _check_collection(self, icid: int, oor: ItsError) -> int | None:
        try:
            return self._cte_address(icid)
        except _Miss as miss:
            raise CommandError(oor, str(miss)) from None

    def _mapped_device(self, device_id: int, errors: _EventErrors) -> _Device:
        self._check_device(device_id, errors.device_oor)
        try:
            return self._devices.get(device_id) or self._load_device(device_id)
        except _Miss as miss:
            raise CommandError(errors.unmapped_device, str(miss)) from None

    def _mapped_event(self, cmd: C.Movi | C.Int | C.Clear | C.Inv | C.Discard) -> tuple[_Device, InterruptEntry]:
        """DeviceID -> DTE -> ITE for a command naming an event, with its error codes."""
        errors = _EVENT_ERRORS[type(cmd)]
        dev = self._mapped_device(cmd.device_id, errors)
        try:
            ite = dev.events.get(cmd.event_id) or self._load_event(dev, cmd.device_id, cmd.event_id)
        except _Miss as miss:
            code = errors.id_oor if miss.check == "id_oor" else errors.unmapped_interrupt
            raise CommandError(code, str(miss)) from None
        return dev, ite

    def _mapped_collection(self, icid: int, unmapped: ItsError) -> Redistributor:
        try:
            return self._collections.get(icid) or self._load_collection(icid)
        except _Miss as miss:
            raise CommandError(unmapped, str(miss)) from None

    def _target(self, cmd: C.Int | C.Clear | C.Inv | C.Discard) -> tuple[_Device, InterruptEntry, Redistributor]:
        dev, ite = self._mapped_event(cmd)
        return dev, ite, self._mapped_collection(ite.icid, _EVENT_ERRORS[type(cmd)].unmapped_collection)

    def _write_ite(self, dev: _Device, device_id: int, event_id: int, ite: InterruptEntry | None) -> None:
        addr = self._ite_address(dev, event_id)
        self._write_entry(addr, self.layout.ite_size, 0 if ite is None else self.layout.encode_ite(ite))
        if ite is None:
            dev.events.pop(event_id, None)
        elif self._devices.get(device_id) is dev:
            self._remember(addr, (1, device_id, event_id))
            dev.events[event_id] = ite

    def _check_pintid(self, pintid: int, icid: int, oor: ItsError) -> None:
        limit = 1 << self.typer.idbits
        where = "this ITS supports"
        if self.config.pintid_bound is PintidBound.PROPBASER:
            rd = self._collections.get(icid)
            if rd is None:
                try:
                    rd = self._load_collection(icid)
                except (_Miss, MemoryFault):
                    rd = None
            if rd is not None and rd.propbaser_limit() < limit:
                limit = rd.propbaser_limit()
                where = f"GICR_PROPBASER.IDbits of CPU {rd.index} allows"
        if not LPI_BASE <= pintid < limit:
            raise CommandError(oor, f"pINTID {pintid} is not an LPI {where} ({LPI_BASE} to {limit - 1})")

    # == the commands, one handler each (6.3) ===========================================
    def MAPD(self, cmd: C.Mapd) -> None:
        """Map a DeviceID to an ITT of 2^(Size+1) events, or unmap it (6.3.8)."""
        addr = self._check_device(cmd.device_id, ItsError.MAPD_DEVICE_OOR)
        if cmd.valid and cmd.size + 1 > self.typer.idbits:
            raise CommandError(ItsError.MAPD_ITTSIZE_OOR,
                               f"Size={cmd.size} asks for {cmd.size + 1} EventID bits; ID_bits allows "
                               f"{self.typer.idbits}")  # fmt: skip
        if cmd.valid:
            entry = DeviceEntry(cmd.itt_addr, cmd.size)
            self._write_entry(addr, TABLE_ENTRY_SIZE, entry.encode())
            self._remember(addr, (0, cmd.device_id, 0))
            self._devices[cmd.device_id] = _Device(entry, {})
        else:
            self._write_entry(addr, TABLE_ENTRY_SIZE, 0)
            self._devices.pop(cmd.device_id, None)

    def MAPC(self, cmd: C.Mapc) -> None:
        """Map a collection to a redistributor, or unmap it (6.3.7)."""
        rd = self._redistributor(cmd.rdbase)
        if cmd.valid and rd is None:
            what = "a redistributor's RD_base[51:16]" if self.typer.pta else "a processor number"
            raise CommandError(ItsError.MAPC_PROCNUM_OOR, f"RDbase {cmd.rdbase:#x} is not {what}")
        addr = self._check_collection(cmd.icid, ItsError.MAPC_COLLECTION_OOR)
        if addr is None:
            if cmd.valid:
                self._hcc_collections[cmd.icid] = cmd.rdbase
            else:
                self._hcc_collections.pop(cmd.icid, None)
        else:
            self._write_entry(addr, self.layout.cte_size, self.layout.encode_cte(cmd.rdbase) if cmd.valid else 0)
        if rd is not None and cmd.valid:
            if addr is not None:
                self._remember(addr, (2, cmd.icid, 0))
            self._collections[cmd.icid] = rd
            self._unsynced.add(rd.index)
        else:
            self._collections.pop(cmd.icid, None)

    def MAPTI(self, cmd: C.Mapti | C.Mapi) -> None:
        """Map an event to an LPI and a collection (6.3.10). Remapping is UNPREDICTABLE:
        vgic replaces the mapping (as QEMU does) and records a diagnostic."""
        e = ItsError
        is_mapi = isinstance(cmd, C.Mapi)
        oor, col_oor, unmapped, id_oor, phys_oor = (
            (e.MAPI_DEVICE_OOR, e.MAPI_COLLECTION_OOR, e.MAPI_UNMAPPED_DEVICE, e.MAPI_ID_OOR, e.MAPI_PHYSICALID_OOR)
            if is_mapi
            else (e.MAPTI_DEVICE_OOR, e.MAPTI_COLLECTION_OOR, e.MAPTI_UNMAPPED_DEVICE, e.MAPTI_ID_OOR,
                  e.MAPTI_PHYSICALID_OOR)
        )  # fmt: skip
        pintid = cmd.event_id if isinstance(cmd, C.Mapi) else cmd.pintid
        self._check_device(cmd.device_id, oor)
        self._check_collection(cmd.icid, col_oor)
        try:
            dev = self._devices.get(cmd.device_id) or self._load_device(cmd.device_id)
        except _Miss as miss:
            raise CommandError(unmapped, str(miss)) from None
        if cmd.event_id >= dev.entry.events:
            raise CommandError(id_oor, f"EventID {cmd.event_id} is beyond the {dev.entry.events} events "
                                       f"MAPD gave DeviceID {cmd.device_id:#x}")  # fmt: skip
        self._check_pintid(pintid, cmd.icid, phys_oor)
        old = dev.events.get(cmd.event_id) or self._read_ite(self._ite_address(dev, cmd.event_id))
        if old is not None:
            self._diag(f"{cmd.name} of DeviceID {cmd.device_id:#x} EventID {cmd.event_id}, already mapped to "
                       f"LPI {old.pintid}: UNPREDICTABLE, mapping replaced", "IHI0069 6.3.10")  # fmt: skip
        self._write_ite(dev, cmd.device_id, cmd.event_id, InterruptEntry(pintid, cmd.icid))
        self._mark_unsynced(cmd.icid)

    def MAPI(self, cmd: C.Mapi) -> None:
        """MAPTI with pINTID = EventID (6.3.9)."""
        self.MAPTI(cmd)

    def MOVI(self, cmd: C.Movi) -> None:
        """Move an event to another collection; its pending state follows (6.3.11).
        Range checks on the command's fields come first, as for MAPTI: DeviceID (01), ICID
        (03), then the table lookups (04, 05, 07, 09; docs/spec-notes.md section 1)."""
        self._check_device(cmd.device_id, ItsError.MOVI_DEVICE_OOR)
        self._check_collection(cmd.icid, ItsError.MOVI_COLLECTION_OOR)
        dev, ite = self._mapped_event(cmd)
        old_rd = self._mapped_collection(ite.icid, ItsError.MOVI_UNMAPPED_COLLECTION)
        new_rd = self._mapped_collection(cmd.icid, ItsError.MOVI_UNMAPPED_COLLECTION)
        self._ite_address(dev, cmd.event_id)  # the ITE write below cannot fault after the move
        if old_rd is not new_rd:
            old_rd.move_pending_to(new_rd, [ite.pintid])
        self._write_ite(dev, cmd.device_id, cmd.event_id, InterruptEntry(ite.pintid, cmd.icid))
        # The move completes with a SYNC of the redistributor the LPI moved *from* (as Linux
        # sends it); one to the new target is not what the architecture asks for.
        self._unsynced.add(old_rd.index)

    def MOVALL(self, cmd: C.Movall) -> None:
        """Move every pending LPI of RDbase1 to RDbase2, ORed into its state (6.3.12)."""
        rd1 = self._redistributor(cmd.rdbase1)
        rd2 = self._redistributor(cmd.rdbase2)
        if rd1 is None or rd2 is None:
            bad = cmd.rdbase1 if rd1 is None else cmd.rdbase2
            raise CommandError(ItsError.MOVALL_PROCNUM_OOR, f"RDbase {bad:#x} names no redistributor")
        if rd1 is not rd2:
            rd1.move_pending_to(rd2)

    def DISCARD(self, cmd: C.Discard) -> None:
        """Remove an event's mapping and its LPI's pending state (6.3.3). The ITE is
        written first: a fault leaves both the mapping and the pending state as they were."""
        dev, ite, rd = self._target(cmd)
        self._write_ite(dev, cmd.device_id, cmd.event_id, None)
        rd.clear_lpi_pending(ite.pintid)

    def INV(self, cmd: C.Inv) -> None:
        """Reload the configuration of an event's LPI (6.3.6)."""
        _, ite, rd = self._target(cmd)
        rd.invalidate_lpi(ite.pintid)

    def INVALL(self, cmd: C.Invall) -> None:
        """Reload the configuration of every LPI on a collection's redistributor (6.3.4)."""
        self._check_collection(cmd.icid, ItsError.INVALL_COLLECTION_OOR)
        self._mapped_collection(cmd.icid, ItsError.INVALL_UNMAPPED_COLLECTION).invalidate_all()

    def INT(self, cmd: C.Int) -> None:
        """Make an event's LPI pending, as an MSI would (6.3.5)."""
        _, ite, rd = self._target(cmd)
        if rd.set_lpi_pending(ite.pintid, f"(INT {cmd.device_id:#x}/{cmd.event_id})"):
            cfg = rd.lpi_config(ite.pintid)
            if cfg is not None and not cfg & 1:
                self._diag(f"INT of LPI {ite.pintid}, which is disabled in its configuration table: it stays "
                           "pending until enabled and reloaded (INV/INVALL)", "IHI0069 5.1.1")  # fmt: skip

    def CLEAR(self, cmd: C.Clear) -> None:
        """Remove the pending state of an event's LPI (6.3.1)."""
        _, ite, rd = self._target(cmd)
        rd.clear_lpi_pending(ite.pintid)

    def SYNC(self, cmd: C.Sync) -> None:
        """Commands take effect synchronously, so SYNC only checks its RDbase (6.3.13)."""
        rd = self._redistributor(cmd.rdbase)
        if rd is not None:
            self._unsynced.discard(rd.index)
        else:
            self._diag(f"SYNC RDbase {cmd.rdbase:#x} names no redistributor: UNPREDICTABLE, ignored",
                       "IHI0069 6.3.13")  # fmt: skip

    def _mark_unsynced(self, icid: int) -> None:
        rd = self._collections.get(icid)
        if rd is not None:
            self._unsynced.add(rd.index)

    def verify_caches(self) -> list[str]:
        """Compare every cached DTE and ITE with guest memory. A difference means the guest
        wrote a table the ITS was using, which is UNPREDICTABLE (5.2); each is reported."""
        found: list[str] = []
        for dev_id, dev in list(self._devices.items()):
            try:
                mem = DeviceEntry.decode(self.memory.read64(self._dte_address(dev_id)))
                if mem != dev.entry:
                    found.append(f"the device table entry of DeviceID {dev_id:#x} was written by the guest "
                                 "while the ITS used it")  # fmt: skip
                    continue
                for ev, ite in list(dev.events.items()):
                    if self._read_ite(self._ite_address(dev, ev)) != ite:
                        found.append(f"the ITT entry of DeviceID {dev_id:#x} EventID {ev} was written by the "
                                     "guest while the ITS used it")  # fmt: skip
            except (_Miss, MemoryFault):
                continue
        for message in found:
            self._diag(message + ": UNPREDICTABLE", "IHI0069 5.2")
        return found

    def _diag(self, message: str, rule: str) -> None:
        self.log.record(Kind.DIAGNOSTIC, self.source, message, rule=rule)
