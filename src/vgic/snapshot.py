"""Snapshots: the whole machine, or the GIC and its ITSes alone, in a versioned file.

A snapshot is a zip archive (docs/snapshot.md):

* ``manifest.json``: format name, version, kind (``machine`` or ``gic``), and the SHA-256
  of every other member, checked before anything is built;
* ``state.json``: the configuration (validated against what is restored into) and the
  state of every model: registers, queue position and stall, host caches, pending LPIs,
  active priorities, CPU registers, timers, the UART;
* ``mem-<base>.bin``: each RAM region's non-zero 4 KiB pages, as (index, bytes) records.

Restoring checks the whole file before it builds anything: the archive (member sizes
before decompressing, checksums), the manifest, every field of the state against the
architecture and the configuration it is loaded into (the models' ``XState.from_dict``),
and every memory page record. Only then does it build new objects, write memory and load
the state, and it returns them only when everything loaded: any refusal is a
:class:`SnapshotError` naming the member and the field, and leaves nothing half-built and
nothing the caller passed in changed. The models load their state without side effects,
so no command runs and no MSI is raised by a restore, whatever the register order (no
stale queue replay).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vgic.checks import (
    PAGE,
    FieldError,
    at,
    exactly,
    items,
    mapping,
    only,
    ram_limit,
    ram_size,
    req,
    text,
    uint,
)
from vgic.events import EventLog
from vgic.files import require_regular
from vgic.gic import Gic, GicConfig, GicState
from vgic.memory import GuestMemory

FORMAT = "vgic-snapshot"
VERSION = 2
_PAGE_HEADER = struct.Struct("<I")
_RECORD = _PAGE_HEADER.size + PAGE  # a memory page record: u32 page index, then the page

MANIFEST_LIMIT = 1 << 16  # bytes of manifest.json
STATE_LIMIT = 64 << 20  # bytes of state.json (millions of pending LPIs fit)
JSON_DEPTH = 16  # nesting of any JSON member (the state nests 8 deep)
MAX_REGIONS = 16  # RAM regions a snapshot may declare
_CHUNK = 1 << 20  # members are decompressed this much at a time


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


def _upgrade_gic_state_v1(g: dict[str, Any]) -> dict[str, Any]:
    return {**g, "its": [{"errors": [], **i} for i in g["its"]]}  # version 2 keeps each ITS's errors


def _upgrade_v1(kind: str, state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: named profiles (the configuration fields they brought), the ITS's
    error history (none recorded)."""
    state = {**state, "gic": _upgrade_gic_state_v1(state["gic"])}
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


# -- reading the archive --------------------------------------------------------------
# Everything from outside is refused with a SnapshotError naming the member (and, inside
# a JSON member, the field): sizes are checked before anything is decompressed, members
# are read a chunk at a time, JSON nesting is bounded before the parser recurses.

_ZIP_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, OverflowError, RuntimeError, NotImplementedError,
               struct.error, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile)  # fmt: skip
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)  # always matches from a quote
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_PAIR = re.compile(rb"\[\]|\{\}")


