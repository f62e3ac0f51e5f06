"""ITS tables in guest memory (IHI 0069 5.2, 12.19.1 GITS_BASER<n>).

* Flat tables: entries = (Size+1) * PageSize / EntrySize; an ID beyond is out of range
  even when it fits in Devbits (docs/spec-notes.md section 4).
* Two-level (Indirect) tables: 8-byte level-1 entries ([63] Valid, [51:N] level-2 page
  PA); L1 index = ID / (PageSize / EntrySize), L2 index = ID % (PageSize / EntrySize);
  an invalid level-1 entry makes the ID out of range.
* Collections held in the ITS (GITS_TYPER.HCC) need no memory.
* Disabling the ITS makes its caches consistent with memory: after a re-enable it reads
  the tables again (12.19.6 GITS_CTLR.Enabled / Quiescent).

Entry formats are vgic's (vgic.its.tables): DTE [63] V, [48:5] ITT_addr[51:8], [4:0] Size;
CTE [63] V, [35:0] RDbase; ITE [63] V, [47:16] pINTID, [15:0] ICID.
"""

from __future__ import annotations

import pytest

from conftest import (
    GITS_BASER,
    GITS_CBASER,
    GITS_CTLR,
    GITS_CWRITER,
    GITS_TYPER,
    LPI,
    RAM_BASE,
    RAM_SIZE,
    Env,
    build,
    stalling,
)
from vgic.its import commands as C
from vgic.its.cache import TranslationCache
from vgic.its.config import ItsConfig
from vgic.its.errors import ItsError
from vgic.its.registers import BASER_TYPE_DEVICE, BASER_TYPE_NONE, ItsTyper
from vgic.its.tables import DeviceEntry, InterruptEntry

PAGES = [(0, 4096), (1, 16384), (2, 65536)]
PAGE_IDS = ["4K", "16K", "64K"]
VALID = 1 << 63


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def baser(e: Env, kind: int) -> tuple[int, int]:
    """(offset, value) of the GITS_BASER<n> of type ``kind``."""
    for n in range(8):
        v = e.read64(GITS_BASER + 8 * n)
        if bits(v, 58, 56) == kind:
            return GITS_BASER + 8 * n, v
    raise AssertionError


def table_geometry(e: Env, kind: int) -> tuple[int, int, int, int]:
    """(base, page size, pages, entry size) decoded from the BASER, as software sees it."""
    _, v = baser(e, kind)
    page = (4096, 16384, 65536, 65536)[bits(v, 9, 8)]
    base = bits(v, 47, 12) << 12 & ~(page - 1)
    if page == 65536:
        base |= bits(v, 15, 12) << 48
    return base, page, bits(v, 7, 0) + 1, bits(v, 52, 48) + 1


def itt(e: Env) -> int:
    return e.heap.alloc(256, 256)


# == flat device tables ======================================================================


@pytest.mark.parametrize(("code", "page"), PAGES, ids=PAGE_IDS)
def test_flat_device_table(code: int, page: int) -> None:
    e = build()
    e.bring_up(table_pages=2, page_size_code=code)
    base, psize, pages, esize = table_geometry(e, 1)
    assert (psize, pages) == (page, 2)
    capacity = pages * page // esize
    assert capacity < 1 << 16  # inside Devbits: only the table size limits it
    last = capacity - 1
    e.send(C.Mapd(last, 1, itt(e), True), C.Mapti(last, 3, LPI + 3, 1))
    assert not e.errors()
    assert e.mem.read64(base + last * esize) >> 63 == 1
    assert e.its.translate(last, 3)
    assert e.drain_all() == {1: [LPI + 3]}
    e.send(C.Mapd(capacity, 1, itt(e), True))
    assert e.codes() == [ItsError.MAPD_DEVICE_OOR]
    assert not e.its.translate(capacity, 0)


# == two-level device tables =================================================================


@pytest.fixture
def wide() -> ItsConfig:
    return stalling(typer=ItsTyper(devbits=24))


