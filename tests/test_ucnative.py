"""vgic.ucnative: the C helper is built on demand, cached, and optional."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("unicorn")

from vgic import ucnative
from vgic.events import Kind
from vgic.machine.virt import ExitStatus, MachineConfig, VirtMachine

GUESTS = Path(__file__).resolve().parent.parent / "guests" / "out"


def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ucnative, "_tried", False)
    monkeypatch.setattr(ucnative, "_lib", None)


def test_built_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ucnative._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.delenv("VGIC_NATIVE", raising=False)
    monkeypatch.setenv("VGIC_CACHE_DIR", str(tmp_path))
    _fresh(monkeypatch)
    assert ucnative.load() is not None
    built = list(tmp_path.glob("ucnative-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _fresh(monkeypatch)
    assert ucnative.load() is not None  # loaded from the cache, not built again
    assert built[0].stat().st_mtime_ns == stamp


def test_no_compiler_means_no_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang to be found
    _fresh(monkeypatch)
    assert ucnative.load() is None
    assert not list(tmp_path.glob("*.so"))


def test_without_the_helper_the_machine_runs_counted_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timed mode needs the native block hook; without it (no compiler, or
    VGIC_NATIVE=0) the machine says so and runs the deterministic mode instead."""
    elf = GUESTS / "timer_irq.elf"
    if not elf.exists():
        pytest.skip(f"{elf} not built (make -C guests)")
    monkeypatch.setenv("VGIC_NATIVE", "0")
    _fresh(monkeypatch)
    out = bytearray()
    m = VirtMachine(MachineConfig(smp=4), output=out.extend)
    assert m.deterministic
    assert any("counted slices" in e.message for e in m.log.events if e.kind is Kind.DIAGNOSTIC)
    assert not m.cpus[0].sysregs.native
    m.load(elf.read_bytes())
    assert m.run(timeout=60).status is ExitStatus.OFF
    assert out.rstrip().endswith(b"PASS")
