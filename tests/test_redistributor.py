"""Redistributor LPI support through GICR_* MMIO (IHI 0069 5.1, 12.11)."""

from __future__ import annotations

import pytest

from vgic.events import Kind
from vgic.gic import Gic, GicConfig
from vgic.gicv3.redistributor import (
    ACCESS_UNITS,
    JOB_CHUNK,
    LPI_BASE,
    RD_FRAME_SIZE,
    Redistributor,
    RedistributorConfig,
)
from vgic.memory import GuestMemory

RAM = 0x4000_0000
PROP = RAM + 0x10_0000  # LPI configuration table
PEND = RAM + 0x20_0000  # pending tables, 64 KB apart per CPU

CTLR, IIDR, TYPER, WAKER = 0x00, 0x04, 0x08, 0x14
SETLPIR, CLRLPIR, PROPBASER, PENDBASER = 0x40, 0x48, 0x70, 0x78
INVLPIR, INVALLR, SYNCR = 0xA0, 0xB0, 0xC0
PTZ = 1 << 62


def make_gic(num_cpus: int = 1, **rd: object) -> Gic:
    """A GIC whose redistributors have the direct LPI registers (GICR_TYPER.DirectLPI=1)
    unless ``direct_lpi=False``: most of these tests drive LPIs through them."""
    rd.setdefault("direct_lpi", True)
    mem = GuestMemory()
    mem.add_ram(RAM, 16 << 20)
    return Gic(mem, GicConfig(num_cpus=num_cpus, redistributor=RedistributorConfig(**rd)))  # type: ignore[arg-type]


def program(rd: Redistributor, idbits: int = 16, pend: int | None = None, prop: int = PROP, ptz: bool = False) -> None:
    """PROPBASER/PENDBASER as a driver writes them: 64-bit stores."""
    rd.write(PROPBASER, 8, prop | (idbits - 1))
    table = PEND + rd.index * 0x1_0000 if pend is None else pend
    rd.write(PENDBASER, 8, table | (PTZ if ptz else 0))


def config_lpi(gic: Gic, intid: int, priority: int = 0xA0, enabled: bool = True, prop: int = PROP) -> None:
    gic.memory.write8(prop + intid - LPI_BASE, (priority & 0xFC) | 2 | int(enabled))


def enable(rd: Redistributor) -> None:
    rd.write(CTLR, 4, 1)


def setup(num_cpus: int = 1, idbits: int = 16, **rd: object) -> tuple[Gic, Redistributor]:
    gic = make_gic(num_cpus, **rd)
    gic.memory.fill(PROP, (1 << idbits) - LPI_BASE, 0xA0 | 3)
    for r in gic.redistributors:
        program(r, idbits)
        enable(r)
    for cpu in gic.cpus:
        cpu.write_sysreg("ICC_PMR_EL1", 0xFF)
        cpu.write_sysreg("ICC_IGRPEN1_EL1", 1)
    return gic, gic.redistributors[0]


def dropped(gic: Gic) -> list[int | None]:
    return [e.intid for e in gic.log.of(Kind.LPI_DROPPED)]


def diag_rules(gic: Gic) -> list[str | None]:
    return [e.rule for e in gic.log.of(Kind.DIAGNOSTIC)]


# -- GICR_CTLR ------------------------------------------------------------------------


def test_ctlr_reset_and_capability_bits() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    assert rd.read(CTLR, 4) == 0b110  # EnableLPIs=0, CES=1, IR=1
    program(rd)
    enable(rd)
    assert rd.read(CTLR, 4) == 0b111 and rd.enable_lpis
    rd.write(CTLR, 4, 0)
    assert rd.read(CTLR, 4) == 0b110 and not rd.enable_lpis


def test_ctlr_ir_clear_without_direct_lpi() -> None:
    gic = make_gic(direct_lpi=False)
    assert gic.redistributors[0].read(CTLR, 4) == 0b010


def test_enable_lpis_sticks_when_not_disableable() -> None:
    gic = make_gic(lpis_disableable=False)
    rd = gic.redistributors[0]
    assert rd.read(CTLR, 4) & 0b10 == 0  # CES=0
    program(rd)
    enable(rd)
    rd.write(CTLR, 4, 0)
    assert rd.read(CTLR, 4) & 1 == 1 and rd.enable_lpis
    assert "IHI0069 12.11.2" in diag_rules(gic)


