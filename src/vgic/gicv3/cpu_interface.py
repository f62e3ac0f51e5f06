"""The GICv3 CPU interface: the ICC_* system registers (IHI 0069 chapter 4, 12.2).

Pure Python: a CPU engine calls :meth:`CpuInterface.read_sysreg` and
:meth:`CpuInterface.write_sysreg` (by name or by its (op0, op1, CRn, CRm, op2) encoding)
and is told of IRQ/FIQ line changes through :attr:`CpuInterface.on_irq`.

Priority model (4.8): ``pri_bits`` implemented priority bits (5, as QEMU's Cortex-A57);
the group priority of an interrupt is its priority masked by the binary point; the active
priorities are one bit per group priority in ICC_AP0R<n>/ICC_AP1R<n>, and the running
priority (ICC_RPR_EL1) is the highest of them. An interrupt is signalled when it is
enabled for its group, its priority is higher than ICC_PMR_EL1 and its group priority is
higher than the running priority. Candidates come from :class:`InterruptSource` objects
(the redistributor's LPIs, later SGIs, PPIs and SPIs), each answering its best pending
interrupt without a scan; ties between sources go to the lowest INTID.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from vgic.checks import FieldError, bounded, exactly, flag, mapping, only, req, uint
from vgic.compiled import mypyc_attr
from vgic.events import EventLog, Kind

SPURIOUS: Final = 1023
IDLE_PRIORITY: Final = 0xFF
# The hot path's event kinds, bound once (an Enum member lookup is a class-dict lookup)
_ACKNOWLEDGE: Final = Kind.ACKNOWLEDGE
_EOI: Final = Kind.EOI


@mypyc_attr(allow_interpreted_subclasses=True)  # embedders may write their own sources
class InterruptSource:
    """Something holding pending interrupts for one CPU: the redistributor's LPIs, the SGI
    frame's SGIs and PPIs, the distributor's SPIs routed here. A base class rather than a
    protocol so that the compiled build calls the sources directly."""

    def highest_pending(self, group: int) -> tuple[int, int] | None:
        """(priority, INTID) of the best pending, enabled interrupt of ``group``."""
        raise NotImplementedError

    def acknowledge(self, intid: int) -> None:
        """The interrupt was acknowledged: pending -> active (LPIs: not pending)."""
        raise NotImplementedError

    def deactivate(self, intid: int) -> bool:
        """Remove the active state; False if ``intid`` is not this source's or not active."""
        return False


# (op0, op1, CRn, CRm, op2) -> register name (12.2)
SYSREG_ENCODINGS: dict[tuple[int, int, int, int, int], str] = {
    (3, 0, 4, 6, 0): "ICC_PMR_EL1",
    (3, 0, 12, 8, 0): "ICC_IAR0_EL1",
    (3, 0, 12, 8, 1): "ICC_EOIR0_EL1",
    (3, 0, 12, 8, 2): "ICC_HPPIR0_EL1",
    (3, 0, 12, 8, 3): "ICC_BPR0_EL1",
    **{(3, 0, 12, 8, 4 + n): f"ICC_AP0R{n}_EL1" for n in range(4)},
    **{(3, 0, 12, 9, n): f"ICC_AP1R{n}_EL1" for n in range(4)},
    (3, 0, 12, 11, 1): "ICC_DIR_EL1",
    (3, 0, 12, 11, 3): "ICC_RPR_EL1",
    (3, 0, 12, 11, 5): "ICC_SGI1R_EL1",
    (3, 0, 12, 11, 6): "ICC_ASGI1R_EL1",
    (3, 0, 12, 11, 7): "ICC_SGI0R_EL1",
    (3, 0, 12, 12, 0): "ICC_IAR1_EL1",
    (3, 0, 12, 12, 1): "ICC_EOIR1_EL1",
    (3, 0, 12, 12, 2): "ICC_HPPIR1_EL1",
    (3, 0, 12, 12, 3): "ICC_BPR1_EL1",
    (3, 0, 12, 12, 4): "ICC_CTLR_EL1",
    (3, 0, 12, 12, 5): "ICC_SRE_EL1",
    (3, 0, 12, 12, 6): "ICC_IGRPEN0_EL1",
    (3, 0, 12, 12, 7): "ICC_IGRPEN1_EL1",
}
SYSREG_BY_NAME = {name: enc for enc, name in SYSREG_ENCODINGS.items()}
Encoding = tuple[int, int, int, int, int]


