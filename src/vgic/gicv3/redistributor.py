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
* **Priority order.** Pending, enabled LPIs sit in one sorted list of INTIDs per
  priority level (64 levels), the levels in a sorted list: the highest-priority LPI, ties
  to the lowest INTID, is the first INTID of the first level, found without a scan.
  Every removal (acknowledge, CLEAR, a reload, a move) is exact, so nothing stale ever
  accumulates: no clean-up burst can cost one access more than a bisection.

The LPI ID space is bounded by ``lpi_id_bits`` (GICD_TYPER.IDbits + 1): the pending-table
scan at enable is at most 2^lpi_id_bits / 8 bytes, a host setting, never a guest's.

**Bounded work.** What touches every pending LPI (INVALL and GICR_INVALLR, MOVALL, the
pending-table read when LPIs are enabled and the write-back when they are disabled) is a
:class:`LpiJob`: data, saved in snapshots, run :data:`JOB_CHUNK` LPIs per work unit by
:meth:`Redistributor.work`. A guest access starts a job and does at most a bounded number
of units; polling GICR_CTLR.RWP or GICR_SYNCR (and the ITS's CREADR, for its commands)
does more, and the machine runs the rest between slices. While a job is unfinished,
GICR_SYNCR.Busy reads 1, and GICR_CTLR.RWP too for a write-back (12.11.2).
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import chain
from types import MappingProxyType
from typing import Any, Final

from vgic.checks import FieldError, at, boolean, distinct, exactly, items, mapping, only, req, text, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.attributes import sanitise_attributes
from vgic.gicv3.cpu_interface import InterruptSource
from vgic.memory import GuestMemory, MemoryFault
from vgic.regs import Access, Register, RegisterBank, RegisterBankState, field, id_registers

LPI_BASE: Final = 8192
_LPI_PENDING: Final = Kind.LPI_PENDING  # bound once, for the MSI path
RD_FRAME_SIZE = 0x20000  # RD_base frame + SGI_base frame (GICv3)
SGI_FRAME_OFFSET = 0x10000

# GICR_TYPER bits (12.11.38)
TYPER_PLPIS = 1 << 0
TYPER_DIRECTLPI = 1 << 3
TYPER_LAST = 1 << 4

# GICR_CTLR bits (12.11.2)
CTLR_RWP = 1 << 3

# Bounded work: LPIs a job handles per work unit, and the units one guest access may do.
JOB_CHUNK = 16
ACCESS_UNITS = 8
CHUNK_SHIFT: Final = 10  # pending state is kept in chunks of 1 << CHUNK_SHIFT INTIDs

# GICR_WAKER bits (12.11.41)
WAKER_PROCESSOR_SLEEP = 1 << 1
WAKER_CHILDREN_ASLEEP = 1 << 2

# The bits GICR_PROPBASER / GICR_PENDBASER keep (12.11.29, 12.11.28): PROPBASER OuterCache,
# PA[51:12], Shareability, InnerCache, IDbits; PENDBASER PTZ, OuterCache, PA[51:16],
# Shareability, InnerCache.
PROPBASER_MASK = 0x070F_FFFF_FFFF_FF9F
PROPBASER_ADDRESS = 0x000F_FFFF_FFFF_F000  # Physical_Address, bits [51:12]
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


class SortedIds:
    """A sorted set of INTIDs in buckets of at most 2 * LOAD, so an insertion or removal
    costs a bisection and a memmove of at most a bucket, however many INTIDs it holds (a
    plain sorted list would move up to every INTID on each change)."""

    LOAD = 256
    __slots__ = ("_buckets", "_maxes")

    def __init__(self) -> None:
        self._buckets: list[list[int]] = []
        self._maxes: list[int] = []  # the last INTID of each bucket

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def __iter__(self) -> Iterator[int]:
        for bucket in self._buckets:
            yield from bucket

    def first(self) -> int:
        return self._buckets[0][0]

    def add(self, intid: int) -> None:
        maxes = self._maxes
        if not maxes:
            self._buckets.append([intid])
            maxes.append(intid)
            return
        i = bisect_left(maxes, intid)
        if i == len(maxes):
            i -= 1
            bucket = self._buckets[i]
            bucket.append(intid)
            maxes[i] = intid
        else:
            bucket = self._buckets[i]
            insort(bucket, intid)
        if len(bucket) > 2 * self.LOAD:
            half = self.LOAD
            self._buckets[i : i + 1] = [bucket[:half], bucket[half:]]
            maxes[i : i + 1] = [bucket[half - 1], bucket[-1]]

    def remove(self, intid: int) -> None:
        i = bisect_left(self._maxes, intid)
        bucket = self._buckets[i]
        j = bisect_left(bucket, intid)
        del bucket[j]
        if not bucket:
            del self._buckets[i]
            del self._maxes[i]
        elif j == len(bucket):
            self._maxes[i] = bucket[-1]

    def buckets(self) -> list[list[int]]:
        return self._buckets


JOB_KINDS = ("reload", "move", "scan", "writeback")
MAX_JOBS = 16  # reloads coalesce (2 at most), a move per waiting ITS (8 at most), a scan, a write-back


@dataclass(slots=True)
class LpiJob:
    """Deferred work over many LPIs of one redistributor, as data (saved in snapshots).

    * ``reload``: re-read the configuration of ``intids`` that are still pending (INVALL).
    * ``move``: move ``intids`` still pending here to redistributor ``target`` (MOVALL).
    * ``scan``: read the pending table at ``table`` from byte ``cursor`` to ``end`` (enable).
    * ``writeback``: set the bits of ``intids`` and clear those of ``clear`` (disable).

    No job starts with a copy of the pending state (57,000 LPIs take a millisecond to
    copy): a reload or a move takes the pending LPIs a chunk at a time (``chunks``: the
    chunk numbers still to visit), a write-back drains the containers EnableLPIs=0 left
    (``bags_clear``, then ``bags_set``). A snapshot lists what they hold in ``intids`` and
    ``clear`` (:meth:`Redistributor.save_state`), so the saved form is unchanged.
    """

    ident: int
    kind: str
    intids: list[int] | set[int] = dataclass_field(default_factory=list)
    clear: list[int] | set[int] = dataclass_field(default_factory=list)
    target: int = -1
    table: int = 0
    cursor: int = 0
    end: int = 0
    refused: int = 0  # move: LPIs the target would have ignored, kept here
    chunks: list[int] = dataclass_field(default_factory=list)  # reload, move: chunk numbers to visit
    bags_clear: list[set[int]] = dataclass_field(default_factory=list)  # writeback: bits to clear
    bags_set: list[dict[int, int]] = dataclass_field(default_factory=list)  # writeback: LPIs to set

    def copy(self) -> LpiJob:
        return LpiJob(self.ident, self.kind, list(self.intids), list(self.clear), self.target, self.table,
                      self.cursor, self.end, self.refused, list(self.chunks), [set(b) for b in self.bags_clear],
                      [dict(b) for b in self.bags_set])  # fmt: skip

    def to_list(self) -> list[object]:
        return [self.ident, self.kind, sorted(self.intids), sorted(self.clear), self.target, self.table, self.cursor,
                self.end, self.refused]  # fmt: skip

    @staticmethod
    def from_list(v: object, lpi_id_bits: int) -> LpiJob:
        """A saved job, checked: a known kind, LPI INTIDs of the GIC's range, a pending
        table 64 KiB aligned (12.11.28), a scan within the table's LPI part (5.1.2)."""
        ident, kind, intids, clear, target, table, cursor, end, refused = exactly(v, 9)
        top = 1 << lpi_id_bits
        job = LpiJob(uint(ident, 32, "[0]"), text(kind, 16, "[1]"),
                     sorted(distinct(intids, LPI_BASE, top, top - LPI_BASE, "[2]")),
                     sorted(distinct(clear, LPI_BASE, top, top - LPI_BASE, "[3]")),
                     uint(target, 16, "[4]") if target != -1 else -1, uint(table, 52, "[5]"),
                     uint(cursor, 32, "[6]"), uint(end, 32, "[7]"), uint(refused, 32, "[8]"))  # fmt: skip
        if job.kind not in JOB_KINDS:
            raise FieldError("[1]", f"{job.kind!r} is not a job kind ({', '.join(JOB_KINDS)})")
        if job.table % 0x10000:
            raise FieldError("[5]", f"{job.table:#x}: a pending table is 64 KiB aligned")
        if job.kind == "scan" and not LPI_BASE // 8 <= job.cursor <= job.end <= top // 8:
            raise FieldError("[6]", f"a scan from {job.cursor} to {job.end} is not within the pending table's LPIs")
        if job.kind != "writeback" and job.clear:
            raise FieldError("[3]", "only a write-back clears bits")
        if job.kind == "move" and job.target < 0:
            raise FieldError("[4]", "a move names its target")
        return job


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
    jobs: tuple[LpiJob, ...] = ()  # deferred LPI-wide work (INVALL, MOVALL, table read/write-back)
    next_job: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "regs": self.regs.to_dict(),
            "enable_lpis": self.enable_lpis,
            "lpi_limit": self.lpi_limit,
            "pending": sorted(self.pending),
            "config": [[i, c] for i, c in sorted(self.config.items())],
            "table_bits": sorted(self.table_bits),
            "jobs": [job.to_list() for job in self.jobs],
            "next_job": self.next_job,
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
        only(m, ("regs", "enable_lpis", "lpi_limit", "pending", "config", "table_bits", "jobs", "next_job", *known))
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
        jobs: list[LpiJob] = []
        with at("jobs"):
            for n, raw in enumerate(items(m.get("jobs", []), MAX_JOBS, "")):
                with at(n):
                    jobs.append(LpiJob.from_list(raw, config.lpi_id_bits))
        next_job = uint(m.get("next_job", 1), 32, "next_job")
        if any(job.ident >= next_job for job in jobs) or len({job.ident for job in jobs}) != len(jobs):
            raise FieldError("jobs", "job idents must be distinct and below next_job")
        return cls(regs, enable, limit, pending, MappingProxyType(cache), table_bits, tuple(jobs), next_job)


def _origin(why: str, device_id: int, event_id: int) -> str:
    """Where a pending LPI came from, for the log: an MSI's IDs, or the caller's text."""
    return f"(MSI {device_id:#x}/{event_id})" if device_id >= 0 else why


def _priority(config: int) -> int:
    return config & 0xFC


class Redistributor(InterruptSource):
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
            "SYNCR": (self.read_SYNCR, None),
            "SETLPIR": (None, self.write_SETLPIR),
            "CLRLPIR": (None, self.write_CLRLPIR),
            "INVLPIR": (None, self.write_INVLPIR),
            "INVALLR": (None, self.write_INVALLR),
        }
        self.regs = RegisterBank(gicr_rd_registers(self.config.iidr), log, self.source, handlers, device=self)
        self.on_change: Callable[[], None] = lambda: None  # set by the CPU interface
        # an enabled LPI of this priority became pending and nothing else changed (the MSI
        # path): the CPU interface raises its line without a scan; set by the GIC
        self.on_pend: Callable[[int], None] = lambda priority: self.on_change()
        self._enable_lpis = False
        # The pending LPIs and their configuration bytes, in chunks of 1,024 INTIDs
        # (INTID >> CHUNK_SHIFT -> {INTID: config}): no container ever grows past a chunk
        # in one step, where a set of 57,000 LPIs rehashes for milliseconds as it grows.
        # A chunk, once made, stays until EnableLPIs=0 (no dict built per MSI).
        self._lpis: dict[int, dict[int, int]] = {}
        self._levels: dict[int, SortedIds] = {}  # priority -> INTIDs of pending, enabled LPIs
        self._priorities: list[int] = []  # the priorities with a level, sorted
        self._table_bits: dict[int, set[int]] = {}  # INTIDs whose pending-table bit was set, chunked
        self._lpi_limit = 0  # one past the largest valid LPI INTID while enabled
        # GICR_PROPBASER's table address, as of EnableLPIs=1 (it cannot change while LPIs
        # are enabled, and only then are configurations read: 12.11.29)
        self._prop_table = 0
        self._jobs: deque[LpiJob] = deque()  # deferred LPI-wide work, oldest first
        self._trash: list[list[Any] | dict[Any, Any] | set[Any]] = []  # freed a chunk a unit
        self._next_job = 1
        self.peers: list[Redistributor] = [self]  # every redistributor of the GIC (MOVALL targets)
        self.on_work: Callable[[], None] = lambda: None  # told when a job is queued (the GIC)

    # -- state for tools, tests and save/restore --------------------------------------
    @property
    def enable_lpis(self) -> bool:
        return self._enable_lpis

    @property
    def pending_lpis(self) -> frozenset[int]:
        with self.lock:
            return frozenset(chain.from_iterable(self._lpis.values()))

    def lpi_config(self, intid: int) -> int | None:
        """The cached configuration byte of a pending LPI (None when not cached)."""
        chunk = self._lpis.get(intid >> CHUNK_SHIFT)
        return None if chunk is None else chunk.get(intid)

    def _is_pending(self, intid: int) -> bool:
        chunk = self._lpis.get(intid >> CHUNK_SHIFT)
        return chunk is not None and intid in chunk

    def _pending_ids(self) -> list[int]:
        """A copy of the pending INTIDs (at C speed: 57,000 in about 0.3-0.6 ms)."""
        return list(chain.from_iterable(self._lpis.values()))

    def _forget(self, intid: int) -> int | None:
        """Take an LPI out of the pending state (not out of its level); its configuration
        byte, or None when it was not pending."""
        chunk = self._lpis.get(intid >> CHUNK_SHIFT)
        return None if chunk is None else chunk.pop(intid, None)

    # -- save/restore ----------------------------------------------------------------
    def save_state(self) -> RedistributorState:
        with self.lock:
            config = {i: c for chunk in self._lpis.values() for i, c in chunk.items()}
            return RedistributorState(self.regs.save_state(), self._enable_lpis, self._lpi_limit,
                                      frozenset(config), MappingProxyType(config),
                                      frozenset(chain.from_iterable(self._table_bits.values())),
                                      tuple(self._saved_job(job) for job in self._jobs), self._next_job)  # fmt: skip

    def _saved_job(self, job: LpiJob) -> LpiJob:
        """A job as a snapshot holds it: what its chunks and bags stand for, listed."""
        intids, clear = list(job.intids), list(job.clear)
        for k in job.chunks:
            intids.extend(self._lpis.get(k, ()))
        for bits in job.bags_clear:
            clear.extend(bits)
        for lpis in job.bags_set:
            intids.extend(lpis)
        return dataclasses.replace(job, intids=intids, clear=clear, chunks=[], bags_clear=[], bags_set=[])

    def load_state(self, state: RedistributorState) -> None:
        if set(state.config) != state.pending:
            raise ValueError(f"{self.source}: saved configuration cache does not match pending LPIs")
        with self.lock:
            self.regs.load_state(state.regs)
            self._enable_lpis = state.enable_lpis
            self._lpi_limit = state.lpi_limit
            self._prop_table = self.regs.get("PROPBASER") & PROPBASER_ADDRESS
            self._lpis, self._table_bits = {}, {}
            self._levels, self._priorities = {}, []
            for i, c in state.config.items():
                self._lpis.setdefault(i >> CHUNK_SHIFT, {})[i] = c
                self._rank(i, c)
            for i in state.table_bits:
                self._table_bits.setdefault(i >> CHUNK_SHIFT, set()).add(i)
            self._jobs = deque(job.copy() for job in state.jobs)
            self._next_job = state.next_job

    # -- MMIO ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A load from the RD_base frame (the SGI_base frame is :class:`vgic.gicv3.sgi.SgiFrame`)."""
        self.lock.acquire()  # not ``with``: see CpuInterface.acknowledge
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

    def read_CTLR(self, index: int) -> int:
        """EnableLPIs[0]; CES[1] when it can be cleared; IR[2] with the direct registers;
        RWP[3] while a write-back of the pending state is in progress (12.11.2). A read
        does a bounded amount of that work: a driver polling RWP makes it finish."""
        self._work(ACCESS_UNITS)
        ces = int(self.config.lpis_disableable) << 1
        rwp = CTLR_RWP if self._writing_back() else 0
        return int(self._enable_lpis) | ces | int(self.config.direct_lpi) << 2 | rwp

    def read_SYNCR(self, index: int) -> int:
        """GICR_SYNCR.Busy[0] (12.11.34): 1 while LPI-wide work is in progress."""
        self._work(ACCESS_UNITS)
        return int(bool(self._jobs))

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
            self.start_invalidate_all()
            self._work(ACCESS_UNITS)

    # -- LPI enable ------------------------------------------------------------------
    def set_enable_lpis(self, enable: bool) -> None:
        """GICR_CTLR.EnableLPIs writes (5.1.2, 12.11.2). The pending table is read, or the
        pending state written back, by a job; a write while a write-back is still in
        progress (RWP=1) is UNPREDICTABLE and ignored."""
        with self.lock:
            if enable == self._enable_lpis:
                return
            if not enable and not self.config.lpis_disableable:
                self._diag("EnableLPIs cannot be cleared once set on this GIC: ignored", "IHI0069 12.11.2")
                return
            if self._writing_back():
                self._diag("GICR_CTLR.EnableLPIs written while GICR_CTLR.RWP=1: ignored", "IHI0069 12.11.2")
                return
            if enable:
                self._enable()
            else:
                self._disable()
            self.log.record(Kind.STATE, self.source, f"EnableLPIs={int(enable)}", cpu=self.index)
            self.on_change()
            self._work(ACCESS_UNITS)

    def _enable(self) -> None:
        prop = self.regs.get("PROPBASER")
        idbits = min(field(prop, 4, 0) + 1, self.config.lpi_id_bits)
        self._lpi_limit = lpi_limit(prop, self.config.lpi_id_bits)
        self._prop_table = prop & PROPBASER_ADDRESS
        if not self._lpi_limit:
            self._diag(f"GICR_PROPBASER.IDbits gives {idbits} ID bits, fewer than 14: no LPI is in range",
                       "IHI0069 12.11.29")  # fmt: skip
        self._enable_lpis = True
        pend = self.regs.get("PENDBASER")
        ptz = bool(pend >> 62 & 1)
        self.regs.set("PENDBASER", pend & ~(1 << 62))
        self._table_bits.clear()
        if not ptz and self._lpi_limit:
            table = pend & 0x000F_FFFF_FFFF_0000
            self._queue(LpiJob(0, "scan", table=table, cursor=LPI_BASE // 8, end=self._lpi_limit // 8))

    def _disable(self) -> None:
        """The pending LPIs leave delivery at once; their bits are written back by a job."""
        table = self.regs.get("PENDBASER") & 0x000F_FFFF_FFFF_0000
        self._jobs = deque(j for j in self._jobs if j.kind != "scan")  # nothing more to read
        if any(self._lpis.values()) or self._table_bits:
            # The job takes the chunks (no copy): it clears the bits read at enable, then
            # sets the pending ones, emptying them. The levels are freed a piece at a time.
            self._queue(LpiJob(0, "writeback", table=table, bags_clear=list(self._table_bits.values()),
                               bags_set=list(self._lpis.values())))  # fmt: skip
        self._trash += [b for level in self._levels.values() for b in level.buckets()]
        self._table_bits, self._lpis = {}, {}
        self._levels, self._priorities = {}, []
        self._enable_lpis = False

    def _writing_back(self) -> bool:
        return any(job.kind == "writeback" for job in self._jobs)

    # -- LPI-wide work, bounded per step ----------------------------------------------------
    def _queue(self, job: LpiJob) -> int:
        job.ident = self._next_job
        self._next_job += 1
        self._jobs.append(job)
        self.on_work()
        return job.ident

    @property
    def busy(self) -> bool:
        """Whether deferred work is still to do: jobs (GICR_SYNCR.Busy), or host-side
        housekeeping (memory being freed) that never shows to the guest."""
        return bool(self._jobs) or bool(self._trash)

    def job_done(self, ident: int) -> bool:
        """Whether the job ``ident`` (from :meth:`start_invalidate_all`, :meth:`start_move_all`) is done."""
        return all(job.ident != ident for job in self._jobs)

    def work(self, units: int) -> int:
        """Do at most ``units`` units of deferred work; returns the units used."""
        with self.lock:
            return self._work(units)

    def _work(self, units: int) -> int:
        used = 0
        while self._jobs and used < units:
            job = self._jobs[0]
            used += self._step(job)
            if self._finished(job):
                self._jobs.popleft()
                self._completed(job)
        while used < units and self._trash:
            used += self._free_some()
        return used

    def _free_some(self) -> int:
        """Free up to 1024 entries of what a disable left: freeing 57,000 at once would
        cost that access milliseconds of host time."""
        trash = self._trash[-1]
        if isinstance(trash, list):
            del trash[-1024:]
        elif isinstance(trash, dict):
            for _ in range(min(1024, len(trash))):
                trash.popitem()
        else:
            for _ in range(min(1024, len(trash))):
                trash.pop()
        if not trash:
            self._trash.pop()
        return 1

    def _step(self, job: LpiJob) -> int:
        if job.kind == "reload":
            return self._job_reload(job)
        if job.kind == "move":
            return self._job_move(job)
        if job.kind == "scan":
            return self._job_scan(job)
        return self._job_writeback(job)

    @staticmethod
    def _finished(job: LpiJob) -> bool:
        if job.kind == "scan":
            return job.cursor >= job.end
        return not (job.intids or job.clear or job.chunks or job.bags_clear or job.bags_set)

    def _next_chunk(self, job: LpiJob) -> None:
        """A reload's or a move's next LPIs: those pending now in its next chunk (a copy of
        at most 1,024 INTIDs). An LPI made pending here after the job started is visited
        if its chunk is still to come: a reload re-reads it, a move takes it along; none
        is lost or doubled either way."""
        if job.intids or not job.chunks:
            return
        assert isinstance(job.intids, list)
        for _ in range(64):  # empty chunks cost a look each: at most 64 per unit
            job.intids.extend(self._lpis.get(job.chunks.pop(), ()))
            if job.intids or not job.chunks:
                return

    def _completed(self, job: LpiJob) -> None:
        if job.kind == "move" and job.refused:
            target = self.peers[job.target] if 0 <= job.target < len(self.peers) else None
            enabled = int(target.enable_lpis) if target is not None else 0
            self._diag(f"MOVALL left {job.refused} LPI(s) pending here: CPU {job.target} would ignore them "
                       f"(EnableLPIs={enabled})", "IHI0069 6.3.12")  # fmt: skip

    def _job_reload(self, job: LpiJob) -> int:
        job.cursor = 1  # started: a later INVALL needs a reload of its own
        self._next_chunk(job)
        assert isinstance(job.intids, list)
        chunk = job.intids[-JOB_CHUNK:]
        del job.intids[-JOB_CHUNK:]  # from the end: O(chunk), never a copy of the rest
        for intid in chunk:
            if self._is_pending(intid):
                self._reload(intid)
        self.on_change()
        return 1

    def _job_move(self, job: LpiJob) -> int:
        if not 0 <= job.target < len(self.peers):
            job.intids.clear()
            job.chunks.clear()
            return 1
        self._next_chunk(job)
        assert isinstance(job.intids, list)
        chunk = job.intids[-JOB_CHUNK:]
        del job.intids[-JOB_CHUNK:]
        _, refused = self._move(chunk, self.peers[job.target])
        job.refused += refused
        return 1

    def _job_scan(self, job: LpiJob) -> int:
        """Up to JOB_CHUNK LPIs made pending, or 4 KiB of empty table, per unit (5.1.2)."""
        n = min(4096, job.end - job.cursor)
        try:
            data = self.memory.read_bytes(job.table + job.cursor, n)
        except MemoryFault as fault:
            self._diag(f"pending table read faulted ({fault}); its bits read as zero", "IHI0069 5.1.2")
            job.cursor = job.end
            return 1
        found = 0
        if any(data):
            for k, byte in enumerate(data):
                if not byte:
                    continue
                if found >= JOB_CHUNK:  # this unit is spent: go on from this byte next time
                    n = k
                    break
                base = (job.cursor + k) * 8
                for bit in range(8):
                    if byte >> bit & 1:
                        intid = base + bit
                        bits = self._table_bits.get(intid >> CHUNK_SHIFT)
                        if bits is None:
                            bits = self._table_bits[intid >> CHUNK_SHIFT] = set()
                        bits.add(intid)
                        if not self._is_pending(intid):
                            self._make_pending(intid)
                            found += 1
        job.cursor += n
        if found:
            self.on_change()
        return 1

    def _job_writeback(self, job: LpiJob) -> int:
        """JOB_CHUNK pending-table bits per unit; a fault loses what is left (5.1.2)."""
        if not job.clear and job.bags_clear:
            job.clear = job.bags_clear.pop()  # a chunk's bits, taken whole (no copy)
        if not job.clear and not job.bags_clear and not job.intids and job.bags_set:
            job.intids = list(job.bags_set.pop())  # a chunk's LPIs (at most 1,024)
        try:
            for _ in range(JOB_CHUNK):
                if job.clear:
                    intid, value = job.clear.pop(), False
                elif job.intids:
                    intid, value = job.intids.pop(), True
                else:
                    break
                self.memory.set_bit(job.table + intid // 8, intid % 8, value)
        except MemoryFault as fault:
            self._diag(f"pending table write-back faulted ({fault}); pending state lost", "IHI0069 5.1.2")
            job.intids.clear()
            job.clear.clear()
            job.bags_clear.clear()
            job.bags_set.clear()
        return 1

    # -- LPI pending state -----------------------------------------------------------
    def set_lpi_pending(self, intid: int, why: str = "") -> bool:
        """Make an LPI pending. Returns False when the architecture says it is ignored;
        ``why`` says where it came from, for the log."""
        with self.lock:
            return self._set_pending(intid, why, -1, 0)

    def pend_msi(self, intid: int, device_id: int, event_id: int) -> bool:
        """:meth:`set_lpi_pending` for a translated MSI, named "(MSI device/event)" in the
        log; nothing is formatted unless a record is made (the MSI path)."""
        self.lock.acquire()  # not ``with``: see CpuInterface.acknowledge
        try:
            return self._set_pending(intid, "", device_id, event_id)
        finally:
            self.lock.release()

    def _set_pending(self, intid: int, why: str, device_id: int, event_id: int) -> bool:
        if not self._enable_lpis:
            self.log.record(Kind.LPI_DROPPED, self.source,
                            f"LPI {intid} ignored: EnableLPIs=0 {_origin(why, device_id, event_id)}",
                            intid=intid, cpu=self.index, rule="IHI0069 5.1")  # fmt: skip
            return False
        if not LPI_BASE <= intid < self._lpi_limit:
            self.log.record(Kind.LPI_DROPPED, self.source,
                            f"LPI {intid} ignored: outside the range GICR_PROPBASER.IDbits allows "
                            f"{_origin(why, device_id, event_id)}",
                            intid=intid, cpu=self.index, rule="IHI0069 5.1.1")  # fmt: skip
            return False
        if self._is_pending(intid):
            return True
        cfg = self._make_pending(intid)
        if self.log.wants(_LPI_PENDING):
            self.log.record(_LPI_PENDING, self.source, f"LPI {intid} pending {_origin(why, device_id, event_id)}".rstrip(),
                            intid=intid, cpu=self.index)  # fmt: skip
        if cfg & 1:  # a disabled LPI changes nothing the CPU interface sees
            self.on_pend(cfg & 0xFC)
        return True

    def _make_pending(self, intid: int) -> int:
        """Pending (it was not), with its configuration read and cached; returns that
        configuration byte."""
        chunk = self._lpis.get(intid >> CHUNK_SHIFT)
        if chunk is None:
            chunk = self._lpis[intid >> CHUNK_SHIFT] = {}
        cfg = self._read_config(intid)
        chunk[intid] = cfg
        if cfg & 1:
            self._rank(intid, cfg)
        return cfg

    def _rank(self, intid: int, cfg: int) -> None:
        """Put a pending, enabled LPI in its priority level (kept sorted by INTID). A level,
        once made, stays (64 priorities at most), so an LPI pended and acknowledged in turn
        does not build and drop one each time; ``_priorities`` lists the non-empty ones."""
        if not cfg & 1:
            return
        prio = cfg & 0xFC
        level = self._levels.get(prio)
        if level is None:
            level = self._levels[prio] = SortedIds()
        if not level:
            insort(self._priorities, prio)
        level.add(intid)

    def _unrank(self, intid: int, cfg: int) -> None:
        """Take an LPI out of its priority level: exact, so nothing stale is left behind."""
        if not cfg & 1:
            return
        prio = cfg & 0xFC
        level = self._levels[prio]
        level.remove(intid)
        if not level:
            del self._priorities[bisect_left(self._priorities, prio)]

    def _read_config(self, intid: int) -> int:
        try:
            return self.memory.read8(self._prop_table + intid - LPI_BASE)
        except MemoryFault as fault:
            self._diag(f"LPI {intid} configuration read faulted ({fault}); treated as disabled",
                       "IHI0069 5.1.1")  # fmt: skip
            return 0

    def clear_lpi_pending(self, intid: int) -> bool:
        """Remove an LPI's pending state. Returns whether it was pending."""
        with self.lock:
            cfg = self._forget(intid)
            if cfg is None:
                return False
            self._unrank(intid, cfg)
            self.on_change()
            return True

    def invalidate_lpi(self, intid: int) -> None:
        """Reload one LPI's configuration (INV, GICR_INVLPIR)."""
        with self.lock:
            if self._is_pending(intid):
                self._reload(intid)
                self.on_change()

    def start_invalidate_all(self) -> int:
        """Queue a reload of every pending LPI's configuration (INVALL, GICR_INVALLR);
        returns the job's ident (:meth:`job_done`). A reload queued and not started yet
        already covers this one: it is shared, so a guest repeating GICR_INVALLR cannot
        pile up copies of its pending set."""
        with self.lock:
            last = self._jobs[-1] if self._jobs else None
            if last is not None and last.kind == "reload" and not last.cursor:
                return last.ident
            return self._queue(LpiJob(0, "reload", chunks=list(self._lpis)))

    def invalidate_all(self) -> None:
        """:meth:`start_invalidate_all` and finish it now (host code; guests get the job)."""
        with self.lock:
            ident = self.start_invalidate_all()
            while not self.job_done(ident):
                self._work(1 << 30)

    def _reload(self, intid: int) -> None:
        chunk = self._lpis[intid >> CHUNK_SHIFT]
        old = chunk[intid]
        cfg = self._read_config(intid)
        chunk[intid] = cfg
        if (old & 1, _priority(old)) != (cfg & 1, _priority(cfg)):
            self._unrank(intid, old)
            self._rank(intid, cfg)

    def propbaser_limit(self) -> int:
        """One past the largest LPI INTID GICR_PROPBASER.IDbits allows (12.11.29)."""
        return 1 << min(field(self.regs.get("PROPBASER"), 4, 0) + 1, self.config.lpi_id_bits)

    def accepts(self, intid: int) -> bool:
        """Whether an LPI sent here now would become pending (5.1)."""
        return self._enable_lpis and LPI_BASE <= intid < self._lpi_limit

    def start_move_all(self, other: Redistributor) -> int:
        """Queue a move of every LPI pending here to ``other`` (MOVALL, 6.3.12); returns
        the job's ident. An LPI made pending here while it runs is moved if its chunk is
        still to be visited, and stays otherwise: never lost, never on both."""
        with self.lock:
            return self._queue(LpiJob(0, "move", chunks=list(self._lpis), target=self.peers.index(other)))

    def move_pending_to(self, other: Redistributor, intids: list[int] | None = None) -> int:
        """Move pending LPIs (all, or those of ``intids``) to ``other`` now, ORed into its
        state (MOVI: one LPI; host code). Returns the number moved."""
        with self.lock:
            candidates = self._pending_ids() if intids is None else [i for i in intids if self._is_pending(i)]
        moved, refused = self._move(candidates, other)
        if refused:
            self._diag(f"{refused} LPI(s) not moved to CPU {other.index}, which would ignore them "
                       f"(EnableLPIs={int(other.enable_lpis)}); they stay pending here", "IHI0069 6.3.12")  # fmt: skip
        return moved

    def _move(self, intids: list[int], other: Redistributor) -> tuple[int, int]:
        """Move ``intids`` (those still pending) to ``other``: (moved, refused). Both locks
        are held, in processor-number order, so an LPI is never pending on both nor on
        neither. An LPI that ``other`` would ignore (EnableLPIs=0, out of range) stays."""
        if other is self:
            return 0, 0
        first, second = (self, other) if self.index <= other.index else (other, self)
        with first.lock, second.lock:
            moved = refused = 0
            for intid in intids:
                cfg = self.lpi_config(intid)
                if cfg is None:  # no longer pending here
                    continue
                if not other.accepts(intid):
                    refused += 1
                    continue
                self._forget(intid)
                self._unrank(intid, cfg)
                if not other._is_pending(intid):
                    other._make_pending(intid)
                moved += 1
            if moved:
                self.on_change()
                other.on_change()
            return moved, refused

    # -- the CPU interface's view ----------------------------------------------------
    def highest_pending_lpi(self) -> tuple[int, int] | None:
        """(priority, INTID) of the highest-priority pending enabled LPI, or None: the
        lowest INTID of the highest priority level, O(1)."""
        return self.highest_pending(1)

    def acknowledge(self, intid: int) -> None:
        """An acknowledged LPI stops being pending; LPIs have no active state (5.1). The
        CPU interface calls it holding the lock this redistributor shares with it."""
        cfg = self._forget(intid)
        if cfg is not None:
            self._unrank(intid, cfg)

    # InterruptSource for the CPU interface: LPIs are always Group 1 (5.1).
    def highest_pending(self, group: int) -> tuple[int, int] | None:
        priorities = self._priorities
        if group != 1 or not priorities:
            return None
        return priorities[0], self._levels[priorities[0]].first()

    def deactivate(self, intid: int) -> bool:
        return False

    def _diag(self, message: str, rule: str) -> None:
        self.log.record(Kind.DIAGNOSTIC, self.source, message, cpu=self.index, rule=rule)
