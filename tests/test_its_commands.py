"""Every ITS command's effect (IHI 0069 6.3), and MSI translation (5.2, 12.19.21).

Effects are observed as a guest would: interrupts acknowledged through ICC_IAR1_EL1, the
redistributors' pending state, and the tables in guest memory, decoded with the entry
formats documented in vgic.its.tables (DTE [63] V, [48:5] ITT_addr[51:8], [4:0] Size;
CTE [63] V, [35:0] RDbase; ITE [63] V, [47:16] pINTID, [15:0] ICID). Every test runs with
GITS_TYPER.PTA=0 (RDbase = processor number) and PTA=1 (RDbase = RD_base PA >> 16).
"""

from __future__ import annotations

import pytest

from conftest import GITS_BASER, GITS_CTLR, GITS_TRANSLATER, GITS_TYPER, LPI, Env, build, its_config, stalling
from vgic.events import Kind
from vgic.its import commands as C


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def table_base(e: Env, kind: int) -> int:
    for n in range(8):
        v = e.read64(GITS_BASER + 8 * n)
        if bits(v, 58, 56) == kind:
            return bits(v, 47, 12) << 12
    raise AssertionError


def dte(e: Env, device_id: int) -> int:
    return e.mem.read64(table_base(e, 1) + 8 * device_id)


def cte(e: Env, icid: int) -> int:
    return e.mem.read64(table_base(e, 4) + 8 * icid)


def ite(e: Env, device_id: int, event_id: int) -> int:
    size = bits(e.read64(GITS_TYPER), 7, 4) + 1
    return e.mem.read64(e.d.itts[device_id] + size * event_id)


# == MAPD =============================================================================


def test_mapd_writes_the_dte(ready: Env) -> None:
    e = ready
    itt = e.d.map_device(0x42, 5)
    raw = dte(e, 0x42)
    assert raw >> 63 == 1
    assert bits(raw, 48, 5) << 8 == itt
    assert bits(raw, 4, 0) == 4  # Size = EventID bits - 1
    assert not e.errors()


def test_mapd_v0_unmaps_the_device(ready: Env) -> None:
    e = ready
    e.map_events(3, 2, {0: (LPI, 1)})
    assert e.its.translate(3, 0)
    e.send(C.Mapd(3, 0, 0, False))
    assert dte(e, 3) >> 63 == 0
    assert not e.its.translate(3, 0)
    assert "not mapped" in e.faults()[-1].message
    e.send(C.Int(3, 0))
    assert e.codes() == [0x010304]  # INT_UNMAPPED_DEVICE
    assert e.drain_all() == {1: [LPI]}  # only the MSI from before the unmap


def test_mapd_of_unmapped_device_with_v0_is_not_an_error(ready: Env) -> None:
    ready.send(C.Mapd(9, 0, 0, False))
    assert not ready.errors()


def test_mapd_remap_replaces_the_itt(ready: Env) -> None:
    e = ready
    e.map_events(4, 2, {0: (LPI, 0)})
    new_itt = e.heap.alloc(256, 256)
    e.send(C.Mapd(4, 3, new_itt, True))
    assert bits(dte(e, 4), 48, 5) << 8 == new_itt
    assert not e.its.translate(4, 0), "the new ITT has no mapping for event 0"
    e.send(C.Mapti(4, 9, LPI + 9, 2))  # Size=3: 16 events now
    ite_size = (e.read(GITS_TYPER) >> 4 & 0xF) + 1  # GITS_TYPER.ITT_entry_size
    assert e.mem.read64(new_itt + ite_size * 9) >> 63 == 1
    assert e.its.translate(4, 9)
    assert e.drain_all() == {2: [LPI + 9]}


# == MAPC =============================================================================


def test_mapc_writes_the_cte(ready: Env) -> None:
    e = ready
    for cpu in range(4):
        raw = cte(e, cpu)
        assert raw >> 63 == 1
        assert bits(raw, 35, 0) == e.rdbase(cpu)
    e.send(C.Mapc(17, e.rdbase(3), True))
    assert bits(cte(e, 17), 35, 0) == e.rdbase(3)


def test_mapc_remap_retargets_translation(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 1)})
    e.send(C.Mapc(1, e.rdbase(3), True))
    e.its.translate(1, 0)
    assert e.drain_all() == {3: [LPI]}


