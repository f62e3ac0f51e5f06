"""The CPU interface through ICC_* system registers (IHI 0069 chapter 4, 12.2)."""

from __future__ import annotations

import pytest

from vgic.events import EventLog, Kind
from vgic.gicv3.cpu_interface import SYSREG_BY_NAME, SYSREG_ENCODINGS, CpuInterface, InterruptSource

SPURIOUS = 1023


class Source(InterruptSource):
    """An interrupt source with active state (SPIs/PPIs), for the CPU interface alone."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[int, int]] = {}  # INTID -> (priority, group)
        self.active: set[int] = set()
        self.acked: list[int] = []

    def highest_pending(self, group: int) -> tuple[int, int] | None:
        cands = [(p, i) for i, (p, g) in self.pending.items() if g == group]
        return min(cands) if cands else None

    def acknowledge(self, intid: int) -> None:
        del self.pending[intid]
        self.active.add(intid)
        self.acked.append(intid)

    def deactivate(self, intid: int) -> bool:
        if intid in self.active:
            self.active.remove(intid)
            return True
        return False


class Cpu:
    """A CPU interface over sources, driven only through sysreg names and encodings."""

    def __init__(self, nsrc: int = 1, pri_bits: int = 5, id_bits: int = 16) -> None:
        self.log = EventLog()
        self.srcs = [Source() for _ in range(nsrc)]
        self.ci = CpuInterface(0, list(self.srcs), self.log, pri_bits=pri_bits, id_bits=id_bits)
        self.irq: list[bool] = []
        self.fiq: list[bool] = []
        self.ci.on_irq = self.irq.append
        self.ci.on_fiq = self.fiq.append

    def mrs(self, name: str) -> int:
        enc = SYSREG_BY_NAME[name]
        return self.ci.read_sysreg(SYSREG_ENCODINGS[enc])

    def msr(self, name: str, value: int) -> None:
        enc = SYSREG_BY_NAME[name]
        self.ci.write_sysreg(SYSREG_ENCODINGS[enc], value)

    def pend(self, intid: int, priority: int, group: int = 1, src: int = 0) -> None:
        self.srcs[src].pending[intid] = (priority, group)
        self.ci.update()

    def ready(self, pmr: int = 0xFF) -> Cpu:
        self.msr("ICC_PMR_EL1", pmr)
        self.msr("ICC_IGRPEN1_EL1", 1)
        return self

    def diags(self) -> list[str]:
        return [e.message for e in self.log.of(Kind.DIAGNOSTIC)]


# -- encodings ------------------------------------------------------------------------


def test_sysreg_encodings() -> None:
    assert SYSREG_BY_NAME["ICC_IAR1_EL1"] == (3, 0, 12, 12, 0)
    assert SYSREG_BY_NAME["ICC_EOIR1_EL1"] == (3, 0, 12, 12, 1)
    assert SYSREG_BY_NAME["ICC_HPPIR1_EL1"] == (3, 0, 12, 12, 2)
    assert SYSREG_BY_NAME["ICC_BPR1_EL1"] == (3, 0, 12, 12, 3)
    assert SYSREG_BY_NAME["ICC_CTLR_EL1"] == (3, 0, 12, 12, 4)
    assert SYSREG_BY_NAME["ICC_SRE_EL1"] == (3, 0, 12, 12, 5)
    assert SYSREG_BY_NAME["ICC_IGRPEN1_EL1"] == (3, 0, 12, 12, 7)
    assert SYSREG_BY_NAME["ICC_PMR_EL1"] == (3, 0, 4, 6, 0)
    assert SYSREG_BY_NAME["ICC_DIR_EL1"] == (3, 0, 12, 11, 1)
    assert SYSREG_BY_NAME["ICC_RPR_EL1"] == (3, 0, 12, 11, 3)
    assert SYSREG_BY_NAME["ICC_SGI1R_EL1"] == (3, 0, 12, 11, 5)
    assert SYSREG_BY_NAME["ICC_AP1R0_EL1"] == (3, 0, 12, 9, 0)
    assert SYSREG_BY_NAME["ICC_AP0R0_EL1"] == (3, 0, 12, 8, 4)
    assert SYSREG_BY_NAME["ICC_BPR0_EL1"] == (3, 0, 12, 8, 3)
    assert len(SYSREG_BY_NAME) == len(SYSREG_ENCODINGS)


def test_bad_priority_bits_refused() -> None:
    with pytest.raises(ValueError):
        CpuInterface(0, [], EventLog(), pri_bits=4)


# -- PMR, BPR, CTLR ---------------------------------------------------------------------


def test_pmr_has_five_priority_bits() -> None:
    c = Cpu()
    assert c.mrs("ICC_PMR_EL1") == 0  # reset: everything masked
    c.msr("ICC_PMR_EL1", 0xFF)
    assert c.mrs("ICC_PMR_EL1") == 0xF8
    c.msr("ICC_PMR_EL1", 0x17)
    assert c.mrs("ICC_PMR_EL1") == 0x10
    c.msr("ICC_PMR_EL1", 0x1_00)
    assert c.mrs("ICC_PMR_EL1") == 0


def test_pmr_with_eight_bits() -> None:
    c = Cpu(pri_bits=8)
    c.msr("ICC_PMR_EL1", 0xFF)
    assert c.mrs("ICC_PMR_EL1") == 0xFF
    assert c.mrs("ICC_BPR0_EL1") == 0 and c.mrs("ICC_BPR1_EL1") == 1
    assert c.mrs("ICC_CTLR_EL1") >> 8 & 7 == 7
    # 8 priority bits give 7 preemption bits: 128 levels in AP1R0..AP1R3
    c.msr("ICC_IGRPEN1_EL1", 1)
    c.pend(40, 0xFC)
    c.pend(41, 0x02)
    assert c.mrs("ICC_IAR1_EL1") == 41
    assert c.mrs("ICC_RPR_EL1") == 0x02 and c.mrs("ICC_AP1R0_EL1") == 1 << 1
    c.msr("ICC_EOIR1_EL1", 41)
    assert c.mrs("ICC_IAR1_EL1") == 40
    assert c.mrs("ICC_RPR_EL1") == 0xFC and c.mrs("ICC_AP1R3_EL1") == 1 << 30


def test_binary_point_minimums() -> None:
    c = Cpu()
    assert c.mrs("ICC_BPR0_EL1") == 2 and c.mrs("ICC_BPR1_EL1") == 3  # reset = minimum
    c.msr("ICC_BPR1_EL1", 0)
    c.msr("ICC_BPR0_EL1", 0)
    assert c.mrs("ICC_BPR0_EL1") == 2 and c.mrs("ICC_BPR1_EL1") == 3
    c.msr("ICC_BPR1_EL1", 6)
    c.msr("ICC_BPR0_EL1", 0xF5)  # only [2:0]
    assert c.mrs("ICC_BPR1_EL1") == 6 and c.mrs("ICC_BPR0_EL1") == 5


def test_cbpr_makes_bpr1_an_alias_of_bpr0_plus_one() -> None:
    c = Cpu()
    c.msr("ICC_BPR0_EL1", 4)
    c.msr("ICC_CTLR_EL1", 1)  # CBPR
    assert c.mrs("ICC_BPR1_EL1") == 5
    c.msr("ICC_BPR1_EL1", 7)  # ignored
    c.msr("ICC_BPR0_EL1", 7)
    assert c.mrs("ICC_BPR1_EL1") == 7  # saturates
    c.msr("ICC_CTLR_EL1", 0)
    assert c.mrs("ICC_BPR1_EL1") == 3  # its own value, untouched by the write under CBPR


def test_ctlr_fields() -> None:
    c = Cpu()
    v = c.mrs("ICC_CTLR_EL1")
    assert v & 3 == 0  # CBPR, EOImode reset to 0
    assert v >> 8 & 7 == 4  # PRIbits = 5 - 1
    assert v >> 11 & 7 == 0  # IDbits: 16-bit INTIDs
    assert v >> 15 & 1 == 1  # A3V
    assert v >> 14 & 1 == 0  # SEIS
    c.msr("ICC_CTLR_EL1", 0xFFFF_FFFF)
    w = c.mrs("ICC_CTLR_EL1")
    assert w & 3 == 3 and w & ~3 == v & ~3  # only CBPR and EOImode are writable
    assert Cpu(id_bits=24).mrs("ICC_CTLR_EL1") >> 11 & 7 == 1


def test_sre_and_group_enables() -> None:
    c = Cpu()
    assert c.mrs("ICC_SRE_EL1") & 1 == 1
    c.msr("ICC_SRE_EL1", 0)
    assert c.mrs("ICC_SRE_EL1") & 1 == 1
    assert c.mrs("ICC_IGRPEN1_EL1") == 0
    c.msr("ICC_IGRPEN1_EL1", 3)
    assert c.mrs("ICC_IGRPEN1_EL1") == 1


def test_write_only_and_read_only_misuse_is_diagnosed() -> None:
    c = Cpu()
    assert c.mrs("ICC_EOIR1_EL1") == 0
    assert c.mrs("ICC_DIR_EL1") == 0
    c.msr("ICC_RPR_EL1", 0)
    c.msr("ICC_HPPIR1_EL1", 0)
    assert c.mrs("ICC_RPR_EL1") == 0xFF
    assert len(c.diags()) == 4


# -- acknowledge --------------------------------------------------------------------


def test_iar_spurious_when_nothing_pending() -> None:
    c = Cpu().ready()
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS
    assert c.mrs("ICC_HPPIR1_EL1") == SPURIOUS


def test_iar_masked_by_pmr() -> None:
    c = Cpu().ready(pmr=0x80)
    c.pend(40, 0x80)
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS  # priority must be strictly higher than PMR
    assert c.mrs("ICC_HPPIR1_EL1") == 40  # HPPIR applies no PMR check
    c.msr("ICC_PMR_EL1", 0x88)
    assert c.mrs("ICC_IAR1_EL1") == 40


def test_unimplemented_priority_bits_are_ignored_against_pmr() -> None:
    c = Cpu().ready(pmr=0x88)
    c.pend(40, 0x87)  # 0x87 is 0x80 with 5 priority bits
    assert c.mrs("ICC_IAR1_EL1") == 40


def test_iar_spurious_when_group_disabled() -> None:
    c = Cpu().ready()
    c.msr("ICC_IGRPEN1_EL1", 0)
    c.pend(40, 0x10)
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS
    assert c.srcs[0].pending  # still pending
    c.msr("ICC_IGRPEN1_EL1", 1)
    assert c.mrs("ICC_IAR1_EL1") == 40


def test_iar_spurious_when_not_preempting_running_priority() -> None:
    c = Cpu().ready()
    c.pend(40, 0x40)
    assert c.mrs("ICC_IAR1_EL1") == 40
    c.pend(41, 0x40)  # same group priority: no preemption
    c.pend(42, 0x48)  # lower priority
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS
    c.pend(43, 0x38)  # higher: preempts
    assert c.mrs("ICC_IAR1_EL1") == 43
    c.msr("ICC_EOIR1_EL1", 43)
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.mrs("ICC_IAR1_EL1") == 41


def test_binary_point_decides_preemption() -> None:
    for bpr1, preempts in ((3, True), (4, False)):
        c = Cpu().ready()
        c.msr("ICC_BPR1_EL1", bpr1)  # 4: group priority = [7:4], so 0x40 and 0x48 are one group
        c.pend(40, 0x48)
        assert c.mrs("ICC_IAR1_EL1") == 40
        assert c.mrs("ICC_RPR_EL1") == (0x48 if bpr1 == 3 else 0x40)
        c.pend(41, 0x40)
        assert c.mrs("ICC_IAR1_EL1") == (41 if preempts else SPURIOUS)


def test_highest_priority_wins_ties_to_lowest_intid() -> None:
    c = Cpu(nsrc=2).ready()
    c.pend(50, 0x60, src=0)
    c.pend(45, 0x60, src=1)
    c.pend(47, 0x20, src=0)
    c.pend(46, 0x20, src=1)
    c.pend(44, 0x64, src=0)  # 0x64 is 0x60 with 5 bits, but the full value orders LPIs
    order = []
    for _ in range(5):
        intid = c.mrs("ICC_IAR1_EL1")
        c.msr("ICC_EOIR1_EL1", intid)
        order.append(intid)
    assert order == [46, 47, 45, 50, 44]
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS


def test_hppir_has_no_side_effects() -> None:
    c = Cpu().ready()
    c.pend(40, 0x40)
    assert c.mrs("ICC_HPPIR1_EL1") == 40
    assert c.mrs("ICC_HPPIR1_EL1") == 40
    assert c.srcs[0].pending == {40: (0x40, 1)}
    assert c.mrs("ICC_RPR_EL1") == 0xFF


# -- running priority, AP1R0, EOI, DIR ---------------------------------------------------


def test_rpr_and_ap1r0_after_nested_acknowledges() -> None:
    c = Cpu().ready()
    assert c.mrs("ICC_RPR_EL1") == 0xFF and c.mrs("ICC_AP1R0_EL1") == 0
    c.pend(40, 0x80)
    assert c.mrs("ICC_IAR1_EL1") == 40
    assert c.mrs("ICC_RPR_EL1") == 0x80
    assert c.mrs("ICC_AP1R0_EL1") == 1 << 16  # bit k = priority k << 3
    c.pend(41, 0x40)
    assert c.mrs("ICC_IAR1_EL1") == 41
    assert c.mrs("ICC_RPR_EL1") == 0x40
    assert c.mrs("ICC_AP1R0_EL1") == 1 << 16 | 1 << 8
    c.pend(42, 0x00)
    assert c.mrs("ICC_IAR1_EL1") == 42
    assert c.mrs("ICC_AP1R0_EL1") == 1 << 16 | 1 << 8 | 1
    assert c.mrs("ICC_RPR_EL1") == 0x00
    assert c.mrs("ICC_AP1R1_EL1") == 0  # not implemented with 5 bits
    c.msr("ICC_EOIR1_EL1", 42)
    assert c.mrs("ICC_RPR_EL1") == 0x40
    c.msr("ICC_EOIR1_EL1", 41)
    assert c.mrs("ICC_RPR_EL1") == 0x80 and c.mrs("ICC_AP1R0_EL1") == 1 << 16
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.mrs("ICC_RPR_EL1") == 0xFF and c.mrs("ICC_AP1R0_EL1") == 0
    assert c.srcs[0].active == set()  # EOImode=0: each EOI also deactivated


def test_eoi_drops_the_highest_active_priority() -> None:
    c = Cpu().ready()
    c.pend(40, 0x80)
    c.mrs("ICC_IAR1_EL1")
    c.pend(41, 0x40)
    c.mrs("ICC_IAR1_EL1")
    c.msr("ICC_EOIR1_EL1", 40)  # out of order: UNPREDICTABLE; the highest priority (0x40) drops
    assert c.mrs("ICC_RPR_EL1") == 0x80


def test_ap1r0_write_sets_running_priority() -> None:
    c = Cpu().ready()
    c.msr("ICC_AP1R0_EL1", 1 << 4)
    assert c.mrs("ICC_RPR_EL1") == 0x20
    c.pend(40, 0x20)
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS
    c.msr("ICC_AP1R0_EL1", 0)
    assert c.mrs("ICC_IAR1_EL1") == 40


def test_eoimode1_needs_dir_to_deactivate() -> None:
    c = Cpu().ready()
    c.msr("ICC_CTLR_EL1", 2)  # EOImode=1
    c.pend(40, 0x80)
    assert c.mrs("ICC_IAR1_EL1") == 40
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.mrs("ICC_RPR_EL1") == 0xFF  # priority dropped
    assert c.srcs[0].active == {40}  # still active
    c.msr("ICC_DIR_EL1", 40)
    assert c.srcs[0].active == set()
    assert [e.intid for e in c.log.of(Kind.DEACTIVATE)] == [40]


def test_dir_before_eoi_deactivates_but_keeps_priority() -> None:
    c = Cpu().ready()
    c.msr("ICC_CTLR_EL1", 2)
    c.pend(40, 0x80)
    c.mrs("ICC_IAR1_EL1")
    c.msr("ICC_DIR_EL1", 40)
    assert c.srcs[0].active == set()
    assert c.mrs("ICC_RPR_EL1") == 0x80


def test_dir_ignored_with_eoimode0() -> None:
    c = Cpu().ready()
    c.pend(40, 0x80)
    c.mrs("ICC_IAR1_EL1")
    c.msr("ICC_DIR_EL1", 40)
    assert c.srcs[0].active == {40}
    assert any("ICC_DIR_EL1" in m and "EOImode=0" in m for m in c.diags())
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.srcs[0].active == set()


def test_eoi_with_nothing_active_is_ignored_with_a_diagnostic() -> None:
    c = Cpu().ready()
    c.srcs[0].active.add(40)  # active but no active priority (e.g. restored state)
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.srcs[0].active == {40}
    assert any("no active priority" in m for m in c.diags())
    assert c.log.of(Kind.EOI) == []


def test_eoi_of_special_intids_is_ignored() -> None:
    c = Cpu().ready()
    c.pend(40, 0x80)
    c.mrs("ICC_IAR1_EL1")
    for special in (1020, 1021, 1022, 1023):
        c.msr("ICC_EOIR1_EL1", special)
    assert c.mrs("ICC_RPR_EL1") == 0x80 and c.diags() == []


def test_group0_uses_fiq_and_its_own_registers() -> None:
    c = Cpu().ready()
    c.pend(30, 0x40, group=0)
    assert c.fiq == [] and c.mrs("ICC_IAR0_EL1") == SPURIOUS  # IGRPEN0=0
    assert c.mrs("ICC_IAR1_EL1") == SPURIOUS  # not a Group 1 interrupt
    c.msr("ICC_IGRPEN0_EL1", 1)
    assert c.fiq == [True] and c.irq == []
    assert c.mrs("ICC_HPPIR0_EL1") == 30
    assert c.mrs("ICC_IAR0_EL1") == 30
    assert c.fiq == [True, False]
    assert c.mrs("ICC_AP0R0_EL1") == 1 << 8 and c.mrs("ICC_RPR_EL1") == 0x40
    c.msr("ICC_EOIR0_EL1", 30)
    assert c.mrs("ICC_RPR_EL1") == 0xFF and c.srcs[0].active == set()


# -- the IRQ line ---------------------------------------------------------------------


def test_irq_line_rises_and_falls_exactly_when_it_should() -> None:
    c = Cpu()
    c.pend(40, 0x80)
    assert c.irq == []  # PMR=0, IGRPEN1=0
    c.msr("ICC_PMR_EL1", 0xFF)
    assert c.irq == []
    c.msr("ICC_IGRPEN1_EL1", 1)
    assert c.irq == [True]
    c.pend(41, 0x90)  # lower priority: the line is already up
    c.msr("ICC_PMR_EL1", 0xF0)
    assert c.irq == [True]
    c.msr("ICC_PMR_EL1", 0x80)  # masks 0x80 and 0x90
    assert c.irq == [True, False]
    c.msr("ICC_PMR_EL1", 0xFF)
    assert c.irq == [True, False, True]
    assert c.mrs("ICC_IAR1_EL1") == 40
    assert c.irq == [True, False, True, False]  # 41 does not preempt 0x80
    assert c.ci.irq_level is False
    c.msr("ICC_EOIR1_EL1", 40)
    assert c.irq == [True, False, True, False, True]  # 41 can now be taken
    assert c.mrs("ICC_IAR1_EL1") == 41
    c.msr("ICC_EOIR1_EL1", 41)
    assert c.irq == [True, False, True, False, True, False]
    c.mrs("ICC_HPPIR1_EL1")
    c.msr("ICC_BPR1_EL1", 5)
    assert c.irq == [True, False, True, False, True, False]


def test_irq_line_follows_running_priority_writes() -> None:
    c = Cpu().ready()
    c.pend(40, 0x80)
    assert c.irq == [True]
    c.msr("ICC_AP1R0_EL1", 1)  # running priority 0x00: nothing can preempt
    assert c.irq == [True, False]
    c.msr("ICC_IGRPEN1_EL1", 0)
    c.msr("ICC_AP1R0_EL1", 0)
    assert c.irq == [True, False]
    c.msr("ICC_IGRPEN1_EL1", 1)
    assert c.irq == [True, False, True]


def test_reset_returns_to_architected_state() -> None:
    c = Cpu().ready()
    c.pend(40, 0x80)
    c.mrs("ICC_IAR1_EL1")
    c.msr("ICC_CTLR_EL1", 3)
    c.ci.reset()
    assert c.mrs("ICC_PMR_EL1") == 0 and c.mrs("ICC_RPR_EL1") == 0xFF
    assert c.mrs("ICC_CTLR_EL1") & 3 == 0 and c.mrs("ICC_IGRPEN1_EL1") == 0
    assert c.mrs("ICC_BPR1_EL1") == 3


def test_an_unknown_name_is_a_host_error_an_unknown_encoding_a_guest_diagnostic() -> None:
    """Names are the host's way in (a typo raises); encodings are what a guest's MRS/MSR
    carries, so an encoding that is no ICC_* register reads as zero with a diagnostic."""
    c = Cpu()
    with pytest.raises(KeyError):
        c.ci.read_sysreg("ICC_IAR1")
    with pytest.raises(KeyError):
        c.ci.write_sysreg("ICC_EOIR1", 0)
    bogus = (3, 0, 12, 15, 7)
    assert bogus not in SYSREG_ENCODINGS
    assert c.ci.read_sysreg(bogus) == 0
    c.ci.write_sysreg(bogus, 1)
    diags = [e.message for e in c.log.of(Kind.DIAGNOSTIC)]
    assert any("read of unknown" in m for m in diags) and any("write of unknown" in m for m in diags)
