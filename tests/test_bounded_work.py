"""Bounded work per guest access (issue: hostile guests, round 2).

A guest chooses how many LPIs are pending (through the pending table) and how many
commands its queue holds. No single register access may then do work in proportion to
those numbers: the ITS runs at most ``its.ACCESS_UNITS`` commands per access, and the
LPI-wide operations (INVALL, MOVALL, GICR_INVALLR, the pending-table read at EnableLPIs
and the write-back at its clearing) are redistributor jobs of ``JOB_CHUNK`` LPIs a unit.
Polling GITS_CREADR, GICR_CTLR.RWP or GICR_SYNCR (or ``Gic.work``) finishes them; nothing
is lost or done twice. The counts below are operations on LPIs, not host time: these
tests hold on any machine.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import GITS_CREADR, GITS_CWRITER, LPI, Env, build, its_config
from vgic import snapshot
from vgic.gicv3 import redistributor as R
from vgic.its import commands as C
from vgic.its import its as I

N_LPIS = 1 << 16  # LPI INTIDs 8192..65535: 57,344 LPIs, the whole 16-bit space
PER_ACCESS = I.ACCESS_UNITS * R.JOB_CHUNK  # LPIs one access may touch
CTLR, SYNCR = 0x00, 0xC0
RWP = 1 << 3


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count per-LPI operations of every redistributor while the block runs."""
    counts = {"ops": 0}
    originals = {name: getattr(R.Redistributor, name) for name in ("_reload", "_make_pending")}
    set_bit = R.GuestMemory.set_bit

    def wrap(name: str):  # type: ignore[no-untyped-def]
        def f(self, *args):  # type: ignore[no-untyped-def]
            counts["ops"] += 1
            return originals[name](self, *args)

        return f

    def bit(self, *args):  # type: ignore[no-untyped-def]
        counts["ops"] += 1
        return set_bit(self, *args)

    mp = pytest.MonkeyPatch()
    for name in originals:
        mp.setattr(R.Redistributor, name, wrap(name))
    mp.setattr(R.GuestMemory, "set_bit", bit)
    try:
        yield counts
    finally:
        mp.undo()


def access(counts: dict[str, int], fn, *args):  # type: ignore[no-untyped-def]
    """Run one guest access and check it touched at most PER_ACCESS LPIs."""
    before = counts["ops"]
    result = fn(*args)
    assert counts["ops"] - before <= PER_ACCESS + R.JOB_CHUNK, f"{counts['ops'] - before} LPI operations in one access"
    return result