def preemption_bits(pri_bits: int) -> int:
    """Preemption bits of a CPU interface with ``pri_bits`` priority bits: as many, but at
    most 7 (ICC_CTLR_EL1.PREbits; 128 levels fill ICC_AP<n>R0..3_EL1)."""
    return min(pri_bits, 7)


_FLAGS = ("eoimode", "cbpr", "igrpen0", "igrpen1")  # the one-bit fields of CpuInterfaceState


@dataclass(frozen=True)
class CpuInterfaceState:
    """The saved ICC_* state of one CPU interface (IHI 0069 12.2). ``ap`` holds the active
    priorities of Group 0 and Group 1: bit k is group priority k << (8 - PREbits)."""

    pmr: int
    bpr0: int
    bpr1: int
    eoimode: bool
    cbpr: bool
    igrpen0: bool
    igrpen1: bool
    ap: tuple[int, int]

    def to_dict(self) -> dict[str, object]:
        """The one-bit fields are saved as 0 or 1 (format 1 and 2 files do)."""
        d: dict[str, object] = {"pmr": self.pmr, "bpr0": self.bpr0, "bpr1": self.bpr1}
        d.update({k: int(getattr(self, k)) for k in _FLAGS})
        d["ap"] = list(self.ap)
        return d

    @classmethod
    def from_dict(cls, d: object, pri_bits: int) -> CpuInterfaceState:
        """Checked against the ``pri_bits`` implemented: ICC_PMR_EL1 without unimplemented
        low-order bits (RAZ/WI), ICC_BPR0_EL1 from its minimum 7 - PREbits and ICC_BPR1_EL1
        from that plus one, to 7 (4.8.5), and two active-priority bitmaps within the bits
        of the ICC_AP<n>R<m>_EL1 registers PREbits implements (one bit per group priority)."""
        m = mapping(d)
        only(m, ("pmr", "bpr0", "bpr1", *_FLAGS, "ap"))
        pre = preemption_bits(pri_bits)
        pri_mask = (0xFF << (8 - pri_bits)) & 0xFF
        pmr = uint(req(m, "pmr"), 8, "pmr")
        if pmr & ~pri_mask:
            raise FieldError("pmr", f"{pmr:#x} sets priority bits beyond the {pri_bits} implemented")
        bpr0 = bounded(req(m, "bpr0"), 7 - pre, 8, "bpr0")
        bpr1 = bounded(req(m, "bpr1"), 8 - pre, 8, "bpr1")
        flags = {k: flag(req(m, k), k) for k in _FLAGS}
        ap = exactly(req(m, "ap"), 2, "ap")
        levels = 1 << pre
        ap0, ap1 = (uint(v, levels, f"ap[{g}]") for g, v in enumerate(ap))
        return cls(pmr, bpr0, bpr1, ap=(ap0, ap1), **flags)


