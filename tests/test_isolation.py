"""Isolation: GIC instances, and ITSes within one GIC, share nothing a guest can observe.

* Two :class:`Gic` instances in one process (two VMs of one VMM): separate guest memory,
  registers, caches, event logs and locks. What one guest does (mappings, MSIs, command
  errors, a stalled queue, tables outside RAM, a wedged event listener) never shows in the
  other, and one blocked inside its own lock does not stop the other.
* Two ITSes in one GIC (IHI 0069 allows several): each has its own registers, command
  queue, tables and caches; a stall, a disable or a broken table on one leaves the other's
  translations alone. They share only the redistributors, where their LPIs meet.
"""

from __future__ import annotations

import threading
import time

from conftest import GITS_CBASER, GITS_CTLR, GITS_CWRITER, LPI, RAM_BASE, RAM_SIZE, Env, build, its_config, stalling
from vgic.driver import ItsDriver
from vgic.events import Kind
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy
from vgic.its.errors import ItsError as E

VALID = 1 << 63
SECOND_ITS = 0x0830_0000


def two_vms() -> tuple[Env, Env]:
    a, b = build(its_config(), num_cpus=2), build(its_config(), num_cpus=4)
    a.bring_up()
    b.bring_up()
    return a, b


def test_two_gics_do_not_share_memory_state_or_logs() -> None:
    a, b = two_vms()
    a.map_events(1, 2, {0: (LPI, 1)})
    b.map_events(1, 2, {0: (LPI + 7, 3)})  # same DeviceID/EventID, different meaning
    assert a.its.translate(1, 0) and b.its.translate(1, 0)
    assert a.pending(1) == {LPI} and b.pending(3) == {LPI + 7}
    assert all(not b.pending(c) for c in range(3)) and not a.pending(0)
    # guest memory: the same guest physical address holds different bytes
    a.mem.write64(RAM_BASE + RAM_SIZE - 8, 0x1111)
    assert b.mem.read64(RAM_BASE + RAM_SIZE - 8) == 0
    # registers (banks share only their immutable layout)
    a.write(GITS_CTLR, 0)
    assert not a.its.enabled and b.its.enabled
    a.write(GITS_CTLR, 1)
    # errors and logs
    a.send(C.Mapc(0, 99, True))
    assert a.codes() == [E.MAPC_PROCNUM_OOR] and b.codes() == []
    assert a.creadr & 1 and not b.creadr & 1  # A stalled, B did not
    b.send(C.Int(1, 0))
    assert not b.errors() and b.drain_all() == {3: [LPI + 7]}
    assert a.drain_all() == {1: [LPI]}


def test_a_broken_gic_does_not_disturb_the_other() -> None:
    a, b = two_vms()
    b.map_events(2, 1, {1: (LPI + 1, 0)})
    b.send(C.Sync(b.rdbase(0)))
    # A's guest points every table and the queue outside RAM and floods it with garbage
    a.write(GITS_CTLR, 0)
    a.write64(GITS_CBASER, VALID | 0xFFFF_0000_0000 | 0xFF)
    a.write(GITS_CTLR, 1)
    for off in range(0, 0x20000, 0x1000):
        a.gic.write(a.gic.config.its_bases[0] + off, 4, 0xFFFF_FFFF)
        a.gic.write(a.gic.config.gicr_base + off, 8, 0xFFFF_FFFF_FFFF_FFFF)
    for dev in range(64):
        a.its.translate(dev, dev)
    assert b.its.translate(2, 1)
    assert b.drain_all() == {0: [LPI + 1]}
    assert not b.log.of(Kind.DIAGNOSTIC, Kind.COMMAND_ERROR, Kind.TRANSLATION_FAULT)


def test_one_gic_blocked_in_its_lock_does_not_stop_the_other() -> None:
    """A's event listener wedges while A's ITS holds its lock (a stalled VMM thread).
    B, driven from another thread, makes progress all the while: no lock is shared."""
    a, b = two_vms()
    a.map_events(1, 1, {0: (LPI, 0)})
    b.map_events(1, 1, {0: (LPI + 1, 1)})
    release = threading.Event()
    entered = threading.Event()

    def wedge(ev: object) -> None:
        entered.set()
        release.wait(10)

    a.log.subscribe(wedge)
    t = threading.Thread(target=a.its.translate, args=(1, 0), daemon=True)
    t.start()
    assert entered.wait(5)
    try:
        done = []
        worker = threading.Thread(target=lambda: done.extend(b.its.translate(1, 0) for _ in range(100)), daemon=True)
        worker.start()
        worker.join(5)
        assert not worker.is_alive() and all(done) and len(done) == 100
        b.send(C.Int(1, 0))
        assert b.drain_all() == {1: [LPI + 1]}
        assert a.its.lock._is_owned() is False  # not ours: A's lock is held by the wedged thread
    finally:
        release.set()
        a.log.unsubscribe(wedge)
        t.join(5)
    assert not t.is_alive()


