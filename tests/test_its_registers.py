"""GITS_* registers (IHI 0069 12.19): reset values, access widths, write rules, the queue.

Field positions come from the Arm register pages (docs/spec-notes.md sections 2-4, 9);
the tests decode them independently of the model.
"""

from __future__ import annotations

import pytest

from conftest import (
    GITS_BASER,
    GITS_CBASER,
    GITS_CREADR,
    GITS_CTLR,
    GITS_CWRITER,
    GITS_IIDR,
    GITS_PIDR2,
    GITS_TRANSLATER,
    GITS_TYPER,
    LPI,
    RAM_BASE,
    Env,
    build,
    its_config,
    stalling,
)
from vgic.gicv3.attributes import sanitise_inner_cache, sanitise_outer_cache, sanitise_shareability
from vgic.its import commands as C
from vgic.its.registers import ItsTyper

QUIESCENT = 1 << 31
VALID = 1 << 63
INDIRECT = 1 << 62


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def baser_of_type(e: Env, kind: int) -> int:
    """Offset of the GITS_BASER<n> whose Type field is ``kind`` (found the way Linux does)."""
    for n in range(8):
        if bits(e.read64(GITS_BASER + 8 * n), 58, 56) == kind:
            return GITS_BASER + 8 * n
    raise AssertionError(f"no GITS_BASER of type {kind}")


def table_value(base: int, *, page_code: int = 0, size: int = 0, kind: int = 1) -> int:
    """A Valid GITS_BASER value with cacheable, inner-shareable attributes."""
    return VALID | 7 << 59 | kind << 56 | 7 << 48 | base | 1 << 10 | page_code << 8 | size


def program_tables(e: Env, *, cbaser: bool = True, device: bool = True, collection: bool = True) -> None:
    if cbaser:
        e.write64(GITS_CBASER, VALID | 7 << 59 | e.heap.alloc(4096, 65536) | 1 << 10)
    if device:
        e.write64(baser_of_type(e, 1), table_value(e.heap.alloc(4096, 65536), kind=1))
    if collection:
        e.write64(baser_of_type(e, 4), table_value(e.heap.alloc(4096, 65536), kind=4))


# == reset values and identification ====================================================


def test_ctlr_resets_quiescent_and_disabled(env: Env) -> None:
    assert env.read(GITS_CTLR) == QUIESCENT  # Quiescent[31]=1, Enabled[0]=0 (GIC-600: 0x80000000)


@pytest.mark.parametrize(
    "typer",
    [
        ItsTyper(),
        ItsTyper(devbits=20, idbits=24, cidbits=8, itt_entry_size=16, pta=True, hcc=0, seis=True),
        ItsTyper(devbits=8, idbits=10, cil=False, itt_entry_size=12, hcc=32),
        ItsTyper(devbits=32, idbits=32, cidbits=16, itt_entry_size=8, hcc=255),
    ],
    ids=["default", "wide-pta-seis", "cil0-hcc", "max"],
)
def test_typer_fields(make_env: object, typer: ItsTyper) -> None:
    e = build(stalling(typer=typer))
    v = e.read64(GITS_TYPER)
    assert v == e.read(GITS_TYPER, 8), "two 32-bit halves and a 64-bit read agree"
    assert bits(v, 0, 0) == 1  # Physical
    assert bits(v, 1, 1) == 0  # Virtual: GICv3 only
    assert bits(v, 7, 4) == typer.itt_entry_size - 1
    assert bits(v, 12, 8) == typer.idbits - 1
    assert bits(v, 17, 13) == typer.devbits - 1
    assert bits(v, 18, 18) == int(typer.seis)
    assert bits(v, 19, 19) == int(typer.pta)
    assert bits(v, 23, 20) == 0  # RES0
    assert bits(v, 31, 24) == typer.hcc
    assert bits(v, 36, 36) == int(typer.cil)
    # CIDbits is RES0 when CIL == 0 (ICIDs are then 16 bits)
    assert bits(v, 35, 32) == (typer.cidbits - 1 if typer.cil else 0)
    assert bits(v, 63, 37) == 0  # no GICv4 / v4.1 / MPAM features


