"""Regression tests for the bug classes public ITS emulators have shipped (one test each).

Every test drives the model only as a guest or a device can (MMIO, the command queue,
guest memory, ``Its.translate``, ICC_* registers) and checks the architected outcome: the
command error code (IHI 0069 6.3; vgic's MEMORY_FAULT 0x01FF01 for tables outside RAM,
docs/choices.md), an ignored MSI (12.19.21), a diagnostic, and never a Python exception.
"""

from __future__ import annotations

import threading
import tracemalloc

import pytest

from conftest import (
    GITS_BASER,
    GITS_CBASER,
    GITS_CREADR,
    GITS_CTLR,
    GITS_CWRITER,
    LPI,
    RAM_BASE,
    RAM_SIZE,
    RD_STRIDE,
    Env,
    build,
    its_config,
    stalling,
)
from vgic.driver import Allocator, ItsDriver
from vgic.events import Kind
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy
from vgic.its.errors import ItsError as E
from vgic.its.registers import BASER_TYPE_COLLECTION, BASER_TYPE_DEVICE, ItsTyper
from vgic.memory import GuestMemory

VALID = 1 << 63
INNER_CACHE = 7 << 59
GICR_CTLR = 0x0


def ready(**typer: object) -> Env:
    e = build(its_config(**typer))  # type: ignore[arg-type]
    e.bring_up()
    return e


def baser_offset(e: Env, kind: int) -> int:
    for n in range(8):
        if e.read64(GITS_BASER + 8 * n) >> 56 & 7 == kind:
            return GITS_BASER + 8 * n
    raise AssertionError(f"no GITS_BASER of type {kind}")


# == RDbase == number of CPUs (the classic off-by-one) ===========================================


@pytest.mark.parametrize("pta", [False, True], ids=["PTA0", "PTA1"])
def test_rdbase_equal_to_cpu_count_is_out_of_range(pta: bool) -> None:
    e = build(its_config(pta=pta), num_cpus=4)
    e.bring_up()
    one_past = 4 if not pta else (e.gic.config.gicr_base + 4 * RD_STRIDE) >> 16
    e.send(C.Mapc(9, one_past, True))
    assert e.codes() == [E.MAPC_PROCNUM_OOR]
    e.send(C.Sync(0), retry=True)  # recover a stalled queue: overwrite, retry
    e.log.clear()
    e.its.config  # noqa: B018 - the ITS is still usable
    e2 = build(its_config(pta=pta, policy=ErrorPolicy.CONTINUE), num_cpus=4)
    e2.bring_up()
    e2.send(C.Movall(e2.rdbase(0), one_past), C.Movall(one_past, e2.rdbase(0)), C.Sync(one_past))
    assert e2.codes() == [E.MOVALL_PROCNUM_OOR, E.MOVALL_PROCNUM_OOR]
    assert any("SYNC RDbase" in d.message for d in e2.diags())
    # the last real RDbase works
    e2.map_events(1, 2, {0: (LPI, 0)})
    e2.send(C.Mapc(0, e2.rdbase(3), True))
    assert e2.its.translate(1, 0)
    assert e2.drain_all() == {3: [LPI]}


# == DeviceID beyond Devbits, but inside the device table =========================================


