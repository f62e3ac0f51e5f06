"""The package as a user gets it.

The sdist is built and must hold the guests' sources, the docs and the LICENSE; the wheel
is built from that sdist (so the sdist is complete) and must hold ``py.typed`` and the
LICENSE. Then a fresh virtual environment (a plain venv: no system site-packages, nothing
from this checkout on its path) gets the wheel from local files only (``--no-index``):
first alone, where ``vgic run`` must name the missing extra in one line, then with the
``machine`` extra's Unicorn and pylibfdt wheels, where ``vgic run`` runs a bundled guest.
Building needs setuptools and the dependency wheels from the package registry (or pip's
cache): the test skips when it cannot reach them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from vgic import __version__

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guests" / "out" / "its_demo.elf"
LOCAL = (".git", ".venv", ".cache", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
         "crashes")  # fmt: skip
OFFLINE = ("No matching distribution", "Could not find a version", "NewConnectionError", "Max retries",
           "Temporary failure in name resolution", "Network is unreachable", "ConnectionError")  # fmt: skip


def _env() -> dict[str, str]:
    """The environment without this checkout's PYTHONPATH or virtualenv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=_env(),
                          stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip


def _fetch(p: subprocess.CompletedProcess[str], what: str) -> None:
    """A build or download that needs the registry: skip when it is out of reach."""
    if p.returncode == 0:
        return
    if any(s in p.stderr for s in OFFLINE):
        pytest.skip(f"{what}: the package registry is out of reach ({p.stderr.strip().splitlines()[-1]})")
    raise AssertionError(f"{what} failed:\n{p.stderr}")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, then the wheel built from it, then the machine extra's wheels."""
    out = tmp_path_factory.mktemp("dist")
    env = _env()
    if importlib.util.find_spec("build") is None:  # the dev extra's PEP 517 front end, wherever it is missing
        tools = tmp_path_factory.mktemp("build-tool")
        _fetch(_run(sys.executable, "-m", "pip", "install", "-q", "--target", tools, "build"), "fetching build")
        env["PYTHONPATH"] = str(tools)
    # from a copy: setuptools writes its egg-info next to the sources
    tree = tmp_path_factory.mktemp("tree") / "vgic"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*LOCAL))
    p = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(tree)], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    _fetch(p, "building the sdist")
    (sdist,) = out.glob("vgic-*.tar.gz")
    _fetch(_run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, sdist), "building the wheel")
    machine = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["machine"]
    _fetch(_run(sys.executable, "-m", "pip", "wheel", "-q", "-w", out, *machine), "fetching the machine extra")
    return out


def test_sdist_has_the_guests_docs_and_license(dist: Path) -> None:
    (sdist,) = dist.glob("vgic-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for path in ("LICENSE", "README.md", "Makefile", "pyproject.toml", "src/vgic/py.typed", "src/vgic/__main__.py",
                 "guests/Makefile", "guests/README.md", "guests/lib/start.S", "guests/lib/link.ld",
                 "guests/src/its_demo.c", "guests/run_qemu.sh", "docs/machine.md", "docs/choices.md",
                 "tests/test_cli.py", "scripts/install-debian-deps.sh"):  # fmt: skip
        assert path in names, path
    assert not any(n.startswith("guests/out/") for n in names)  # built files stay out


def test_wheel_is_typed_and_licensed(dist: Path) -> None:
    (wheel,) = dist.glob("vgic-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vgic/py.typed" in names and "vgic/__main__.py" in names
    assert any(n.startswith(f"vgic-{__version__}.dist-info/") and n.endswith("LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"vgic-{__version__}.dist-info/METADATA").decode()
    assert f"Version: {__version__}" in meta
    extras = {line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"machine", "guests", "dev"} <= extras
    machine = [
        line for line in meta.splitlines() if line.startswith("Requires-Dist: ") and 'extra == "machine"' in line
    ]
    assert len(machine) == 2 and not any("ziglang" in line for line in machine)  # no compiler for users


def test_a_fresh_venv_installs_the_wheel_and_runs_a_guest(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, env=_env(), timeout=120)
    py, exe = venv / "bin" / "python", venv / "bin" / "vgic"

    def install(requirement: str) -> None:
        p = _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index", "--find-links", dist,
                 requirement)  # fmt: skip
        assert p.returncode == 0, p.stderr

    install("vgic")  # no extras: the model, the tools, the CLI
    p = _run(exe, "--version", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"vgic {__version__}", p.stderr
    p = _run(py, "-c", "import vgic, pathlib; print(pathlib.Path(vgic.__file__).parent)", cwd=tmp_path)
    assert Path(p.stdout.strip()).is_relative_to(venv) and (Path(p.stdout.strip()) / "py.typed").exists()
    p = _run(py, "-m", "vgic", "--help", cwd=tmp_path)
    assert p.returncode == 0 and "exit status" in p.stdout and "run" in p.stdout, p.stderr
    image = GUEST if GUEST.exists() else tmp_path / "missing.elf"
    p = _run(exe, "run", image, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == (
        "vgic: the virt machine needs the 'machine' extra (Unicorn and pylibfdt): pip install 'vgic[machine]'"
    )

    install("vgic[machine]")
    if not GUEST.exists():
        pytest.skip(f"{GUEST} not built (make -C guests)")
    p = _run(exe, "run", "--smp", "4", "--timeout", "120", GUEST, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip().endswith("PASS")