def seeded(num_cpus: int = 2) -> Env:
    """Tables programmed, EnableLPIs=0 everywhere, and every LPI set in CPU 0's pending
    table (57,344 of them) for the next EnableLPIs=1 to read."""
    e = build(its_config(), num_cpus=num_cpus)
    e.d.setup_lpis(id_bits=16)
    for rd in e.gic.redistributors:
        rd.write(CTLR, 4, 0)
    finish(e)
    rd0 = e.gic.redistributors[0]
    pend = rd0.regs.get("PENDBASER") & 0x000F_FFFF_FFFF_0000
    e.mem.write_bytes(pend + LPI // 8, b"\xff" * ((N_LPIS - LPI) // 8))
    return e


def finish(e: Env) -> None:
    while e.gic.busy:
        e.gic.work()


def test_enable_lpis_reads_a_full_pending_table_in_bounded_steps() -> None:
    e = seeded()
    rd0 = e.gic.redistributors[0]
    with counting() as counts:
        access(counts, rd0.write, CTLR, 4, 1)  # EnableLPIs=1: the scan starts
        assert rd0.enable_lpis and rd0.busy
        polls = 0
        while access(counts, rd0.read, SYNCR, 4) & 1:  # GICR_SYNCR.Busy
            polls += 1
    assert polls > 10, "the scan took many accesses, each bounded"
    assert rd0.pending_lpis == set(range(LPI, N_LPIS))


def test_clearing_enable_lpis_writes_back_in_bounded_steps_with_rwp() -> None:
    e = seeded()
    rd0 = e.gic.redistributors[0]
    rd0.write(CTLR, 4, 1)
    finish(e)
    pend = rd0.regs.get("PENDBASER") & 0x000F_FFFF_FFFF_0000
    e.mem.fill(pend + LPI // 8, (N_LPIS - LPI) // 8)  # scribble: the write-back must restore it
    e.gic.cpus[0].write_sysreg("ICC_PMR_EL1", 0xFF)
    e.gic.cpus[0].write_sysreg("ICC_IGRPEN1_EL1", 1)
    acked = e.gic.cpus[0].read_sysreg("ICC_IAR1_EL1")  # one LPI leaves: its bit must stay clear
    assert acked == LPI
    with counting() as counts:
        access(counts, rd0.write, CTLR, 4, 0)
        assert not rd0.enable_lpis and rd0.pending_lpis == frozenset(), "delivery stops at once"
        assert rd0.read(CTLR, 4) & RWP
        n = len(e.diags())
        access(counts, rd0.write, CTLR, 4, 1)  # while RWP=1: UNPREDICTABLE, ignored
        assert not rd0.enable_lpis and len(e.diags()) == n + 1 and "RWP=1" in e.diags()[-1].message
        while access(counts, rd0.read, CTLR, 4) & RWP:
            pass
    table = int.from_bytes(e.mem.read_bytes(pend + LPI // 8, (N_LPIS - LPI) // 8), "little")
    assert table == ((1 << (N_LPIS - LPI)) - 1) & ~1, "every pending LPI written back, the acknowledged one not"


@pytest.mark.parametrize("how", ["INVALL", "GICR_INVALLR"])
def test_invall_over_every_lpi_is_bounded_and_complete(how: str) -> None:
    e = seeded()
    rd0 = e.gic.redistributors[0]
    rd0.write(CTLR, 4, 1)
    finish(e)
    e.d.setup_its()
    e.send(C.Mapc(0, e.rdbase(0), True))
    prop = rd0.regs.get("PROPBASER") & 0x000F_FFFF_FFFF_F000
    e.mem.write8(prop + (N_LPIS - 1 - LPI), 0x10 | 3)  # the last LPI: higher priority than the rest
    cpu = e.gic.cpus[0]
    cpu.write_sysreg("ICC_PMR_EL1", 0xFF)
    cpu.write_sysreg("ICC_IGRPEN1_EL1", 1)
    with counting() as counts:
        if how == "INVALL":
            e.d.mem.write_bytes(e.d.queue_base + (e.cwriter & 0xFFFE0), C.encode(C.Invall(0)))
            access(counts, e.write64, GITS_CWRITER, (e.cwriter + 32) % e.d.queue_bytes)
            while access(counts, e.read, GITS_CREADR) != e.cwriter & 0xFFFFF:
                pass
        else:
            access(counts, rd0.write, 0xB0, 4, 0)  # GICR_INVALLR
            while access(counts, rd0.read, SYNCR, 4) & 1:
                pass
    assert cpu.read_sysreg("ICC_IAR1_EL1") == N_LPIS - 1, "the reloaded priority decides"
    assert len(rd0.pending_lpis) == N_LPIS - LPI - 1


def test_a_queue_of_movalls_moves_every_lpi_once_in_bounded_steps() -> None:
    e = seeded(num_cpus=2)
    for rd in e.gic.redistributors:
        rd.write(CTLR, 4, 1)
    finish(e)
    e.d.setup_its()
    before = e.gic.redistributors[0].pending_lpis
    moves = [C.Movall(e.rdbase(0), e.rdbase(1)), C.Movall(e.rdbase(1), e.rdbase(0))] * 4
    with counting() as counts:
        offset = e.cwriter & 0xFFFE0
        for cmd in moves:
            e.d.mem.write_bytes(e.d.queue_base + offset, C.encode(cmd))
            offset = (offset + 32) % e.d.queue_bytes
        access(counts, e.write64, GITS_CWRITER, offset)
        polls = 0
        while access(counts, e.read, GITS_CREADR) != offset:
            polls += 1
            quiescent = e.read(0x0) >> 31
            assert not quiescent, "GITS_CTLR.Quiescent=0 while MOVALLs are in flight"
            total = e.gic.redistributors[0].pending_lpis | e.gic.redistributors[1].pending_lpis
            overlap = e.gic.redistributors[0].pending_lpis & e.gic.redistributors[1].pending_lpis
            assert not overlap, "an LPI pending on two redistributors at once"
            assert len(total) == len(before), "an LPI lost during the move"
    assert polls > 20
    assert e.gic.redistributors[0].pending_lpis == before and e.gic.redistributors[1].pending_lpis == frozenset()
    assert e.its.read(0x0, 4) >> 31, "Quiescent again"


def test_a_snapshot_taken_mid_job_finishes_the_same_after_restore() -> None:
    e = seeded(num_cpus=2)
    for rd in e.gic.redistributors:
        rd.write(CTLR, 4, 1)
    finish(e)
    e.d.setup_its()
    offset = e.cwriter & 0xFFFE0
    e.d.mem.write_bytes(e.d.queue_base + offset, C.encode(C.Movall(e.rdbase(0), e.rdbase(1))))
    e.write64(GITS_CWRITER, offset + 32)
    assert e.its.busy
    buf = io.BytesIO()
    snapshot.save_gic(e.gic, buf)
    finish(e)
    restored = snapshot.load_gic(io.BytesIO(buf.getvalue()))
    assert restored.its[0].busy and restored.redistributors[0].busy
    while restored.busy:
        restored.work()
    for a, b in zip(e.gic.redistributors, restored.redistributors, strict=True):
        assert a.pending_lpis == b.pending_lpis
    assert restored.its[0].creadr == e.its.creadr == offset + 32


def test_many_commands_in_one_write_run_a_few_per_access() -> None:
    e = build(its_config())
    e.bring_up()
    offset = e.cwriter & 0xFFFE0
    n = 100  # of the 128 slots of a one-page queue
    for _ in range(n):
        e.d.mem.write_bytes(e.d.queue_base + offset, C.encode(C.Sync(e.rdbase(0))))
        offset = (offset + 32) % e.d.queue_bytes
    start = e.its.creadr
    e.write64(GITS_CWRITER, offset)
    done = (e.its.creadr - start) % e.d.queue_bytes // 32
    assert 0 < done <= 2 * I.ACCESS_UNITS, "a 64-bit CWRITER store is two accesses"
    assert e.its.busy and not e.its.read(0x0, 4) >> 31
    assert e.d.wait(), "polling CREADR runs the rest"
    assert e.its.command_counts["SYNC"] >= n


def test_inspect_stops_at_its_cap_whatever_the_tables_hold() -> None:
    """A guest-made device table whose every DTE names a 2^20-event ITT full of valid ITEs
    (hours of scanning before the cap was global): the report looks at ``limit`` entries
    in all, and says where it stopped."""
    from vgic.its.registers import BASER_TYPE_DEVICE
    from vgic.its.tables import DeviceEntry
    from vgic.tools import inspector

    e = build(its_config())
    e.bring_up()
    dt = e.its.table(BASER_TYPE_DEVICE)
    assert dt is not None
    itt = e.heap.alloc(1 << 16, 256)
    e.mem.write_bytes(itt, b"\xff" * (1 << 16))  # every ITE Valid
    dte = DeviceEntry(itt, 19).encode()
    for n in range(dt.bytes // 8):
        e.mem.write64(dt.base + 8 * n, dte)
    limit = 3000
    text = inspector.report(e.gic, limit=limit)
    assert "the report's cap of 3000 entries" in text
    assert text.count("EventID") <= limit
    assert text.splitlines()[0].startswith("profile: ")


# == --timeout holds against a guest doing the most expensive accesses it can ================

GUESTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "guests" / "out"


@pytest.mark.parametrize("mode", [[], ["--deterministic"]], ids=["timed", "counted"])
@pytest.mark.parametrize(("guest", "line"), [("hostile_invall", "flooding the queue"),
                                             ("hostile_toggle", "toggling EnableLPIs")])  # fmt: skip
def test_timeout_holds_against_a_hostile_guest(guest: str, line: str, mode: list[str]) -> None:
    """57,344 LPIs pending, then a queue of INVALL/MOVALL and GICR_INVALLR forever, or
    EnableLPIs toggled forever: `vgic run --timeout 3` still ends at 3 s (exit status 5),
    because no access costs more than a bounded amount of host work. The slack covers
    start-up and the machine's other load; before the bound it ran 25 to 52 s."""
    import subprocess
    import sys
    import time

    elf = GUESTS / f"{guest}.elf"
    if not elf.exists():
        pytest.skip("guests not built")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vgic.cli", "run", *mode, "--timeout", "3", str(elf)],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    elapsed = time.monotonic() - t0
    assert p.returncode == 5, p.stderr.decode()[-2000:]
    assert line.encode() in p.stdout, p.stdout.decode()[-2000:]
    assert b"Traceback" not in p.stderr
    assert elapsed < 3 + 6, f"--timeout 3 took {elapsed:.1f} s"