def test_device_id_beyond_devbits_inside_the_table() -> None:
    e = build(its_config(devbits=8, policy=ErrorPolicy.CONTINUE))
    e.bring_up()  # one 4 KB page: 512 8-byte DTEs, more than 2^8 DeviceIDs
    base = e.read64(baser_offset(e, BASER_TYPE_DEVICE)) & 0x0000_FFFF_FFFF_F000
    itt = e.heap.alloc(256, 256)
    e.send(C.Mapd(256, 1, itt, True), C.Mapd(255, 1, itt, True))
    assert e.codes() == [E.MAPD_DEVICE_OOR]
    assert e.mem.read64(base + 256 * 8) == 0  # the table slot for 256 is never written
    assert e.mem.read64(base + 255 * 8) >> 63 == 1
    e.mem.write64(base + 256 * 8, e.mem.read64(base + 255 * 8))  # a guest forging the DTE
    e.send(C.Mapti(256, 0, LPI, 0), C.Mapti(255, 0, LPI + 1, 0))
    assert e.codes() == [E.MAPD_DEVICE_OOR, E.MAPTI_DEVICE_OOR]
    assert not e.its.translate(256, 0)
    assert not e.its.translate(256 + (1 << 32), 0)  # and no wrap-around of a wide DeviceID
    assert e.its.translate(255, 0)
    assert e.drain_all() == {0: [LPI + 1]}


# == EventID at 2^(Size+1) - 1 and 2^(Size+1) ======================================================


@pytest.mark.parametrize("size", [0, 3, 7])
def test_event_id_range_edges(size: int) -> None:
    e = build(its_config(policy=ErrorPolicy.CONTINUE))
    e.bring_up()
    last, first_out = (1 << (size + 1)) - 1, 1 << (size + 1)
    itt = e.heap.alloc(max(256, first_out * 8 * 2), 256)
    e.mem.fill(itt, first_out * 8 * 2, 0xFF)  # garbage past the ITT must never be read as an ITE
    e.send(C.Mapd(1, size, itt, True))
    e.mem.fill(itt, first_out * 8, 0)
    e.send(C.Mapti(1, last, LPI, 1), C.Mapti(1, first_out, LPI + 1, 1), C.Int(1, first_out),
           C.Discard(1, first_out), C.Movi(1, first_out, 2), C.Mapi(1, first_out, 1))  # fmt: skip
    assert e.codes() == [E.MAPTI_ID_OOR, E.INT_ID_OOR, E.DISCARD_ID_OOR, E.MOVI_ID_OOR, E.MAPI_ID_OOR]
    assert e.its.translate(1, last)
    assert not e.its.translate(1, first_out)
    assert not e.its.translate(1, 0xFFFF_FFFF)
    assert e.drain_all() == {1: [LPI]}


# == level-2 entries: the entry's address is validated, not only the page's ========================


def test_level2_entry_address_validated_table_at_the_end_of_ram() -> None:
    """RAM of 96 KB: a 64 KB level-2 page at +64 KB is half in RAM. DeviceIDs whose DTE is
    in the first half work, up to the very last 8 bytes of RAM; the next one is refused
    (MEMORY_FAULT, all or nothing) and an MSI for it is ignored. Never a host exception."""
    mem = GuestMemory()
    mem.add_ram(RAM_BASE, 0x1_8000)
    gic = Gic(mem, GicConfig(num_cpus=2, its=(stalling(error_policy=ErrorPolicy.CONTINUE),)))
    its = gic.its[0]
    l1, queue, itt = RAM_BASE, RAM_BASE + 0x1000, RAM_BASE + 0x2000
    its.write(GITS_CBASER, 8, VALID | queue)
    its.write(GITS_CWRITER, 8, 0)
    dev_off, col_off = 0, 0
    for n in range(8):
        kind = its.read(GITS_BASER + 8 * n, 8) >> 56 & 7
        if kind == BASER_TYPE_DEVICE:
            dev_off = GITS_BASER + 8 * n
        elif kind == BASER_TYPE_COLLECTION:
            col_off = GITS_BASER + 8 * n
    its.write(dev_off, 8, VALID | 1 << 62 | 2 << 8 | l1)  # Indirect, 64 KB pages, one L1 page
    its.write(col_off, 8, VALID | (RAM_BASE + 0x3000))
    its.write(GITS_CTLR, 4, 1)
    assert its.enabled
    l2 = RAM_BASE + 0x1_0000
    mem.write64(l1, VALID | l2)  # level-1 entry 0: DeviceIDs 0..8191
    last_in_ram = (0x8000 - 8) // 8  # DTE at the last 8 bytes of RAM
    drv = ItsDriver(gic, Allocator(RAM_BASE, 0x1_8000))
    drv.queue_base, drv.queue_bytes = queue, 4096
    drv.send(C.Mapc(0, 0, True), C.Mapd(last_in_ram, 0, itt, True), C.Mapd(last_in_ram + 1, 0, itt, True),
             C.Mapti(last_in_ram, 0, LPI, 0), C.Mapti(last_in_ram + 1, 0, LPI, 0))  # fmt: skip
    codes = [ev.code for ev in gic.log.errors]
    assert codes == [E.MEMORY_FAULT, E.MEMORY_FAULT]
    assert "outside RAM" in gic.log.errors[0].message
    assert mem.read64(RAM_BASE + 0x1_8000 - 8) >> 63 == 1
    assert not its.translate(last_in_ram + 1, 0)
    assert gic.log.of(Kind.TRANSLATION_FAULT)


