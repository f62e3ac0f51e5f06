"""Snapshots: the whole machine, or the GIC and its ITSes alone, in a versioned file.

A snapshot is a zip archive (docs/snapshot.md):

* ``manifest.json``: format name, version, kind (``machine`` or ``gic``), and the SHA-256
  of every other member, checked before anything is built;
* ``state.json``: the configuration (validated against what is restored into) and the
  state of every model: registers, queue position and stall, host caches, pending LPIs,
  active priorities, CPU registers, timers, the UART;
* ``mem-<base>.bin``: each RAM region's non-zero 4 KiB pages, as (index, bytes) records.

Restoring builds new objects from the snapshot and returns them only when everything
loaded; on any error it raises :class:`SnapshotError` and leaves nothing half-built. The
models load their state without side effects, so no command runs and no MSI is raised by a
restore, whatever the register order (no stale queue replay).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

from vgic.events import EventLog
from vgic.gicv3.gic import Gic, GicConfig
from vgic.gicv3.redistributor import RedistributorConfig
from vgic.its.its import ErrorPolicy, ItsConfig
from vgic.its.registers import ItsTyper
from vgic.memory import GuestMemory

FORMAT = "vgic-snapshot"
VERSION = 1
PAGE = 4096
_PAGE_HEADER = struct.Struct("<I")


class SnapshotError(Exception):
    """A snapshot that cannot be written or restored; the message says why."""


# -- configuration <-> JSON ----------------------------------------------------------


def its_config_to_dict(c: ItsConfig) -> dict[str, Any]:
    return {
        "typer": dataclasses.asdict(c.typer),
        "error_policy": c.error_policy.value,
        "indirect_device_table": c.indirect_device_table,
        "indirect_collection_table": c.indirect_collection_table,
        "default_device_id": c.default_device_id,
        "baser_types": list(c.baser_types),
    }


def its_config_from_dict(d: dict[str, Any]) -> ItsConfig:
    return ItsConfig(
        typer=ItsTyper(**d["typer"]),
        error_policy=ErrorPolicy(d["error_policy"]),
        indirect_device_table=bool(d["indirect_device_table"]),
        indirect_collection_table=bool(d["indirect_collection_table"]),
        default_device_id=int(d["default_device_id"]),
        baser_types=tuple(int(t) for t in d["baser_types"]),
    )


def gic_config_to_dict(c: GicConfig) -> dict[str, Any]:
    return {
        "num_cpus": c.num_cpus,
        "its": [its_config_to_dict(i) for i in c.its],
        "redistributor": dataclasses.asdict(c.redistributor),
        "pri_bits": c.pri_bits,
        "num_spis": c.num_spis,
        "gicd_base": c.gicd_base,
        "its_bases": list(c.its_bases),
        "gicr_base": c.gicr_base,
    }


def gic_config_from_dict(d: dict[str, Any]) -> GicConfig:
    return GicConfig(
        num_cpus=int(d["num_cpus"]),
        its=tuple(its_config_from_dict(i) for i in d["its"]),
        redistributor=RedistributorConfig(**d["redistributor"]),
        pri_bits=int(d["pri_bits"]),
        num_spis=int(d["num_spis"]),
        gicd_base=int(d["gicd_base"]),
        its_bases=tuple(int(b) for b in d["its_bases"]),
        gicr_base=int(d["gicr_base"]),
    )


# -- memory ---------------------------------------------------------------------------


def _dump_region(buf: Any, size: int) -> bytes:
    out = io.BytesIO()
    view = memoryview(buf)
    zero = bytes(PAGE)
    for index in range(size // PAGE):
        page = view[index * PAGE : (index + 1) * PAGE]
        if page != zero:
            out.write(_PAGE_HEADER.pack(index))
            out.write(page)
    view.release()
    return out.getvalue()


def _load_region(mem: GuestMemory, base: int, size: int, data: bytes) -> None:
    record = _PAGE_HEADER.size + PAGE
    if len(data) % record:
        raise SnapshotError(f"memory image of the region at {base:#x} is truncated")
    for off in range(0, len(data), record):
        (index,) = _PAGE_HEADER.unpack_from(data, off)
        if index >= size // PAGE:
            raise SnapshotError(f"memory page {index} is beyond the region at {base:#x}")
        mem.write_bytes(base + index * PAGE, data[off + _PAGE_HEADER.size : off + record])


# -- the archive ----------------------------------------------------------------------


def _write(target: str | Path | IO[bytes], kind: str, state: dict[str, Any], mem: GuestMemory | None) -> None:
    members: dict[str, bytes] = {"state.json": json.dumps(state, separators=(",", ":")).encode()}
    if mem is not None:
        for r in mem.regions:
            members[f"mem-{r.base:x}.bin"] = _dump_region(r.buf, r.size)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "regions": [[r.base, r.size] for r in mem.regions] if mem is not None else [],
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        for name, data in members.items():
            z.writestr(name, data)


def _read(source: str | Path | IO[bytes], kind: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """Open, check format, version, kind and checksums; return (manifest, state, members)."""
    try:
        with zipfile.ZipFile(source) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise SnapshotError("not a vgic snapshot")
            if manifest.get("version") != VERSION:
                raise SnapshotError(
                    f"snapshot version {manifest.get('version')} is not {VERSION}, the one this vgic reads"
                )
            if manifest.get("kind") != kind:
                raise SnapshotError(f"this is a {manifest.get('kind')} snapshot, not a {kind} snapshot")
            members = {}
            for name, digest in manifest["sha256"].items():
                data = z.read(name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SnapshotError(f"snapshot member {name} is corrupt (checksum mismatch)")
                members[name] = data
    except SnapshotError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise SnapshotError(f"cannot read snapshot: {e}") from None
    state = json.loads(members.pop("state.json"))
    return manifest, state, members


def _load_memory(manifest: dict[str, Any], members: dict[str, bytes], mem: GuestMemory) -> None:
    have = {(r.base, r.size) for r in mem.regions}
    for base, size in manifest["regions"]:
        if (base, size) not in have:
            raise SnapshotError(f"the snapshot has RAM at {base:#x} ({size:#x} bytes) that this machine lacks")
        _load_region(mem, base, size, members[f"mem-{base:x}.bin"])


# -- GIC alone ---------------------------------------------------------------------------


def save_gic(gic: Gic, target: str | Path | IO[bytes], include_memory: bool = True) -> None:
    """Snapshot a GIC and its ITSes (and, by default, the guest memory holding the tables)."""
    state = {"config": gic_config_to_dict(gic.config), "gic": gic.save_state()}
    _write(target, "gic", state, gic.memory if include_memory else None)


def load_gic(source: str | Path | IO[bytes], memory: GuestMemory | None = None, log: EventLog | None = None) -> Gic:
    """A new GIC from a snapshot, over ``memory`` (else over the snapshot's own memory)."""
    manifest, state, members = _read(source, "gic")
    try:
        config = gic_config_from_dict(state["config"])
        if memory is None:
            memory = GuestMemory()
            for base, size in manifest["regions"]:
                memory.add_ram(base, size)
        if manifest["regions"]:
            _load_memory(manifest, members, memory)
        gic = Gic(memory, config, log)
        gic.load_state(state["gic"])
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"snapshot does not fit: {e}") from None
    return gic


