"""The event log: what the GIC and its ITSes did, and what the guest did wrong.

Models report through this small interface and know nothing of who listens (the way
rust-vmm's vm-superio devices report through their events trait). Tests and tools read
:attr:`EventLog.events`; a VMM can :meth:`EventLog.subscribe` to act on them (stop on the
first error, print a trace). The log is a bounded ring: host memory does not grow with
the number of interrupts a guest raises. Counters per kind are never dropped.

Listeners run inside the model (an ITS calls :meth:`EventLog.record` holding its lock, in
the middle of a command), so a listener that raises is never allowed to break it: the log
detaches the listener, keeps the failure in :attr:`EventLog.listener_failures`, and reports
it once through :attr:`EventLog.on_listener_failure` (by default one line on stderr).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class Kind(enum.Enum):
    """What happened."""

    COMMAND = "command"  # an ITS command executed without error
    COMMAND_ERROR = "command-error"  # an ITS command error (architected code in .code)
    TRANSLATION = "translation"  # an MSI translated to an LPI
    TRANSLATION_FAULT = "translation-fault"  # an MSI that could not be translated
    LPI_PENDING = "lpi-pending"  # an LPI became pending on a redistributor
    LPI_DROPPED = "lpi-dropped"  # an LPI the architecture says is ignored
    ACKNOWLEDGE = "acknowledge"  # a CPU acknowledged an interrupt (ICC_IAR1_EL1)
    EOI = "eoi"  # priority drop (ICC_EOIR1_EL1)
    DEACTIVATE = "deactivate"  # deactivation (ICC_DIR_EL1 or EOImode 0)
    DIAGNOSTIC = "diagnostic"  # a questionable or UNPREDICTABLE guest action
    STATE = "state"  # a state change worth tracing (ITS enabled, LPIs enabled, stall)

    # Members are singletons: hash by identity. Enum's own __hash__ hashes the name in
    # Python code, which every hot-path ``log.wants(kind)`` and counter update would pay.
    __hash__ = object.__hash__


# The kinds recorded once or more per interrupt delivered.
HOT_KINDS = frozenset({Kind.TRANSLATION, Kind.LPI_PENDING, Kind.ACKNOWLEDGE, Kind.EOI, Kind.DEACTIVATE})


@dataclass(slots=True)
class Event:
    """One record. Fields that do not apply are ``None``."""

    seq: int
    kind: Kind
    source: str  # "its0", "gicr1", "cpu2", "gicd"
    message: str
    intid: int | None = None
    cpu: int | None = None
    device_id: int | None = None
    event_id: int | None = None
    code: int | None = None  # architected error code (0x01_OO_RR) for COMMAND_ERROR
    offset: int | None = None  # command queue offset, or register offset
    command: str | None = None  # decoded command text
    rule: str | None = None  # the spec section behind a diagnostic

    def __str__(self) -> str:
        parts = [f"#{self.seq}", self.kind.value, self.source]
        if self.code is not None:
            parts.append(f"code={self.code:#08x}")
        if self.offset is not None:
            parts.append(f"offset={self.offset:#x}")
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu}")
        if self.intid is not None:
            parts.append(f"intid={self.intid}")
        parts.append(self.message)
        if self.command:
            parts.append(f"[{self.command}]")
        if self.rule:
            parts.append(f"({self.rule})")
        return " ".join(parts)


Listener = Callable[[Event], None]


def _report_listener_failure(listener: Listener, error: Exception) -> None:
    name = getattr(listener, "__qualname__", None) or type(listener).__name__
    print(f"vgic: event listener {name} failed and was detached: {type(error).__name__}: {error}", file=sys.stderr)


class EventLog:
    """A bounded log of :class:`Event` records with per-kind counters.

    ``capacity`` bounds the records kept; ``keep`` limits which kinds are stored at all.
    Counters count every record made; the hot paths (translations, LPIs pending,
    acknowledges, EOIs) make none for a kind that is neither kept nor listened for
    (:meth:`wants`), so leaving those kinds out saves their cost and their counts.
    """

    def __init__(self, capacity: int = 65536, keep: frozenset[Kind] = frozenset(Kind)) -> None:
        self.capacity = capacity
        self.keep = keep
        self.events: deque[Event] = deque(maxlen=capacity)
        self.counts: Counter[Kind] = Counter()
        # listeners that raised, with what they raised; they no longer listen
        self.listener_failures: list[tuple[Listener, Exception]] = []
        self.on_listener_failure: Callable[[Listener, Exception], None] = _report_listener_failure
        # a tuple, replaced (not mutated) on (un)subscribe: a listener may unsubscribe while called
        self._listeners: tuple[Listener, ...] = ()
        self._seq: Iterator[int] = itertools.count()

    def __repr__(self) -> str:
        return f"EventLog(capacity={self.capacity}, {len(self.events)} events, {sum(self.counts.values())} counted)"

    @classmethod
    def quiet(cls, capacity: int = 65536) -> EventLog:
        """A log that stores errors, diagnostics and state changes but not the
        per-interrupt kinds (translations, LPIs pending, acknowledges, EOIs), which are then
        not counted either: the fast configuration, and one where MSI traffic cannot push
        errors out of the ring. Listeners (a tracer) still see every event."""
        return cls(capacity=capacity, keep=frozenset(Kind) - HOT_KINDS)

    def wants(self, kind: Kind) -> bool:
        """Cheap test for hot paths: is an event of this kind stored or listened for?"""
        return kind in self.keep or bool(self._listeners)

    def record(self, kind: Kind, source: str, message: str, **fields: object) -> Event | None:
        self.counts[kind] += 1
        if kind not in self.keep and not self._listeners:
            return None
        ev = Event(next(self._seq), kind, source, message, **fields)  # type: ignore[arg-type]
        if kind in self.keep:
            self.events.append(ev)
        for listener in self._listeners:
            try:
                listener(ev)
            except Exception as e:  # never into the model: detach, report once
                self._detach(listener, e)
        return ev

    def subscribe(self, listener: Listener) -> None:
        self._listeners = (*self._listeners, listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling ``listener`` (ValueError if it does not listen)."""
        listeners = list(self._listeners)
        listeners.remove(listener)
        self._listeners = tuple(listeners)

    def _detach(self, listener: Listener, error: Exception) -> None:
        if listener in self._listeners:
            self.unsubscribe(listener)
        self.listener_failures.append((listener, error))
        with contextlib.suppress(Exception):  # nor a failing report (stderr closed)
            self.on_listener_failure(listener, error)

    def of(self, *kinds: Kind) -> list[Event]:
        """The stored events of the given kinds, oldest first."""
        return [e for e in self.events if e.kind in kinds]

    @property
    def errors(self) -> list[Event]:
        return self.of(Kind.COMMAND_ERROR)

    @property
    def diagnostics(self) -> list[Event]:
        return self.of(Kind.DIAGNOSTIC, Kind.TRANSLATION_FAULT, Kind.LPI_DROPPED)

    def clear(self) -> None:
        self.events.clear()
        self.counts.clear()
