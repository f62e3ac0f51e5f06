"""Driver flows end to end (Linux irq-gic-v3-its.c style), on 4 CPUs, PTA=0 and PTA=1.

What a CPU acknowledges through ICC_IAR1_EL1 is the observable: the order is highest
priority (lowest value) first, ties to the lowest INTID (IHI 0069 4.8, 5.1).
"""

from __future__ import annotations

import pytest

from conftest import GITS_CTLR, GITS_TRANSLATER, LPI, Env, build, its_config, stalling
from vgic.driver import ItsDriver
from vgic.events import Kind
from vgic.its import commands as C

GICR_CTLR, GICR_WAKER, GICR_PROPBASER, GICR_PENDBASER, GICR_INVALLR = 0x0, 0x14, 0x70, 0x78, 0xB0

NET, DISK = 0x10, 0x20  # two devices, 8 events each


@pytest.fixture
def sys4(pta: bool) -> Env:
    """4 CPUs; NET event n -> LPI 8192+n on CPU n%4; DISK event n -> LPI 8300+n on CPU 0."""
    e = build(its_config(pta=pta))
    e.bring_up()
    e.map_events(NET, 3, {ev: (LPI + ev, ev % 4) for ev in range(8)})
    e.map_events(DISK, 3, {ev: (LPI + 108 + ev, 0) for ev in range(8)})
    e.send(*(C.Sync(e.rdbase(cpu)) for cpu in range(4)))
    assert not e.errors()
    assert e.creadr == e.cwriter
    return e


def test_msis_int_and_translater_on_four_cpus(sys4: Env) -> None:
    e = sys4
    for ev in range(8):
        e.its.translate(NET, ev)
    assert e.drain_all() == {cpu: [LPI + cpu, LPI + cpu + 4] for cpu in range(4)}
    e.send(C.Int(DISK, 5), C.Int(NET, 6))
    assert e.drain_all() == {0: [LPI + 113], 2: [LPI + 6]}
    e.its.write(GITS_TRANSLATER, 4, 7, requester_id=DISK)
    assert e.drain_all() == {0: [LPI + 115]}
    e.map_events(0, 1, {1: (LPI + 500, 3)})  # DeviceID 0: a plain CPU store's default
    e.d.cpu_store_translater(1)
    assert e.drain_all() == {3: [LPI + 500]}
    assert not e.faults()


def test_disable_in_property_table_inv_then_invall(sys4: Env) -> None:
    e = sys4
    e.d.configure_lpi(LPI + 108, enabled=False)
    e.send(C.Inv(DISK, 0))
    e.its.translate(DISK, 0)
    assert e.drain_all() == {}, "disabled LPI must not be delivered"
    assert e.pending(0) == {LPI + 108}, "it stays pending"
    e.d.configure_lpi(LPI + 108, enabled=True)
    assert e.drain_all() == {}, "not seen until invalidated"
    e.send(C.Invall(0))
    assert e.drain_all() == {0: [LPI + 108]}


def test_priorities_from_the_property_table(sys4: Env) -> None:
    e = sys4
    e.d.configure_lpi(LPI + 115, priority=0x10)
    e.d.configure_lpi(LPI + 110, priority=0x80)
    e.send(C.Invall(0))
    for ev in (0, 2, 7, 4):  # DISK events 0..7 -> LPIs 8300..8307, all on CPU 0
        e.its.translate(DISK, ev)
    e.its.translate(NET, 4)  # LPI 8196 on CPU 0, default priority 0xA0
    # a newly pending LPI reads its configuration byte: 8307 at 0x10, 8302 at 0x80, the
    # rest at 0xA0 in INTID order
    assert e.drain(0) == [LPI + 115, LPI + 110, LPI + 4, LPI + 108, LPI + 112]