def check_gic_fits(source: str | Path | IO[bytes], gic: Gic) -> None:
    """Raise SnapshotError unless the snapshot was taken of a GIC configured like ``gic``."""
    _, state, _ = _read(source, "gic")
    saved = Gic(GuestMemory(), gic_config_from_dict(state["config"])).fingerprint()
    if saved != gic.fingerprint():
        diff = [k for k in saved if saved[k] != gic.fingerprint().get(k)]
        raise SnapshotError(f"snapshot configuration differs in {', '.join(diff)}")


# -- the whole machine -------------------------------------------------------------------


def save_machine(machine: Any, target: str | Path | IO[bytes]) -> None:
    """Snapshot a :class:`~vgic.machine.virt.VirtMachine` between two scheduling slices."""
    _write(target, "machine", machine.save_state(), machine.memory)


def load_machine(source: str | Path | IO[bytes], output: Any = None, log: EventLog | None = None) -> Any:
    """A new VirtMachine that continues exactly where the snapshot was taken."""
    from vgic.machine.virt import VirtMachine

    manifest, state, members = _read(source, "machine")
    try:
        machine = VirtMachine.from_state_config(state, output=output, log=log)
        _load_memory(manifest, members, machine.memory)
        machine.load_state(state)
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"snapshot does not fit: {e}") from None
    return machine


def machine_to_bytes(machine: Any) -> bytes:
    buf = io.BytesIO()
    save_machine(machine, buf)
    return buf.getvalue()


def machine_from_bytes(data: bytes, output: Any = None, log: EventLog | None = None) -> Any:
    return load_machine(io.BytesIO(data), output=output, log=log)