def test_mapc_v0_unmaps_the_collection(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 2)})
    e.send(C.Mapc(2, 0, False))
    assert cte(e, 2) >> 63 == 0
    assert not e.its.translate(1, 0)
    assert "collection" in e.faults()[-1].message
    e.send(C.Int(1, 0))
    assert e.codes() == [0x010309]
    assert e.drain_all() == {}


# == MAPTI / MAPI =======================================================================


def test_mapti_writes_the_ite_and_int_delivers(ready: Env) -> None:
    e = ready
    e.map_events(0x10, 3, {5: (LPI + 300, 2)})
    raw = ite(e, 0x10, 5)
    assert raw >> 63 == 1
    assert bits(raw, 47, 16) == LPI + 300
    assert bits(raw, 15, 0) == 2
    assert ite(e, 0x10, 4) == 0  # neighbours untouched
    e.send(C.Int(0x10, 5))
    assert e.pending(2) == {LPI + 300}
    assert e.gic.cpus[2].read_sysreg("ICC_IAR1_EL1") == LPI + 300
    assert e.gic.cpus[2].read_sysreg("ICC_IAR1_EL1") == 1023  # LPIs have no active state


def test_mapti_to_an_unmapped_collection_is_allowed(ready: Env) -> None:
    """The ICID does not have to be mapped yet; the LPI is delivered once it is."""
    e = ready
    e.map_events(1, 2, {0: (LPI, 40)})
    assert not e.errors()
    assert not e.its.translate(1, 0)
    e.send(C.Mapc(40, e.rdbase(1), True))
    assert e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI]}


def test_mapti_remap_replaces_the_mapping_with_a_diagnostic(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0)})
    e.send(C.Mapti(1, 0, LPI + 1, 1))
    assert not e.errors()
    assert any("UNPREDICTABLE" in d.message for d in e.diags())
    e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI + 1]}


def test_mapi_maps_eventid_as_pintid(ready: Env) -> None:
    e = ready
    e.d.map_device(2, 14)  # 16384 events: EventIDs 8192.. are LPIs
    e.send(C.Mapi(2, LPI + 5, 3))
    raw = ite(e, 2, LPI + 5)
    assert bits(raw, 47, 16) == LPI + 5 and bits(raw, 15, 0) == 3
    e.send(C.Int(2, LPI + 5))
    assert e.drain_all() == {3: [LPI + 5]}


# == INT / CLEAR =========================================================================


def test_int_sets_pending_on_the_collections_redistributor(ready: Env) -> None:
    e = ready
    e.map_events(1, 3, {ev: (LPI + ev, ev % 4) for ev in range(8)})
    e.send(*(C.Int(1, ev) for ev in range(8)))
    for cpu in range(4):
        assert e.pending(cpu) == {LPI + cpu, LPI + cpu + 4}
    assert e.drain_all() == {cpu: [LPI + cpu, LPI + cpu + 4] for cpu in range(4)}


def test_clear_removes_pending_state_and_keeps_the_mapping(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 3), 1: (LPI + 1, 3)})
    e.send(C.Int(1, 0), C.Int(1, 1), C.Clear(1, 0))
    assert e.pending(3) == {LPI + 1}
    assert ite(e, 1, 0) >> 63 == 1
    assert e.drain_all() == {3: [LPI + 1]}
    assert e.its.translate(1, 0)
    assert e.drain_all() == {3: [LPI]}


def test_clear_of_a_non_pending_lpi_is_harmless(ready: Env) -> None:
    ready.map_events(1, 2, {0: (LPI, 3)})
    ready.send(C.Clear(1, 0))
    assert not ready.errors()


# == MOVI / MOVALL =======================================================================


def test_movi_moves_pending_state_and_retargets(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 1), 1: (LPI + 1, 1)})
    e.send(C.Int(1, 0), C.Int(1, 1), C.Movi(1, 0, 2))
    assert e.pending(1) == {LPI + 1}
    assert e.pending(2) == {LPI}
    assert bits(ite(e, 1, 0), 15, 0) == 2  # ICID updated in the ITT
    assert bits(ite(e, 1, 0), 47, 16) == LPI
    assert e.drain_all() == {1: [LPI + 1], 2: [LPI]}
    e.its.translate(1, 0)
    assert e.drain_all() == {2: [LPI]}


def test_movi_between_collections_on_one_redistributor(ready: Env) -> None:
    e = ready
    e.send(C.Mapc(8, e.rdbase(1), True))
    e.map_events(1, 2, {0: (LPI, 1)})
    e.send(C.Int(1, 0), C.Movi(1, 0, 8))
    assert e.pending(1) == {LPI}
    assert bits(ite(e, 1, 0), 15, 0) == 8
    assert e.drain_all() == {1: [LPI]}