def test_ctlr_upper_half_write_does_not_touch_enable() -> None:
    _gic, rd = setup()
    rd.write(CTLR, 2, 0)  # unsupported width: ignored
    assert rd.enable_lpis


# -- GICR_TYPER, IIDR, WAKER ----------------------------------------------------------


def test_typer_per_cpu() -> None:
    gic = make_gic(num_cpus=10)
    for i, rd in enumerate(gic.redistributors):
        typer = rd.read(TYPER, 8)
        assert typer == rd.read(TYPER, 4) | rd.read(TYPER + 4, 4) << 32
        assert typer & 1 == 1  # PLPIS
        assert typer >> 3 & 1 == 1  # DirectLPI
        assert typer >> 4 & 1 == int(i == 9)  # Last only on the last redistributor
        assert typer >> 8 & 0xFFFF == i  # Processor_Number
        assert typer >> 32 == (i // 8) << 8 | (i % 8)  # Aff1.Aff0 of QEMU virt
    rd = gic.redistributors[0]
    rd.write(TYPER, 8, 0)
    assert rd.read(TYPER, 8) & 1


def test_typer_without_direct_lpi() -> None:
    gic = make_gic(direct_lpi=False)
    assert gic.redistributors[0].read(TYPER, 8) >> 3 & 1 == 0


def test_rd_frame_routing_through_gic() -> None:
    gic = make_gic(num_cpus=3)
    base = gic.config.gicr_base
    for i in range(3):
        assert gic.read(base + i * RD_FRAME_SIZE + TYPER, 4) >> 8 & 0xFFFF == i
    assert gic.read(base + IIDR, 4) == gic.redistributors[0].read(IIDR, 4) != 0
    assert gic.read(base + 0xFFE8, 4) >> 4 & 0xF == 3  # PIDR2.ArchRev = GICv3


def test_waker_processor_sleep_and_children_asleep() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    assert rd.read(WAKER, 4) == 0b110  # ProcessorSleep=1, ChildrenAsleep=1 at reset
    rd.write(WAKER, 4, 0)
    assert rd.read(WAKER, 4) == 0
    rd.write(WAKER, 4, 0b100)  # ChildrenAsleep is RO
    assert rd.read(WAKER, 4) == 0
    rd.write(WAKER, 4, 0b010)
    assert rd.read(WAKER, 4) == 0b110


# -- PROPBASER: IDbits ------------------------------------------------------------------


@pytest.mark.parametrize("idbits", [1, 8, 13])
def test_propbaser_idbits_below_14_means_no_lpis(idbits: int) -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 0x1000, 0xA3)
    program(rd, idbits)
    enable(rd)
    assert rd.enable_lpis
    assert not rd.set_lpi_pending(LPI_BASE)
    rd.write(SETLPIR, 8, LPI_BASE + 1)
    assert rd.pending_lpis == frozenset()
    assert dropped(gic) == [LPI_BASE, LPI_BASE + 1]
    assert "IHI0069 12.11.29" in diag_rules(gic)


def test_propbaser_idbits_14_covers_8192_lpis() -> None:
    gic, rd = setup(idbits=14)
    assert rd.set_lpi_pending(16383)
    assert not rd.set_lpi_pending(16384)
    assert not rd.set_lpi_pending(LPI_BASE - 1)
    assert dropped(gic) == [16384, LPI_BASE - 1]


def test_propbaser_idbits_clamped_to_implemented_bits() -> None:
    gic = make_gic(lpi_id_bits=16)
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 1 << 16, 0xA3)
    program(rd, idbits=32)
    enable(rd)
    assert rd.set_lpi_pending(65535)
    assert not rd.set_lpi_pending(65536)
    assert not rd.set_lpi_pending(1 << 20)
    assert dropped(gic) == [65536, 1 << 20]


def test_propbaser_fields_read_back() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    value = PROP | 0xF | 1 << 10 | 7 << 7  # IDbits, Inner Shareable, RaWaWb
    rd.write(PROPBASER, 8, value)
    assert rd.read(PROPBASER, 8) == value
    rd.write(PROPBASER + 4, 4, 0)  # the upper half alone
    assert rd.read(PROPBASER, 8) == value & 0xFFFF_FFFF