def test_mapd_v0_then_nothing(sys4: Env) -> None:
    e = sys4
    e.send(C.Mapd(NET, 0, 0, False))
    for ev in range(8):
        assert not e.its.translate(NET, ev)
    assert len(e.faults()) == 8
    assert e.drain_all() == {}
    e.its.translate(DISK, 1)
    assert e.drain_all() == {0: [LPI + 109]}


def test_movi_moves_a_pending_lpi(sys4: Env) -> None:
    e = sys4
    e.its.translate(NET, 1)  # pending on CPU 1
    e.send(C.Movi(NET, 1, 3), C.Sync(e.rdbase(1)))
    assert e.pending(1) == frozenset()
    assert e.drain_all() == {3: [LPI + 1]}
    e.its.translate(NET, 1)
    assert e.drain_all() == {3: [LPI + 1]}


def test_movall_ors_into_a_busy_cpu(sys4: Env) -> None:
    e = sys4
    for ev in (0, 4):  # CPU 0: 8192, 8196
        e.its.translate(NET, ev)
    e.its.translate(DISK, 3)  # CPU 0: 8303
    for ev in (3, 7):  # CPU 3: 8195, 8199
        e.its.translate(NET, ev)
    # the same LPI pending on both sides: it must end up pending once on CPU 0
    e.d.gicr_write(3, 0x40, LPI + 111, 8)  # GICR_SETLPIR on CPU 3: LPI 8303
    assert e.pending(3) == {LPI + 3, LPI + 7, LPI + 111}
    # remap collection 3 first, as software must, then move the pending state
    e.send(C.Mapc(3, e.rdbase(0), True), C.Movall(e.rdbase(3), e.rdbase(0)), C.Sync(e.rdbase(0)))
    assert e.pending(3) == frozenset()
    assert e.pending(0) == {LPI, LPI + 4, LPI + 111, LPI + 3, LPI + 7}
    assert e.drain_all() == {0: [LPI, LPI + 3, LPI + 4, LPI + 7, LPI + 111]}
    e.its.translate(NET, 3)
    assert e.drain_all() == {0: [LPI + 3]}


def test_discard_removes_pending_state(sys4: Env) -> None:
    e = sys4
    e.its.translate(NET, 2)
    e.its.translate(NET, 6)
    e.send(C.Discard(NET, 2))
    assert e.drain_all() == {2: [LPI + 6]}
    assert not e.its.translate(NET, 2)
    # the event can be mapped again afterwards
    e.send(C.Mapti(NET, 2, LPI + 2, 1))
    e.its.translate(NET, 2)
    assert e.drain_all() == {1: [LPI + 2]}


def test_stall_fix_and_retry(sys4: Env) -> None:
    e = sys4
    e.send(C.Mapti(0x30, 0, LPI + 900, 0), C.Int(NET, 0))  # device 0x30 is not mapped
    assert e.creadr & 1
    bad = e.creadr & ~1
    err = e.errors()[0]
    assert (err.code, err.offset) == (0x010A04, bad)
    assert "MAPTI" in (err.command or "")
    e.mem.write_bytes(e.d.queue_base + bad, C.encode(C.Mapd(0x30, 0, e.heap.alloc(256, 256), True)))
    e.send(C.Mapti(0x30, 0, LPI + 900, 1), C.Int(0x30, 0), retry=True)
    assert e.creadr == e.cwriter
    assert e.drain_all() == {0: [LPI], 1: [LPI + 900]}


def test_its_disable_enable_mid_flow(sys4: Env) -> None:
    e = sys4
    e.its.translate(NET, 1)
    e.write(GITS_CTLR, 0)
    assert not e.its.translate(NET, 2)
    e.send(C.Int(NET, 3))  # queued while disabled
    assert e.pending(3) == frozenset()
    e.write(GITS_CTLR, 1)
    assert e.drain_all() == {1: [LPI + 1], 3: [LPI + 3]}