@pytest.mark.parametrize(("code", "page"), PAGES, ids=PAGE_IDS)
def test_two_level_device_table(wide: ItsConfig, code: int, page: int) -> None:
    e = build(wide)
    e.bring_up(two_level=True, page_size_code=code)
    l1, psize, _, esize = table_geometry(e, 1)
    assert bits(baser(e, 1)[1], 62, 62) == 1  # Indirect stuck
    per_page = psize // esize
    dev = per_page * 3 + 5  # level-1 entry 3, level-2 entry 5
    e.send(C.Mapd(dev, 1, itt(e), True))
    assert e.codes() == [ItsError.MAPD_DEVICE_OOR], "level-1 entry 3 is not Valid yet"
    # the driver gives it a level-2 page
    l2 = e.heap.alloc(page, page)
    e.mem.write64(l1 + 3 * 8, VALID | l2)
    e.send(retry=True)
    assert len(e.errors()) == 1
    dte = e.mem.read64(l2 + 5 * esize)
    assert dte >> 63 == 1
    e.send(C.Mapti(dev, 0, LPI + 50, 2))
    assert e.its.translate(dev, 0)
    assert e.drain_all() == {2: [LPI + 50]}
    # neighbours in other level-1 ranges are still out of range
    for other in (dev - per_page, dev + per_page):
        assert not e.its.translate(other, 0)
    e.send(C.Int(dev + per_page, 0))
    assert e.codes()[-1] == ItsError.INT_DEVICE_OOR


@pytest.mark.parametrize(("code", "page"), PAGES, ids=PAGE_IDS)
def test_two_level_capacity(code: int, page: int) -> None:
    """L1 of one page: (page / 8) level-1 entries of (page / 8) IDs each."""
    e = build(stalling(typer=ItsTyper(devbits=32)))
    e.bring_up(two_level=True, page_size_code=code)
    per_page = page // 8
    capacity = per_page * per_page
    last = capacity - 1
    e.d.add_l2_page(last)
    e.send(C.Mapd(last, 0, itt(e), True))
    assert not e.errors()
    e.send(C.Mapd(capacity, 0, itt(e), True))
    assert e.codes() == [ItsError.MAPD_DEVICE_OOR]


def test_level2_page_at_the_very_end_of_ram(wide: ItsConfig) -> None:
    e = build(wide)
    e.bring_up(two_level=True)
    l1, page, _, esize = table_geometry(e, 1)
    last_page = RAM_BASE + RAM_SIZE - page
    e.mem.write64(l1 + 7 * 8, VALID | last_page)
    dev = 8 * (page // esize) - 1  # the last entry of level-1 entry 7's page
    e.send(C.Mapd(dev, 1, itt(e), True), C.Mapti(dev, 1, LPI + 1, 3))
    assert not e.errors()
    assert e.mem.read64(RAM_BASE + RAM_SIZE - 8) >> 63 == 1
    assert e.its.translate(dev, 1)
    assert e.drain_all() == {3: [LPI + 1]}


def test_level2_page_outside_ram(wide: ItsConfig) -> None:
    e = build(wide)
    e.bring_up(two_level=True)
    l1, _, _, _ = table_geometry(e, 1)
    e.mem.write64(l1, VALID | (RAM_BASE + RAM_SIZE))
    e.send(C.Mapd(1, 1, itt(e), True))
    assert e.codes() == [ItsError.MEMORY_FAULT]
    assert not e.its.translate(1, 0)


def test_level1_entry_pa_bits_above_the_page_are_used(wide: ItsConfig) -> None:
    """Level-2 address = L1 entry bits [51:N]; bits [N-1:0] and [62:52] are RES0 and ignored."""
    e = build(wide)
    e.bring_up(two_level=True, page_size_code=1)
    l1, page, _, esize = table_geometry(e, 1)
    l2 = e.heap.alloc(page, page)
    e.mem.write64(l1, VALID | 0x7FF << 52 | l2 | (page - 1))
    e.send(C.Mapd(2, 1, itt(e), True))
    assert not e.errors()
    assert e.mem.read64(l2 + 2 * esize) >> 63 == 1


# == collection tables ========================================================================


def test_flat_collection_table_capacity() -> None:
    e = build()
    e.bring_up(table_pages=2)
    base, page, pages, esize = table_geometry(e, 4)
    capacity = pages * page // esize
    e.send(C.Mapc(capacity - 1, 2, True))
    assert bits(e.mem.read64(base + (capacity - 1) * esize), 35, 0) == 2
    assert not e.errors()
    e.send(C.Mapc(capacity, 2, True))
    assert e.codes() == [ItsError.MAPC_COLLECTION_OOR]


def test_two_level_collection_table() -> None:
    e = build()
    e.bring_up(collections=False)
    e.write(GITS_CTLR, 0)
    off, v = baser(e, 4)
    l1 = e.heap.alloc(4096, 4096)
    e.write64(off, v & ~0x0000_FFFF_FFFF_F000 | 1 << 62 | l1)
    e.write(GITS_CTLR, 1)
    assert bits(e.read64(off), 62, 62) == 1
    e.send(C.Mapc(600, 1, True))
    assert e.codes() == [ItsError.MAPC_COLLECTION_OOR]
    l2 = e.heap.alloc(4096, 4096)
    e.mem.write64(l1 + 8, VALID | l2)  # IDs 512..1023
    e.send(retry=True)
    assert len(e.errors()) == 1
    assert e.mem.read64(l2 + (600 - 512) * 8) == VALID | 1
    e.map_events(1, 1, {0: (LPI, 600)})
    assert e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI]}


