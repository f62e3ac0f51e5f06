"""Coverage-guided fuzzing of the whole GIC with atheris (libFuzzer).

    .venv/bin/python fuzz/fuzz_gic.py WORK_CORPUS fuzz/corpus [libFuzzer flags]

Each input is decoded by :mod:`harness` into an operation stream (see its docstring for
the operations and invariants). A violation does not stop the campaign: the input is saved
into fuzz/crashes/ and tests/fuzz_regressions/ (replayed by tests/test_fuzz_regressions.py)
and fuzzing goes on. ``VGIC_FUZZ_STATS`` names a JSON file where progress is written every
second for fuzz/run.py's display; ``VGIC_FUZZ_MAX_OPS`` stops the worker after that many
operations.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports(include=["vgic"]):
    import harness
    from harness import Stats, Violation, run_one

from crashes import save_violation  # noqa: E402

STATS = Stats()
STATE = {"inputs": 0, "violations": 0, "last": 0.0, "start": time.monotonic()}
STATS_FILE = os.environ.get("VGIC_FUZZ_STATS")
MAX_OPS = int(os.environ.get("VGIC_FUZZ_MAX_OPS", "0"))


def _report(final: bool = False) -> None:
    now = time.monotonic()
    if not final and now - STATE["last"] < 1.0:
        return
    STATE["last"] = now
    if STATS_FILE:
        tmp = STATS_FILE + ".tmp"
        Path(tmp).write_text(json.dumps({
            "ops": STATS.ops, "inputs": STATE["inputs"], "violations": STATE["violations"],
            "commands": STATS.commands, "msis": STATS.msis, "delivered": STATS.delivered, "acks": STATS.acks,
            "features": len(STATS.features), "elapsed": now - STATE["start"], "pid": os.getpid(),
        }))  # fmt: skip
        os.replace(tmp, STATS_FILE)


def TestOneInput(data: bytes) -> None:
    STATE["inputs"] += 1
    try:
        run_one(data, STATS)
    except Violation as v:
        STATE["violations"] += 1
        save_violation(data, str(v))
    _report()
    if MAX_OPS and STATS.ops >= MAX_OPS:
        _report(final=True)
        os._exit(0)


def main() -> None:
    _ = harness
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
