"""Where violating inputs go: fuzz/crashes/ (with the message) and tests/fuzz_regressions/.

The name is the input's SHA-1 prefix, so the same input found twice is stored once. Every
file in tests/fuzz_regressions/ is replayed by tests/test_fuzz_regressions.py and must pass
once the model is fixed; keep it there for good as a regression case.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRASHES = ROOT / "fuzz" / "crashes"
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


def save_violation(data: bytes, message: str) -> Path:
    name = "crash-" + hashlib.sha1(data).hexdigest()[:16]
    CRASHES.mkdir(parents=True, exist_ok=True)
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"{name}.bin"
    if not path.exists():
        path.write_bytes(data)
        (CRASHES / f"{name}.txt").write_text(message + "\n")
        (REGRESSIONS / f"{name}.bin").write_bytes(data)
    return path
