"""Snapshot and restore: restore then continue behaves exactly like never stopping.

Model level: random driver workloads (mapping, MSIs, INT, stalls, acknowledges, ITS and LPI
enable toggles) are cut at a random point, snapshotted, restored into a fresh process-level
copy, and the rest of the workload runs on both; every observable (acknowledged INTIDs,
CREADR, errors, the full model state) must agree. Machine level: real guests paused
mid-run. File level: corrupt, truncated and mismatched snapshots are refused cleanly.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import stalling
from vgic import snapshot
from vgic.driver import Allocator, ItsDriver
from vgic.events import Kind
from vgic.gic import Gic, GicConfig, GicState
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy
from vgic.memory import GuestMemory

RAM = 0x4000_0000
RAM_SIZE = 32 << 20
NCPU = 3


def _setup(policy: ErrorPolicy) -> tuple[Gic, ItsDriver]:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    gic = Gic(mem, GicConfig(num_cpus=NCPU, its=(stalling(error_policy=policy),)))
    d = ItsDriver(gic, Allocator(RAM, RAM_SIZE))
    d.setup_lpis(id_bits=14)
    d.setup_its(two_level=True)
    for c in range(NCPU):
        d.send(C.Mapc(c, c, True))
    for dev in (1, 2):
        d.add_l2_page(dev)
        d.map_device(dev, 3)
    return gic, d


def _driver_for(gic: Gic, template: ItsDriver) -> ItsDriver:
    """A driver over a restored GIC, knowing where the original put its tables."""
    d = ItsDriver(gic, Allocator(template.heap.next, template.heap.end - template.heap.next))
    d.queue_base, d.queue_bytes, d.prop_table = template.queue_base, template.queue_bytes, template.prop_table
    d.device_l1 = template.device_l1
    return d


Op = tuple[str, int, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(["mapti", "msi", "int", "ack", "movi", "discard", "bad", "retry", "its", "lpis", "cfg", "inv"]),
        st.integers(0, 2),
        st.integers(0, 7),
        st.integers(0, NCPU - 1),
    ),
    max_size=40,
)


def _apply(d: ItsDriver, op: Op, seen: list[object]) -> None:
    kind, dev, ev, cpu = op
    dev += 1
    if kind == "mapti":
        d.send(C.Mapti(dev, ev, 8192 + dev * 8 + ev, cpu))
    elif kind == "msi":
        seen.append(("msi", d.msi(dev, ev)))
    elif kind == "int":
        d.send(C.Int(dev, ev))
    elif kind == "ack":
        seen.append(("ack", cpu, d.ack(cpu)))
    elif kind == "movi":
        d.send(C.Movi(dev, ev, cpu))
    elif kind == "discard":
        d.send(C.Discard(dev, ev))
    elif kind == "bad":
        d.send(C.Mapti(0x77, 0, 8192, 0))  # unmapped device: stalls or is skipped
    elif kind == "retry":
        if d.creadr & 1:
            d.mem.write_bytes(d.queue_base + (d.creadr & ~1), C.encode(C.Sync(0)))
            d.send(retry=True)
    elif kind == "its":
        d.its_write(0, 1 if ev & 1 else 0)
    elif kind == "lpis":
        d.gicr_write(cpu, 0, 1 if ev & 1 else 0)
    elif kind == "cfg":
        d.configure_lpi(8192 + dev * 8 + ev, priority=0x20 * (cpu + 1), enabled=bool(ev & 1))
    elif kind == "inv":
        d.send(C.Invall(cpu))
    seen.append(("creadr", d.creadr))


def _observe(gic: Gic) -> dict[str, object]:
    state = gic.save_state()
    return {"state": state, "errors": [e.code for e in gic.log.errors]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=ops, after=ops, policy=st.sampled_from(list(ErrorPolicy)))
def test_restore_then_continue_equals_never_stopping(before: list[Op], after: list[Op], policy: ErrorPolicy) -> None:
    gic, d = _setup(policy)
    for op in before:
        _apply(d, op, [])
    blob = io.BytesIO()
    snapshot.save_gic(gic, blob)
    restored = snapshot.load_gic(io.BytesIO(blob.getvalue()))
    state = gic.save_state()
    assert restored.save_state() == state
    # every state a workload reaches is one the checks accept, and JSON loses nothing of it
    assert GicState.from_dict(json.loads(json.dumps(state.to_dict())), gic.config) == state
    d2 = _driver_for(restored, d)
    gic.log.clear()
    seen1: list[object] = []
    seen2: list[object] = []
    for op in after:
        _apply(d, op, seen1)
        _apply(d2, op, seen2)
    assert seen1 == seen2
    assert _observe(gic) == _observe(restored)
    # and nothing pending is lost: draining both gives the same LPIs
    assert [d.drain(c) for c in range(NCPU)] == [d2.drain(c) for c in range(NCPU)]


def test_stalled_queue_and_caches_survive() -> None:
    gic, d = _setup(ErrorPolicy.STALL)
    d.send(C.Mapti(1, 0, 8200, 1))
    d.msi(1, 0)  # pending on CPU 1, and the event is now cached
    d.send(C.Mapti(0x55, 0, 8201, 0), C.Int(1, 0))  # stalls on the first; INT waits behind it
    assert d.creadr & 1
    blob = io.BytesIO()
    snapshot.save_gic(gic, blob)
    restored = snapshot.load_gic(io.BytesIO(blob.getvalue()))
    its = restored.its[0]
    assert its.stalled and its.read_CREADR(0) == d.creadr and its.read_CWRITER(0) == d.cwriter
    assert its.cached_device(1) is not None  # the host cache came back
    assert restored.redistributors[1].pending_lpis == frozenset({8200})
    d2 = _driver_for(restored, d)
    d2.mem.write_bytes(d2.queue_base + (d2.creadr & ~1), C.encode(C.Sync(0)))
    d2.send(retry=True)
    assert d2.creadr == d2.cwriter
    assert d2.drain(1) == [8200]


def test_restore_never_replays_the_queue() -> None:
    """Registers restored in any order must not re-run commands (stale queue replay)."""
    gic, d = _setup(ErrorPolicy.STALL)
    d.send(C.Mapti(1, 0, 8200, 0), C.Int(1, 0))
    assert d.drain(0) == [8200]
    before = gic.log.counts[Kind.COMMAND]
    blob = io.BytesIO()
    snapshot.save_gic(gic, blob)
    restored = snapshot.load_gic(io.BytesIO(blob.getvalue()))
    assert restored.log.counts[Kind.COMMAND] == 0
    assert [restored.cpus[c].read_sysreg("ICC_IAR1_EL1") for c in range(NCPU)] == [1023] * NCPU
    assert gic.log.counts[Kind.COMMAND] == before


def _snapshot_bytes() -> bytes:
    gic, d = _setup(ErrorPolicy.STALL)
    d.send(C.Mapti(1, 0, 8200, 0))
    blob = io.BytesIO()
    snapshot.save_gic(gic, blob)
    return blob.getvalue()


def _rewrite(data: bytes, edit: Callable[[str, bytes], bytes]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            z.writestr(name, edit(name, src.read(name)))
    return out.getvalue()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n, b: b.replace(b'"version": 2', b'"version": 99') if n == "manifest.json" else b, "version 99"),
        (lambda n, b: b.replace(b'"kind": "gic"', b'"kind": "machine"') if n == "manifest.json" else b, "machine"),
        (lambda n, b: b.replace(b'"enabled":true', b'"enabled":false') if n == "state.json" else b, "corrupt"),
        (lambda n, b: b[:-10] if n.startswith("mem-") else b, "corrupt"),
        (lambda n, b: b.replace(b"vgic-snapshot", b"other-format") if n == "manifest.json" else b, "not a vgic"),
    ],
    ids=["version", "kind", "state-tampered", "memory-truncated", "format"],
)
def test_bad_snapshots_are_refused(edit: Callable[[str, bytes], bytes], message: str) -> None:
    bad = _rewrite(_snapshot_bytes(), edit)
    with pytest.raises(snapshot.SnapshotError, match=message):
        snapshot.load_gic(io.BytesIO(bad))


def test_garbage_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load_gic(io.BytesIO(b"not a zip at all"))
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load_gic(tmp_path / "missing.snap")
    data = _snapshot_bytes()
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load_gic(io.BytesIO(data[: len(data) // 2]))


def test_mismatched_configuration_is_named() -> None:
    data = _snapshot_bytes()
    other = Gic(GuestMemory(), GicConfig(num_cpus=NCPU + 1))
    with pytest.raises(snapshot.SnapshotError, match="num_cpus"):
        snapshot.check_gic_fits(io.BytesIO(data), other)
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE // 2)  # the snapshot's RAM does not exist here
    with pytest.raises(snapshot.SnapshotError, match="RAM"):
        snapshot.load_gic(io.BytesIO(data), memory=mem)


def test_snapshot_stores_only_written_pages() -> None:
    gic, _ = _setup(ErrorPolicy.STALL)
    blob = io.BytesIO()
    snapshot.save_gic(gic, blob)
    assert len(blob.getvalue()) < RAM_SIZE // 100


# == earlier formats are upgraded ==========================================================

DATA = Path(__file__).resolve().parent / "data"


def test_a_format_1_gic_snapshot_is_upgraded() -> None:
    """tests/data/gic-format1.vgic was written by vgic 0.1 (format 1, no profiles): 2 CPUs,
    LPI 8192 pending on CPU 0 and 8193 on CPU 1, the queue stalled on an INT of an unmapped
    device. It restores with vgic 0.1's choices (the upgrade) and its state intact."""
    gic = snapshot.load_gic(DATA / "gic-format1.vgic")
    its = gic.its[0]
    assert gic.config.profile == "vgic-0.1"
    assert its.config.error_policy is its.config.memory_fault_policy is ErrorPolicy.STALL
    assert its.typer.itt_entry_size == 8 and not its.config.quiescent_when_idle
    assert gic.config.redistributor.direct_lpi
    assert its.stalled and its.read(0x90, 4) & 1
    assert gic.redistributors[0].pending_lpis == {8192} and gic.redistributors[1].pending_lpis == {8193}
    assert its.translate(3, 1) and its.cached_device(3) is not None


def test_a_format_1_machine_snapshot_restores_and_runs() -> None:
    pytest.importorskip("unicorn")
    out = bytearray()
    machine = snapshot.load_machine(DATA / "machine-format1.vgic", output=out.extend)
    assert machine.gic.config.profile == "vgic-0.1" and len(machine.cpus) == 2
    assert machine.gic.its[0].config.error_policy is ErrorPolicy.STALL
    machine.uart.feed(b"y")  # the its_migrate guest was waiting for input
    result = machine.run(timeout=30)
    assert out.decode().rstrip().endswith("PASS"), out.decode()
    assert result.reason == "PSCI SYSTEM_OFF"
