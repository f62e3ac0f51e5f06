"""``vgic run --trace FILE``: every ITS command, translation, LPI and error, timestamped.

Two forms: Chrome/Perfetto trace JSON (``.json``: open it in ui.perfetto.dev or
chrome://tracing) with one track per CPU and per ITS, an interrupt's time from
acknowledge to EOI drawn as a slice; or plain text (any other name), one event a line,
for grep. The tracer listens to the :class:`~vgic.events.EventLog`; the machine tells it
which CPU was running (``current_cpu``) when a model event has no CPU of its own.

A tracer that cannot write (disk full) stops: it detaches from the log, keeps the error in
:attr:`Tracer.error`, calls ``on_error`` once, and never raises into the model. One tracer
can follow one log across a migration (the restored machine built with the same log), so
the file stays one trace.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import IO, Any

from vgic.events import Event, EventLog, Kind

_ITS_TID = 1000


class Tracer:
    def __init__(self, log: EventLog, out: IO[str], fmt: str = "json",
                 current_cpu: Callable[[], int | None] = lambda: None, num_cpus: int = 1,
                 on_error: Callable[[OSError], None] | None = None) -> None:  # fmt: skip
        self.out = out
        self.fmt = fmt
        self.current_cpu = current_cpu
        self.on_error = on_error
        self.error: OSError | None = None  # the write that failed; the tracer has stopped
        self.closed = False
        self.t0 = time.perf_counter_ns()
        self.count = 0
        self._first = True
        self._log = log
        try:
            if fmt == "json":
                out.write("[\n")
                self._emit({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "vgic"}})
                for cpu in range(num_cpus):
                    self._emit({"ph": "M", "name": "thread_name", "pid": 1, "tid": cpu, "args": {"name": f"CPU{cpu}"}})
        except OSError as e:
            self._fail(e)
            return
        log.subscribe(self.on_event)

    def _fail(self, error: OSError) -> None:
        """Stop tracing after a failed write, and say so once."""
        if self.error is not None:
            return
        self.error = error
        self.closed = True
        with contextlib.suppress(ValueError):  # not subscribed yet (the header failed), or closed
            self._log.unsubscribe(self.on_event)
        if self.on_error is not None:
            self.on_error(error)

    def _emit(self, record: dict[str, Any]) -> None:
        if not self._first:
            self.out.write(",\n")
        self._first = False
        self.out.write(json.dumps(record, separators=(",", ":")))

    def on_event(self, ev: Event) -> None:
        try:
            self._trace(ev)
        except OSError as e:
            self._fail(e)

    def _trace(self, ev: Event) -> None:
        ts = (time.perf_counter_ns() - self.t0) / 1000.0
        running = self.current_cpu()
        cpu = ev.cpu if ev.cpu is not None else running
        self.count += 1
        if self.fmt != "json":
            where = f"cpu{running}" if running is not None else "host"
            self.out.write(f"{ts:14.3f} {where:>5} {ev}\n")
            return
        its = ev.source.startswith("its")
        tid = _ITS_TID + int(ev.source[3:] or 0) if its else (cpu if cpu is not None else 0)
        args = {k: v for k, v in (("intid", ev.intid), ("cpu", cpu), ("device_id", ev.device_id),
                                  ("event_id", ev.event_id), ("offset", ev.offset), ("command", ev.command),
                                  ("rule", ev.rule), ("issued_by_cpu", running)) if v is not None}  # fmt: skip
        if ev.code is not None:
            args["code"] = f"{ev.code:#08x}"
        args["message"] = ev.message
        if ev.kind is Kind.ACKNOWLEDGE:
            self._emit({"ph": "B", "name": f"IRQ {ev.intid}", "cat": "irq", "pid": 1, "tid": tid, "ts": ts,
                        "args": args})  # fmt: skip
        elif ev.kind is Kind.EOI:
            self._emit({"ph": "E", "pid": 1, "tid": tid, "ts": ts, "args": args})
        else:
            name = ev.command.split()[0] if ev.command else ev.kind.value
            scope = "g" if ev.kind in (Kind.COMMAND_ERROR, Kind.DIAGNOSTIC) else "t"
            self._emit({"ph": "i", "s": scope, "name": name, "cat": ev.kind.value, "pid": 1, "tid": tid, "ts": ts,
                        "args": args})  # fmt: skip

    def close(self) -> None:
        """Finish the trace (the JSON array's end) and flush; the file stays open."""
        if self.closed:
            return
        self.closed = True
        self._log.unsubscribe(self.on_event)
        try:
            if self.fmt == "json":
                for its in range(8):
                    self._emit({"ph": "M", "name": "thread_name", "pid": 1, "tid": _ITS_TID + its,
                                "args": {"name": f"ITS{its}"}})  # fmt: skip
                self.out.write("\n]\n")
            self.out.flush()
        except OSError as e:
            self._fail(e)