# == hardware collections (GITS_TYPER.HCC) =====================================================


def test_hcc_collections_need_no_memory() -> None:
    e = build(stalling(typer=ItsTyper(hcc=4)))
    e.bring_up()  # MAPC ICID 0..3
    base, page, pages, _ = table_geometry(e, 4)
    assert e.mem.read_bytes(base, page * pages) == bytes(page * pages), "no CTE written"
    e.map_events(1, 2, {cpu: (LPI + cpu, cpu) for cpu in range(4)})
    for cpu in range(4):
        e.its.translate(1, cpu)
    assert e.drain_all() == {cpu: [LPI + cpu] for cpu in range(4)}
    e.send(C.Mapc(4, 1, True))  # the first ICID held in memory
    assert not e.errors()
    assert e.mem.read_bytes(base, page * pages) != bytes(page * pages)


def test_hcc_only_collections_enable_without_a_collection_table() -> None:
    """CIL=1, CIDbits=2: 4 collections, all held in the ITS: no collection table needed."""
    e = build(stalling(typer=ItsTyper(hcc=4, cidbits=2)))
    e.d.setup_lpis()
    e.write64(GITS_CBASER, VALID | e.heap.alloc(4096, 65536) | 1 << 10)
    off, v = baser(e, 1)
    e.write64(off, v | VALID | e.heap.alloc(4096, 65536))
    e.write(GITS_CTLR, 1)
    assert e.its.enabled
    e.d.queue_base, e.d.queue_bytes = bits(e.read64(GITS_CBASER), 51, 12) << 12, 4096
    e.send(*(C.Mapc(n, n, True) for n in range(4)))
    assert not e.errors()
    e.map_events(1, 2, {0: (LPI, 3)})
    e.its.translate(1, 0)
    assert e.drain_all() == {3: [LPI]}
    e.send(C.Mapc(4, 0, True))
    assert e.codes() == [ItsError.MAPC_COLLECTION_OOR]


def test_collections_only_in_hardware_without_a_collection_baser() -> None:
    """An ITS with no collection table type: CIL is RES0 and HCC gives the number of
    collections (ARM-REG gits_typer, CIL). It must enable with the device table alone."""
    types = (BASER_TYPE_DEVICE,) + (BASER_TYPE_NONE,) * 7
    e = build(stalling(typer=ItsTyper(hcc=8), baser_types=types))
    typer = e.read64(GITS_TYPER)
    assert bits(typer, 36, 32) == 0  # CIL and CIDbits RES0
    assert bits(typer, 31, 24) == 8
    assert bits(typer, 2, 2) == 0  # CCT: nothing in memory to accumulate
    e.bring_up(collections=False)
    assert e.its.enabled
    e.send(*(C.Mapc(n, n % 4, True) for n in range(8)))
    assert not e.errors()
    e.send(C.Mapc(8, 0, True))
    assert e.codes() == [ItsError.MAPC_COLLECTION_OOR]


def test_hcc_mappings_survive_disable_and_enable() -> None:
    e = build(stalling(typer=ItsTyper(hcc=4)))
    e.bring_up()
    e.map_events(1, 2, {0: (LPI, 2)})
    e.write(GITS_CTLR, 0)
    e.write(GITS_CTLR, 1)
    assert e.its.translate(1, 0)
    assert e.drain_all() == {2: [LPI]}


# == caches are dropped when the ITS is disabled ==============================================