def test_ite_straddling_the_end_of_ram_is_all_or_nothing() -> None:
    """12-byte ITEs: the one at the last 8 bytes of RAM straddles its end. The MAPTI fails
    before any byte is written (no half-written ITE an MSI could later use)."""
    e = build(stalling(typer=ItsTyper(itt_entry_size=12), error_policy=ErrorPolicy.CONTINUE))
    e.bring_up()
    itt = RAM_BASE + RAM_SIZE - 512
    event = (512 - 8) // 12  # ITE at the last 8 bytes of RAM: its last 4 bytes are beyond
    assert itt + event * 12 == RAM_BASE + RAM_SIZE - 8
    e.send(C.Mapd(1, 5, itt, True), C.Mapti(1, event, LPI, 0), C.Mapti(1, event - 1, LPI + 1, 0))
    assert e.codes() == [E.MEMORY_FAULT]
    assert e.mem.read64(RAM_BASE + RAM_SIZE - 8) == 0  # not even the first 8 bytes
    assert not e.its.translate(1, event)
    assert e.its.translate(1, event - 1)


# == a command straddling the end of RAM ==========================================================


def test_command_queue_straddling_the_end_of_ram() -> None:
    e = build(its_config(policy=ErrorPolicy.STALL))
    e.bring_up()
    e.map_events(1, 2, {0: (LPI, 1)})
    e.write(GITS_CTLR, 0)
    last_page = RAM_BASE + RAM_SIZE - 4096
    e.write64(GITS_CBASER, VALID | last_page | 1)  # two pages: the second beyond RAM
    e.write(GITS_CTLR, 1)
    e.mem.write_bytes(last_page, C.encode(C.Sync(0)) * 127 + C.encode(C.Int(1, 0)))  # INT: the last in RAM
    e.write64(GITS_CWRITER, 4096 + 64)
    e.d.wait()  # 129 commands: the ITS runs them while the driver polls CREADR
    assert e.codes() == [E.MEMORY_FAULT]
    assert e.errors()[0].offset == 4096
    assert e.creadr == 4096 | 1  # stalled at the first command beyond RAM
    assert e.drain_all() == {1: [LPI]}  # the in-RAM INT ran exactly once
    e.write64(GITS_CWRITER, 4096 + 64 | 1)  # retry: still outside RAM, still no exception
    assert e.codes() == [E.MEMORY_FAULT, E.MEMORY_FAULT]


# == CBASER / CWRITER / CREADR restored in the wrong order ==========================================


