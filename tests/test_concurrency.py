"""Concurrency: MSIs, commands, enables and CPUs on many threads; nothing lost, doubled or misrouted.

Threads (a few seconds, a short GIL switch interval for many interleavings):

* two device threads inject MSIs (``Its.translate``) for 16 events, each event its own LPI;
* one driver thread (the only command-queue producer, as a guest serialises its ring)
  sends MOVI, DISCARD+MAPTI, and collection moves (MAPC of every collection of CPU a to
  CPU b, then MOVALL a -> b), waiting for CREADR to catch up each time;
* one thread toggles GITS_CTLR.Enabled and another GICR_CTLR.EnableLPIs of random CPUs
  (as an OS takes a CPU offline: never in the middle of moving interrupts, so the driver
  and this thread take turns; moving pending state to or from a redistributor with
  EnableLPIs=0 is not defined to move it, 5.1, 6.3.11);
* four CPU threads acknowledge (ICC_IAR1_EL1) and EOI through their CpuInterface.

Every action is stamped with a global sequence number before and after it, so "when"
is an interval. At the end everything is re-enabled and drained, then for every event:

* **not lost**: the last accepted MSI (``msi()`` returned True) not followed by a DISCARD
  of the event is followed by a delivery of its LPI;
* **not doubled**: deliveries <= accepted MSIs, and between two deliveries of an LPI some
  accepted MSI overlaps the gap (pending is one bit: two deliveries need two MSIs);
* **not misrouted**: a delivery's CPU was the event's target (its collection's CPU) at
  some moment between the previous delivery and this one.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from conftest import GITS_CTLR, LPI, build, its_config
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy

NCPUS = 4
NEVENTS = 16
DEV = 1
DURATION = 2.0
INF = 1 << 62


@dataclass
class Timeline:
    """Per event: accepted MSIs, deliveries, target intervals, discards (all seq-stamped)."""

    msis: list[tuple[int, int]] = field(default_factory=list)  # (before, after)
    deliveries: list[tuple[int, int, int]] = field(default_factory=list)  # (before, after, cpu)
    targets: list[list[int]] = field(default_factory=list)  # [start, end, cpu]
    discards: list[int] = field(default_factory=list)  # seq after each DISCARD completed


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def test_msis_commands_toggles_and_acks_race_without_loss(fast_switching: None) -> None:
    e = build(its_config(policy=ErrorPolicy.CONTINUE), num_cpus=NCPUS)
    e.bring_up()
    its, log = e.its, e.log
    seq = itertools.count(1)
    tl = [Timeline() for _ in range(NEVENTS)]
    icid_of = {ev: ev % NCPUS for ev in range(NEVENTS)}
    cpu_of_icid = {c: c for c in range(NCPUS)}
    e.map_events(DEV, 4, {ev: (LPI + ev, icid_of[ev]) for ev in range(NEVENTS)})
    e.send(*(C.Sync(c) for c in range(NCPUS)))
    for ev in range(NEVENTS):
        tl[ev].targets.append([0, INF, icid_of[ev]])
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()  # guards the timelines (not the model)
    guest = threading.Lock()  # the guest's own rule: no CPU goes offline during a move

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    # -- devices ---------------------------------------------------------------------
    def device(events: list[int], rng: random.Random) -> Callable[[], None]:
        def step() -> None:
            ev = rng.choice(events)
            before = next(seq)
            ok = its.translate(DEV, ev)
            after = next(seq)
            if ok:
                with lock:
                    tl[ev].msis.append((before, after))

        return step

    # -- CPUs ----------------------------------------------------------------------------
    def cpu(c: int) -> Callable[[], None]:
        ci = e.gic.cpus[c]

        def step() -> None:
            before = next(seq)
            intid = ci.read_sysreg("ICC_IAR1_EL1")
            after = next(seq)
            if intid == 1023:
                time.sleep(0)
                return
            ci.write_sysreg("ICC_EOIR1_EL1", intid)
            assert LPI <= intid < LPI + NEVENTS, intid
            with lock:
                tl[intid - LPI].deliveries.append((before, after, c))

        return step

    # -- the driver: the one command-queue producer ---------------------------------------
    rng = random.Random(7)

    def send(*cmds: C.Command) -> tuple[int, int]:
        before = next(seq)
        e.d.send(*cmds)
        deadline = time.monotonic() + 5
        while e.creadr != e.cwriter:  # commands run when the toggler re-enables the ITS
            assert time.monotonic() < deadline, "command queue never drained"
            time.sleep(0.0005)
        return before, next(seq)

    def retarget(ev: int, cpu_now: int, before: int, after: int) -> None:
        with lock:
            cur = tl[ev].targets[-1]
            if cur[2] != cpu_now:
                cur[1] = after
                tl[ev].targets.append([before, INF, cpu_now])

    def driver() -> None:
        with guest:
            drive()
        time.sleep(0.001)

    def drive() -> None:
        what = rng.randrange(3)
        if what == 0:  # MOVI an event to another collection
            ev, icid = rng.randrange(NEVENTS), rng.randrange(NCPUS)
            before, after = send(C.Movi(DEV, ev, icid), C.Sync(cpu_of_icid[icid]))
            icid_of[ev] = icid
            retarget(ev, cpu_of_icid[icid], before, after)
        elif what == 1:  # DISCARD and map again (same LPI, same collection)
            ev = rng.randrange(NEVENTS)
            _, after = send(C.Discard(DEV, ev))
            with lock:
                tl[ev].discards.append(after)
            send(C.Mapti(DEV, ev, LPI + ev, icid_of[ev]), C.Sync(cpu_of_icid[icid_of[ev]]))
        else:  # move every collection of CPU a to CPU b, then MOVALL a -> b
            a, b = rng.sample(range(NCPUS), 2)
            moved = [icid for icid, c in cpu_of_icid.items() if c == a]
            before, after = send(*(C.Mapc(icid, b, True) for icid in moved), C.Movall(a, b), C.Sync(b))
            for icid in moved:
                cpu_of_icid[icid] = b
            for ev in range(NEVENTS):
                if icid_of[ev] in moved:
                    retarget(ev, b, before, after)

    # -- togglers ------------------------------------------------------------------------
    trng = random.Random(11)

    def its_toggler() -> None:
        e.write(GITS_CTLR, 0)
        time.sleep(0.0005)
        e.write(GITS_CTLR, 1)
        time.sleep(0.01)

    def lpi_toggler() -> None:
        c = trng.randrange(NCPUS)
        with guest:
            e.d.gicr_write(c, 0x0, 0)
            time.sleep(0.0005)
            e.d.gicr_write(c, 0x0, 1)
        time.sleep(0.01)

    workers = [
        guarded(device(list(range(0, NEVENTS, 2)), random.Random(1))),
        guarded(device(list(range(1, NEVENTS, 2)), random.Random(2))),
        guarded(driver),
        guarded(its_toggler),
        guarded(lpi_toggler),
        *(guarded(cpu(c)) for c in range(NCPUS)),
    ]
    threads = [threading.Thread(target=w, daemon=True) for w in workers]
    for t in threads:
        t.start()
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    assert not errors, errors
    assert not log.errors, [str(x) for x in log.errors[:3]]

    # -- quiesce: everything enabled, then drain every CPU ----------------------------------
    e.write(GITS_CTLR, 1)
    for c in range(NCPUS):
        e.d.gicr_write(c, 0x0, 1)
    for c in range(NCPUS):
        for intid in e.drain(c):
            s = next(seq)
            tl[intid - LPI].deliveries.append((s, s, c))

    # -- the checks ----------------------------------------------------------------------
    stats: dict[str, int] = defaultdict(int)
    for ev, t in enumerate(tl):
        msis = sorted(t.msis)
        dels = sorted(t.deliveries, key=lambda d: d[1])
        stats["msis"] += len(msis)
        stats["deliveries"] += len(dels)
        assert len(dels) <= len(msis), f"event {ev}: {len(dels)} deliveries for {len(msis)} accepted MSIs"
        for prev, cur in itertools.pairwise(dels):
            assert any(m_after > prev[0] and m_before < cur[1] for m_before, m_after in msis), (
                f"event {ev}: delivered twice ({prev}, {cur}) with no MSI in between"
            )
        if msis:
            last_before = msis[-1][0]
            forgiven = max(t.discards, default=0) > last_before
            if not forgiven:
                assert any(d[1] > last_before for d in dels), f"event {ev}: the MSI at {msis[-1]} was lost"
        window_start = 0
        for d_before, d_after, c in dels:
            ok = any(start <= d_after and end >= window_start and cpu_ == c for start, end, cpu_ in t.targets)
            assert ok, f"event {ev}: delivered on CPU {c} at {d_after}; targets {t.targets}"
            window_start = d_before
    assert stats["msis"] > 100 and stats["deliveries"] > 100, stats


def test_cpus_sending_sgis_to_each_other_do_not_deadlock(fast_switching: None) -> None:
    """CPU 0 and CPU 1 signal each other (ICC_SGI1R_EL1) while taking interrupts: an SGI
    must not be raised while holding the sender's own lock (ABBA with the target's)."""
    e = build(num_cpus=2)
    e.bring_up(its=False, collections=False)
    for c in range(2):
        e.gic.sgi_frames[c].write(0x100, 4, 0xFFFF)  # GICR_ISENABLER0: SGIs
        e.gic.sgi_frames[c].write(0x080, 4, 0xFFFF)  # GICR_IGROUPR0: Group 1
    e.gic.distributor.write(0x0, 4, 0x2)  # GICD_CTLR.EnableGrp1
    counts = [0, 0]
    stop = time.monotonic() + 1.0
    errors: list[BaseException] = []

    def cpu(c: int) -> None:
        ci = e.gic.cpus[c]
        other = 1 - c
        try:
            while time.monotonic() < stop:
                ci.write_sysreg("ICC_SGI1R_EL1", 1 << other | 3 << 24)  # SGI 3 to the other CPU
                intid = ci.read_sysreg("ICC_IAR1_EL1")
                if intid != 1023:
                    ci.write_sysreg("ICC_EOIR1_EL1", intid)
                    counts[c] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=cpu, args=(c,), daemon=True) for c in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "CPUs deadlocked sending SGIs to each other"
    assert not errors
    assert counts[0] > 0 and counts[1] > 0