def test_typer_cct_reports_cumulative_hardware_collections() -> None:
    """With HCC != 0 and a collection table, ICIDs below HCC live in the ITS and the
    others in memory: the total is cumulative, which GITS_TYPER.CCT=1 reports (CCT=0 means
    memory alone determines the number of collections: GIC-600 TRM 4.6.2). HCC=0 makes
    CCT RES0."""
    assert bits(build(its_config(hcc=4)).read(GITS_TYPER), 2, 2) == 1
    assert bits(build(its_config(hcc=0)).read(GITS_TYPER), 2, 2) == 0


def test_iidr_is_read_only(env: Env) -> None:
    iidr = env.read(GITS_IIDR)
    assert iidr != 0  # an implementer must be identified
    env.write(GITS_IIDR, ~iidr & 0xFFFFFFFF)
    assert env.read(GITS_IIDR) == iidr
    assert any("read-only" in d.message for d in env.diags())


def test_pidr2_archrev_is_gicv3(env: Env) -> None:
    assert bits(env.read(GITS_PIDR2), 7, 4) == 3  # ArchRev: 0x3 = GICv3
    # CoreSight component ID preamble in CIDR0..3 (0xFFF0..0xFFFC)
    assert [env.read(0xFFF0 + 4 * i) for i in range(4)] == [0x0D, 0xF0, 0x05, 0xB1]


def test_basers_reset_with_type_and_entry_size(env: Env) -> None:
    types = [bits(env.read64(GITS_BASER + 8 * n), 58, 56) for n in range(8)]
    assert sorted(t for t in types if t) == [1, 4]  # one Device and one Collection table
    for n, t in enumerate(types):
        v = env.read64(GITS_BASER + 8 * n)
        assert not v >> 63  # Valid resets to 0
        if t:
            assert bits(v, 52, 48) == 8 - 1  # 8-byte entries (docs: tables.py)
        else:
            assert v == 0  # unimplemented: RES0


def test_cbaser_creadr_cwriter_reset(env: Env) -> None:
    assert env.read64(GITS_CBASER) >> 63 == 0
    assert env.read64(GITS_CREADR) == 0


# == access widths =======================================================================


@pytest.mark.parametrize("offset", [GITS_CBASER, GITS_BASER, GITS_BASER + 8])
def test_64bit_register_as_two_halves(env: Env, offset: int) -> None:
    """Low half then high half, as a CPU engine splits a 64-bit store (12.1.3)."""
    base = env.heap.alloc(65536, 65536)
    value = VALID | 5 << 59 | base | 1 << 10 | 3  # RaWaWt/inner, InnerCache 5 is kept as is
    ro = env.read64(offset) & (7 << 56 | 0x1F << 48)
    env.write(offset, value & 0xFFFFFFFF)
    assert env.read(offset) == value & 0xFFFFFFFF
    assert not env.read(offset + 4) >> 31, "Valid is in the high half, not yet written"
    env.write(offset + 4, value >> 32)
    assert env.read(offset + 4) == (value | ro) >> 32
    assert env.read(offset, 8) == value | ro
    assert env.read64(offset) == value | ro


def test_cwriter_as_two_halves_and_64bit(env: Env) -> None:
    env.bring_up()
    at = env.cwriter
    env.d.mem.write_bytes(env.d.queue_base + at, C.encode(C.Sync(0)))
    env.write(GITS_CWRITER, at + 0x20)  # low half alone moves the queue
    assert env.read(GITS_CREADR) == at + 0x20
    env.write(GITS_CWRITER + 4, 0xFFFFFFFF)  # bits [63:32] are RES0
    assert env.read(GITS_CWRITER + 4) == 0
    assert env.read(GITS_CWRITER, 8) == at + 0x20
    env.d.mem.write_bytes(env.d.queue_base + at + 0x20, C.encode(C.Sync(0)))
    env.write(GITS_CWRITER, at + 0x40, size=8)
    assert env.read(GITS_CREADR, 8) == at + 0x40


