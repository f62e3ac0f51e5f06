"""EventLog: bounded ring, per-kind counters, filters and listeners."""

from __future__ import annotations

import errno
import io
import json

import pytest

from conftest import Env
from vgic.events import Event, EventLog, Kind
from vgic.its import commands as C
from vgic.tools.trace import Tracer


def test_record_fields_and_str() -> None:
    log = EventLog()
    ev = log.record(Kind.COMMAND_ERROR, "its0", "bad", code=0x010A04, offset=0x40, cpu=1, intid=8192,
                    command="MAPTI DeviceID=0x1", rule="IHI0069 6.3")  # fmt: skip
    assert isinstance(ev, Event)
    assert (ev.kind, ev.source, ev.code, ev.offset, ev.cpu, ev.intid) == (
        Kind.COMMAND_ERROR,
        "its0",
        0x010A04,
        0x40,
        1,
        8192,
    )
    text = str(ev)
    for part in (
        "command-error",
        "its0",
        "code=0x010a04",
        "offset=0x40",
        "cpu=1",
        "intid=8192",
        "bad",
        "[MAPTI",
        "(IHI0069",
    ):
        assert part in text
    assert log.errors == [ev]


def test_sequence_numbers_increase() -> None:
    log = EventLog()
    seqs = [log.record(Kind.STATE, "x", str(i)).seq for i in range(5)]  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def test_ring_is_bounded_but_counters_are_not() -> None:
    log = EventLog(capacity=10)
    for i in range(1000):
        log.record(Kind.LPI_PENDING, "gicr0", f"LPI {i}", intid=8192 + i)
    assert len(log.events) == 10
    assert [e.intid for e in log.events] == list(range(8192 + 990, 8192 + 1000))  # the newest kept
    assert log.counts[Kind.LPI_PENDING] == 1000


def test_keep_filter_counts_but_does_not_store() -> None:
    log = EventLog(keep=frozenset({Kind.COMMAND_ERROR}))
    assert log.record(Kind.TRANSLATION, "its0", "t") is None
    assert not log.wants(Kind.TRANSLATION) and log.wants(Kind.COMMAND_ERROR)
    log.record(Kind.COMMAND_ERROR, "its0", "e", code=1)
    assert [e.kind for e in log.events] == [Kind.COMMAND_ERROR]
    assert log.counts[Kind.TRANSLATION] == 1


def test_listeners_see_everything_even_unkept() -> None:
    log = EventLog(keep=frozenset())
    seen: list[Event] = []
    log.subscribe(seen.append)
    assert log.wants(Kind.TRANSLATION)
    log.record(Kind.TRANSLATION, "its0", "t")
    assert [e.kind for e in seen] == [Kind.TRANSLATION] and not log.events
    log.unsubscribe(seen.append)
    log.record(Kind.TRANSLATION, "its0", "t")
    assert len(seen) == 1 and not log.wants(Kind.TRANSLATION)


def test_of_diagnostics_errors_and_clear() -> None:
    log = EventLog()
    log.record(Kind.DIAGNOSTIC, "gicr0", "d")
    log.record(Kind.TRANSLATION_FAULT, "its0", "f")
    log.record(Kind.LPI_DROPPED, "gicr0", "x")
    log.record(Kind.COMMAND, "its0", "c")
    log.record(Kind.COMMAND_ERROR, "its0", "e")
    assert [e.message for e in log.diagnostics] == ["d", "f", "x"]
    assert [e.message for e in log.errors] == ["e"]
    assert [e.message for e in log.of(Kind.COMMAND, Kind.COMMAND_ERROR)] == ["c", "e"]
    log.clear()
    assert not log.events and not log.counts


# -- listeners that fail: detached, reported once, never raised into the model ----------------


def test_a_raising_listener_is_detached_and_reported_once(capsys: pytest.CaptureFixture[str]) -> None:
    log = EventLog()
    calls: list[Event] = []

    def broken(ev: Event) -> None:
        calls.append(ev)
        raise RuntimeError("disk on fire")

    seen: list[Event] = []
    log.subscribe(broken)
    log.subscribe(seen.append)
    for i in range(3):
        log.record(Kind.STATE, "x", str(i))
    assert len(calls) == 1  # called once, then detached
    assert [e.message for e in seen] == ["0", "1", "2"]  # the others go on
    assert [(f, type(e)) for f, e in log.listener_failures] == [(broken, RuntimeError)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken failed and was detached: RuntimeError: disk on fire" in err


def test_a_listener_may_unsubscribe_itself_while_called() -> None:
    log = EventLog()
    seen: list[str] = []

    def once(ev: Event) -> None:
        seen.append(ev.message)
        log.unsubscribe(once)

    log.subscribe(once)
    log.subscribe(lambda ev: seen.append("second " + ev.message))
    log.record(Kind.STATE, "x", "a")
    log.record(Kind.STATE, "x", "b")
    assert seen == ["a", "second a", "second b"]
    assert not log.listener_failures


def test_a_failing_listener_does_not_break_an_its_command(env: Env) -> None:
    """The ITS records events holding its lock, mid-command: the listener's failure stays
    out of it, the command completes and the MSI is delivered."""
    failures: list[Exception] = []
    env.gic.log.on_listener_failure = lambda listener, error: failures.append(error)

    def full_disk(ev: Event) -> None:
        raise OSError(28, "No space left on device")

    env.gic.log.subscribe(full_disk)
    env.bring_up()
    env.map_events(1, 2, {0: (8192, 0)})
    env.send(C.Sync(env.rdbase(0)))
    assert env.d.msi(1, 0)
    assert env.drain(0) == [8192]
    assert not env.errors()
    assert len(failures) == 1 and isinstance(failures[0], OSError)


class _FullDisk(io.StringIO):
    """A file that takes ``room`` characters, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, s: str) -> int:
        if self.tell() + len(s) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(s)


@pytest.mark.parametrize("room", [0, 300, 2000], ids=["nothing", "header fails", "mid-command"])
def test_a_trace_on_a_full_disk_stops_and_says_so_once(env: Env, room: int) -> None:
    errors: list[OSError] = []
    out = _FullDisk(room)
    tracer = Tracer(env.gic.log, out, "json", num_cpus=4, on_error=errors.append)
    env.bring_up()
    env.map_events(1, 4, {ev: (8192 + ev, 0) for ev in range(16)})
    for ev in range(16):
        assert env.d.msi(1, ev)
    tracer.close()
    assert env.drain(0) == [8192 + ev for ev in range(16)]  # the model never saw the failure
    assert len(errors) == 1 and errors[0].errno == errno.ENOSPC
    assert tracer.error is errors[0] and tracer.closed
    assert (tracer.count > 0) == (room == 2000)  # the header (353 characters) fitted: events failed
    assert not env.gic.log.listener_failures  # the tracer handled it itself
    assert env.gic.log.wants(Kind.COMMAND)  # still stored; the tracer no longer listens
    assert not env.gic.log._listeners


def test_a_trace_that_fits_is_valid_json(env: Env) -> None:
    out = io.StringIO()
    tracer = Tracer(env.gic.log, out, "json", num_cpus=4)
    env.bring_up()
    tracer.close()
    records = json.loads(out.getvalue())
    assert any(r.get("name") == "MAPC" for r in records) and tracer.error is None
