"""A few seconds of fuzzing inside ``make test`` (deterministic seed, no atheris needed).

The pure-Python mutator of fuzz/mutator.py mutates the seed corpus and runs each input
through fuzz/harness.py, whose invariants are checked after every operation. It also
checks that the harness is not vacuous: a model with a known bug put back in (an ITS
that forgets to drop aliased cache entries) is caught.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

from harness import Stats, Violation, run_one  # noqa: E402
from mutator import Campaign, load_corpus  # noqa: E402
from vgic.compiled import is_compiled  # noqa: E402
from vgic.its.cache import TranslationCache  # noqa: E402

SECONDS = 4.0


def test_short_deterministic_campaign() -> None:
    c = Campaign(seed=1234, corpus=load_corpus(ROOT / "fuzz" / "corpus"))
    c.run(max_ops=30_000, seconds=SECONDS)
    assert not c.violations, "\n".join(msg for _, msg in c.violations[:3])
    assert c.stats.ops > 500 and c.stats.commands > 50 and c.stats.msis > 50 and c.stats.acks > 50
    assert c.stats.delivered > 0, "no MSI was ever checked end to end"


def test_harness_catches_a_reintroduced_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = sorted((ROOT / "tests" / "fuzz_regressions").glob("*.bin"))
    if not cases:
        pytest.skip("no saved fuzz regression to replay")
    if is_compiled():
        pytest.skip("a compiled class's methods cannot be patched from Python")
    monkeypatch.setattr(TranslationCache, "_drop", lambda self, key: None)  # the aliasing bug, back again
    caught = 0
    for p in cases:
        try:
            run_one(p.read_bytes(), Stats())
        except Violation:
            caught += 1
    assert caught, "the invariants did not notice stale ITS caches"