def test_64bit_read_of_32bit_registers(env: Env) -> None:
    v = env.read(GITS_CTLR, 8)
    assert v == env.read(GITS_CTLR) | env.read(GITS_IIDR) << 32
    assert v & 0xFFFFFFFF == QUIESCENT
    assert any("64-bit read" in d.message for d in env.diags())


def test_64bit_write_of_32bit_register_is_split(env: Env) -> None:
    program_tables(env)
    iidr = env.read(GITS_IIDR)
    env.write(GITS_CTLR, 0xFFFF_FFFF_0000_0001, size=8)  # CTLR.Enabled=1, IIDR (RO) ignored
    assert env.read(GITS_CTLR) & 1
    assert env.read(GITS_IIDR) == iidr


@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("offset", [GITS_CTLR, GITS_TYPER, GITS_CBASER, GITS_CWRITER, GITS_BASER, GITS_PIDR2])
def test_narrow_accesses_are_raz_wi_with_diagnostic(env: Env, offset: int, size: int) -> None:
    program_tables(env)
    before = {o: env.read64(o) for o in (GITS_CTLR, GITS_CBASER, GITS_CWRITER, GITS_BASER)}
    n = len(env.diags())
    assert env.read(offset, size) == 0
    assert len(env.diags()) == n + 1
    env.write(offset, 0xFFFF, size)
    assert len(env.diags()) == n + 2
    assert {o: env.read64(o) for o in before} == before  # CTLR.Enabled not set either


def test_16bit_translater_write_is_an_msi_with_zero_upper_bits(env: Env) -> None:
    """16-bit access to GITS_TRANSLATER[15:0] must be supported; bits [31:16] are written
    as zero (ARM-REG gits_translater)."""
    env.bring_up()
    env.map_events(0, 4, {3: (LPI + 3, 1)})
    env.write(GITS_TRANSLATER, 0x0003, size=2)
    assert env.drain_all() == {1: [LPI + 3]}
    # no access-width diagnostic (the only one is the missing SYNC after MAPTI, 6.3.13)
    assert [d.rule for d in env.diags()] == ["IHI0069 6.3.13"]


@pytest.mark.parametrize(
    "offset",
    [0x0014, 0x0020, 0x0098, 0x00A0, 0x00F8, 0x0140, 0x0400, 0xC000, 0xFFCC, 0x10000, 0x10044, 0x1FFFC],
)
def test_reserved_and_impdef_offsets_are_raz_wi_with_diagnostic(env: Env, offset: int) -> None:
    program_tables(env)
    n = len(env.diags())
    assert env.read(offset) == 0
    env.write(offset, 0xFFFFFFFF)
    assert env.read(offset) == 0
    assert len(env.diags()) == n + 3
    assert all(f"{offset:#x}" in d.message for d in env.diags()[n:])


@pytest.mark.parametrize(
    ("offset", "name"), [(GITS_TYPER, "TYPER"), (GITS_TYPER + 4, "TYPER"), (GITS_CREADR, "CREADR"),
                         (GITS_IIDR, "IIDR"), (GITS_PIDR2, "PIDR2")]
)  # fmt: skip
def test_writes_to_read_only_registers_are_ignored(env: Env, offset: int, name: str) -> None:
    before = env.read(offset)
    env.write(offset, ~before & 0xFFFFFFFF)
    assert env.read(offset) == before
    assert any(name in d.message for d in env.diags())


# == GITS_CTLR ================================================================================


def test_enable_refused_until_cbaser_and_tables_valid(env: Env) -> None:
    steps = [
        dict(cbaser=False, device=False, collection=False),
        dict(cbaser=True, device=False, collection=False),
        dict(cbaser=False, device=True, collection=False),
    ]
    for step in steps:
        program_tables(env, **step)
        n = len(env.diags())
        env.write(GITS_CTLR, 1)
        assert env.read(GITS_CTLR) == QUIESCENT, f"enabled too early after {step}"
        assert len(env.diags()) == n + 1
        assert "refused" in env.diags()[-1].message
    program_tables(env, cbaser=False, device=False, collection=True)
    env.write(GITS_CTLR, 1)
    assert env.read(GITS_CTLR) == 1 | QUIESCENT  # Enabled; Quiescent: the queue is empty
    env.write(GITS_CTLR, 0)
    assert env.read(GITS_CTLR) == QUIESCENT