def test_cwriter_before_cbaser_does_not_replay_old_commands() -> None:
    e = ready()
    e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 1)})
    e.send(C.Int(1, 0), C.Int(1, 1))
    assert e.drain_all() == {0: [LPI], 1: [LPI + 1]}
    cbaser, cwriter = e.read64(GITS_CBASER), e.cwriter
    assert e.creadr == cwriter != 0
    commands_run = e.log.counts[Kind.COMMAND]
    # a VMM restoring registers in the wrong order: CWRITER, then CBASER, then enable
    e.write(GITS_CTLR, 0)
    e.write64(GITS_CWRITER, cwriter)
    e.write64(GITS_CBASER, cbaser)
    assert e.read64(GITS_CREADR) == 0 and e.cwriter == 0  # CBASER empties the queue
    e.write(GITS_CTLR, 1)
    assert e.log.counts[Kind.COMMAND] == commands_run  # nothing re-ran
    assert e.drain_all() == {}
    # the same through save/restore: no command runs, no LPI appears
    state = e.its.save_state()
    e.its.reset()
    e.its.load_state(state)
    assert e.log.counts[Kind.COMMAND] == commands_run
    assert e.drain_all() == {}
    # and the queue still works from where the guest now puts CWRITER
    e.send(C.Int(1, 1))
    assert e.drain_all() == {1: [LPI + 1]}


# == cache invalidation racing with DISCARD / MAPD / ITS disable / EnableLPIs=0 =====================


@pytest.mark.parametrize("how", ["discard", "mapd-unmap", "mapd-remap", "its-disable", "enable-lpis-0"])
def test_invalidation_races_with_msis(how: str) -> None:
    """MSIs keep arriving from another thread while the mapping goes away. Once the
    command (or register write) has returned, no MSI may make the old LPI pending."""
    e = ready()
    e.map_events(1, 2, {0: (LPI, 2)})
    stop = threading.Event()
    errors: list[BaseException] = []

    def device() -> None:
        try:
            while not stop.is_set():
                e.its.translate(1, 0)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=device)
    t.start()
    try:
        for _ in range(20):
            e.gic.cpus[2].read_sysreg("ICC_IAR1_EL1")  # keep delivering meanwhile
        if how == "discard":
            e.send(C.Discard(1, 0))
        elif how == "mapd-unmap":
            e.send(C.Mapd(1, 1, 0, False))
        elif how == "mapd-remap":
            e.send(C.Mapd(1, 1, e.heap.alloc(256, 256), True))  # a fresh, empty ITT
        elif how == "its-disable":
            e.write(GITS_CTLR, 0)
        else:
            e.d.gicr_write(2, GICR_CTLR, 0)
        e.gic.redistributors[2].clear_lpi_pending(LPI)  # whatever was pending before
        e.d.gicr_write(2, GICR_CTLR, 1)
        for _ in range(200):
            assert LPI not in e.pending(2), f"an MSI was translated with a stale cache after {how}"
    finally:
        stop.set()
        t.join()
    assert not errors
    assert e.drain(2) == []


# == INVALL on an unmapped collection ==============================================================


def test_invall_on_unmapped_and_out_of_range_collections() -> None:
    e = build(its_config(policy=ErrorPolicy.CONTINUE, cidbits=8))
    e.bring_up()
    e.send(C.Invall(5), C.Invall(255), C.Invall(256), C.Invall(0xFFFF), C.Invall(3))
    assert e.codes() == [E.INVALL_UNMAPPED_COLLECTION, E.INVALL_UNMAPPED_COLLECTION, E.INVALL_COLLECTION_OOR,
                         E.INVALL_COLLECTION_OOR]  # fmt: skip
    e.send(C.Mapc(3, e.rdbase(3), False), C.Invall(3))
    assert e.codes()[-1] == E.INVALL_UNMAPPED_COLLECTION


# == MAPTI of an already mapped event ==============================================================


def test_mapti_of_a_mapped_event_replaces_it_without_stale_state() -> None:
    e = ready()
    e.map_events(1, 2, {0: (LPI, 1)})
    assert e.its.translate(1, 0)  # LPI pending on CPU 1, and the ITE cached
    e.send(C.Mapti(1, 0, LPI + 5, 2))
    assert not e.errors()
    assert any("already mapped" in d.message and "UNPREDICTABLE" in d.message for d in e.diags())
    assert e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI], 2: [LPI + 5]}  # old pending state stays where it was
    e.send(C.Discard(1, 0))  # DISCARD acts on the new mapping only
    assert not e.its.translate(1, 0)
    assert e.drain_all() == {}