# -- PENDBASER ------------------------------------------------------------------------


def test_pendbaser_ptz_reads_zero() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    attrs = 1 << 10 | 7 << 7  # Inner Shareable, RaWaWb (kept as written)
    rd.write(PENDBASER, 8, PEND | PTZ | attrs)
    assert rd.read(PENDBASER, 8) == PEND | attrs
    assert rd.read(PENDBASER + 4, 4) >> 30 & 1 == 0


def seed(gic: Gic, cpu: int, intids: list[int]) -> None:
    for intid in intids:
        gic.memory.set_bit(PEND + cpu * 0x1_0000 + intid // 8, intid % 8, True)


def test_pending_table_read_on_enable() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 0x1000, 0xA3)
    seed(gic, 0, [8192, 8200, 9000])
    program(rd)
    enable(rd)
    assert rd.pending_lpis == {8192, 8200, 9000}
    assert rd.lpi_config(8200) == 0xA3


def test_pending_table_bits_below_8192_are_ignored() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    seed(gic, 0, [0, 100, 8191])
    program(rd)
    enable(rd)
    assert rd.pending_lpis == frozenset()


def test_ptz_skips_the_pending_table_scan() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 0x1000, 0xA3)
    seed(gic, 0, [8200])
    program(rd, ptz=True)
    enable(rd)
    assert rd.pending_lpis == frozenset()


