"""The exit report for driver writers: every architected error and questionable sequence.

Built from the :class:`~vgic.events.EventLog`: command errors with their code, queue
offset, command and explanation; the commands executed, counted per command; then the diagnostics (UNPREDICTABLE or suspicious guest
actions: commands while disabled, tables written while in use, MAPTI over a mapping, INT
to a disabled LPI, MSIs with no SYNC after mapping changes, bad register accesses),
grouped with counts, each with the spec rule. The ITSes' caches are checked against guest
memory first, so tables the guest overwrote in use are found even if never re-read.
"""

from __future__ import annotations

import re
from collections import Counter

from vgic.events import EventLog, Kind
from vgic.gic import Gic


def _shape(message: str) -> str:
    """A message with its numbers blanked, to group repeats."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "#", message)


def command_counts(log: EventLog, gic: Gic | None = None) -> list[str]:
    """Commands each ITS executed without error, per command: what a driver actually
    sent. From each ITS's own counters (never dropped) when the GIC is given, else from
    the COMMAND events the log still holds."""
    per_its: dict[str, Counter[str]] = {}
    if gic is not None:
        for its in gic.its:
            per_its[its.source] = Counter(its.command_counts)
        total = sum(sum(c.values()) for c in per_its.values())
    else:
        for ev in log.of(Kind.COMMAND):
            per_its.setdefault(ev.source, Counter())[ev.message] += 1
        total = log.counts[Kind.COMMAND]
    lines = [f"ITS commands executed: {total}"]
    for source, counts in sorted(per_its.items()):
        if counts:
            lines.append(f"  {source}: " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())))
    stored = sum(sum(c.values()) for c in per_its.values())
    if total > stored:
        lines.append(f"  ({total - stored} older commands left the log)")
    return lines


def report(log: EventLog, gic: Gic | None = None) -> str:
    """The report text. Under a profile whose diagnostics are errors (``strict``), every
    diagnostic is listed as an error and counted in the closing total."""
    from vgic.profiles import PROFILES

    strict = False
    lines: list[str] = []
    if gic is not None:
        for its in gic.its:
            with its.lock:
                its.verify_caches()
        known = PROFILES.get(gic.config.profile)
        strict = known is not None and known.diagnostics_are_errors
        if gic.config.its:
            c = gic.config.its[0]
            lines.append(f"profile: {gic.config.profile} (ITS command errors: {c.error_policy.value}, "
                         f"memory faults: {c.memory_fault_policy.value})")  # fmt: skip
    errors = log.of(Kind.COMMAND_ERROR)
    counts = log.counts
    lines.append(f"ITS command errors: {counts[Kind.COMMAND_ERROR]}")
    for ev in errors:
        lines.append(f"  {ev.source} offset {ev.offset:#x}: error {ev.code or 0:#08x} {ev.message}")
        if ev.command:
            lines.append(f"      command: {ev.command}")
        if ev.rule:
            lines.append(f"      rule: {ev.rule}")
    if counts[Kind.COMMAND_ERROR] > len(errors):
        lines.append(f"  ({counts[Kind.COMMAND_ERROR] - len(errors)} older errors left the log)")
    lines += command_counts(log, gic)
    diagnostics = 0
    for title, kinds in (("Questionable guest actions", (Kind.DIAGNOSTIC,)),
                         ("MSIs that were not translated", (Kind.TRANSLATION_FAULT,)),
                         ("LPIs the redistributors ignored", (Kind.LPI_DROPPED,))):  # fmt: skip
        events = log.of(*kinds)
        total = sum(counts[k] for k in kinds)
        diagnostics += total
        lines.append(f"{title}{' (errors under the strict profile)' if strict else ''}: {total}")
        groups: Counter[tuple[str, str, str]] = Counter()
        first: dict[tuple[str, str, str], str] = {}
        for ev in events:
            key = (ev.source, _shape(ev.message), ev.rule or "")
            groups[key] += 1
            if key not in first:
                where = (
                    f" (queue offset {ev.offset:#x})" if ev.offset is not None and ev.source.startswith("its") else ""
                )
                first[key] = ev.message + where
        for key, n in groups.most_common():
            times = f" x{n}" if n > 1 else ""
            rule = f" [{key[2]}]" if key[2] else ""
            lines.append(f"  {'error: ' if strict else ''}{key[0]}: {first[key]}{times}{rule}")
    if strict:
        lines.append(f"Errors in all (strict): {counts[Kind.COMMAND_ERROR] + diagnostics}")
    return "\n".join(lines)
