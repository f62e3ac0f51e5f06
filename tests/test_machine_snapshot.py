"""Whole-machine snapshots and migration with real guests (guests/out, built by make)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vgic import snapshot, ucnative
from vgic.machine.virt import ExitStatus, MachineConfig, VirtMachine

OUT = Path(__file__).resolve().parent.parent / "guests" / "out"


def _guest(name: str) -> bytes:
    path = OUT / f"{name}.elf"
    if not path.exists():
        pytest.skip(f"{path} not built (make -C guests)")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "smp", "marker"),
    [("its_commands", 1, "-- PMR masks"), ("its_irq_smp", 4, "-- 2. MOVI"), ("its_demo", 4, "MAPTI DeviceID 0x21")],
)
def test_guest_continues_identically_after_restore(name: str, smp: int, marker: str) -> None:
    """In the deterministic mode the restored machine repeats the original's continuation
    byte for byte (same interleaving of the CPUs)."""
    out = bytearray()
    m = VirtMachine(MachineConfig(smp=smp, deterministic=True), output=out.extend)
    m.load(_guest(name))
    m.pause_on(marker)
    assert m.run(timeout=60).status is ExitStatus.PAUSED
    blob = snapshot.machine_to_bytes(m)
    cut = len(out)
    assert m.run(timeout=60).status is ExitStatus.OFF
    out2 = bytearray()
    m2 = snapshot.machine_from_bytes(blob, output=out2.extend)
    assert m2.run(timeout=60).status is ExitStatus.OFF
    assert bytes(out2) == bytes(out[cut:])
    assert out2.rstrip().endswith(b"PASS")


@pytest.mark.skipif(not ucnative.available(), reason="the timed mode needs the native helper")
def test_timed_machine_restores_and_finishes() -> None:
    """The default (timed) mode: a snapshot taken mid-run restores and runs to PASS, and
    the counter goes on from the saved count."""
    out = bytearray()
    m = VirtMachine(MachineConfig(smp=4), output=out.extend)
    m.load(_guest("its_irq_smp"))
    m.pause_on("-- 2. MOVI")
    assert m.run(timeout=60).status is ExitStatus.PAUSED
    saved = m.clock()
    blob = snapshot.machine_to_bytes(m)  # takes the count a little later
    out2 = bytearray()
    m2 = snapshot.machine_from_bytes(blob, output=out2.extend)
    assert not m2.deterministic
    assert saved <= m2.clock() < saved + 5 * 62_500_000  # the count went on from the saved one
    assert m2.run(timeout=60).status is ExitStatus.OFF
    assert out2.rstrip().endswith(b"PASS")


def _vgic(
    *args: str, stdin: bytes | None = None, delay: float = 0.0, timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI; ``stdin`` is written after ``delay`` seconds (a user typing later)."""
    proc = subprocess.Popen([sys.executable, "-m", "vgic.cli", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None
    if stdin is not None:
        time.sleep(delay)
        proc.stdin.write(stdin)
        proc.stdin.flush()
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_migration_keeps_pending_lpis_and_the_stalled_queue() -> None:
    _guest("its_migrate")
    # --its-errors stall: the guest's bad MAPTI stalls the queue, which must survive the move
    r = _vgic("run", "--smp", "2", "--timeout", "60", "--its-errors", "stall", "--migrate-on", "input",
              str(OUT / "its_migrate.elf"), stdin=b"x", delay=2.0)  # fmt: skip
    assert b"vgic: migrated" in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "cpu0: 8260 8258 8256" in text and "cpu1: 8261 8259 8257" in text
    assert text.rstrip().endswith("PASS")


def test_snapshot_on_input_then_restore_in_a_new_process(tmp_path: Path) -> None:
    _guest("its_migrate")
    snap = tmp_path / "paused.vgic"
    r1 = _vgic("run", "--smp", "2", "--timeout", "60", "--its-errors", "stall", "--snapshot-on", "input", str(snap),
               str(OUT / "its_migrate.elf"))  # fmt: skip
    assert r1.returncode == 0, r1.stderr
    assert snap.exists() and b"waiting for input" in r1.stdout
    r2 = _vgic("run", "--timeout", "60", "--restore", str(snap), stdin=b"y", delay=0.5)
    assert r2.returncode == 0, r2.stderr
    assert b"got input 0x79" in r2.stdout and r2.stdout.rstrip().endswith(b"PASS")


def test_restore_refuses_a_corrupt_snapshot(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vgic"
    bad.write_bytes(b"PK\x03\x04 this is not a snapshot")
    r = _vgic("run", "--restore", str(bad))
    assert r.returncode == int(ExitStatus.ERROR)
    assert b"vgic: cannot read snapshot" in r.stderr
