"""A few cases of the snapshot and command-line fuzzers (fuzz/inputs.py) inside ``make test``.

Fixed seeds; each target must end without a violation, must have exercised more than one
exit status or outcome, and must leave the source tree as it found it (a case may name
files as outputs: they are copies in the campaign's own directory).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import inputs  # noqa: E402


def _digests() -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs.INPUT_FILES.values() if p.exists()}


def test_command_lines() -> None:
    if not inputs.INPUT_FILES["image.elf"].exists():
        pytest.skip("guests not built (make -C guests)")
    before = _digests()
    result = inputs.campaign("cli", seconds=None, ops=150, seed=7)
    assert result["violations"] == 0, sorted(inputs.CRASHES.glob("cli-*.txt"))
    statuses = result["exit_statuses"]
    assert isinstance(statuses, dict) and {"0", "1", "2"} <= statuses.keys(), statuses
    assert _digests() == before


def test_snapshots() -> None:
    result = inputs.campaign("snapshot", seconds=None, ops=60, seed=7)
    assert result["violations"] == 0, sorted(inputs.CRASHES.glob("snapshot-*.txt"))
    assert result["cases"] == 60