def test_movall_moves_everything_and_ors(ready: Env) -> None:
    e = ready
    e.map_events(1, 3, {0: (LPI, 1), 1: (LPI + 1, 1), 2: (LPI + 2, 2), 3: (LPI + 3, 0)})
    e.send(C.Int(1, 0), C.Int(1, 1), C.Int(1, 2), C.Int(1, 3))
    e.send(C.Movall(e.rdbase(1), e.rdbase(2)))
    assert not e.errors()
    assert e.pending(1) == frozenset()
    assert e.pending(2) == {LPI, LPI + 1, LPI + 2}
    assert e.pending(0) == {LPI + 3}
    # MOVALL does not change collections: new MSIs of collection 1 still go to CPU 1
    assert e.drain_all() == {0: [LPI + 3], 2: [LPI, LPI + 1, LPI + 2]}
    e.its.translate(1, 0)
    assert e.drain_all() == {1: [LPI]}


def test_movall_to_itself_is_a_noop(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 1)})
    e.send(C.Int(1, 0), C.Movall(e.rdbase(1), e.rdbase(1)))
    assert e.pending(1) == {LPI}
    assert not e.errors()


# == DISCARD =============================================================================


def test_discard_removes_pending_state_and_the_mapping(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 2), 1: (LPI + 1, 2)})
    e.send(C.Int(1, 0), C.Int(1, 1), C.Discard(1, 0))
    assert e.pending(2) == {LPI + 1}
    assert ite(e, 1, 0) >> 63 == 0
    assert not e.its.translate(1, 0)
    e.send(C.Int(1, 0))
    assert e.codes() == [0x010307]
    assert e.drain_all() == {2: [LPI + 1]}


# == INV / INVALL ========================================================================


def test_inv_reloads_one_lpis_configuration(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 0)})
    e.send(C.Int(1, 0), C.Int(1, 1))
    e.d.configure_lpi(LPI, enabled=False)
    e.d.configure_lpi(LPI + 1, enabled=False)
    e.send(C.Inv(1, 0))  # only LPI 8192's configuration is reloaded
    assert e.drain_all() == {0: [LPI + 1]}
    assert e.pending(0) == {LPI}
    e.d.configure_lpi(LPI, enabled=True)
    assert e.drain_all() == {}, "the configuration change is not seen before INV"
    e.send(C.Inv(1, 0))
    assert e.drain_all() == {0: [LPI]}


def test_inv_reloads_priority(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 0)})
    e.send(C.Int(1, 0), C.Int(1, 1))
    e.d.configure_lpi(LPI + 1, priority=0x20)
    e.send(C.Inv(1, 1))
    assert e.drain_all() == {0: [LPI + 1, LPI]}


def test_invall_reloads_the_collections_redistributor(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 0), 2: (LPI + 2, 1)})
    for lpi in (LPI, LPI + 1, LPI + 2):
        e.d.configure_lpi(lpi, enabled=False)
    e.send(C.Int(1, 0), C.Int(1, 1), C.Int(1, 2))
    assert e.drain_all() == {}
    for lpi in (LPI, LPI + 1, LPI + 2):
        e.d.configure_lpi(lpi, enabled=True)
    e.send(C.Invall(0))
    assert e.drain_all() == {0: [LPI, LPI + 1]}  # CPU 1 was not invalidated
    e.send(C.Invall(1))
    assert e.drain_all() == {1: [LPI + 2]}


# == SYNC ================================================================================


def test_sync_runs_without_error(ready: Env) -> None:
    e = ready
    before = e.creadr
    e.send(*(C.Sync(e.rdbase(cpu)) for cpu in range(4)))
    assert e.creadr == before + 4 * 32
    assert not e.errors()


def test_sync_to_no_redistributor_is_ignored_with_a_diagnostic(ready: Env) -> None:
    e = ready
    before = e.creadr
    e.send(C.Sync(e.rdbase(3) + 0x100))
    assert e.creadr == before + 32
    assert not e.errors()
    assert any("SYNC" in d.message for d in e.diags())


# == MSI translation ======================================================================