def test_reenable_rereads_the_tables(pta: bool) -> None:
    from conftest import its_config

    e = build(its_config(pta=pta))
    e.bring_up()
    t = e.map_events(1, 2, {0: (LPI, 1)})
    assert e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI]}
    e.write(GITS_CTLR, 0)
    # software edits the tables while the ITS is disabled
    e.mem.write64(t, VALID | (LPI + 7) << 16 | 2)  # ITE: event 0 -> LPI 8199, ICID 2
    ct, _, _, _ = table_geometry(e, 4)
    e.mem.write64(ct + 2 * 8, VALID | e.rdbase(3))  # CTE: ICID 2 -> CPU 3
    e.write(GITS_CTLR, 1)
    assert e.its.translate(1, 0)
    assert e.drain_all() == {3: [LPI + 7]}
    # and the normal flow still works on top of the re-read tables
    e.send(C.Mapti(1, 1, LPI + 8, 0), C.Int(1, 1), C.Movi(1, 0, 1))
    e.its.translate(1, 0)
    assert not e.errors()
    assert e.drain_all() == {0: [LPI + 8], 1: [LPI + 7]}


def test_reenable_sees_an_unmapped_device(pta: bool) -> None:
    e = build()
    e.bring_up()
    e.map_events(1, 2, {0: (LPI, 1)})
    assert e.its.translate(1, 0)
    e.write(GITS_CTLR, 0)
    dt, _, _, _ = table_geometry(e, 1)
    e.mem.write64(dt + 8, 0)  # DTE of device 1 cleared
    e.write(GITS_CTLR, 1)
    assert not e.its.translate(1, 0)


def test_moved_tables_after_reprogramming_basers() -> None:
    """Disable, copy the tables elsewhere, point the BASERs there, re-enable: same result."""
    e = build()
    e.bring_up()
    e.map_events(1, 2, {0: (LPI, 2)})
    e.write(GITS_CTLR, 0)
    for kind in (1, 4):
        off, v = baser(e, kind)
        base, page, pages, _ = table_geometry(e, kind)
        new = e.heap.alloc(page * pages, 65536)
        e.mem.write_bytes(new, e.mem.read_bytes(base, page * pages))
        e.mem.fill(base, page * pages)
        e.write64(off, v & ~0x0000_FFFF_FFFF_F000 | new)
    e.write64(GITS_CWRITER, e.cwriter)
    e.write(GITS_CTLR, 1)
    assert e.its.translate(1, 0)
    assert e.drain_all() == {2: [LPI]}


def test_64k_device_table_above_48_bits_of_pa() -> None:
    """64 KB pages: GITS_BASER[15:12] hold PA[51:48] (12.19.1), so a table can sit above 256 TB."""
    e = build()
    high = 0x000A_0000_0000_0000  # PA[51:48] = 0xA
    e.mem.add_ram(high, 0x20000)
    e.bring_up(collections=False)
    e.write(GITS_CTLR, 0)
    off, v = baser(e, 1)
    e.write64(off, v & ~0x0000_FFFF_FFFF_F3FF | 2 << 8 | 0xA << 12)  # PA[47:16] = 0, 64 KB pages
    assert table_geometry(e, 1)[0] == high
    e.write(GITS_CTLR, 1)
    e.send(*(C.Mapc(n, n, True) for n in range(4)))
    e.send(C.Mapd(5, 1, itt(e), True), C.Mapti(5, 0, LPI, 2))
    assert not e.errors()
    assert e.mem.read64(high + 5 * 8) >> 63 == 1
    assert e.its.translate(5, 0)
    assert e.drain_all() == {2: [LPI]}


def test_an_ite_whose_bytes_are_its_own_devices_dte_leaves_no_index_behind() -> None:
    """A guest may place an ITT over the device table, so that an ITE's address is its own
    device's DTE: caching that ITE drops the device (one entry per guest address), and the
    ITE must then not stay indexed either (the fuzzer found the index left behind: a stale
    address that pointed at nothing, after which later writes were not seen)."""
    cache: TranslationCache[int] = TranslationCache(ite_size=8)
    dte = 0x4000_1000
    cache.put_device(dte, 7, DeviceEntry(itt_addr=dte, size=1))  # ITE 0 of device 7 is at its DTE
    cache.put_event(dte, 7, 0, InterruptEntry(pintid=8192, icid=0))
    assert cache.verify() == []
    assert 7 not in cache.devices and len(cache) == 0
    cache.put_device(dte, 7, DeviceEntry(itt_addr=0x4000_2000, size=1))  # the device cached again: no stale alias
    assert cache.verify() == [] and len(cache) == 1