def test_enable_refused_names_the_missing_table(env: Env) -> None:
    program_tables(env, collection=False)
    env.write(GITS_CTLR, 1)
    assert not env.its.enabled
    assert "collection" in env.diags()[-1].message.lower()


# == GITS_CBASER / GITS_BASER write rules =====================================================


def test_cbaser_and_baser_writes_ignored_while_enabled(env: Env) -> None:
    env.bring_up()
    regs = [GITS_CBASER] + [GITS_BASER + 8 * n for n in range(8)]
    before = {o: env.read64(o) for o in regs}
    n = len(env.diags())
    for o in regs:
        env.write64(o, 0)
    assert {o: env.read64(o) for o in regs} == before
    # one diagnostic per half written, for CBASER and the two implemented BASERs
    assert len(env.diags()) - n >= 3
    # the ITS still works on its old tables
    env.map_events(5, 2, {0: (LPI, 2)})
    env.send(C.Int(5, 0))
    assert env.drain_all() == {2: [LPI]}


def test_cbaser_write_resets_creadr_and_clears_stalled(env: Env) -> None:
    env.bring_up()
    env.send(C.Sync(0), C.Int(99, 0))  # the INT fails: unmapped device, queue stalls
    assert env.creadr == 0x20 * 4 + 0x20 | 1  # 4 MAPCs, SYNC, then stalled at the INT
    env.write(GITS_CTLR, 0)
    cbaser = env.read64(GITS_CBASER)
    env.write64(GITS_CBASER, cbaser)
    assert env.creadr == 0


def test_cbaser_fields_and_sanitised_attributes(env: Env) -> None:
    base = 0x4567_8000
    # InnerCache=0 (Device-nGnRnE), OuterCache=5, Shareability=Outer, 3 pages, bit 62 RES0
    env.write64(GITS_CBASER, VALID | INDIRECT | 0 << 59 | 5 << 53 | base | 2 << 10 | 1 << 8 | 3)
    v = env.read64(GITS_CBASER)
    assert bits(v, 51, 12) << 12 == base
    assert bits(v, 7, 0) == 3
    assert v >> 63 == 1
    assert bits(v, 62, 62) == 0 and bits(v, 9, 8) == 0  # RES0
    assert bits(v, 61, 59) == sanitise_inner_cache(0)
    assert bits(v, 55, 53) == sanitise_outer_cache(5)
    assert bits(v, 11, 10) == sanitise_shareability(2)


@pytest.mark.parametrize("inner", range(8))
@pytest.mark.parametrize("sh", range(4))
def test_baser_attributes_sanitised(env: Env, inner: int, sh: int) -> None:
    off = baser_of_type(env, 1)
    outer = (inner + 3) % 8
    env.write64(off, VALID | inner << 59 | outer << 53 | RAM_BASE | sh << 10)
    v = env.read64(off)
    assert bits(v, 61, 59) == sanitise_inner_cache(inner)
    assert bits(v, 55, 53) == sanitise_outer_cache(outer)
    assert bits(v, 11, 10) == sanitise_shareability(sh)


def test_sanitise_choices() -> None:
    """docs/choices.md: non-cacheable inner reads back RaWb; outer keeps only 0/1;
    Outer Shareable and the reserved encoding read back Inner Shareable."""
    assert [sanitise_inner_cache(c) for c in range(8)] == [3, 3, 2, 3, 4, 5, 6, 7]
    assert [sanitise_outer_cache(c) for c in range(8)] == [0, 1, 0, 0, 0, 0, 0, 0]
    assert [sanitise_shareability(s) for s in range(4)] == [0, 1, 1, 1]


