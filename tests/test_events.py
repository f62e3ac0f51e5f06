"""EventLog: bounded ring, per-kind counters, filters and listeners."""

from __future__ import annotations

from vgic.events import Event, EventLog, Kind


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