class CpuInterface:
    """One CPU's interface. Guarded by the lock of its redistributor."""

    def __init__(
        self,
        index: int,
        sources: list[InterruptSource],
        log: EventLog,
        lock: threading.RLock | None = None,
        pri_bits: int = 5,
        id_bits: int = 16,
    ) -> None:
        if not 5 <= pri_bits <= 8:
            raise ValueError("GICv3 implements 5 to 8 priority bits")
        self.index = index
        self.sources = sources
        self.log = log
        self.lock = lock or threading.RLock()
        self.pri_bits = pri_bits
        self._pri_mask = (0xFF << (8 - pri_bits)) & 0xFF  # the implemented priority bits
        self.id_bits = id_bits
        self.source = f"cpu{index}"
        self.on_irq: Callable[[bool], None] = lambda level: None
        self.on_fiq: Callable[[bool], None] = lambda level: None
        # Hook for SGI generation (ICC_SGI1R_EL1 and friends): set by the GIC.
        self.on_sgi: Callable[[int, int, int], None] = lambda cpu, value, group: None
        # Preemption bits: as many as priority bits, but at most 7 (128 levels, AP<n>R0..3),
        # so 8 priority bits give 7 preemption bits and a BPR0 minimum of 0 (QEMU: prebits).
        self.pre_bits = preemption_bits(pri_bits)
        self._min_bpr0 = 7 - self.pre_bits  # 4.8.5: BPR0 min; the Non-secure BPR1 min is one more
        self._best_source = InterruptSource()  # the source of _best's answer (a placeholder until then)
        self.sysreg_readers, self.sysreg_writers = self._sysreg_table()
        # the same, by name (the Python API's way in)
        self._readers_by_name = {SYSREG_ENCODINGS[e]: f for e, f in self.sysreg_readers.items()}
        self._writers_by_name = {SYSREG_ENCODINGS[e]: f for e, f in self.sysreg_writers.items()}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.pmr = 0
            self.bpr0 = self._min_bpr0
            self.bpr1 = self._min_bpr0 + 1
            self.eoimode = False
            self.cbpr = False
            self.igrpen0 = False
            self.igrpen1 = False
            self.ap = [0, 0]  # active priorities per group: bit k = group priority k << (8 - pre_bits)
            self.irq_level = False
            self.fiq_level = False

    def save_state(self) -> CpuInterfaceState:
        with self.lock:
            return CpuInterfaceState(self.pmr, self.bpr0, self.bpr1, self.eoimode, self.cbpr, self.igrpen0,
                                     self.igrpen1, (self.ap[0], self.ap[1]))  # fmt: skip

    def load_state(self, state: CpuInterfaceState) -> None:
        with self.lock:
            self.pmr, self.bpr0, self.bpr1 = state.pmr, state.bpr0, state.bpr1
            self.eoimode, self.cbpr = state.eoimode, state.cbpr
            self.igrpen0, self.igrpen1 = state.igrpen0, state.igrpen1
            self.ap = list(state.ap)
            self.irq_level = self.fiq_level = False

    # -- priority arithmetic -----------------------------------------------------------
    def group_priority(self, priority: int, group: int) -> int:
        """The preemption part of a priority under the binary point (4.8.5)."""
        if group == 0 or self.cbpr:
            mask = (0xFF << (self.bpr0 + 1)) & 0xFF
        else:
            mask = (0xFF << self.bpr1) & 0xFF
        return priority & mask & self._pri_mask

    def running_priority(self) -> int:
        """ICC_RPR_EL1: the highest active group priority, or 0xFF when idle (4.8.6)."""
        active = self.ap[0] | self.ap[1]
        if not active:
            return IDLE_PRIORITY
        return ((active & -active).bit_length() - 1) << (8 - self.pre_bits)

    def _best(self, group: int) -> tuple[int, int] | None:
        """(priority, INTID) of the best pending interrupt of ``group`` over the sources,
        ties to the lowest INTID; its source is left in ``_best_source`` (no 3-tuple to
        build on the MSI path; the lock is held)."""
        best: tuple[int, int] | None = None
        for src in self.sources:
            cand = src.highest_pending(group)
            if cand is not None and (best is None or cand < best):
                best = cand
                self._best_source = src
        return best

    def _signalled(self, group: int) -> tuple[int, int] | None:
        """The interrupt of ``group`` the CPU would take now, if any (4.8); its source is
        in ``_best_source``."""
        if not (self.igrpen1 if group else self.igrpen0):
            return None
        best = self._best(group)
        if best is None or best[0] & self._pri_mask >= self.pmr:
            return None
        # With no active priority the running priority is idle (0xFF), which every group
        # priority is below: only an active interrupt can block preemption.
        if (self.ap[0] | self.ap[1]) and self.group_priority(best[0], group) >= self.running_priority():
            return None
        return best

    def update(self) -> None:
        """Recompute the IRQ (Group 1) and FIQ (Group 0) lines; called on any change."""
        with self.lock:
            self._update_lines()

    def _update_lines(self) -> None:
        """:meth:`update` for callers that already hold :attr:`lock`."""
        # (_signalled tests the group enables too; testing them here first saves a call)
        irq = self.igrpen1 and self._signalled(1) is not None
        fiq = self.igrpen0 and self._signalled(0) is not None
        if irq != self.irq_level:
            self.irq_level = irq
            self.on_irq(irq)
        if fiq != self.fiq_level:
            self.fiq_level = fiq
            self.on_fiq(fiq)

    def pended(self, priority: int, group: int = 1) -> None:
        """One interrupt of ``group`` and ``priority`` became pending and enabled, and nothing
        else changed: the line can only rise, and only if that interrupt is signalled (the
        checks of :meth:`_signalled` are monotonic in priority), so no source is scanned."""
        with self.lock:
            self.pended_locked(priority, group)

    def pended_locked(self, priority: int, group: int = 1) -> None:
        """:meth:`pended` for callers that already hold :attr:`lock` (a redistributor)."""
        if group:
            if self.irq_level or not self.igrpen1:
                return
        elif self.fiq_level or not self.igrpen0:
            return
        if priority & self._pri_mask >= self.pmr:
            return
        if (self.ap[0] | self.ap[1]) and self.group_priority(priority, group) >= self.running_priority():
            return
        if group:
            self.irq_level = True
            self.on_irq(True)
        else:
            self.fiq_level = True
            self.on_fiq(True)

    # -- acknowledge, priority drop, deactivate ----------------------------------------
    def acknowledge(self, group: int = 1) -> int:
        """ICC_IAR<group>_EL1 (12.2.12): the signalled interrupt becomes active, or 1023."""
        # acquire/release rather than ``with``: on the MSI path, and a ``with`` on a lock
        # costs about 100 ns more in CPython 3.11 (its __exit__ call builds an argument tuple)
        self.lock.acquire()
        try:
            return self._acknowledge(group)
        finally:
            self.lock.release()

    def _acknowledge(self, group: int) -> int:
        sig = self._signalled(group)
        if sig is None:
            return SPURIOUS
        prio, intid = sig
        self._best_source.acknowledge(intid)
        self.ap[group] |= 1 << (self.group_priority(prio, group) >> (8 - self.pre_bits))
        if self.log.wants(_ACKNOWLEDGE):
            self.log.record(_ACKNOWLEDGE, self.source, f"acknowledged INTID {intid} (priority {prio:#x})",
                            intid=intid, cpu=self.index)  # fmt: skip
        # What is still pending of this group has a priority no higher than the one just
        # acknowledged, which is now running: it cannot preempt, the line falls (4.8).
        # The other group's line can only fall too, and only needs a look if it is up.
        if group:
            if self.irq_level:
                self.irq_level = False
                self.on_irq(False)
            if self.fiq_level:
                self._update_lines()
        else:
            if self.fiq_level:
                self.fiq_level = False
                self.on_fiq(False)
            if self.irq_level:
                self._update_lines()
        return intid

    def end_of_interrupt(self, intid: int, group: int = 1) -> None:
        """ICC_EOIR<group>_EL1 (12.2.10): priority drop, and deactivation when EOImode=0."""
        intid &= 0xFFFFFF
        if 1020 <= intid <= 1023:
            return
        self.lock.acquire()  # not ``with``: see acknowledge
        try:
            self._end_of_interrupt(intid, group)
        finally:
            self.lock.release()

    def _end_of_interrupt(self, intid: int, group: int) -> None:
        ap = self.ap[group]
        if not ap:
            self.log.record(Kind.DIAGNOSTIC, self.source,
                            f"EOI of INTID {intid} with no active priority: UNPREDICTABLE, ignored",
                            intid=intid, cpu=self.index, rule="IHI0069 12.2.10")  # fmt: skip
            return
        self.ap[group] = ap & (ap - 1)  # drop the highest active priority
        if self.log.wants(_EOI):
            self.log.record(_EOI, self.source, f"EOI INTID {intid}", intid=intid, cpu=self.index)
        if not self.eoimode and intid < 8192:  # LPIs have no active state
            self._deactivate(intid)
        self._update_lines()

    def deactivate(self, intid: int) -> None:
        """ICC_DIR_EL1 (12.2.8): ignored when EOImode=0."""
        intid &= 0xFFFFFF
        with self.lock:
            if not self.eoimode:
                self.log.record(Kind.DIAGNOSTIC, self.source, f"ICC_DIR_EL1 write of {intid} with EOImode=0: ignored",
                                intid=intid, cpu=self.index, rule="IHI0069 12.2.8")  # fmt: skip
                return
            self._deactivate(intid)
            self._update_lines()

    def _deactivate(self, intid: int) -> None:
        if intid >= 8192:
            return  # LPIs have no active state
        for src in self.sources:
            if src.deactivate(intid):
                if self.log.wants(Kind.DEACTIVATE):
                    self.log.record(Kind.DEACTIVATE, self.source, f"deactivated INTID {intid}",
                                    intid=intid, cpu=self.index)  # fmt: skip
                return

    def highest_pending(self, group: int = 1) -> int:
        """ICC_HPPIR<group>_EL1 (12.2.11): no PMR or preemption check."""
        with self.lock:
            best = self._best(group)
            return SPURIOUS if best is None else best[1]

    # -- system register access (12.2) ---------------------------------------------------
    def _sysreg_table(self) -> tuple[dict[Encoding, Callable[[], int]], dict[Encoding, Callable[[int], None]]]:
        """Every ICC_* register by encoding: what an MRS reads and what an MSR does. The one
        dispatch table for engines (which index it by the instruction's encoding) and for
        :meth:`read_sysreg` / :meth:`write_sysreg`."""
        enc = SYSREG_BY_NAME
        readers: dict[Encoding, Callable[[], int]] = {
            enc["ICC_IAR1_EL1"]: self._read_iar1,
            enc["ICC_IAR0_EL1"]: self._read_iar0,
            enc["ICC_HPPIR1_EL1"]: functools.partial(self.highest_pending, 1),
            enc["ICC_HPPIR0_EL1"]: functools.partial(self.highest_pending, 0),
            enc["ICC_RPR_EL1"]: self.running_priority,
            enc["ICC_PMR_EL1"]: lambda: self.pmr,
            enc["ICC_BPR0_EL1"]: lambda: self.bpr0,
            enc["ICC_BPR1_EL1"]: lambda: min(self.bpr0 + 1, 7) if self.cbpr else self.bpr1,
            enc["ICC_CTLR_EL1"]: self._read_ctlr,
            enc["ICC_SRE_EL1"]: lambda: 0x7,  # SRE, DFB, DIB: the system register interface only
            enc["ICC_IGRPEN0_EL1"]: lambda: int(self.igrpen0),
            enc["ICC_IGRPEN1_EL1"]: lambda: int(self.igrpen1),
            **{enc[f"ICC_AP{g}R{n}_EL1"]: functools.partial(self._ap_word, g, n) for g in (0, 1) for n in range(4)},
        }
        writers: dict[Encoding, Callable[[int], None]] = {
            enc["ICC_SGI1R_EL1"]: functools.partial(self._send_sgi, 1),
            enc["ICC_ASGI1R_EL1"]: functools.partial(self._send_sgi, 1),
            enc["ICC_SGI0R_EL1"]: functools.partial(self._send_sgi, 0),
            enc["ICC_EOIR1_EL1"]: self._write_eoir1,
            enc["ICC_EOIR0_EL1"]: self._write_eoir0,
            enc["ICC_DIR_EL1"]: self.deactivate,
            enc["ICC_PMR_EL1"]: self._write_pmr,
            enc["ICC_BPR0_EL1"]: self._write_bpr0,
            enc["ICC_BPR1_EL1"]: self._write_bpr1,
            enc["ICC_CTLR_EL1"]: self._write_ctlr,
            enc["ICC_IGRPEN0_EL1"]: functools.partial(self._write_igrpen, 0),
            enc["ICC_IGRPEN1_EL1"]: functools.partial(self._write_igrpen, 1),
            enc["ICC_SRE_EL1"]: lambda value: None,  # SRE is RAO/WI: no memory-mapped interface
            **{enc[f"ICC_AP{g}R{n}_EL1"]: functools.partial(self._write_ap, g, n) for g in (0, 1) for n in range(4)},
        }
        for e, name in SYSREG_ENCODINGS.items():  # write-only registers read as zero, read-only ignore writes
            readers.setdefault(e, functools.partial(self._wrong_way, name, "read of write-only", 0))
            writers.setdefault(e, functools.partial(self._ignored_write, name))
        return readers, writers

    def read_sysreg(self, reg: str | Encoding) -> int:
        """An MRS of an ICC_* register, by name or (op0, op1, CRn, CRm, op2) encoding."""
        # an unknown name is the host's mistake (KeyError); an unknown encoding, the guest's
        read = self._readers_by_name[reg] if isinstance(reg, str) else self.sysreg_readers.get(reg)
        return read() if read is not None else self._wrong_way(str(reg), "read of unknown", 0)

    def write_sysreg(self, reg: str | Encoding, value: int) -> None:
        """An MSR to an ICC_* register, by name or encoding."""
        write = self._writers_by_name[reg] if isinstance(reg, str) else self.sysreg_writers.get(reg)
        if write is not None:
            write(value if value >= 0 and not value >> 64 else value & 0xFFFF_FFFF_FFFF_FFFF)
        else:
            self._wrong_way(str(reg), "write of unknown", value)

    # The acknowledge and EOI registers as bound methods: the MSI path's calls (a partial
    # with a keyword argument would copy its keywords on every call)
    def _read_iar1(self) -> int:
        return self.acknowledge(1)

    def _read_iar0(self) -> int:
        return self.acknowledge(0)

    def _write_eoir1(self, value: int) -> None:
        self.end_of_interrupt(value, 1)

    def _write_eoir0(self, value: int) -> None:
        self.end_of_interrupt(value, 0)

    def _wrong_way(self, name: str, what: str, value: int = 0) -> int:
        self.log.record(Kind.DIAGNOSTIC, self.source, f"{what} {name}: {'RAZ' if 'read' in what else 'ignored'}",
                        cpu=self.index, rule="IHI0069 12.2")  # fmt: skip
        return 0

    def _ignored_write(self, name: str, value: int) -> None:
        self._wrong_way(name, "write of read-only", value)

    def _ap_words(self) -> int:
        return 1 << (self.pre_bits - 5)

    def _ap_word(self, group: int, n: int) -> int:
        if n >= self._ap_words():
            return 0
        return (self.ap[group] >> (32 * n)) & 0xFFFFFFFF

    def _read_ctlr(self) -> int:
        """ICC_CTLR_EL1 (12.2.6): CBPR, EOImode, PRIbits, IDbits, A3V."""
        idbits = 0 if self.id_bits <= 16 else 1
        return int(self.cbpr) | int(self.eoimode) << 1 | (self.pri_bits - 1) << 8 | idbits << 11 | 1 << 15

    def _send_sgi(self, group: int, value: int) -> None:
        # Outside this CPU's lock: raising an SGI takes the target redistributors' locks,
        # and two CPUs signalling each other at once must not hold one lock each (ABBA).
        self.on_sgi(self.index, value, group)

    def _write_pmr(self, value: int) -> None:
        with self.lock:
            self.pmr = value & self._pri_mask
            self._update_lines()

    def _write_bpr0(self, value: int) -> None:
        with self.lock:
            self.bpr0 = max(value & 7, self._min_bpr0)
            self._update_lines()

    def _write_bpr1(self, value: int) -> None:
        with self.lock:
            if not self.cbpr:
                self.bpr1 = max(value & 7, self._min_bpr0 + 1)
            self._update_lines()

    def _write_ctlr(self, value: int) -> None:
        with self.lock:
            self.cbpr = bool(value & 1)
            self.eoimode = bool(value & 2)
            self._update_lines()

    def _write_igrpen(self, group: int, value: int) -> None:
        with self.lock:
            if group:
                self.igrpen1 = bool(value & 1)
            else:
                self.igrpen0 = bool(value & 1)
            self._update_lines()

    def _write_ap(self, group: int, n: int, value: int) -> None:
        with self.lock:
            if n < self._ap_words():
                word = 0xFFFFFFFF << (32 * n)
                self.ap[group] = (self.ap[group] & ~word) | ((value & 0xFFFFFFFF) << (32 * n))
            self._update_lines()