def test_pending_table_written_back_on_disable_and_reloaded() -> None:
    gic, rd = setup()
    seed_bits = PEND
    rd.write(SETLPIR, 8, 8300)
    rd.write(SETLPIR, 8, 8195)
    rd.write(CTLR, 4, 0)
    assert rd.pending_lpis == frozenset()
    assert gic.memory.read8(seed_bits + 8300 // 8) == 1 << (8300 % 8)
    assert gic.memory.read8(seed_bits + 8195 // 8) == 1 << (8195 % 8)
    enable(rd)
    assert rd.pending_lpis == {8195, 8300}


def test_acknowledged_lpi_bit_cleared_on_write_back() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 0x1000, 0xA3)
    seed(gic, 0, [8192, 8193])
    program(rd)
    enable(rd)
    cpu = gic.cpus[0]
    cpu.write_sysreg("ICC_PMR_EL1", 0xFF)
    cpu.write_sysreg("ICC_IGRPEN1_EL1", 1)
    assert cpu.read_sysreg("ICC_IAR1_EL1") == 8192
    rd.write(CTLR, 4, 0)
    assert gic.memory.read8(PEND + 8192 // 8) == 0b10  # 8192 gone, 8193 kept


def test_base_registers_ignored_while_enabled() -> None:
    gic, rd = setup()
    prop, pend = rd.read(PROPBASER, 8), rd.read(PENDBASER, 8)
    rd.write(PROPBASER, 8, RAM + 0x80_0000 | 13)
    rd.write(PENDBASER, 8, RAM + 0x90_0000)
    rd.write(PROPBASER, 4, 0)
    assert (rd.read(PROPBASER, 8), rd.read(PENDBASER, 8)) == (prop, pend)
    rules = diag_rules(gic)
    assert "IHI0069 12.11.29" in rules and "IHI0069 12.11.28" in rules
    rd.write(CTLR, 4, 0)
    rd.write(PROPBASER, 8, RAM + 0x80_0000 | 13 | 7 << 7)
    assert rd.read(PROPBASER, 8) == RAM + 0x80_0000 | 13 | 7 << 7


# -- direct LPI registers ---------------------------------------------------------------


def test_setlpir_clrlpir() -> None:
    _gic, rd = setup()
    rd.write(SETLPIR, 8, 8192)
    rd.write(SETLPIR, 4, 8193)  # a 32-bit store to the low half
    assert rd.pending_lpis == {8192, 8193}
    rd.write(SETLPIR, 8, 8192)  # already pending: no change
    rd.write(CLRLPIR, 8, 8192)
    assert rd.pending_lpis == {8193}
    rd.write(CLRLPIR, 8, 9999)  # not pending: nothing happens
    assert rd.pending_lpis == {8193}
    assert rd.read(SETLPIR, 8) == 0 and rd.read(CLRLPIR, 8) == 0  # write-only
    assert rd.read(SYNCR, 4) == 0  # never busy: effects are synchronous


def test_setlpir_out_of_range_dropped() -> None:
    gic, rd = setup()
    rd.write(SETLPIR, 8, 100)
    rd.write(SETLPIR, 8, 1 << 16)
    assert rd.pending_lpis == frozenset()
    assert dropped(gic) == [100, 1 << 16]


def test_lpis_dropped_while_enable_lpis_is_zero() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    program(rd)
    assert not rd.set_lpi_pending(8192)
    rd.write(SETLPIR, 8, 8193)
    assert rd.pending_lpis == frozenset()
    events = gic.log.of(Kind.LPI_DROPPED)
    assert [e.intid for e in events] == [8192, 8193]
    assert all(e.cpu == 0 and "EnableLPIs=0" in e.message for e in events)


def test_direct_registers_ignored_without_direct_lpi() -> None:
    gic, rd = setup(direct_lpi=False)
    rd.write(SETLPIR, 8, 8192)
    assert rd.pending_lpis == frozenset()
    assert rd.set_lpi_pending(8192)  # the ITS path still works
    config_lpi(gic, 8192, enabled=False)
    rd.write(INVLPIR, 8, 8192)
    rd.write(INVALLR, 8, 0)
    assert rd.lpi_config(8192) == 0xA3  # not reloaded
    rd.write(CLRLPIR, 8, 8192)
    assert rd.pending_lpis == {8192}
    msgs = [e.message for e in gic.log.of(Kind.DIAGNOSTIC)]
    for reg in ("SETLPIR", "INVLPIR", "INVALLR", "CLRLPIR"):
        assert any(f"GICR_{reg}" in m and "DirectLPI=0" in m for m in msgs)


# -- configuration caching ----------------------------------------------------------------


def test_configuration_cached_until_invlpir() -> None:
    gic, rd = setup()
    cpu = gic.cpus[0]
    rd.write(SETLPIR, 8, 8200)
    rd.write(SETLPIR, 8, 8201)
    config_lpi(gic, 8201, priority=0x20)  # raise 8201's priority in memory only
    assert cpu.read_sysreg("ICC_HPPIR1_EL1") == 8200  # the cached config still applies
    rd.write(INVLPIR, 8, 8201)
    assert rd.lpi_config(8201) == 0x23
    assert cpu.read_sysreg("ICC_HPPIR1_EL1") == 8201


def test_configuration_disable_needs_invalidation() -> None:
    gic, rd = setup()
    cpu = gic.cpus[0]
    rd.write(SETLPIR, 8, 8200)
    config_lpi(gic, 8200, enabled=False)
    assert cpu.irq_level and cpu.read_sysreg("ICC_HPPIR1_EL1") == 8200
    rd.write(INVALLR, 8, 0)
    assert not cpu.irq_level and cpu.read_sysreg("ICC_HPPIR1_EL1") == 1023
    assert rd.pending_lpis == {8200}  # still pending, just disabled
    config_lpi(gic, 8200, priority=0x40)
    rd.write(INVALLR, 4, 0)
    assert cpu.read_sysreg("ICC_IAR1_EL1") == 8200


def test_configuration_read_when_lpi_becomes_pending() -> None:
    gic, rd = setup()
    config_lpi(gic, 8200, priority=0x10)
    rd.write(SETLPIR, 8, 8200)  # not cached before: read now, no INV needed
    assert rd.lpi_config(8200) == 0x13
    rd.write(CLRLPIR, 8, 8200)
    assert rd.lpi_config(8200) is None  # forgotten when no longer pending
    config_lpi(gic, 8200, priority=0x30)
    rd.write(SETLPIR, 8, 8200)
    assert rd.lpi_config(8200) == 0x33


def test_invlpir_of_a_not_pending_lpi_is_harmless() -> None:
    _gic, rd = setup()
    rd.write(INVLPIR, 8, 8300)
    rd.write(INVLPIR, 8, 5)
    assert rd.pending_lpis == frozenset() and rd.lpi_config(8300) is None


# -- faulting tables -----------------------------------------------------------------------


def test_faulting_configuration_table_never_raises() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    program(rd, prop=0x1000_0000)  # no RAM there
    enable(rd)
    rd.write(SETLPIR, 8, 8192)
    assert rd.pending_lpis == {8192}
    assert rd.lpi_config(8192) == 0  # treated as disabled
    rd.write(INVLPIR, 8, 8192)
    rd.write(INVALLR, 8, 0)
    assert "IHI0069 5.1.1" in diag_rules(gic)


def test_faulting_pending_table_never_raises() -> None:
    gic = make_gic()
    rd = gic.redistributors[0]
    gic.memory.fill(PROP, 0x1000, 0xA3)
    program(rd, pend=0x7_0000_0000)  # no RAM there
    enable(rd)
    rd.write(SETLPIR, 8, 8192)
    rd.write(CTLR, 4, 0)
    enable(rd)
    assert sum(r == "IHI0069 5.1.2" for r in diag_rules(gic)) >= 2
    # a pending table straddling the end of RAM: the in-RAM part is still read
    gic2 = make_gic()
    rd2 = gic2.redistributors[0]
    gic2.memory.fill(PROP, 0x1000, 0xA3)
    table = RAM + (16 << 20) - 0x1_0000
    gic2.memory.set_bit(table + 8192 // 8, 0, True)
    program(rd2, idbits=20, pend=table)
    enable(rd2)
    assert 8192 in rd2.pending_lpis


# -- MOVI/MOVALL's redistributor side ----------------------------------------------------


def test_move_pending_to_or_keeps_when_target_ignores() -> None:
    gic, rd0 = setup(num_cpus=2)
    rd1 = gic.redistributors[1]
    rd0.write(SETLPIR, 8, 8192)
    rd0.write(SETLPIR, 8, 8193)
    rd1.write(SETLPIR, 8, 8193)
    assert rd0.move_pending_to(rd1) == 2
    assert rd0.pending_lpis == frozenset() and rd1.pending_lpis == {8192, 8193}
    rd0.write(CTLR, 4, 0)
    assert rd1.move_pending_to(rd0, [8192]) == 0  # rd0 would ignore it: it stays
    assert rd1.pending_lpis == {8192, 8193}


# -- priority order without scans ---------------------------------------------------------


def ranked(rd: Redistributor) -> int:
    """How many INTIDs the priority levels hold (each must be a pending, enabled LPI)."""
    return sum(1 for level in rd._levels.values() for _ in level)


def test_priority_levels_hold_exactly_the_pending_lpis_over_set_clear_cycles() -> None:
    """Removals are exact: host memory follows pending LPIs, not history."""
    gic, rd = setup()
    gic.cpus[0].write_sysreg("ICC_IGRPEN1_EL1", 0)  # nobody acknowledges
    for round_ in range(200):
        for intid in range(8192, 8192 + 50):
            rd.write(SETLPIR, 8, intid)
        for intid in range(8192, 8192 + 50):
            rd.write(CLRLPIR, 8, intid)
            assert ranked(rd) == len(rd.pending_lpis), round_
    assert rd.pending_lpis == frozenset()
    assert rd._priorities == [] and rd.highest_pending(1) is None  # levels stay, emptied


def test_priority_levels_exact_across_invalidations() -> None:
    gic, rd = setup()
    gic.cpus[0].write_sysreg("ICC_IGRPEN1_EL1", 0)
    rd.write(SETLPIR, 8, 8192)
    for i in range(500):
        config_lpi(gic, 8192, priority=(i % 16) << 4)
        rd.write(INVLPIR, 8, 8192)
        assert ranked(rd) == 1 and rd.highest_pending_lpi() == ((i % 16) << 4, 8192)
        assert rd._priorities == [(i % 16) << 4]  # only the level that holds it


def test_many_pending_lpis_acknowledged_in_order() -> None:
    n = 50_000
    gic, rd = setup()
    # priorities cycle over 8 levels: order is (priority, INTID)
    prios = bytes(((i % 8) << 5) | 3 for i in range(n))
    gic.memory.write_bytes(PROP, prios)
    for intid in range(LPI_BASE, LPI_BASE + n):
        rd.set_lpi_pending(intid)
    cpu = gic.cpus[0]
    got = []
    for _ in range(n):
        intid = cpu.read_sysreg("ICC_IAR1_EL1")
        cpu.write_sysreg("ICC_EOIR1_EL1", intid)
        got.append(intid)
    assert ranked(rd) == 0
    assert cpu.read_sysreg("ICC_IAR1_EL1") == 1023
    expected = sorted(range(LPI_BASE, LPI_BASE + n), key=lambda i: (((i - LPI_BASE) % 8) << 5, i))
    assert got == expected


# -- pending state in chunks: jobs take it a chunk at a time -----------------------------


def test_lpis_pended_while_a_movall_runs_are_never_lost_nor_on_both() -> None:
    """A move visits the pending LPIs a chunk of 1,024 INTIDs at a time (no copy of the
    whole set at the start); LPIs made pending meanwhile, in visited chunks and in chunks
    still to come, end up pending on exactly one of the two redistributors."""
    gic, rd0 = setup(num_cpus=2)
    rd1 = gic.redistributors[1]
    for cpu in gic.cpus:
        cpu.write_sysreg("ICC_IGRPEN1_EL1", 0)  # nobody acknowledges
    first = set(range(LPI_BASE, LPI_BASE + 5000, 3))
    for intid in first:
        rd0.set_lpi_pending(intid)
    ident = rd0.start_move_all(rd1)
    # new INTIDs (not among the first), all over the space: in visited chunks and ahead
    order = [LPI_BASE + 1 + 3 * ((k * 7919) % 4000) for k in range(4000)]
    late: set[int] = set()
    step = 0
    while not rd0.job_done(ident):
        rd0.work(1)
        rd0.set_lpi_pending(order[step])
        late.add(order[step])
        step += 1
    assert step > 100 and not late & first  # the move ran over many units
    on0, on1 = rd0.pending_lpis, rd1.pending_lpis
    assert not on0 & on1
    assert on0 | on1 == first | late
    assert first - late <= on1  # what was pending when it started has moved
    for rd in (rd0, rd1):  # every pending LPI is ranked and cached
        assert ranked(rd) == len(rd.pending_lpis)
        assert all(rd.lpi_config(i) == 0xA3 for i in rd.pending_lpis)


def test_a_snapshot_taken_mid_job_lists_what_its_chunks_hold() -> None:
    """Saved mid-way, a reload, a move and a write-back carry their remaining LPIs as
    plain INTID lists, and a restored GIC finishes them with the same result."""
    gic, rd0 = setup(num_cpus=2)
    rd1 = gic.redistributors[1]
    for cpu in gic.cpus:
        cpu.write_sysreg("ICC_IGRPEN1_EL1", 0)
    for intid in range(LPI_BASE, LPI_BASE + 4000, 2):
        rd0.set_lpi_pending(intid)
    ident = rd0.start_move_all(rd1)
    for _ in range(10):
        rd0.work(1)
    state = gic.save_state()
    (job,) = [j for j in state.redistributors[0].jobs if j.ident == ident]
    assert not job.chunks and job.intids  # listed, not chunk numbers
    assert set(job.intids) | rd1.pending_lpis == set(range(LPI_BASE, LPI_BASE + 4000, 2))
    other = make_gic(2)
    other.load_state(state)
    for g in (gic, other):
        while not g.redistributors[0].job_done(ident):
            g.redistributors[0].work(64)
    assert other.redistributors[1].pending_lpis == rd1.pending_lpis == frozenset(range(LPI_BASE, LPI_BASE + 4000, 2))
    assert not other.redistributors[0].pending_lpis and not rd0.pending_lpis
    # a write-back: EnableLPIs=0 hands the chunks to the job, which drains them
    rd1.write(0, 4, 0)
    saved = gic.save_state().redistributors[1].jobs
    (wb,) = [j for j in saved if j.kind == "writeback"]
    # the disabling access already wrote ACCESS_UNITS units of bits; the rest are listed
    assert not wb.bags_set and set(wb.intids) < set(range(LPI_BASE, LPI_BASE + 4000, 2))
    assert len(wb.intids) == 2000 - ACCESS_UNITS * JOB_CHUNK