# == MOVALL onto a CPU that already has pending LPIs: OR, not overwrite =============================


def test_movall_ors_into_a_busy_target() -> None:
    e = ready()
    e.map_events(1, 3, {0: (LPI, 0), 1: (LPI + 1, 0), 2: (LPI + 1, 1), 3: (LPI + 2, 1)})
    for ev in range(4):
        assert e.its.translate(1, ev)
    assert e.pending(0) == {LPI, LPI + 1} and e.pending(1) == {LPI + 1, LPI + 2}
    e.send(C.Movall(e.rdbase(0), e.rdbase(1)))
    assert not e.errors()
    assert e.pending(0) == frozenset() and e.pending(1) == {LPI, LPI + 1, LPI + 2}
    assert e.drain_all() == {1: [LPI, LPI + 1, LPI + 2]}  # each exactly once
    e.send(C.Movall(e.rdbase(1), e.rdbase(1)))  # RD1 == RD2: a no-op
    assert not e.errors()


# == BASER bits that must be clearable ==============================================================


@pytest.mark.parametrize("halves", [False, True], ids=["64-bit", "32-bit-halves"])
def test_baser_fields_are_clearable(halves: bool) -> None:
    """Valid, Indirect, Page_Size, Shareability, OuterCache, PA and Size written 1 then 0
    read back 0 (12.19.1); Type and Entry_Size are RO."""
    e = build()
    for n in range(8):
        off = GITS_BASER + 8 * n
        ro = e.read64(off) & (7 << 56 | 0x1F << 48)  # Type and Entry_Size
        if not ro:
            continue
        every = VALID | 1 << 62 | 7 << 59 | 7 << 53 | 2 << 10 | 2 << 8 | 0x0000_FFFF_FFFF_F000 | 0xFF
        if halves:
            e.write64(off, every)
            e.write64(off, 0)
        else:
            e.write(off, every, 8)
            e.write(off, 0, 8)
        # InnerCache is the one exception: nCnB reads back as RaWb (a documented sanitisation)
        assert e.read64(off) & ~INNER_CACHE == ro, f"GITS_BASER{n}: {e.read64(off):#x} after writing 0"
    e.write64(GITS_CBASER, VALID | 7 << 59 | 0x0000_FFFF_FFFF_F000 | 0xFF)
    e.write64(GITS_CBASER, 0)
    assert e.read64(GITS_CBASER) & ~INNER_CACHE == 0


# == guest table addresses are never host addresses =================================================


