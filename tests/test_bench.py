"""bench/run.py loads and the test modules its boot rows reuse import from it (a broken
import there surfaced only at the end of a long `make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_loads_its_parts() -> None:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    argv = sys.argv
    sys.modules["bench_run"] = bench  # its dataclasses look their module up there
    try:
        sys.argv = ["run.py"]
        spec.loader.exec_module(bench)
    finally:
        sys.argv = argv
        del sys.modules["bench_run"]
    for name in ("test_third_party", "test_uboot"):
        module = bench._load_test_module(name)
        assert module.__file__ and module.__file__.endswith(f"{name}.py")
