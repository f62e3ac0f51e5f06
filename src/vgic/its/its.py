"""The Interrupt Translation Service (IHI 0069 5.2 and chapter 6).

An :class:`Its` translates an MSI, a (DeviceID, EventID) pair written to GITS_TRANSLATER
by a device, into an LPI on the redistributor of the event's collection:

    DeviceID --device table--> ITT --ITE--> (pINTID, ICID) --collection table--> RDbase

The tables live in guest memory (formats in :mod:`vgic.its.tables`); the ITS keeps host
copies of the entries it has used (:mod:`vgic.its.cache`), which the architecture
permits (5.2) and which every command that changes a mapping updates. A translation is
three dictionary lookups.

**The command queue** is read when GITS_CWRITER moves. Work per guest access is bounded:
one access runs at most :data:`ACCESS_UNITS` commands (and the LPI-wide work of INVALL and
MOVALL, which redistributors do as jobs, :data:`vgic.gicv3.redistributor.JOB_CHUNK` LPIs a
unit); what is left runs when the guest polls GITS_CREADR, or when the embedder calls
:meth:`Its.work` (``vgic run`` does between slices). CREADR advances over time, as on
hardware; an ordinary driver's few commands still complete within the CWRITER write, as
they do on QEMU.

Lock order, outermost first (acquire in this order, release in reverse; never the other
way round):

1. ``Its.lock``: ITS registers, command queue, table caches (one per ITS).
2. ``Redistributor.lock``: one CPU's LPI state and CPU interface. A command that touches
   two redistributors (MOVI, MOVALL) holds at most one at a time, or both in ascending
   processor-number order (``Redistributor._move``). A CPU interface never takes another
   CPU's lock while holding its own: ICC_SGI*R_EL1 writes raise the SGIs after releasing
   it (two CPUs signalling each other would otherwise deadlock).
3. ``Distributor.lock``: the SPIs; taken last (a CPU interface asking for its best SPI),
   and the distributor calls into CPU interfaces only after releasing it.

Nothing holding a redistributor or distributor lock ever takes an ``Its.lock``, and no
ITS holds two ``Its.lock``s: ITSes share only the redistributors.

Event-log listeners run with these locks held and must not call back into the GIC.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from vgic.events import EventLog, Kind
from vgic.gicv3.attributes import sanitise_attributes
from vgic.gicv3.redistributor import LPI_BASE, Redistributor
from vgic.its import commands as C
from vgic.its.cache import CACHE_LIMIT, CachedDevice, TranslationCache
from vgic.its.config import TABLE_ENTRY_SIZE, ErrorPolicy, ItsConfig, PintidBound
from vgic.its.errors import Check, CommandError, ItsError
from vgic.its.registers import BASER_TYPE_COLLECTION, BASER_TYPE_DEVICE, BASER_TYPE_NONE, gits_registers
from vgic.its.state import ERROR_HISTORY, CachedDeviceState, ItsState
from vgic.its.tables import (
    PAGE_SIZES,
    DeviceEntry,
    InterruptEntry,
    TableGeometry,
    TableWalkError,
    entry_address,
)
from vgic.memory import GuestMemory, MemoryFault
from vgic.regs import RegisterBank
from vgic.regs import field as bits

ACCESS_UNITS = 8  # commands (or job units) one guest access may run
VERIFY_AT_DISABLE = 256  # cached entries compared with memory when the ITS is disabled
_TRANSLATION: Final = Kind.TRANSLATION  # bound once, for the MSI path

Ticket = tuple[Redistributor, int]  # a redistributor job a command waits for


class _Miss(Exception):
    """A table walk that fails: ``check`` is the architected reason."""

    def __init__(self, check: Check, message: str) -> None:
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
        self._span = max(self.layout.ite_size, self.layout.cte_size, TABLE_ENTRY_SIZE)
        self.index = index
        self.source = f"its{index}"
        self.lock = threading.RLock()
        self.on_work: Callable[[], None] = lambda: None  # told when work is left for later
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
        self._commands: dict[type[C.Command], Callable[[Any], Ticket | None]] = {
            C.Mapd: self.MAPD, C.Mapc: self.MAPC, C.Mapti: self.MAPTI, C.Mapi: self.MAPI,
            C.Movi: self.MOVI, C.Movall: self.MOVALL, C.Discard: self.DISCARD, C.Inv: self.INV,
            C.Invall: self.INVALL, C.Int: self.INT, C.Clear: self.CLEAR, C.Sync: self.SYNC,
        }  # fmt: skip
        self.cache: TranslationCache[Redistributor] = TranslationCache(self.layout.ite_size, CACHE_LIMIT)
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
            self._waiting: Ticket | None = None  # the job the command at CREADR waits for
            self._hcc_collections: dict[int, int] = {}  # ICID -> RDbase, held in the ITS
            self._unsynced: set[int] = set()  # CPUs with mapping changes not yet followed by SYNC
            self.error_history: deque[tuple[int, int, str, str]] = deque(maxlen=ERROR_HISTORY)
            self.command_counts: dict[str, int] = {}  # commands executed, by name (never dropped)
            self._requester: int | None = None  # the bus's requester ID during one locked write
            self._invalidate_caches()

    # == save/restore ================================================================
    def save_state(self) -> ItsState:
        """Everything needed to continue exactly: registers, queue position, stall, caches."""
        with self.lock:
            return ItsState(
                regs=self.regs.save_state(),
                enabled=self._enabled,
                stalled=self._stalled,
                queue_invalid=self._queue_invalid,
                creadr=self._creadr,
                cwriter=self._cwriter,
                waiting=None if self._waiting is None else (self._waiting[0].index, self._waiting[1]),
                hcc_collections=tuple(sorted(self._hcc_collections.items())),
                devices=tuple(
                    (
                        dev_id,
                        d.entry.itt_addr,
                        d.entry.size,
                        tuple(sorted((e, i.pintid, i.icid) for e, i in d.events.items())),
                    )
                    for dev_id, d in sorted(self.cache.devices.items())
                ),
                collections=tuple(sorted((icid, rd.index) for icid, rd in self.cache.collections.items())),
                unsynced=frozenset(self._unsynced),
                errors=tuple(self.error_history),
                command_counts=tuple(sorted(self.command_counts.items())),
            )

    def load_state(self, state: ItsState) -> None:
        """Restore without side effects: no command runs, no MSI is raised (a restore
        in any register order cannot replay a stale queue). ``state`` is trusted as
        :meth:`ItsState.from_dict` checked it against this ITS's configuration."""
        with self.lock:
            self.regs.load_state(state.regs)
            self._enabled = state.enabled
            self._stalled = state.stalled
            self._queue_invalid = state.queue_invalid
            self._creadr = state.creadr
            self._cwriter = state.cwriter
            rd_job = state.waiting
            self._waiting = None if rd_job is None else (self.redistributors[rd_job[0]], rd_job[1])
            self._hcc_collections = dict(state.hcc_collections)
            self._invalidate_caches()
            self._restore_caches(state.devices, state.collections)
            self._unsynced = set(state.unsynced)
            self.error_history = deque(state.errors, maxlen=ERROR_HISTORY)
            self.command_counts = dict(state.command_counts)

    def _restore_caches(self, devices: Sequence[CachedDeviceState], collections: Sequence[tuple[int, int]]) -> None:
        """Cache entries saved by :meth:`save_state`, at the addresses the current tables
        give them; one that cannot be located is dropped (it is only a cache)."""
        for dev_id, itt, size, events in devices:
            try:
                dev = self.cache.put_device(
                    self._dte_address(int(dev_id)), int(dev_id), DeviceEntry(int(itt), int(size))
                )
                for ev, pintid, icid in events:
                    addr = self._ite_address(dev, int(ev))
                    self.cache.put_event(addr, int(dev_id), int(ev), InterruptEntry(int(pintid), int(icid)))
            except (_Miss, MemoryFault):
                self.cache.drop_device(int(dev_id))
        for icid, rd_index in collections:
            try:
                self.cache.put_collection(self._cte_address(int(icid)), int(icid), self.redistributors[int(rd_index)])
            except _Miss:
                continue

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
        dev = self.cache.devices.get(device_id)
        return None if dev is None else dev.entry

    @property
    def creadr(self) -> int:
        """GITS_CREADR as a read would return it, without running any command (tools)."""
        return self._creadr | int(self._stalled)

    @property
    def cwriter(self) -> int:
        return self._cwriter

    @property
    def busy(self) -> bool:
        """Commands are left to run (the embedder should call :meth:`work`)."""
        if not self._enabled or self._stalled or self._queue_invalid:
            return False
        return self._creadr != self._cwriter or self._waiting is not None

    def _invalidate_caches(self) -> None:
        self.cache.clear()
        self._dt: TableGeometry | None = None
        self._ct: TableGeometry | None = None
        if self._enabled:
            self._dt = self._geometry(BASER_TYPE_DEVICE)
            self._ct = self._geometry(BASER_TYPE_COLLECTION)

    # -- entries in guest memory -----------------------------------------------------
    def _forget(self, address: int, size: int) -> None:
        """Drop every cached entry overlapping guest bytes [address, address + size)."""
        for geo in (self._dt, self._ct):
            if geo is not None and geo.indirect and address < geo.base + geo.bytes and geo.base < address + size:
                self.cache.clear()  # a level-1 entry changed: every walk may differ
                return
        self.cache.forget(address, size, self._span)

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

    # == registers (12.19) ============================================================
    def read(self, offset: int, size: int) -> int:
        """A guest load from the ITS frames; never raises."""
        self.lock.acquire()  # not ``with``: see CpuInterface.acknowledge
        try:
            return self.regs.read(offset, size)
        finally:
            self.lock.release()

    def write(self, offset: int, size: int, value: int, requester_id: int | None = None) -> None:
        """A store to the ITS frames; never raises. ``requester_id`` is the DeviceID a bus
        gives a write to GITS_TRANSLATER (a PCIe requester ID, as QEMU's
        ``attrs.requester_id``); a CPU store has none and gets ``default_device_id``."""
        self.lock.acquire()
        try:
            self._requester = requester_id
            self.regs.write(offset, size, value)
        finally:
            self._requester = None
            self.lock.release()

    def work(self, units: int = ACCESS_UNITS) -> int:
        """Run queued commands (and the jobs they wait for), at most ``units`` units;
        returns the units used. ``vgic run`` calls this between slices."""
        with self.lock:
            return self._process(units)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def stalled(self) -> bool:
        return self._stalled

    def read_CTLR(self, index: int) -> int:
        """Enabled[0]; Quiescent[31] (12.19.6): 1 while disabled with nothing in flight;
        UNKNOWN while enabled, where ``quiescent_when_idle`` reports 1 when the queue is
        empty and not stalled, as QEMU, KVM and Xen do."""
        if not self._enabled:
            return int(self._waiting is None) << 31
        idle = self.config.quiescent_when_idle and not self._stalled and not self.busy and self._creadr == self._cwriter
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
            self._process(ACCESS_UNITS)
        else:
            self._enabled = False
            self.verify_caches(VERIFY_AT_DISABLE)
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
        self._waiting = None
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
        self._process(ACCESS_UNITS)

    def read_CREADR(self, index: int) -> int:
        """Offset[19:5] and Stalled[0] (12.19.4). A read runs a bounded number of queued
        commands first: a driver polling CREADR sees the queue advance."""
        self._process(ACCESS_UNITS)
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
        self.lock.acquire()  # not ``with``: see CpuInterface.acknowledge
        try:
            return self._translate(device_id, event_id)
        finally:
            self.lock.release()

    def _translate(self, device_id: int, event_id: int) -> bool:
        if not self._enabled:
            self._fault(device_id, event_id, "the ITS is disabled (GITS_CTLR.Enabled=0)")
            return False
        cache = self.cache
        try:
            dev = cache.devices.get(device_id) or self._load_device(device_id)
            ite = dev.events.get(event_id) or self._load_event(dev, device_id, event_id)
            rd = cache.collections.get(ite.icid) or self._load_collection(ite.icid)
        except _Miss as miss:
            self._fault(device_id, event_id, str(miss))
            return False
        except MemoryFault as fault:
            self._fault(device_id, event_id, f"table access faulted: {fault}")
            return False
        if self.log.wants(_TRANSLATION):
            self.log.record(_TRANSLATION, self.source,
                            f"MSI DeviceID={device_id:#x} EventID={event_id} -> LPI {ite.pintid} on CPU {rd.index}",
                            device_id=device_id, event_id=event_id, intid=ite.pintid, cpu=rd.index)  # fmt: skip
        if self._unsynced and rd.index in self._unsynced:
            self._unsynced.discard(rd.index)
            self._diag(f"MSI DeviceID={device_id:#x} EventID={event_id} reaches CPU {rd.index} after mapping "
                       f"commands with no SYNC for its redistributor since: delivery is not guaranteed to see "
                       f"them", "IHI0069 6.3.13")  # fmt: skip
        return rd.pend_msi(ite.pintid, device_id, event_id)

    def _fault(self, device_id: int, event_id: int, why: str) -> None:
        self.log.record(Kind.TRANSLATION_FAULT, self.source,
                        f"MSI DeviceID={device_id:#x} EventID={event_id} ignored: {why}",
                        device_id=device_id, event_id=event_id, rule="IHI0069 12.19.21")  # fmt: skip

    # -- table walks (each may raise _Miss or MemoryFault) ----------------------------
    def _dte_address(self, device_id: int) -> int:
        if not 0 <= device_id < 1 << self.typer.devbits:  # a bus may hand over any int
            raise _Miss(Check.DEVICE_OOR, f"DeviceID {device_id:#x} needs more than Devbits={self.typer.devbits}")
        if self._dt is None:
            raise _Miss(Check.DEVICE_OOR, "no valid device table")
        try:
            return entry_address(self.memory, self._dt, device_id)
        except TableWalkError as e:
            raise _Miss(Check.DEVICE_OOR, f"DeviceID {device_id:#x} is outside the device table: {e}") from None

    def _load_device(self, device_id: int) -> CachedDevice:
        addr = self._dte_address(device_id)
        entry = DeviceEntry.decode(self.memory.read64(addr))
        if entry is None:
            raise _Miss(Check.UNMAPPED_DEVICE, f"DeviceID {device_id:#x} is not mapped (no MAPD V=1)")
        return self.cache.put_device(addr, device_id, entry)

    def _ite_address(self, dev: CachedDevice, event_id: int) -> int:
        """Address of an ITE that lies wholly in RAM (else MemoryFault, before any access):
        an ITT straddling the end of RAM never yields a half-read or half-written entry."""
        size = self.layout.ite_size
        addr = dev.entry.itt_addr + event_id * size
        if not self.memory.contains(addr, size):
            raise MemoryFault(addr, size, False)
        return addr

    def _load_event(self, dev: CachedDevice, device_id: int, event_id: int) -> InterruptEntry:
        if not 0 <= event_id < dev.entry.events:  # negative: never an entry below the ITT
            raise _Miss(Check.ID_OOR, f"EventID {event_id} is beyond the {dev.entry.events} events MAPD gave "
                                      f"DeviceID {device_id:#x}")  # fmt: skip
        addr = self._ite_address(dev, event_id)
        ite = self._read_ite(addr)
        if ite is None:
            raise _Miss(Check.UNMAPPED_INTERRUPT, f"EventID {event_id} of DeviceID {device_id:#x} is not mapped")
        if self.cache.devices.get(device_id) is dev:
            self.cache.put_event(addr, device_id, event_id, ite)
        return ite

    def _cte_address(self, icid: int) -> int | None:
        """Address of the CTE of ``icid``, or None for a collection held in the ITS (HCC)."""
        if not 0 <= icid < self.typer.collections:
            raise _Miss(Check.COLLECTION_OOR, f"ICID {icid} needs more than {self.typer.collections} collections")
        if icid < self.typer.hcc:
            return None
        if self._ct is None:
            raise _Miss(Check.COLLECTION_OOR, "no valid collection table")
        try:
            return entry_address(self.memory, self._ct, icid - self.typer.hcc)
        except TableWalkError as e:
            raise _Miss(Check.COLLECTION_OOR, f"ICID {icid} is outside the collection table: {e}") from None

    def _load_collection(self, icid: int) -> Redistributor:
        addr = self._cte_address(icid)
        rdbase = self._hcc_collections.get(icid) if addr is None else self._read_cte(addr)
        rd = None if rdbase is None else self._redistributor(rdbase)
        if rd is None:
            raise _Miss(Check.UNMAPPED_COLLECTION, f"collection {icid} is not mapped (no MAPC V=1)")
        self.cache.put_collection(addr, icid, rd)
        return rd

    def _redistributor(self, rdbase: int) -> Redistributor | None:
        """The redistributor an RDbase names (GITS_TYPER.PTA), or None."""
        if self.typer.pta:
            return self._rd_by_address.get(rdbase)
        return self.redistributors[rdbase] if rdbase < len(self.redistributors) else None

    # == the command queue (6.2) =======================================================
    def _process(self, units: int) -> int:
        """Run commands from CREADR towards CWRITER, at most ``units`` units (a command,
        or a unit of the redistributor job it waits for); returns the units used."""
        if not self._enabled or self._stalled or self._queue_invalid:
            return 0
        used = 0
        size = self._queue_bytes()
        if self._waiting is not None:
            rd, job = self._waiting
            used += rd.work(units)
            if not rd.job_done(job):
                return used
            self._waiting = None
            self._creadr = (self._creadr + C.COMMAND_SIZE) % size
        base = self.regs.get("CBASER") & 0x000F_FFFF_FFFF_F000
        while self._creadr != self._cwriter and used < units:
            used += 1
            offset = self._creadr
            cmd: C.Command | None = None
            try:
                cmd = C.decode(self.memory.read_bytes(base + offset, C.COMMAND_SIZE))
                handler = self._commands.get(type(cmd))
                if handler is None:
                    raise CommandError(ItsError.UNKNOWN_COMMAND, f"{cmd.name} is not a command this ITS implements")
                ticket = handler(cmd)
            except CommandError as err:
                if self._command_error(err, offset, cmd):
                    return used
            except MemoryFault as fault:
                if self._command_error(CommandError(ItsError.MEMORY_FAULT, str(fault)), offset, cmd):
                    return used
            else:
                self.command_counts[cmd.name] = self.command_counts.get(cmd.name, 0) + 1
                if self.log.wants(Kind.COMMAND):
                    self.log.record(Kind.COMMAND, self.source, cmd.name, offset=offset,
                                    command=C.format_command(cmd))  # fmt: skip
                if ticket is not None:
                    rd, job = ticket
                    used += rd.work(max(units - used, 1))
                    if not rd.job_done(job):
                        self._waiting = ticket
                        break
            self._creadr = (offset + C.COMMAND_SIZE) % size
        if self.busy:
            self.on_work()
        return used

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
    # Every check raises CommandError.of(<command>, <Check>, ...): the code comes from the
    # command's name and the check, as the architecture names them (vgic.its.errors).
    def _device_entry(self, cmd: C.Command, device_id: int) -> int:
        try:
            return self._dte_address(device_id)
        except _Miss as miss:
            raise CommandError.of(cmd.name, miss.check, str(miss)) from None

    def _collection_entry(self, cmd: C.Command, icid: int) -> int | None:
        try:
            return self._cte_address(icid)
        except _Miss as miss:
            raise CommandError.of(cmd.name, miss.check, str(miss)) from None

    def _mapped_device(self, cmd: C.Command, device_id: int) -> CachedDevice:
        self._device_entry(cmd, device_id)
        try:
            return self.cache.devices.get(device_id) or self._load_device(device_id)
        except _Miss as miss:
            raise CommandError.of(cmd.name, miss.check, str(miss)) from None

    def _mapped_event(self, cmd: C.Movi | C.Int | C.Clear | C.Inv | C.Discard) -> tuple[CachedDevice, InterruptEntry]:
        """DeviceID -> DTE -> ITE for a command naming an event."""
        dev = self._mapped_device(cmd, cmd.device_id)
        try:
            ite = dev.events.get(cmd.event_id) or self._load_event(dev, cmd.device_id, cmd.event_id)
        except _Miss as miss:
            raise CommandError.of(cmd.name, miss.check, str(miss)) from None
        return dev, ite

    def _mapped_collection(self, cmd: C.Command, icid: int) -> Redistributor:
        """The redistributor of a collection a command uses; any miss is UNMAPPED_COLLECTION
        (an ICID beyond the table, from an ITE, names no mapped collection either)."""
        try:
            return self.cache.collections.get(icid) or self._load_collection(icid)
        except _Miss as miss:
            raise CommandError.of(cmd.name, Check.UNMAPPED_COLLECTION, str(miss)) from None

    def _target(self, cmd: C.Int | C.Clear | C.Inv | C.Discard) -> tuple[CachedDevice, InterruptEntry, Redistributor]:
        dev, ite = self._mapped_event(cmd)
        return dev, ite, self._mapped_collection(cmd, ite.icid)

    def _write_ite(self, dev: CachedDevice, device_id: int, event_id: int, ite: InterruptEntry | None) -> None:
        addr = self._ite_address(dev, event_id)
        self._write_entry(addr, self.layout.ite_size, 0 if ite is None else self.layout.encode_ite(ite))
        if ite is None:
            self.cache.drop_event(device_id, event_id)
        elif self.cache.devices.get(device_id) is dev:
            self.cache.put_event(addr, device_id, event_id, ite)

    def _check_pintid(self, cmd: C.Mapti | C.Mapi, pintid: int) -> None:
        limit = 1 << self.typer.idbits
        where = "this ITS supports"
        if self.config.pintid_bound is PintidBound.PROPBASER:
            try:
                rd: Redistributor | None = self.cache.collections.get(cmd.icid) or self._load_collection(cmd.icid)
            except (_Miss, MemoryFault):
                rd = None
            if rd is not None and rd.propbaser_limit() < limit:
                limit = rd.propbaser_limit()
                where = f"GICR_PROPBASER.IDbits of CPU {rd.index} allows"
        if not LPI_BASE <= pintid < limit:
            raise CommandError.of(cmd.name, Check.PHYSICALID_OOR,
                                  f"pINTID {pintid} is not an LPI {where} ({LPI_BASE} to {limit - 1})")  # fmt: skip

    # == the commands, one handler each (6.3); a handler may return a job to wait for ====
    def MAPD(self, cmd: C.Mapd) -> None:
        """Map a DeviceID to an ITT of 2^(Size+1) events, or unmap it (6.3.8)."""
        addr = self._device_entry(cmd, cmd.device_id)
        if cmd.valid and cmd.size + 1 > self.typer.idbits:
            raise CommandError.of(cmd.name, Check.ITTSIZE_OOR,
                                  f"Size={cmd.size} asks for {cmd.size + 1} EventID bits; ID_bits allows "
                                  f"{self.typer.idbits}")  # fmt: skip
        if cmd.valid:
            entry = DeviceEntry(cmd.itt_addr, cmd.size)
            self._write_entry(addr, TABLE_ENTRY_SIZE, entry.encode())
            self.cache.put_device(addr, cmd.device_id, entry)
        else:
            self._write_entry(addr, TABLE_ENTRY_SIZE, 0)
            self.cache.drop_device(cmd.device_id)

    def MAPC(self, cmd: C.Mapc) -> None:
        """Map a collection to a redistributor, or unmap it (6.3.7)."""
        rd = self._redistributor(cmd.rdbase)
        if cmd.valid and rd is None:
            what = "a redistributor's RD_base[51:16]" if self.typer.pta else "a processor number"
            raise CommandError.of(cmd.name, Check.PROCNUM_OOR, f"RDbase {cmd.rdbase:#x} is not {what}")
        addr = self._collection_entry(cmd, cmd.icid)
        if addr is None:
            if cmd.valid:
                self._hcc_collections[cmd.icid] = cmd.rdbase
            else:
                self._hcc_collections.pop(cmd.icid, None)
        else:
            self._write_entry(addr, self.layout.cte_size, self.layout.encode_cte(cmd.rdbase) if cmd.valid else 0)
        if rd is not None and cmd.valid:
            self.cache.put_collection(addr, cmd.icid, rd)
            self._unsynced.add(rd.index)
        else:
            self.cache.drop_collection(cmd.icid)

    def MAPTI(self, cmd: C.Mapti | C.Mapi) -> None:
        """Map an event to an LPI and a collection (6.3.10). Remapping is UNPREDICTABLE:
        vgic replaces the mapping (as QEMU does) and records a diagnostic."""
        pintid = cmd.event_id if isinstance(cmd, C.Mapi) else cmd.pintid
        self._device_entry(cmd, cmd.device_id)
        self._collection_entry(cmd, cmd.icid)
        dev = self._mapped_device(cmd, cmd.device_id)
        if cmd.event_id >= dev.entry.events:
            raise CommandError.of(cmd.name, Check.ID_OOR, f"EventID {cmd.event_id} is beyond the {dev.entry.events} "
                                                          f"events MAPD gave DeviceID {cmd.device_id:#x}")  # fmt: skip
        self._check_pintid(cmd, pintid)
        old = dev.events.get(cmd.event_id) or self._read_ite(self._ite_address(dev, cmd.event_id))
        if old is not None:
            self._diag(f"{cmd.name} of DeviceID {cmd.device_id:#x} EventID {cmd.event_id}, already mapped to "
                       f"LPI {old.pintid}: UNPREDICTABLE, mapping replaced", "IHI0069 6.3.10")  # fmt: skip
        self._write_ite(dev, cmd.device_id, cmd.event_id, InterruptEntry(pintid, cmd.icid))
        rd = self.cache.collections.get(cmd.icid)
        if rd is not None:
            self._unsynced.add(rd.index)

    def MAPI(self, cmd: C.Mapi) -> None:
        """MAPTI with pINTID = EventID (6.3.9)."""
        self.MAPTI(cmd)

    def MOVI(self, cmd: C.Movi) -> None:
        """Move an event to another collection; its pending state follows (6.3.11).
        Range checks on the command's fields come first, as for MAPTI: DeviceID (01), ICID
        (03), then the table lookups (04, 05, 07, 09; docs/spec-notes.md section 1)."""
        self._device_entry(cmd, cmd.device_id)
        self._collection_entry(cmd, cmd.icid)
        dev, ite = self._mapped_event(cmd)
        old_rd = self._mapped_collection(cmd, ite.icid)
        new_rd = self._mapped_collection(cmd, cmd.icid)
        self._ite_address(dev, cmd.event_id)  # the ITE write below cannot fault after the move
        if old_rd is not new_rd:
            old_rd.move_pending_to(new_rd, [ite.pintid])
        self._write_ite(dev, cmd.device_id, cmd.event_id, InterruptEntry(ite.pintid, cmd.icid))
        # The move completes with a SYNC of the redistributor the LPI moved *from* (as Linux
        # sends it); one to the new target is not what the architecture asks for.
        self._unsynced.add(old_rd.index)

    def MOVALL(self, cmd: C.Movall) -> Ticket | None:
        """Move every pending LPI of RDbase1 to RDbase2, ORed into its state (6.3.12): a
        job of RDbase1's redistributor, which the queue waits for."""
        rd1 = self._redistributor(cmd.rdbase1)
        rd2 = self._redistributor(cmd.rdbase2)
        if rd1 is None or rd2 is None:
            bad = cmd.rdbase1 if rd1 is None else cmd.rdbase2
            raise CommandError.of(cmd.name, Check.PROCNUM_OOR, f"RDbase {bad:#x} names no redistributor")
        if rd1 is rd2:
            return None
        return rd1, rd1.start_move_all(rd2)

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

    def INVALL(self, cmd: C.Invall) -> Ticket:
        """Reload the configuration of every LPI on a collection's redistributor (6.3.4):
        a job of that redistributor, which the queue waits for."""
        self._collection_entry(cmd, cmd.icid)
        rd = self._mapped_collection(cmd, cmd.icid)
        return rd, rd.start_invalidate_all()

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

    def verify_caches(self, limit: int | None = None) -> list[str]:
        """Compare cached DTEs and ITEs (all, or at most ``limit`` of them) with guest
        memory. A difference means the guest wrote a table the ITS was using, which is
        UNPREDICTABLE (5.2); each is reported."""
        found: list[str] = []
        left = len(self.cache) if limit is None else limit
        for dev_id, dev in list(self.cache.devices.items()):
            try:
                left -= 1
                if left < 0:
                    break
                mem = DeviceEntry.decode(self.memory.read64(self._dte_address(dev_id)))
                if mem != dev.entry:
                    found.append(f"the device table entry of DeviceID {dev_id:#x} was written by the guest "
                                 "while the ITS used it")  # fmt: skip
                    continue
                for ev, ite in list(dev.events.items()):
                    left -= 1
                    if left < 0:
                        break
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