def test_baser_type_and_entry_size_read_only(env: Env) -> None:
    off = baser_of_type(env, 1)
    env.write64(off, VALID | 4 << 56 | 0x1F << 48 | RAM_BASE)
    v = env.read64(off)
    assert bits(v, 58, 56) == 1
    assert bits(v, 52, 48) == 7
    assert bits(v, 47, 12) << 12 == RAM_BASE


@pytest.mark.parametrize(("code", "page"), [(0, 4096), (1, 16384), (2, 65536)])
def test_baser_page_sizes(env: Env, code: int, page: int) -> None:
    off = baser_of_type(env, 1)
    pa = 0x0000_8765_4321_0000  # 64 KB aligned
    env.write64(off, VALID | pa | code << 8 | 0x12)
    v = env.read64(off)
    assert bits(v, 9, 8) == code
    assert bits(v, 7, 0) == 0x12
    assert bits(v, 47, 16) << 16 == pa


def test_baser_64k_pages_keep_pa_51_48_in_bits_15_12(env: Env) -> None:
    off = baser_of_type(env, 1)
    env.write64(off, VALID | 0x0000_1234_5678_0000 | 0xA << 12 | 2 << 8)
    v = env.read64(off)
    assert bits(v, 15, 12) == 0xA  # PA[51:48]
    assert bits(v, 47, 16) << 16 == 0x0000_1234_5678_0000


def test_baser_16k_pages_pa_13_12_res0(env: Env) -> None:
    off = baser_of_type(env, 1)
    env.write64(off, VALID | 0x4000_0000 | 0x3 << 12 | 1 << 8)
    assert bits(env.read64(off), 13, 12) == 0


def test_baser_reserved_page_size_reads_64k(env: Env) -> None:
    off = baser_of_type(env, 1)
    env.write64(off, VALID | 0x4000_0000 | 3 << 8)
    assert bits(env.read64(off), 9, 8) == 2


@pytest.mark.parametrize("supported", [True, False])
def test_baser_indirect_sticks_only_when_supported(supported: bool) -> None:
    e = build(stalling(indirect_device_table=supported, indirect_collection_table=supported))
    for kind in (1, 4):
        off = baser_of_type(e, kind)
        e.write64(off, VALID | INDIRECT | 0x4000_0000)
        assert bits(e.read64(off), 62, 62) == int(supported)


def test_unimplemented_basers_raz_wi(env: Env) -> None:
    unimpl = [GITS_BASER + 8 * n for n in range(8) if bits(env.read64(GITS_BASER + 8 * n), 58, 56) == 0]
    assert len(unimpl) == 6
    for off in unimpl:
        env.write64(off, 0xFFFF_FFFF_FFFF_FFFF)
        assert env.read64(off) == 0


def test_baser_write_with_valid_clear_disables_table(env: Env) -> None:
    program_tables(env)
    off = baser_of_type(env, 1)
    env.write64(off, env.read64(off) & ~VALID)
    env.write(GITS_CTLR, 1)
    assert not env.its.enabled


# == the command queue: CWRITER / CREADR ===========================================================


def _put(e: Env, offset: int, *cmds: C.Command) -> None:
    for i, cmd in enumerate(cmds):
        e.mem.write_bytes(e.d.queue_base + offset + 32 * i, C.encode(cmd))


def test_cwriter_retry_reads_zero(env: Env) -> None:
    env.bring_up()
    _put(env, env.cwriter, C.Sync(0))
    env.write64(GITS_CWRITER, env.cwriter + 0x20 | 1)
    assert env.cwriter & 1 == 0
    assert env.cwriter & 0x1F == 0


def test_cwriter_beyond_queue_halts_until_in_range(env: Env) -> None:
    env.bring_up(collections=False)
    q = env.d.queue_bytes
    _put(env, 0, C.Mapc(0, env.rdbase(0), True), C.Mapc(1, env.rdbase(1), True))
    n = len(env.diags())
    env.write64(GITS_CWRITER, q)  # one past the end of the queue
    assert env.creadr == 0, "no command may run while CWRITER is outside the queue"
    assert len(env.diags()) > n
    env.write64(GITS_CWRITER, q + 0x1000)
    assert env.creadr == 0
    env.write64(GITS_CWRITER, 0x40)
    assert env.creadr == 0x40
    assert not env.errors()


