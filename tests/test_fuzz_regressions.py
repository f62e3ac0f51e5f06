"""Replay every input the fuzzer ever found violating an invariant (tests/fuzz_regressions/).

fuzz/run.py (``make fuzz``) saves each violating input there as well as in fuzz/crashes/;
once the model is fixed the input must run clean for good. The invariants are those of
fuzz/harness.py: no exception escapes the model, bounded work and host state, caches that
agree with the guest tables, MSIs and acknowledges that match an independent table walk
or the reference model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

from harness import Violation, describe, run_one  # noqa: E402

CASES = sorted((ROOT / "tests" / "fuzz_regressions").glob("*.bin"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fuzz_regression(path: Path) -> None:
    data = path.read_bytes()
    try:
        run_one(data)
    except Violation as v:
        pytest.fail(f"{path.name} ({describe(data)}): {v}")


def test_seed_corpus_runs_clean() -> None:
    seeds = sorted((ROOT / "fuzz" / "corpus").iterdir())
    assert 0 < len(seeds) <= 64 and sum(p.stat().st_size for p in seeds) < 256 << 10, "keep the seed corpus small"
    for p in seeds:
        run_one(p.read_bytes())