def test_pending_table_seeded_before_enable_lpis() -> None:
    """Software-set pending bits are read at EnableLPIs 0->1 (5.1.2) and delivered in
    priority order, ties by lowest INTID; a disabled LPI stays pending until enabled."""
    e = build()
    d: ItsDriver = e.d
    nlpis = (1 << 16) - LPI
    prop = e.heap.alloc(nlpis, 4096)
    e.mem.fill(prop, nlpis, 0xA0 | 2 | 1)
    prios = {LPI + 3: 0x80, LPI + 5: 0x40, LPI + 10: 0x40, LPI + 100: 0x20, LPI + 4000: 0x40, LPI + 9: 0x08}
    for intid, prio in prios.items():
        e.mem.write8(prop + intid - LPI, prio | 2 | 1)
    e.mem.write8(prop + 9, 0x08 | 2)  # LPI 8201: highest priority but disabled
    pend = e.heap.alloc(1 << 13, 65536)
    for intid in prios:
        e.mem.write8(pend + intid // 8, e.mem.read8(pend + intid // 8) | 1 << intid % 8)
    d.gicr_write(0, GICR_WAKER, 0)
    d.gicr_write(0, GICR_PROPBASER, prop | 1 << 10 | 7 << 7 | 15, 8)
    d.gicr_write(0, GICR_PENDBASER, pend | 1 << 10 | 7 << 7, 8)
    d.gicr_write(0, GICR_CTLR, 1)
    cpu = e.gic.cpus[0]
    cpu.write_sysreg("ICC_PMR_EL1", 0xF0)
    cpu.write_sysreg("ICC_IGRPEN1_EL1", 1)
    assert e.drain(0) == [LPI + 100, LPI + 5, LPI + 10, LPI + 4000, LPI + 3]
    assert e.pending(0) == {LPI + 9}
    e.mem.write8(prop + 9, 0x08 | 2 | 1)
    d.gicr_write(0, GICR_INVALLR, 0, 8)
    assert e.drain(0) == [LPI + 9]


def test_two_its_share_the_redistributors() -> None:
    bases = (0x0808_0000, 0x0820_0000)
    e = build((stalling(), stalling(default_device_id=7)), its_bases=bases)
    e.bring_up()  # LPIs on every CPU, ITS 0 with ICID n -> CPU n
    d1 = ItsDriver(e.gic, e.heap, its=1)
    d1.setup_its()
    its0, its1 = e.gic.its
    assert its1.enabled
    d1.send(*(C.Mapc(n, 3 - n, True) for n in range(4)))  # ITS 1: ICID n -> CPU 3-n
    e.map_events(1, 2, {0: (LPI, 1), 1: (LPI + 1, 2)})
    d1.map_device(1, 2)
    d1.send(C.Mapti(1, 0, LPI + 50, 1), C.Mapti(1, 1, LPI + 1, 1))
    d1.map_device(7, 1)
    d1.send(C.Mapti(7, 0, LPI + 70, 0))
    assert not e.errors()
    # same DeviceID on two ITSes: two different translations
    its0.translate(1, 0)
    its1.translate(1, 0)
    assert e.drain_all() == {1: [LPI], 2: [LPI + 50]}
    # both ITSes raise LPI 8193 on CPU 2: one pending LPI
    its0.translate(1, 1)
    its1.translate(1, 1)
    assert e.drain_all() == {2: [LPI + 1]}
    # GITS_TRANSLATER of each ITS, through the GIC's address map
    e.gic.write(bases[1] + GITS_TRANSLATER, 4, 0)  # ITS 1's default DeviceID is 7
    assert e.drain_all() == {3: [LPI + 70]}
    # disabling one ITS leaves the other working
    e.gic.write(bases[0] + GITS_CTLR, 4, 0)
    assert not its0.translate(1, 0)
    assert its1.translate(1, 0)
    assert e.drain_all() == {2: [LPI + 50]}
    assert {f.source for f in e.log.of(Kind.TRANSLATION_FAULT)} == {"its0"}