def test_cwriter_beyond_queue_while_disabled_halts_after_enable(env: Env) -> None:
    env.bring_up(collections=False)
    env.write(GITS_CTLR, 0)
    _put(env, 0, C.Mapc(0, env.rdbase(0), True))
    env.write64(GITS_CWRITER, env.d.queue_bytes + 0x20)
    env.write(GITS_CTLR, 1)
    assert env.its.enabled
    assert env.creadr == 0, "the queue is invalid until CWRITER is written in range"
    env.write64(GITS_CWRITER, 0x20)
    assert env.creadr == 0x20


def test_cbaser_shrinking_below_cwriter_halts(env: Env) -> None:
    """CWRITER beyond a queue made smaller by a CBASER write is also outside the queue."""
    env.bring_up(queue_pages=2, collections=False)
    env.write(GITS_CTLR, 0)
    env.write64(GITS_CWRITER, 0x1020)  # inside two pages
    env.write64(GITS_CBASER, env.read64(GITS_CBASER) & ~0xFF)  # one page
    env.write(GITS_CTLR, 1)
    assert env.creadr == 0


def test_queue_wraps_and_commands_run_in_order(env: Env) -> None:
    env.bring_up()
    q = env.d.queue_bytes
    # move CREADR/CWRITER to two commands before the end of the ring
    env.send(*(C.Sync(0) for _ in range(q // 32 - 4 - 2)))
    assert env.creadr == q - 0x40
    itt = env.heap.alloc(256, 256)
    # MAPD, MAPTI at the end; INT, then MOVI + INT at the start: each depends on the one before
    env.send(C.Mapd(7, 1, itt, True), C.Mapti(7, 1, LPI + 70, 3), C.Int(7, 1), C.Movi(7, 1, 2), C.Int(7, 1))
    assert env.creadr == 0x60
    assert env.cwriter == 0x60
    assert not env.errors()
    assert env.drain_all() == {2: [LPI + 70]}


def test_retry_restarts_a_stalled_queue_and_cwriter_alone_does_not(env: Env) -> None:
    env.bring_up()
    env.map_events(1, 2, {0: (LPI, 1)})
    start = env.creadr
    env.send(C.Int(2, 0))  # unmapped device
    assert env.creadr == start | 1
    env.send(C.Int(1, 0))  # queued behind the failing command
    assert env.creadr == start | 1, "a CWRITER write without Retry must not restart the queue"
    assert env.pending(1) == frozenset()
    # fix the failing command in place (GIC-600 TRM 3.10.2) and retry
    _put(env, start, C.Sync(0))
    env.send(retry=True)
    assert env.creadr == env.cwriter == start + 0x40
    assert env.drain_all() == {1: [LPI]}


def test_retry_retries_the_failing_command(env: Env) -> None:
    env.bring_up()
    start = env.creadr
    env.send(C.Int(2, 0))
    assert len(env.errors()) == 1
    env.send(retry=True)  # not fixed: it fails again, at the same place
    assert len(env.errors()) == 2
    assert env.errors()[1].offset == start
    assert env.creadr == start | 1


def test_retry_on_running_queue_has_no_effect(env: Env) -> None:
    env.bring_up()
    before = env.creadr
    env.send(retry=True)  # CWRITER unchanged, Retry=1
    assert env.creadr == before
    assert not env.errors()


def test_queue_does_not_run_while_disabled(env: Env) -> None:
    env.bring_up(collections=False)
    env.write(GITS_CTLR, 0)
    env.send(C.Mapc(0, env.rdbase(0), True))
    assert env.creadr == 0
    env.write(GITS_CTLR, 1)
    assert env.creadr == 0x20  # processed once enabled
