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

import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

from vgic.events import EventLog
from vgic.gic import Gic, GicConfig
from vgic.memory import GuestMemory

FORMAT = "vgic-snapshot"
VERSION = 2
PAGE = 4096
_PAGE_HEADER = struct.Struct("<I")


class SnapshotError(Exception):
    """A snapshot that cannot be written or restored; the message says why."""


# -- versions -----------------------------------------------------------------------
# Each format change bumps VERSION and adds an upgrade from the version before it, so a
# snapshot of any earlier version is read by upgrading its state step by step (as KVM's
# save/restore ABIs are versioned). Version 1 had no profiles: its ITS configuration
# carried only the fields below, and the GIC behaved as the ``strict`` profile does now,
# except for the error policy it recorded.


def _upgrade_its_config_v1(d: dict[str, Any]) -> dict[str, Any]:
    from vgic.its.registers import GITS_IIDR_VGIC, ID_REGISTERS

    out = dict(d)
    out.update(
        iidr=GITS_IIDR_VGIC,
        id_registers=list(ID_REGISTERS),
        memory_fault_policy=d["error_policy"],
        quiescent_when_idle=False,
        baser_page_size=0,
        baser_page_sizes=[0, 1, 2],
        collection_entry_size=8,
        pintid_bound="its",
    )
    return out


def _upgrade_gic_config_v1(d: dict[str, Any]) -> dict[str, Any]:
    from vgic.gicv3.distributor import GICD_IIDR_VGIC
    from vgic.gicv3.redistributor import GICR_IIDR_VGIC

    out = dict(d)
    out["its"] = [_upgrade_its_config_v1(i) for i in d["its"]]
    out["redistributor"] = {**d["redistributor"], "iidr": GICR_IIDR_VGIC, "common_lpi_aff": 0}
    out.update(gicd_iidr=GICD_IIDR_VGIC, profile="vgic-0.1")
    return out


def _upgrade_v1(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: named profiles (the configuration fields they brought)."""
    if kind == "gic":
        return {**state, "config": _upgrade_gic_config_v1(state["config"])}
    c = dict(state["config"])
    gic = {
        "num_cpus": c["smp"],
        "its": [c.pop("its")],
        "redistributor": {"lpi_id_bits": 16, "direct_lpi": True, "lpis_disableable": True},
        "pri_bits": 5,
        "num_spis": 224,
        "gicd_base": 0x0800_0000,
        "its_bases": [0x0808_0000],
        "gicr_base": 0x080A_0000,
    }
    c["gic"] = _upgrade_gic_config_v1(gic)
    return {**state, "config": c}


UPGRADES = {1: _upgrade_v1}  # version -> function to the next version


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
            version = manifest.get("version")
            if version != VERSION and version not in UPGRADES:
                raise SnapshotError(f"snapshot version {version!r} is not one this vgic reads (1 to {VERSION})")
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
    while version != VERSION:
        try:
            state = UPGRADES[version](kind, state)
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"cannot upgrade the version {version} snapshot: {e}") from None
        version += 1
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
    state = {"config": gic.config.to_dict(), "gic": gic.save_state()}
    _write(target, "gic", state, gic.memory if include_memory else None)


def load_gic(source: str | Path | IO[bytes], memory: GuestMemory | None = None, log: EventLog | None = None) -> Gic:
    """A new GIC from a snapshot, over ``memory`` (else over the snapshot's own memory)."""
    manifest, state, members = _read(source, "gic")
    try:
        config = GicConfig.from_dict(state["config"])
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
    try:
        saved = Gic(GuestMemory(), GicConfig.from_dict(state["config"])).fingerprint()
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"snapshot configuration is not valid: {e}") from None
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
