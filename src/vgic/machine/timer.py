"""The Arm generic timer of one CPU: counter and the EL1 physical and virtual timers.

The machine answers the EL1 timer registers (CNTP_*, CNTV_*) and CNTPCT_EL0 from here
(Arm ARM D11), with the count of one clock the machine chooses (host time at CNTFRQ, as
QEMU does), and the timer outputs drive the GIC's PPIs: the virtual timer is PPI 27 and
the EL1 physical timer PPI 30 on QEMU's virt machine. An output is asserted while
ENABLE=1, IMASK=0 and the count has reached CVAL; ISTATUS shows the condition whatever
IMASK says. Between register writes nothing changes but the count, so the model keeps
the count at which an output next rises (:attr:`GenericTimer.deadline`) and the machine
looks at a timer only once that count is reached (:meth:`GenericTimer.poll`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vgic.checks import FieldError, mapping, only, req, uint

CNTFRQ = 62_500_000
VIRTUAL_TIMER_PPI = 27
PHYS_TIMER_PPI = 30

CTL_ENABLE = 1
CTL_IMASK = 2
CTL_ISTATUS = 4

# (op0, op1, CRn, CRm, op2) of the registers answered here
CNTFRQ_EL0 = (3, 3, 14, 0, 0)
CNTPCT_EL0 = (3, 3, 14, 0, 1)
CNTVCT_EL0 = (3, 3, 14, 0, 2)
CNTP_TVAL_EL0 = (3, 3, 14, 2, 0)
CNTP_CTL_EL0 = (3, 3, 14, 2, 1)
CNTP_CVAL_EL0 = (3, 3, 14, 2, 2)
CNTV_TVAL_EL0 = (3, 3, 14, 3, 0)
CNTV_CTL_EL0 = (3, 3, 14, 3, 1)
CNTV_CVAL_EL0 = (3, 3, 14, 3, 2)
TIMER_SYSREGS = {CNTFRQ_EL0, CNTPCT_EL0, CNTVCT_EL0, CNTP_TVAL_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0,
                 CNTV_TVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0}  # fmt: skip


@dataclass
class _Timer:
    ctl: int = 0
    cval: int = 0

    def fired(self, now: int) -> bool:
        return bool(self.ctl & CTL_ENABLE) and now >= self.cval

    def level(self, now: int) -> bool:
        return self.fired(now) and not self.ctl & CTL_IMASK


@dataclass(frozen=True)
class GenericTimerState:
    """The saved EL1 physical and virtual timers: CNTP_CTL_EL0/CNTV_CTL_EL0 (ENABLE and
    IMASK; ISTATUS is computed) and CNTP_CVAL_EL0/CNTV_CVAL_EL0."""

    phys_ctl: int
    phys_cval: int
    virt_ctl: int
    virt_cval: int

    def to_dict(self) -> dict[str, int]:
        return {"phys_ctl": self.phys_ctl, "phys_cval": self.phys_cval, "virt_ctl": self.virt_ctl,
                "virt_cval": self.virt_cval}  # fmt: skip

    @classmethod
    def from_dict(cls, d: object) -> GenericTimerState:
        """CTL holds only ENABLE and IMASK (ISTATUS is read-only: Arm ARM, CNTP_CTL_EL0),
        CVAL is a 64-bit count."""
        m = mapping(d)
        only(m, ("phys_ctl", "phys_cval", "virt_ctl", "virt_cval"))
        for name in ("phys_ctl", "virt_ctl"):
            ctl = uint(req(m, name), 64, name)
            if ctl & ~(CTL_ENABLE | CTL_IMASK):
                raise FieldError(name, f"{ctl:#x} sets bits other than ENABLE and IMASK")
        return cls(
            phys_ctl=uint(m["phys_ctl"], 2),
            phys_cval=uint(req(m, "phys_cval"), 64, "phys_cval"),
            virt_ctl=uint(m["virt_ctl"], 2),
            virt_cval=uint(req(m, "virt_cval"), 64, "virt_cval"),
        )


class GenericTimer:
    """One CPU's timers. ``clock()`` returns the system count; ``set_ppi(intid, level)``."""

    def __init__(self, clock: Callable[[], int], set_ppi: Callable[[int, bool], None]) -> None:
        self.clock = clock
        self.set_ppi = set_ppi
        self.phys = _Timer()
        self.virt = _Timer()
        self._levels = {PHYS_TIMER_PPI: False, VIRTUAL_TIMER_PPI: False}
        self.deadline: int | None = None  # the count at which an output will rise, if any
        self.on_deadline: Callable[[], None] = lambda: None  # told when ``deadline`` changes

    def save_state(self) -> GenericTimerState:
        return GenericTimerState(self.phys.ctl, self.phys.cval, self.virt.ctl, self.virt.cval)

    def load_state(self, state: GenericTimerState) -> None:
        self.phys = _Timer(state.phys_ctl, state.phys_cval)
        self.virt = _Timer(state.virt_ctl, state.virt_cval)
        self._levels = {PHYS_TIMER_PPI: False, VIRTUAL_TIMER_PPI: False}
        self.update()

    def _timer(self, crm: int) -> _Timer:
        return self.phys if crm == 2 else self.virt

    def read(self, enc: tuple[int, int, int, int, int]) -> int:
        now = self.clock()
        if enc == CNTFRQ_EL0:
            return CNTFRQ
        if enc in (CNTPCT_EL0, CNTVCT_EL0):
            return now
        t = self._timer(enc[3])
        if enc[4] == 0:
            return (t.cval - now) & 0xFFFF_FFFF
        if enc[4] == 1:
            return (t.ctl & 3) | (CTL_ISTATUS if t.fired(now) else 0)
        return t.cval

    def write(self, enc: tuple[int, int, int, int, int], value: int) -> None:
        if enc in (CNTFRQ_EL0, CNTPCT_EL0, CNTVCT_EL0):
            return  # CNTFRQ_EL0 is writable only at the highest EL; the counts are RO
        t = self._timer(enc[3])
        if enc[4] == 0:
            tval = value & 0xFFFF_FFFF
            tval -= (tval & 0x8000_0000) << 1
            t.cval = (self.clock() + tval) & 0xFFFF_FFFF_FFFF_FFFF
        elif enc[4] == 1:
            t.ctl = value & 3
        else:
            t.cval = value & 0xFFFF_FFFF_FFFF_FFFF
        self.update()

    def update(self, now: int | None = None) -> None:
        """Drive the PPI lines from the count (``now``, else the clock's)."""
        if now is None:
            now = self.clock()
        deadline = None
        for intid, t in ((PHYS_TIMER_PPI, self.phys), (VIRTUAL_TIMER_PPI, self.virt)):
            level = t.level(now)
            if level != self._levels[intid]:
                self._levels[intid] = level
                self.set_ppi(intid, level)
            if not level and t.ctl & CTL_ENABLE and not t.ctl & CTL_IMASK and (deadline is None or t.cval < deadline):
                deadline = t.cval
        if deadline != self.deadline:
            self.deadline = deadline
            self.on_deadline()

    def poll(self, now: int) -> None:
        """:meth:`update` if the deadline has been reached: the only change time makes."""
        if self.deadline is not None and now >= self.deadline:
            self.update(now)

    def next_deadline(self) -> int | None:
        """The earliest count at which an output will rise, if any."""
        return self.deadline