def test_msi_translates_through_the_tables(ready: Env) -> None:
    e = ready
    e.map_events(0x77, 4, {ev: (LPI + 100 + ev, ev % 4) for ev in range(16)})
    for ev in range(16):
        assert e.its.translate(0x77, ev)
    assert e.drain_all() == {cpu: [LPI + 100 + cpu + 4 * k for k in range(4)] for cpu in range(4)}
    assert len(e.log.of(Kind.TRANSLATION)) == 16


def test_translater_store_uses_the_default_device_id() -> None:
    e = build(stalling(default_device_id=0x33))
    e.bring_up()
    e.map_events(0x33, 2, {1: (LPI + 1, 2)})
    e.map_events(0, 2, {1: (LPI + 2, 2)})
    e.write(GITS_TRANSLATER, 1)
    assert e.drain_all() == {2: [LPI + 1]}


def test_translater_store_default_device_id_is_zero(ready: Env) -> None:
    ready.map_events(0, 2, {2: (LPI + 2, 3)})
    ready.write(GITS_TRANSLATER, 2)
    assert ready.drain_all() == {3: [LPI + 2]}


def test_translater_store_with_a_bus_device_id(ready: Env) -> None:
    e = ready
    e.map_events(0, 2, {1: (LPI, 0)})
    e.map_events(0x55, 2, {1: (LPI + 5, 1)})
    e.its.write(GITS_TRANSLATER, 4, 1, requester_id=0x55)  # a bus write carries its requester
    assert e.drain_all() == {1: [LPI + 5]}
    e.write(GITS_TRANSLATER, 1)  # a CPU store carries none: DeviceID 0
    assert e.drain_all() == {0: [LPI]}


def test_translater_through_the_gic_address_map(ready: Env) -> None:
    e = ready
    e.map_events(0, 2, {0: (LPI, 1)})
    e.gic.write(e.gic.config.its_bases[0] + GITS_TRANSLATER, 4, 0)
    assert e.drain_all() == {1: [LPI]}


@pytest.mark.parametrize(
    ("device_id", "event_id", "why"),
    [
        (0x99, 0, "not mapped"),  # unmapped device
        (1, 3, "not mapped"),  # unmapped event
        (1, 4, "beyond"),  # EventID beyond the ITT (Size=1: 4 events)
        (1, 1, "collection"),  # unmapped collection
        (1 << 16, 0, "Devbits"),  # DeviceID beyond Devbits
        (600, 0, "outside"),  # beyond the device table (1 page, 512 entries)
    ],
)
def test_untranslatable_msi_faults_and_sets_nothing(ready: Env, device_id: int, event_id: int, why: str) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0), 1: (LPI + 1, 9)})
    assert not e.its.translate(device_id, event_id)
    fault = e.faults()[-1]
    assert fault.device_id == device_id and fault.event_id == event_id
    assert why in fault.message
    assert all(e.pending(cpu) == frozenset() for cpu in range(4))
    assert e.drain_all() == {}


def test_msi_to_a_disabled_its_faults(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 0)})
    e.write(GITS_CTLR, 0)
    assert not e.its.translate(1, 0)
    e.write(GITS_TRANSLATER, 0)
    assert len(e.faults()) == 2
    assert all("disabled" in f.message for f in e.faults())
    assert e.drain_all() == {}
    e.write(GITS_CTLR, 1)
    assert e.its.translate(1, 0)
    assert e.drain_all() == {0: [LPI]}


def test_msi_to_a_redistributor_without_lpis_is_dropped(ready: Env) -> None:
    e = ready
    e.map_events(1, 2, {0: (LPI, 2)})
    e.d.gicr_write(2, 0x0, 0)  # GICR_CTLR.EnableLPIs = 0
    assert not e.its.translate(1, 0)
    assert e.log.of(Kind.LPI_DROPPED)
    assert e.drain_all() == {}


@pytest.mark.parametrize("pta", [True], ids=["PTA1"])
def test_pta1_rdbase_is_the_redistributor_address(pta: bool) -> None:
    """With PTA=1 a processor number is not an RDbase (unless it happens to be one)."""
    e = build(its_config(pta=True))
    e.bring_up(collections=False)
    e.send(C.Mapc(0, 1, True))
    assert e.codes() == [0x010902]
    # the SGI_base frame of an RD (RD_base + 64 KB) is not an RD_base either
    e2 = build(its_config(pta=True))
    e2.bring_up(collections=False)
    e2.send(C.Mapc(0, e2.rdbase(2) + 1, True))
    assert e2.codes() == [0x010902]