def two_its_gic() -> tuple[Env, ItsDriver, ItsDriver]:
    cfgs = (its_config(policy=ErrorPolicy.STALL), stalling(error_policy=ErrorPolicy.CONTINUE))
    e = build(cfgs, num_cpus=4, its_bases=(0x0808_0000, SECOND_ITS))
    d0 = e.d
    d1 = ItsDriver(e.gic, e.heap, its=1)
    d0.setup_lpis()
    for d in (d0, d1):
        d.setup_its()
        d.send(*(C.Mapc(c, c, True) for c in range(4)))
    return e, d0, d1


def test_two_itses_have_separate_queues_tables_and_caches() -> None:
    e, d0, d1 = two_its_gic()
    its0, its1 = e.gic.its
    d0.map_device(1, 2)
    d1.map_device(1, 2)
    d0.send(C.Mapti(1, 0, LPI, 0))
    d1.send(C.Mapti(1, 0, LPI + 1, 2))
    assert its0.translate(1, 0) and its1.translate(1, 0)
    assert e.pending(0) == {LPI} and e.pending(2) == {LPI + 1}
    assert d0.queue_base != d1.queue_base
    # a stall on ITS 0 does not stop ITS 1's queue
    d0.send(C.Mapc(0, 77, True))
    assert its0.stalled and not its1.stalled
    d1.send(C.Discard(1, 0))
    assert not its1.translate(1, 0) and its0.translate(1, 0)
    assert e.pending(2) == frozenset()
    # disabling ITS 0 leaves ITS 1 translating
    d0.its_write(GITS_CTLR, 0)
    d1.send(C.Mapti(1, 1, LPI + 2, 3))
    assert not its0.translate(1, 0) and its1.translate(1, 1)
    assert e.drain_all() == {0: [LPI], 3: [LPI + 2]}
    codes0 = [ev.code for ev in e.log.errors if ev.source == "its0"]
    codes1 = [ev.code for ev in e.log.errors if ev.source == "its1"]
    assert codes0 == [E.MAPC_PROCNUM_OOR] and codes1 == []


def test_broken_tables_on_one_its_leave_the_other_alone() -> None:
    e, d0, d1 = two_its_gic()
    its0, its1 = e.gic.its
    d1.map_device(5, 1)
    d1.send(C.Mapti(5, 1, LPI + 3, 1))
    d0.its_write(GITS_CTLR, 0)
    for n in range(8):  # ITS 0's tables and queue: outside RAM
        v = d0.its_read64(0x100 + 8 * n)
        if v >> 56 & 7:
            d0.its_write64(0x100 + 8 * n, v & ~0x0000_FFFF_FFFF_F000 | 0x0000_F000_0000_0000)
    d0.its_write(GITS_CTLR, 1)
    d0.send(C.Mapd(5, 1, RAM_BASE, True), C.Mapc(1, 0, True))
    d0.its_write64(GITS_CWRITER, 0x40 | 1)
    assert not its0.translate(5, 1)
    assert its1.translate(5, 1)
    assert e.drain_all() == {1: [LPI + 3]}
    # ITS 1 is unaffected by ITS 0's faults and diagnostics
    assert not [ev for ev in e.log.errors if ev.source == "its1"]


def test_msis_on_two_itses_from_two_threads() -> None:
    """Each ITS has its own lock: MSIs through both at once, same DeviceID/EventID, never
    cross over; both reach the shared redistributors intact."""
    e, d0, d1 = two_its_gic()
    its0, its1 = e.gic.its
    d0.map_device(1, 4)
    d1.map_device(1, 4)
    d0.send(*(C.Mapti(1, ev, LPI + ev, ev % 2) for ev in range(16)))
    d1.send(*(C.Mapti(1, ev, LPI + 100 + ev, 2 + ev % 2) for ev in range(16)))
    stop = time.monotonic() + 1.0
    errors: list[BaseException] = []

    def inject(its: object) -> None:
        try:
            while time.monotonic() < stop:
                for ev in range(16):
                    its.translate(1, ev)  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=inject, args=(i,)) for i in (its0, its1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = e.drain_all()
    assert sorted(got[0] + got[1]) == [LPI + ev for ev in range(16)]
    assert sorted(got[2] + got[3]) == [LPI + 100 + ev for ev in range(16)]