@contextmanager
def _fields(member: str) -> Iterator[None]:
    """Refusals of the fields of ``member`` (FieldError, or a KeyError/TypeError of an
    upgrade) as SnapshotErrors naming the member."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{member}: {e}") from None


def _nesting_within(data: bytes | bytearray, depth: int) -> bool:
    """Whether JSON ``data`` nests arrays and objects at most ``depth`` deep (strings
    removed, each pass strips the innermost bracket pairs: linear time per pass)."""
    skeleton = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(depth):
        if not skeleton:
            return True
        skeleton = _BRACKET_PAIR.sub(b"", skeleton)
    return not skeleton


def _json(data: bytes | bytearray, member: str) -> object:
    if not _nesting_within(data, JSON_DEPTH):
        raise SnapshotError(f"{member}: JSON nested deeper than {JSON_DEPTH} levels, or unbalanced")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"{member}: not valid JSON ({e})") from None


def _member(z: zipfile.ZipFile, name: str, limit: int) -> bytearray:
    """Member ``name``, refused if it declares or inflates to more than ``limit`` bytes."""
    info = z.getinfo(name)
    if info.file_size > limit:
        raise SnapshotError(f"{name}: {info.file_size} bytes, more than the {limit} it may hold")
    out = bytearray()
    with z.open(info) as f:
        while chunk := f.read(_CHUNK):
            out += chunk
            if len(out) > limit:
                raise SnapshotError(f"{name}: inflates to more than the {limit} bytes it may hold")
    return out


@dataclass(frozen=True)
class _Manifest:
    version: int
    kind: str
    regions: tuple[tuple[int, int], ...]
    sha256: dict[str, str]


def _manifest(d: object, kind: str) -> _Manifest:
    """The manifest, every field checked (FieldError naming it, SnapshotError for a file
    that is not what the caller asked for)."""
    m = mapping(d)
    if m.get("format") != FORMAT:
        raise SnapshotError("not a vgic snapshot")
    version = m.get("version")
    if type(version) is not int or (version != VERSION and version not in UPGRADES):
        raise SnapshotError(f"snapshot version {version!r:.20} is not one this vgic reads (1 to {VERSION})")
    if m.get("kind") != kind:
        raise SnapshotError(f"this is a {str(m.get('kind'))[:20]} snapshot, not a {kind} snapshot")
    only(m, ("format", "version", "kind", "regions", "sha256"))
    regions: list[tuple[int, int]] = []
    with at("regions"):
        for n, r in enumerate(items(req(m, "regions"), MAX_REGIONS)):
            with at(n):
                base, size = exactly(r, 2)
                regions.append((uint(base, 52, "[0]"), ram_size(size, "[1]")))
                if regions[-1][0] % PAGE or regions[-1][0] + regions[-1][1] > 1 << 52:
                    raise FieldError("[0]", f"{regions[-1][0]:#x} is not a page-aligned base of RAM below 2^52")
        regions.sort()
        for (b0, s0), (b1, _) in itertools.pairwise(regions):
            if b0 + s0 > b1:
                raise FieldError("", f"the RAM at {b0:#x} overlaps the RAM at {b1:#x}")
        if sum(s for _, s in regions) > ram_limit():
            raise FieldError("", f"declares more RAM than this host can give ({ram_limit():#x} bytes)")
    expected = {"state.json", *(f"mem-{b:x}.bin" for b, _ in regions)}
    sha: dict[str, str] = {}
    with at("sha256"):
        digests = mapping(req(m, "sha256"))
        for name in expected:
            if name not in digests:
                raise SnapshotError(f"manifest.json: sha256: member {name} is missing")
        only(digests, frozenset(expected))
        for name, digest in digests.items():
            value = text(digest, 64, name)
            if not re.fullmatch("[0-9a-f]{64}", value):
                raise FieldError(name, "is not a SHA-256 digest in hex")
            sha[name] = value
    return _Manifest(version, kind, tuple(regions), sha)


@dataclass(frozen=True)
class _Archive:
    manifest: _Manifest
    state: Any  # the JSON state, upgraded to VERSION
    memory: dict[int, bytearray]  # region base -> its page records


def _read(source: str | Path | IO[bytes], kind: str) -> _Archive:
    """Open, check the archive, the manifest, member sizes and checksums, parse the state
    and upgrade it to :data:`VERSION`."""
    try:
        if isinstance(source, (str, os.PathLike)):
            try:
                require_regular(source)  # a device or a pipe cannot be seeked in: refused, never read
            except OSError as e:
                raise SnapshotError(f"cannot read snapshot {source}: {e.strerror or e}") from None
        with zipfile.ZipFile(source) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(names) > MAX_REGIONS + 2 or len(set(names)) != len(names):
                raise SnapshotError("the archive has duplicate or too many members")
            for info in infos:
                if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise SnapshotError(f"{info.filename[:60]}: encrypted or compressed with an unsupported method")
            if "manifest.json" not in names:
                raise SnapshotError("manifest.json is missing")
            with _fields("manifest.json"):
                manifest = _manifest(_json(_member(z, "manifest.json", MANIFEST_LIMIT), "manifest.json"), kind)
            for name in names:
                if name != "manifest.json" and name not in manifest.sha256:
                    raise SnapshotError(f"{name[:60]}: a member the manifest does not list")
            members: dict[str, bytearray] = {}
            sizes = {f"mem-{b:x}.bin": s // PAGE * _RECORD for b, s in manifest.regions}
            for name, digest in manifest.sha256.items():
                if name not in names:
                    raise SnapshotError(f"{name}: missing from the archive")
                data = _member(z, name, sizes.get(name, STATE_LIMIT))
                if hashlib.sha256(data).hexdigest() != digest:
                    raise SnapshotError(f"snapshot member {name} is corrupt (checksum mismatch)")
                members[name] = data
    except SnapshotError:
        raise
    except _ZIP_ERRORS as e:
        raise SnapshotError(f"cannot read snapshot: {e}") from None
    state: Any = _json(members.pop("state.json"), "state.json")
    version = manifest.version
    while version != VERSION:
        try:
            state = UPGRADES[version](kind, state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise SnapshotError(f"state.json: cannot upgrade the version {version} snapshot: {e!r:.200}") from None
        version += 1
    memory = {b: members[f"mem-{b:x}.bin"] for b, _ in manifest.regions}
    return _Archive(manifest, state, memory)


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


Pages = list[tuple[int, memoryview]]  # (guest physical address, 4 KiB) to write


def _pages(archive: _Archive) -> Pages:
    """Every page record of every region checked: whole records, each page index inside
    its region and written once. Nothing is written here."""
    out: Pages = []
    for base, size in archive.manifest.regions:
        name, data = f"mem-{base:x}.bin", archive.memory[base]
        if len(data) % _RECORD:
            raise SnapshotError(f"{name}: truncated ({len(data)} bytes is no whole number of page records)")
        view = memoryview(data)
        seen: set[int] = set()
        for n, off in enumerate(range(0, len(data), _RECORD)):
            (index,) = _PAGE_HEADER.unpack_from(data, off)
            if index >= size // PAGE or index in seen:
                raise SnapshotError(f"{name}: record {n}: page {index} is beyond the region at {base:#x} "
                                    f"({size // PAGE} pages) or written twice")  # fmt: skip
            seen.add(index)
            out.append((base + index * PAGE, view[off + _PAGE_HEADER.size : off + _RECORD]))
    return out


def _write_pages(mem: GuestMemory, pages: Pages, keep: bool) -> Pages:
    """Write ``pages``; with ``keep``, return what they replaced (to undo a refused load)."""
    old: Pages = [(a, memoryview(mem.read_bytes(a, PAGE))) for a, _ in pages] if keep else []
    for address, page in pages:
        mem.write_bytes(address, bytes(page))
    return old


def _check_regions(archive: _Archive, mem: GuestMemory) -> None:
    have = {(r.base, r.size) for r in mem.regions}
    for base, size in archive.manifest.regions:
        if (base, size) not in have:
            raise SnapshotError(f"the snapshot has RAM at {base:#x} ({size:#x} bytes) that this machine lacks")


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


# -- GIC alone ---------------------------------------------------------------------------


def save_gic(gic: Gic, target: str | Path | IO[bytes], include_memory: bool = True) -> None:
    """Snapshot a GIC and its ITSes (and, by default, the guest memory holding the tables)."""
    state = {"config": gic.config.to_dict(), "gic": gic.save_state().to_dict()}
    _write(target, "gic", state, gic.memory if include_memory else None)


def _gic_state(archive: _Archive) -> tuple[GicConfig, GicState]:
    with _fields("state.json"):
        state = mapping(archive.state)
        only(state, ("config", "gic"))
        with at("config"):
            config = GicConfig.from_dict(req(state, "config"))
        with at("gic"):
            return config, GicState.from_dict(req(state, "gic"), config)


def load_gic(source: str | Path | IO[bytes], memory: GuestMemory | None = None, log: EventLog | None = None) -> Gic:
    """A new GIC from a snapshot, over ``memory`` (else over the snapshot's own memory).

    Everything is checked before ``memory`` is written; a refused load leaves it as it was."""
    archive = _read(source, "gic")
    config, state = _gic_state(archive)
    pages = _pages(archive)
    if memory is not None:
        _check_regions(archive, memory)
        target = memory
    else:
        target = GuestMemory()
        for base, size in archive.manifest.regions:
            try:
                target.add_ram(base, size)
            except (OSError, ValueError) as e:
                raise SnapshotError(f"cannot allocate the snapshot's RAM at {base:#x}: {e}") from None
    try:
        gic = Gic(target, config, log)
    except ValueError as e:
        raise SnapshotError(f"state.json: config: {e}") from None
    old = _write_pages(target, pages, keep=memory is not None)
    try:
        gic.load_state(state)
    except (ValueError, KeyError, TypeError, IndexError) as e:  # a check missing above: undo, refuse
        _write_pages(target, old, keep=False)
        raise SnapshotError(f"state.json: gic: does not fit: {e}") from None
    return gic


def check_gic_fits(source: str | Path | IO[bytes], gic: Gic) -> None:
    """Raise SnapshotError unless the snapshot was taken of a GIC configured like ``gic``."""
    config, _ = _gic_state(_read(source, "gic"))
    saved = Gic(GuestMemory(), config).fingerprint()
    if saved != gic.fingerprint():
        diff = [k for k in saved if saved[k] != gic.fingerprint().get(k)]
        raise SnapshotError(f"snapshot configuration differs in {', '.join(diff)}")


# -- the whole machine -------------------------------------------------------------------


def save_machine(machine: Any, target: str | Path | IO[bytes]) -> None:
    """Snapshot a :class:`~vgic.machine.virt.VirtMachine` between two scheduling slices."""
    _write(target, "machine", machine.save_state().to_dict(), machine.memory)


def load_machine(source: str | Path | IO[bytes], output: Any = None, log: EventLog | None = None) -> Any:
    """A new VirtMachine that continues exactly where the snapshot was taken."""
    from vgic.machine.cpu import SAVED_REGISTER_NAMES
    from vgic.machine.state import MachineState
    from vgic.machine.virt import VirtMachine

    archive = _read(source, "machine")
    with _fields("state.json"):
        state = MachineState.from_dict(archive.state, SAVED_REGISTER_NAMES)
    expected = sorted(VirtMachine.ram_regions(state.config))
    if list(archive.manifest.regions) != expected:
        raise SnapshotError(f"manifest.json: regions: {[[hex(b), hex(s)] for b, s in archive.manifest.regions]} "
                            f"are not the RAM of the machine state.json describes")  # fmt: skip
    pages = _pages(archive)
    try:
        machine = VirtMachine.from_state_config(state, output=output, log=log)
    except (ValueError, OSError) as e:
        raise SnapshotError(f"state.json: config: cannot build the machine: {e}") from None
    _write_pages(machine.memory, pages, keep=False)
    try:
        machine.load_state(state)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise SnapshotError(f"state.json: does not fit: {e}") from None
    return machine


def machine_to_bytes(machine: Any) -> bytes:
    buf = io.BytesIO()
    save_machine(machine, buf)
    return buf.getvalue()


def machine_from_bytes(data: bytes, output: Any = None, log: EventLog | None = None) -> Any:
    return load_machine(io.BytesIO(data), output=output, log=log)
