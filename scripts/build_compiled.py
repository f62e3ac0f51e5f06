"""Compile vgic's model hot path with mypyc: an optional build, the pure-Python package stays
the reference and the fallback.

    .venv/bin/python scripts/build_compiled.py [--out build/compiled] [--force]

A copy of src/vgic goes to ``OUT/vgic`` and the modules in :data:`MODULES` (the ITS, the
redistributors, the CPU interfaces, the distributor, registers and guest memory) are
compiled there, each to a C extension beside its ``.py``; the other modules stay Python.
Put ``OUT`` first on ``PYTHONPATH`` to use it: ``PYTHONPATH=build/compiled vgic run ...``.
The build is skipped when ``OUT/stamp`` records the same sources; it needs a C compiler
and the Python headers (``make bench`` builds it when it can, and measures both).
``make test`` runs the model tests against it too when it is there (tests/test_compiled.py).

Exit status 0 when built (or up to date), 1 when it cannot be built (the reason on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "vgic"

# The model's hot path: an MSI's translation, its LPI made pending, acknowledged and ended.
MODULES = [
    "regs.py",
    "memory.py",
    "events.py",
    "gic.py",
    "gicv3/banked.py",
    "gicv3/sgi.py",
    "gicv3/distributor.py",
    "gicv3/redistributor.py",
    "gicv3/cpu_interface.py",
    "its/cache.py",
    "its/tables.py",
    "its/its.py",
]


def _digest() -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in sorted(SRC.rglob("*.py")):
        h.update(str(path.relative_to(SRC)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def build(out: Path, force: bool = False) -> Path:
    """Build into ``out`` (returned); ``RuntimeError`` with the reason if it cannot."""
    stamp = out / "stamp"
    digest = _digest()
    if not force and stamp.exists() and stamp.read_text() == digest:
        return out
    if shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc") is None:
        raise RuntimeError("no C compiler")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        raise RuntimeError("no Python headers (Python.h)")
    if shutil.which("mypyc", path=str(Path(sys.executable).parent)) is None:
        raise RuntimeError("mypyc is not installed (pip install mypy)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(SRC, out / "vgic", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (out / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
    env = {**os.environ, "MYPYC_OPT_LEVEL": "3"}
    mypyc = str(Path(sys.executable).parent / "mypyc")
    p = subprocess.run([mypyc, *(f"vgic/{m}" for m in MODULES)], cwd=out, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("mypyc failed:\n" + (p.stdout + p.stderr)[-3000:])
    shutil.rmtree(out / "build", ignore_errors=True)
    stamp.write_text(digest)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "compiled")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args()
    try:
        out = build(args.out, args.force)
    except (RuntimeError, OSError) as e:
        print(f"build_compiled: cannot build: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