@pytest.mark.parametrize(
    "where",
    [0, 0x1000, RAM_BASE - 4096, RAM_BASE + RAM_SIZE, 0x0000_FFFF_FFFF_F000, 0x0008_0800_0000],
    ids=["zero", "low", "below-ram", "end-of-ram", "top-of-pa", "the-gic"],
)
def test_tables_outside_ram_are_errors_not_host_accesses(where: int) -> None:
    tracemalloc.start()
    try:
        e = build(its_config(policy=ErrorPolicy.CONTINUE))
        e.bring_up()
        before = tracemalloc.get_traced_memory()[0]
        e.write(GITS_CTLR, 0)
        for kind in (BASER_TYPE_DEVICE, BASER_TYPE_COLLECTION):
            off = baser_offset(e, kind)
            v = e.read64(off)
            e.write64(off, v & ~(0x0000_FFFF_FFFF_F000 | 0xFF) | where | 0xFF)  # 256 pages there
        e.write(GITS_CTLR, 1)
        assert e.its.enabled
        e.send(C.Mapc(0, 0, True), C.Mapd(1, 1, where, True), C.Mapti(1, 0, LPI, 0), C.Int(1, 0),
               C.Movall(0, 1), C.Invall(0))  # fmt: skip
        assert e.codes() and set(e.codes()) <= {E.MEMORY_FAULT, E.MAPTI_UNMAPPED_DEVICE, E.INT_UNMAPPED_DEVICE,
                                                E.INVALL_UNMAPPED_COLLECTION}  # fmt: skip
        assert all("outside RAM" in ev.message or "not mapped" in ev.message for ev in e.errors())
        assert not e.its.translate(1, 0)
        # redistributor tables outside RAM: diagnostics, LPIs still handled
        e.d.gicr_write(0, GICR_CTLR, 0)
        e.d.gicr_write(0, 0x70, where | 15, 8)  # PROPBASER, 16 ID bits
        e.d.gicr_write(0, 0x78, where, 8)  # PENDBASER
        e.d.gicr_write(0, GICR_CTLR, 1)
        e.d.gicr_write(0, 0x40, LPI, 8)  # SETLPIR
        assert any("faulted" in d.message for d in e.diags())
        e.d.gicr_write(0, GICR_CTLR, 0)
        assert [r.base for r in e.mem.regions] == [RAM_BASE]
        grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 4 << 20, f"host memory grew by {grown} bytes for guest tables of 256 pages"
    finally:
        tracemalloc.stop()


# == tables that overlap: a write by the ITS never leaves a stale cache ==============================


def test_shared_itt_and_overlapping_tables_never_serve_stale_translations() -> None:
    """Two devices sharing one ITT (UNPREDICTABLE) and an ITT on top of the device table:
    the ITS answers from memory after its own writes, never from an aliased cache entry."""
    e = ready(policy=ErrorPolicy.CONTINUE, itt_entry_size=8)  # 8-byte ITEs: an ITE lands on one DTE
    itt = e.heap.alloc(256, 256)
    e.send(C.Mapd(1, 1, itt, True), C.Mapd(2, 1, itt, True), C.Mapti(1, 3, LPI, 0))
    assert e.its.translate(2, 3) and e.its.translate(1, 3)  # both cache the same ITE
    e.drain_all()
    e.send(C.Discard(2, 3))  # through device 2
    assert not e.its.translate(1, 3)  # device 1's cached copy was dropped with it
    e.send(C.Mapti(1, 2, LPI + 1, 0), C.Movi(2, 2, 3))
    assert e.its.translate(1, 2)
    assert e.drain_all() == {3: [LPI + 1]}
    # an ITT over the device table: a MAPTI rewrites device 4's DTE; its cache must follow
    dt = e.read64(baser_offset(e, BASER_TYPE_DEVICE)) & 0x0000_FFFF_FFFF_F000
    e.send(C.Mapd(4, 1, e.heap.alloc(256, 256), True), C.Mapti(4, 0, LPI + 2, 0), C.Mapd(5, 3, dt, True))
    assert e.its.translate(4, 0)
    e.send(C.Mapti(5, 4, LPI + 3, 0))  # EventID 4 of device 5 is device 4's DTE: overwritten
    assert not e.errors()
    assert not e.its.translate(4, 0)  # the DTE now names an ITT outside RAM: ignored, not the cached ITT


# == IDs from an embedder's bus are checked too (Its.translate is the device-side API) ==================


def test_negative_or_huge_ids_from_the_bus_are_ignored() -> None:
    e = ready()
    itt = e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 1)})
    e.mem.write64(itt - 8, VALID | (LPI + 2) << 16 | 2)  # a valid-looking ITE just below the ITT
    for dev, ev in [(1, -1), (-1, 0), (1, 1 << 32), (1 << 32 | 1, 0), (1, -(1 << 40))]:
        assert not e.its.translate(dev, ev)
    assert e.drain_all() == {}
    e.write(0x10040, 1)  # GITS_TRANSLATER from a CPU: the default DeviceID, EventID 1 (32 bits)
    assert e.drain_all() == {}
