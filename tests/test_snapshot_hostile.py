"""Hostile and corrupt snapshots (issue 12, item 3): refused with a SnapshotError naming the
member and the field, never accepted as if valid, never another Python exception, never
after building anything or touching memory the caller passed in.

Each hostile file is built here from a real snapshot, and its members are re-signed with
correct SHA-256 digests, so the checks under test are the ones reached (not the checksum).
"""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import stalling
from vgic import snapshot
from vgic.checks import ram_limit
from vgic.driver import Allocator, ItsDriver
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.memory import GuestMemory

RAM = 0x4000_0000
RAM_SIZE = 4 << 20
NCPU = 2
GITS_CWRITER = 0x88

State = dict[str, Any]


# == building hostile files ================================================================


def _gic() -> tuple[Gic, ItsDriver]:
    """2 CPUs, the ITS enabled over two-level tables, LPI 8200 pending on CPU 0 and 8201
    on CPU 1, a stalled queue (a MAPTI of an unmapped device), an SPI and a PPI pending."""
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    gic = Gic(mem, GicConfig(num_cpus=NCPU, its=(stalling(),)))
    d = ItsDriver(gic, Allocator(RAM, RAM_SIZE))
    d.setup_lpis(id_bits=14)
    d.setup_its(two_level=True)
    d.send(*(C.Mapc(c, c, True) for c in range(NCPU)))
    d.add_l2_page(1)
    d.map_device(1, 3)
    d.send(C.Mapti(1, 0, 8200, 0), C.Mapti(1, 1, 8201, 1))
    d.msi(1, 0)
    d.msi(1, 1)
    d.send(C.Mapti(0x55, 0, 8202, 0))  # unmapped device: the queue stalls
    gic.set_spi(40, True)
    gic.set_ppi(1, 27, True)
    assert gic.its[0].stalled and gic.redistributors[1].pending_lpis == {8201}
    return gic, d


def _gic_blob() -> bytes:
    buf = io.BytesIO()
    snapshot.save_gic(_gic()[0], buf)
    return buf.getvalue()


GIC_BLOB = _gic_blob()


def _members(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _pack(members: dict[str, bytes], manifest: object | None = None, resign: bool = True) -> bytes:
    """A zip of ``members`` with ``manifest`` (default: theirs), its digests recomputed."""
    man = json.loads(members["manifest.json"]) if manifest is None else manifest
    if resign and isinstance(man, dict) and isinstance(man.get("sha256"), dict):
        man["sha256"] = {n: hashlib.sha256(members[n]).hexdigest() if n in members else d
                         for n, d in man["sha256"].items()}  # fmt: skip
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(man))
        for name, data in members.items():
            if name != "manifest.json":
                z.writestr(name, data)
    return out.getvalue()


def _edit_state(blob: bytes, edit: Callable[[State], object]) -> bytes:
    members = _members(blob)
    state = json.loads(members["state.json"])
    edit(state)
    members["state.json"] = json.dumps(state).encode()
    return _pack(members)


def _edit_manifest(blob: bytes, edit: Callable[[State], object]) -> bytes:
    members = _members(blob)
    manifest = json.loads(members["manifest.json"])
    result = edit(manifest)
    return _pack(members, manifest if result is None else result)


def _refused_gic(blob: bytes, *fragments: str, memory: GuestMemory | None = None) -> str:
    with pytest.raises(snapshot.SnapshotError) as info:
        snapshot.load_gic(io.BytesIO(blob), memory=memory)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def _its(s: State) -> State:
    its: State = s["gic"]["its"][0]
    return its


def _rd(s: State, cpu: int) -> State:
    rd: State = s["gic"]["redistributors"][cpu]
    return rd


def test_the_untouched_file_restores() -> None:
    """The base every hostile file here is made from, re-signed without change, loads."""
    gic = snapshot.load_gic(io.BytesIO(_edit_state(GIC_BLOB, lambda s: None)))
    assert gic.redistributors[0].pending_lpis == {8200} and gic.its[0].stalled


# == the archive ===========================================================================


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    """A member that declares more than its bound is refused from its ZipInfo: nothing
    is decompressed (a 3 MB bomb reached 6.3 GB RSS before)."""
    members = _members(GIC_BLOB)
    members["state.json"] = b" " * (snapshot.STATE_LIMIT + 1)  # ~64 KB deflated
    bomb = _pack(members)
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        _refused_gic(bomb, "state.json", "more than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def _declare_size(blob: bytes, name: str, size: int) -> bytes:
    """``blob`` with member ``name`` declaring ``size`` uncompressed bytes (local header
    and central directory), its data unchanged."""
    out = bytearray(blob)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        info = z.getinfo(name)
        central = z.start_dir
    out[info.header_offset + 22 : info.header_offset + 26] = size.to_bytes(4, "little")
    while out[central : central + 4] == b"PK\x01\x02":
        n, m, k = (int.from_bytes(out[central + i : central + i + 2], "little") for i in (28, 30, 32))
        if out[central + 46 : central + 46 + n] == name.encode():
            out[central + 24 : central + 28] = size.to_bytes(4, "little")
        central += 46 + n + m + k
    return bytes(out)


def test_a_member_inflating_beyond_what_it_declares_is_refused() -> None:
    """A lying ZipInfo.file_size: the member is read in bounded chunks and stops at what
    it declared, so the lie ends as a refused (corrupt) member, with memory bounded."""
    members = _members(GIC_BLOB)
    members["state.json"] = b" " * (32 << 20)
    blob = _declare_size(_pack(members), "state.json", 1000)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        assert z.getinfo("state.json").file_size == 1000
    tracemalloc.start()
    try:
        _refused_gic(bytes(blob))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_memory_member_larger_than_its_region_is_refused() -> None:
    members = _members(GIC_BLOB)
    name = f"mem-{RAM:x}.bin"
    members[name] = members[name] * (RAM_SIZE // 4096 // (len(members[name]) // 4100) + 1)
    _refused_gic(_pack(members), name, "more than")


def test_a_manifest_that_is_a_list_is_refused() -> None:
    _refused_gic(_edit_manifest(GIC_BLOB, lambda m: [m]), "manifest.json", "not an object")


def test_a_sha256_that_is_a_list_is_refused() -> None:
    _refused_gic(_edit_manifest(GIC_BLOB, lambda m: m.update(sha256=list(m["sha256"]))), "manifest.json: sha256")


def test_a_missing_state_member_is_refused() -> None:
    members = _members(GIC_BLOB)
    manifest = json.loads(members["manifest.json"])
    del manifest["sha256"]["state.json"]
    _refused_gic(_pack(members, manifest), "state.json", "missing")
    del members["state.json"]  # listed in the manifest, absent from the archive
    _refused_gic(_pack(members, resign=False), "state.json", "missing")


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda m: m["regions"].append([0x1_0000_0000, 1 << 62]), ("regions[1][1]", "more RAM than this host")),
        (lambda m: m["regions"].__setitem__(0, [RAM, RAM_SIZE + 1]), ("regions[0][1]", "multiple")),
        (lambda m: m["regions"].__setitem__(0, [RAM + 1, RAM_SIZE]), ("regions[0][0]", "page-aligned")),
        (lambda m: m["regions"].append([RAM + 4096, 4096]), ("regions", "overlaps")),
        (lambda m: m["regions"].extend([[i << 32, 4096] for i in range(1, 20)]), ("regions", "at most 16")),
        (lambda m: m.update(version=True), ("version True",)),
        (lambda m: m.update(version=3), ("version 3",)),
        (lambda m: m.update(extra=1), ("extra", "not a field")),
        (lambda m: m["sha256"].update({"mem-0.bin": "0" * 64}), ("sha256", "mem-0.bin")),
    ],
    ids=[
        "ram-2^62",
        "ram-unaligned-size",
        "ram-unaligned-base",
        "ram-overlap",
        "regions-many",
        "version-bool",
        "version-future",
        "unknown-field",
        "unlisted-region",
    ],
)
def test_bad_manifests_are_refused(edit: Callable[[State], object], fragments: tuple[str, ...]) -> None:
    _refused_gic(_edit_manifest(GIC_BLOB, edit), *fragments)


def test_ram_sizes_are_bounded_by_the_host() -> None:
    assert 0 < ram_limit() <= 255 << 30
    _refused_gic(_edit_manifest(GIC_BLOB, lambda m: m["regions"].__setitem__(0, [RAM, ram_limit() + 4096])),
                 "manifest.json: regions[0][1]", "more RAM")  # fmt: skip


def test_100k_deep_json_is_refused_before_parsing() -> None:
    members = _members(GIC_BLOB)
    members["state.json"] = b"[" * 100_000 + b"]" * 100_000
    _refused_gic(_pack(members), "state.json", "nested deeper")
    members["state.json"] = b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'  # brackets in strings are no nesting
    _refused_gic(_pack(members), "state.json: a: is not a field")  # (parsed, then refused as a state)


def test_a_member_the_manifest_does_not_list_is_refused() -> None:
    out = io.BytesIO(GIC_BLOB)
    with zipfile.ZipFile(out, "a") as z:
        z.writestr("extra.bin", b"x")
    _refused_gic(out.getvalue(), "extra.bin", "does not list")


def test_a_member_twice_is_refused() -> None:
    """zipfile reads the last of two members of one name: neither is trusted."""
    out = io.BytesIO(GIC_BLOB)
    with pytest.warns(UserWarning, match="Duplicate"), zipfile.ZipFile(out, "a") as z:
        z.writestr("state.json", b"{}")
    _refused_gic(out.getvalue(), "duplicate")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_compressed_with_other_methods_are_refused(method: int) -> None:
    """Only stored and deflated members are read: bzip2 and LZMA decoders can be asked
    for large dictionaries before a single byte comes out."""
    members = _members(GIC_BLOB)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    _refused_gic(out.getvalue(), "unsupported method")


def test_an_encrypted_member_is_refused() -> None:
    blob = bytearray(GIC_BLOB)
    # set the encryption flag (bit 0 of the general purpose flags) in every header
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := bytes(blob).find(sig, start)) >= 0:
            blob[i + flag_at] |= 1
            start = i + 4
    _refused_gic(bytes(blob), "encrypted")


def test_corrupt_deflate_streams_are_refused() -> None:
    """Flipping bits inside a member's compressed bytes (the CRC and digest untouched)
    reaches the decompressor: zlib.error and EOFError came out before. A flip may land in
    bits the decoder never uses; every other one is refused."""
    with zipfile.ZipFile(io.BytesIO(GIC_BLOB)) as z:
        info = z.getinfo("state.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    tried = refused = 0
    for offset in range(start, start + info.compress_size, max(1, info.compress_size // 97)):
        for bit in (0, 3, 7):
            blob = bytearray(GIC_BLOB)
            blob[offset] ^= 1 << bit
            tried += 1
            try:
                snapshot.load_gic(io.BytesIO(bytes(blob)))
            except snapshot.SnapshotError:
                refused += 1
    assert refused >= 0.95 * tried


def test_truncated_and_garbage_files_are_refused() -> None:
    for n in range(0, len(GIC_BLOB), max(1, len(GIC_BLOB) // 50)):
        _refused_gic(GIC_BLOB[:n])
    _refused_gic(b"PK\x05\x06" + bytes(18))  # an empty archive


# == the state, field by field ================================================================


def _set_pending(cpu: int, intids: list[int]) -> Callable[[State], None]:
    def edit(s: State) -> None:
        _rd(s, cpu)["pending"] = intids
        _rd(s, cpu)["config"] = [[i, 0xA1] for i in intids]

    return edit


def _disable_lpis(s: State) -> None:
    _rd(s, 1)["enable_lpis"] = False  # LPI 8201 is still pending there


def _no_cbaser(s: State) -> None:
    _its(s)["regs"]["CBASER"] = [0]


STATE_CASES: list[tuple[str, Callable[[State], object], tuple[str, ...]]] = [
    # the cases
    ("collection-on-missing-rd", lambda s: _its(s).update(collections=[[0, 5]]),
     ("gic.its[0].collections[0][1]", "redistributor 5 does not exist")),
    ("baser-page-size-3", lambda s: _its(s)["regs"]["BASER"].__setitem__(0, _its(s)["regs"]["BASER"][0] | 3 << 8),
     ("gic.its[0].regs.BASER[0]", "Page_Size 3")),
    ("num-cpus-0", lambda s: s["config"].update(num_cpus=0), ("config.num_cpus", "not 1 to")),
    ("baser-types-1", lambda s: s["config"]["its"][0].update(baser_types=[1]), ("config.its[0]", "GITS_BASER")),
    ("ap-empty", lambda s: s["gic"]["cpus"][0].update(ap=[]), ("gic.cpus[0].ap", "list of 2")),
    ("pending-below-lpis", _set_pending(0, [5]), ("gic.redistributors[0].pending[0]", "5 is not an integer in [8192")),
    ("pending-beyond-limit", _set_pending(0, [8200, 1 << 14]), ("redistributors[0].pending[1]", "16384")),
    ("pending-with-enable-lpis-0", _disable_lpis, ("gic.redistributors[1].pending", "EnableLPIs=0")),
    ("enabled-invalid-cbaser", _no_cbaser, ("gic.its[0]", "GITS_CBASER is not Valid")),
    ("cwriter-beyond-queue", lambda s: _its(s).update(cwriter=0x2000), ("gic.its[0].cwriter", "0x2000")),
    ("creadr-unaligned", lambda s: _its(s).update(creadr=0x10), ("gic.its[0].creadr", "multiple of 32")),
    # the same family: types, ranges and cross-checks of every block
    ("gic-is-a-list", lambda s: s.update(gic=[]), ("gic", "not an object")),
    ("missing-field", lambda s: s["gic"]["distributor"].pop("spis"), ("gic.distributor.spis", "missing")),
    ("unknown-field", lambda s: s["gic"]["cpus"][1].update(pmr2=0), ("gic.cpus[1].pmr2", "not a field")),
    ("bool-for-int", lambda s: s["gic"]["cpus"][0].update(pmr=True), ("gic.cpus[0].pmr",)),
    ("float-for-int", lambda s: _rd(s, 0).update(lpi_limit=16384.0), ("lpi_limit",)),
    ("huge-int", lambda s: _its(s).update(creadr=10**30), ("gic.its[0].creadr",)),
    ("register-missing", lambda s: s["gic"]["distributor"]["regs"].pop("CTLR"), ("distributor.regs.CTLR", "missing")),
    ("register-unknown", lambda s: _rd(s, 0)["regs"].update(FOO=[0]), ("redistributors[0].regs.FOO", "no register")),
    ("register-count", lambda s: s["gic"]["distributor"]["regs"].update(IROUTER=[0]), ("regs.IROUTER", "1020")),
    ("register-width", lambda s: _rd(s, 0)["regs"].update(CTLR=[1 << 32]), ("regs.CTLR[0]", "32-bit")),
    ("gicd-ctlr-are-clear", lambda s: s["gic"]["distributor"]["regs"].update(CTLR=[3]), ("distributor.regs.CTLR",)),
    ("irouter-of-no-spi", lambda s: s["gic"]["distributor"]["regs"]["IROUTER"].__setitem__(5, 1),
     ("regs.IROUTER[5]", "no SPI")),
    ("irouter-irm", lambda s: s["gic"]["distributor"]["regs"]["IROUTER"].__setitem__(40, 1 << 31),
     ("regs.IROUTER[40]",)),
    ("spi-bitmap-width", lambda s: s["gic"]["distributor"]["spis"].update(enabled=1), ("spis.enabled", "outside")),
    ("spi-beyond-num-spis", lambda s: s["gic"]["distributor"]["spis"].update(level=1 << 300), ("spis.level",)),
    ("priorities-length", lambda s: s["gic"]["distributor"]["spis"].update(priority="00"), ("spis.priority",)),
    ("priorities-not-hex", lambda s: _rd(s, 0)["sgi"]["bank"].update(priority="zz" * 32), ("sgi.bank.priority",)),
    ("priority-low-bits", lambda s: _rd(s, 0)["sgi"]["bank"].update(priority="07" * 32), ("sgi.bank.priority",)),
    ("sgi-level-sensitive", lambda s: _rd(s, 0)["sgi"]["bank"].update(edge=0), ("sgi.bank.edge", "edge-triggered")),
    ("pmr-unimplemented-bits", lambda s: s["gic"]["cpus"][0].update(pmr=0xF1), ("gic.cpus[0].pmr", "5 implemented")),
    ("bpr0-below-minimum", lambda s: s["gic"]["cpus"][0].update(bpr0=1), ("gic.cpus[0].bpr0", "[2, 8)")),
    ("bpr1-beyond-7", lambda s: s["gic"]["cpus"][0].update(bpr1=8), ("gic.cpus[0].bpr1",)),
    ("ap-unimplemented-bits", lambda s: s["gic"]["cpus"][1].update(ap=[1 << 32, 0]), ("gic.cpus[1].ap[0]", "32-bit")),
    ("group-enable-2", lambda s: s["gic"]["cpus"][1].update(igrpen1=2), ("gic.cpus[1].igrpen1",)),
    ("config-cache-not-pending", lambda s: _rd(s, 0)["config"].append([8300, 1]), ("redistributors[0].config",)),
    ("config-cache-missing", lambda s: _rd(s, 0).update(config=[]), ("redistributors[0].config", "every pending")),
    ("config-byte-wide", lambda s: _rd(s, 0).update(config=[[8200, 256]]), ("redistributors[0].config[0][1]",)),
    ("pending-twice", _set_pending(0, [8200, 8200]), ("redistributors[0].pending", "twice")),
    ("lpi-limit-not-propbaser", lambda s: _rd(s, 0).update(lpi_limit=1 << 16), ("redistributors[0].lpi_limit",)),
    ("lpi-limit-disabled-odd", lambda s: _rd(s, 0).update(enable_lpis=False, pending=[], config=[], lpi_limit=100),
     ("redistributors[0].lpi_limit", "2^14")),
    ("table-bits-disabled", lambda s: _rd(s, 0).update(enable_lpis=False, pending=[], config=[], table_bits=[8200]),
     ("redistributors[0].table_bits", "EnableLPIs=0")),
    ("propbaser-reserved-bits", lambda s: _rd(s, 0)["regs"].update(PROPBASER=[_rd(s, 0)["regs"]["PROPBASER"][0] | 1 << 6]),
     ("regs.PROPBASER",)),
    ("pendbaser-ptz-while-enabled", lambda s: _rd(s, 0)["regs"].update(PENDBASER=[_rd(s, 0)["regs"]["PENDBASER"][0] | 1 << 62]),
     ("regs.PENDBASER", "PTZ")),
    ("waker-half-asleep", lambda s: _rd(s, 0)["regs"].update(WAKER=[2]), ("regs.WAKER",)),
    ("its-cbaser-reserved", lambda s: _its(s)["regs"].update(CBASER=[_its(s)["regs"]["CBASER"][0] | 1 << 8]),
     ("its[0].regs.CBASER",)),
    ("its-baser-type", lambda s: _its(s)["regs"]["BASER"].__setitem__(0, _its(s)["regs"]["BASER"][0] ^ 1 << 56),
     ("its[0].regs.BASER[0]", "Type")),
    ("its-unimplemented-baser", lambda s: _its(s)["regs"]["BASER"].__setitem__(5, 1), ("its[0].regs.BASER[5]",)),
    ("its-creadr-beyond-queue", lambda s: _its(s).update(creadr=0x1000), ("its[0].creadr", "beyond")),
    ("its-queue-invalid-in-range", lambda s: _its(s).update(queue_invalid=True), ("its[0].cwriter",)),
    ("its-device-twice", lambda s: _its(s)["devices"].append(_its(s)["devices"][0]), ("its[0].devices[1][0]",)),
    ("its-event-not-lpi", lambda s: _its(s)["devices"][0].__setitem__(3, [[5, 100, 0]]), ("devices[0][3][0][1]",)),
    ("its-event-beyond-itt", lambda s: _its(s)["devices"][0].__setitem__(3, [[100, 8300, 0]]),
     ("devices[0][3][0][0]",)),
    ("its-hcc-collection", lambda s: _its(s).update(hcc_collections=[[0, 0]]), ("its[0].hcc_collections",)),
    ("its-unsynced-cpu", lambda s: _its(s).update(unsynced=[9]), ("its[0].unsynced[0]",)),
    ("its-error-message-type", lambda s: _its(s).update(errors=[[0, 1, 2, "x"]]), ("its[0].errors[0][2]",)),
    ("its-count", lambda s: s["gic"]["its"].append(_its(s)), ("gic.its", "list of 1")),
    ("cpu-count", lambda s: s["gic"]["cpus"].pop(), ("gic.cpus", "list of 2")),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "fragments"), [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_bad_states_are_refused_naming_the_field(edit: Callable[[State], object], fragments: tuple[str, ...]) -> None:
    message = _refused_gic(_edit_state(GIC_BLOB, edit), *fragments)
    assert message.startswith("state.json: ")


def test_the_refusal_comes_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a GIC was built for a refused snapshot")

    monkeypatch.setattr(snapshot, "Gic", boom)
    _refused_gic(_edit_state(GIC_BLOB, _disable_lpis), "pending")
    _refused_gic(_edit_state(GIC_BLOB, _no_cbaser), "CBASER")


# == memory ===================================================================================


def _memory_with_pattern() -> GuestMemory:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    for page in range(0, RAM_SIZE, 4096):
        mem.write_bytes(RAM + page, page.to_bytes(4, "little") * 1024)
    return mem


def _image(mem: GuestMemory) -> bytes:
    return mem.read_bytes(RAM, RAM_SIZE)


def _bad_page_record(blob: bytes, index: int) -> bytes:
    members = _members(blob)
    name = f"mem-{RAM:x}.bin"
    data = bytearray(members[name])
    data[-4100:-4096] = index.to_bytes(4, "little")  # the last record's page index
    members[name] = bytes(data)
    return _pack(members)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: _bad_page_record(GIC_BLOB, RAM_SIZE // 4096), ("mem-40000000.bin", "beyond the region")),
        (lambda: _bad_page_record(GIC_BLOB, 0), ("mem-40000000.bin", "twice")),
        (lambda: _edit_state(GIC_BLOB, _disable_lpis), ("state.json: gic.redistributors[1].pending",)),
        (lambda: _edit_state(GIC_BLOB, lambda s: _its(s).update(errors=[[0, 0, 0, 0]])), ("its[0].errors[0][2]",)),
    ],
    ids=["page-beyond-region", "page-twice", "lpis-disabled", "last-its-field"],
)
def test_a_refused_load_leaves_the_callers_memory_untouched(make: Callable[[], bytes],
                                                            fragments: tuple[str, ...]) -> None:  # fmt: skip
    mem = _memory_with_pattern()
    before = _image(mem)
    _refused_gic(make(), *fragments, memory=mem)
    assert _image(mem) == before


def test_a_truncated_page_record_is_refused() -> None:
    members = _members(GIC_BLOB)
    name = f"mem-{RAM:x}.bin"
    members[name] = members[name][:-1]
    _refused_gic(_pack(members), name, "truncated")


def test_a_load_that_fails_late_puts_the_callers_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a model refuse its (checked) state after the pages were written, the load
    is refused and the pages it wrote are put back."""

    def refuse(self: Gic, state: object) -> None:
        raise ValueError("refused late")

    monkeypatch.setattr(Gic, "load_state", refuse)
    mem = _memory_with_pattern()
    before = _image(mem)
    _refused_gic(GIC_BLOB, "refused late", memory=mem)
    assert _image(mem) == before


def test_a_good_load_into_the_callers_memory_writes_the_pages() -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    gic = snapshot.load_gic(io.BytesIO(GIC_BLOB), memory=mem)
    assert gic.memory is mem and _image(mem) == _gic()[0].memory.read_bytes(RAM, RAM_SIZE)


# == fuzzing: only SnapshotError (or a working GIC) ever comes out ================================


def _exercise(gic: Gic) -> None:
    """What a restored GIC must survive: acknowledges, an MSI, a queue retry, state saved."""
    for cpu in gic.cpus:
        intid = cpu.read_sysreg("ICC_IAR1_EL1")
        if intid != 1023:
            cpu.write_sysreg("ICC_EOIR1_EL1", intid)
    gic.its[0].translate(1, 0)
    gic.its[0].write(GITS_CWRITER, 8, gic.its[0].read(GITS_CWRITER, 8) | 1)
    gic.save_state().to_dict()


def _load_or_refuse(blob: bytes) -> None:
    try:
        gic = snapshot.load_gic(io.BytesIO(blob))
    except snapshot.SnapshotError:
        return
    _exercise(gic)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_bit_flips_and_truncations_give_only_snapshot_errors(data: st.DataObject) -> None:
    blob = bytearray(GIC_BLOB)
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << bit % 8
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob))) :]
    _load_or_refuse(bytes(blob))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 2, 8192, 16383, 16384, 1 << 63])
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
GIC_STATE = json.loads(_members(GIC_BLOB)["state.json"])
GIC_MANIFEST = json.loads(_members(GIC_BLOB)["manifest.json"])


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # a few items of each list: every block gets its share
            out += _paths(v, (*prefix, i))
    return out


STATE_PATHS = _paths(GIC_STATE)[1:]
MANIFEST_PATHS = _paths(GIC_MANIFEST)[1:]


def _replace(root: Any, path: tuple[object, ...], value: object, how: str) -> None:
    node = root
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    if how == "delete":
        del node[last]
    elif how == "add" and isinstance(node, dict):
        node["extra"] = value
    elif how == "add" and isinstance(node, list):
        node.append(value)
    elif how == "bump" and type(node[last]) is int:
        node[last] += value if type(value) is int else 1
    else:
        node[last] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 3).map(lambda k: k == 0),
            st.integers(0, 10**6),
            JSON_VALUES,
            st.sampled_from(["set", "delete", "add", "bump"]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_resigned_random_json_edits_give_only_snapshot_errors(edits: list[tuple[bool, int, object, str]]) -> None:
    """Random edits of state.json and manifest.json, re-signed so the checksums hold: the
    file is refused with SnapshotError, or restores into a GIC that works."""
    members = _members(GIC_BLOB)
    state = json.loads(members["state.json"])
    manifest = json.loads(members["manifest.json"])
    for in_manifest, n, value, how in edits:
        root, paths = (manifest, MANIFEST_PATHS) if in_manifest else (state, STATE_PATHS)
        try:
            _replace(root, paths[n % len(paths)], value, how)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the path
    members["state.json"] = json.dumps(state).encode()
    members["manifest.json"] = json.dumps(manifest).encode()
    _load_or_refuse(_pack(members, manifest))


# == whole machines ============================================================================


@pytest.fixture(scope="module")
def machine_blob() -> bytes:
    """A format 2 machine snapshot: the format 1 file of tests/data, restored and saved."""
    pytest.importorskip("unicorn")
    from pathlib import Path

    machine = snapshot.load_machine(Path(__file__).resolve().parent / "data" / "machine-format1.vgic",
                                    output=lambda b: None)  # fmt: skip
    return snapshot.machine_to_bytes(machine)


def _refused_machine(blob: bytes, *fragments: str) -> str:
    with pytest.raises(snapshot.SnapshotError) as info:
        snapshot.machine_from_bytes(blob, output=lambda b: None)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


MACHINE_CASES: list[tuple[str, Callable[[State], object], tuple[str, ...]]] = [
    ("slice-0", lambda s: s["config"].update(slice=0), ("state.json: config.slice", "[1, ")),
    ("smp-0", lambda s: s["config"].update(smp=0), ("state.json: config.smp",)),
    ("gic-num-cpus-0", lambda s: s["config"]["gic"].update(num_cpus=0), ("state.json: config.gic.num_cpus",)),
    ("gic-num-cpus-not-smp", lambda s: s["config"]["gic"].update(num_cpus=1), ("config.gic.num_cpus", "smp")),
    ("baser-types-1", lambda s: s["config"]["gic"]["its"][0].update(baser_types=[1]), ("config.gic.its[0]",)),
    ("memory-2^62", lambda s: s["config"].update(memory=1 << 62), ("state.json: config.memory", "more RAM")),
    ("memory-unaligned", lambda s: s["config"].update(memory=(64 << 20) + 1), ("config.memory", "multiple")),
    ("psci-conduit", lambda s: s["config"].update(psci_conduit="svc"), ("config.psci_conduit",)),
    ("cpu-count", lambda s: s["cpus"].pop(), ("state.json: cpus", "list of 2")),
    ("cpu-register-missing", lambda s: s["cpus"][0]["regs"].pop("X3"), ("cpus[0].regs.X3", "missing")),
    ("cpu-register-unknown", lambda s: s["cpus"][0]["regs"].update(X31=0), ("cpus[0].regs.X31",)),
    ("cpu-register-width", lambda s: s["cpus"][0]["regs"].update(X0=1 << 64), ("cpus[0].regs.X0", "64-bit")),
    ("cpu-q-register", lambda s: s["cpus"][0]["regs"].update(Q5=1 << 128), ("cpus[0].regs.Q5", "128-bit")),
    ("cpu-pstate-el3", lambda s: s["cpus"][1]["regs"].update(PSTATE=0x3C5 | 0xD), ("cpus[1].regs.PSTATE", "EL1h")),
    ("cpu-pstate-aarch32", lambda s: s["cpus"][1]["regs"].update(PSTATE=0x3D3), ("cpus[1].regs.PSTATE",)),
    ("cpu-power-state", lambda s: s["cpus"][0].update(state="sleeping"), ("cpus[0].state",)),
    ("cpu-replay-shape", lambda s: s["cpus"][0].update(replay=[[1]]), ("cpus[0].replay[0]",)),
    ("cpu-replay-long", lambda s: s["cpus"][0].update(replay=[[0, 0]] * 65), ("cpus[0].replay",)),
    ("timer-ctl-istatus", lambda s: s["cpus"][0]["timer"].update(virt_ctl=5), ("cpus[0].timer.virt_ctl",)),
    ("timer-cval-negative", lambda s: s["cpus"][0]["timer"].update(phys_cval=-1), ("cpus[0].timer.phys_cval",)),
    ("uart-imsc", lambda s: s["uart"]["regs"].update(IMSC=[1 << 11]), ("uart.regs.IMSC",)),
    ("uart-rx-not-hex", lambda s: s["uart"].update(rx="xyz"), ("uart.rx",)),
    ("uart-rx-without-ris", lambda s: s["uart"].update(rx="41"), ("uart.ris", "RXRIS")),
    ("uart-level", lambda s: s["uart"].update(level=True), ("uart.level",)),
    ("counter-negative", lambda s: s.update(counter=-5), ("state.json: counter",)),
    # the GIC's frames: 64 KiB aligned, apart, in the virt machine's GIC space (found by the
    # random edits below: a GICD base bumped by one reached Unicorn's mmio_map as UC_ERR_ARG)
    ("gicd-unaligned", lambda s: s["config"]["gic"].update(gicd_base=0x0800_0001),
     ("config.gic.gicd_base", "64 KiB aligned")),
    ("its-over-gicd", lambda s: s["config"]["gic"].update(its_bases=[0x0800_0000]),
     ("config.gic.its_bases[0]", "inside gicd_base")),
    ("gicr-over-uart", lambda s: s["config"]["gic"].update(gicr_base=0x08FF_0000),
     ("config.gic.gicr_base", "outside the virt machine's GIC space")),
    ("gicd-in-ram", lambda s: s["config"]["gic"].update(gicd_base=0x4000_0000),
     ("config.gic.gicd_base", "outside the virt machine's GIC space")),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "fragments"), [c[1:] for c in MACHINE_CASES], ids=[c[0] for c in MACHINE_CASES])
def test_bad_machine_states_are_refused_before_a_machine_is_built(
    machine_blob: bytes, edit: Callable[[State], object], fragments: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vgic.machine.virt import VirtMachine

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a machine was built for a refused snapshot")

    monkeypatch.setattr(VirtMachine, "__init__", boom)
    _refused_machine(_edit_state(machine_blob, edit), *fragments)


def test_a_machine_manifest_must_declare_the_machines_ram(machine_blob: bytes) -> None:
    members = _members(machine_blob)
    manifest = json.loads(members["manifest.json"])
    manifest["regions"] = [[0x4000_0000, 128 << 20]]  # the state says 64 MiB
    _refused_machine(_pack(members, manifest), "manifest.json: regions", "not the RAM")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), JSON_VALUES, st.sampled_from(["set", "delete", "add", "bump"])),
                      min_size=1, max_size=3))  # fmt: skip
def test_resigned_random_machine_edits_give_only_snapshot_errors(
    machine_blob: bytes, edits: list[tuple[int, object, str]]
) -> None:
    """The same for machine snapshots; an accepted one runs (to its timeout, or to an
    exit status: a guest crash is a status, not an exception)."""
    members = _members(machine_blob)
    state = json.loads(members["state.json"])
    paths = _paths(state)[1:]
    for n, value, how in edits:
        try:
            _replace(state, paths[n % len(paths)], value, how)
        except (KeyError, IndexError, TypeError):
            continue
    members["state.json"] = json.dumps(state).encode()
    try:
        machine = snapshot.machine_from_bytes(_pack(members), output=lambda b: None)
    except snapshot.SnapshotError:
        return
    machine.run(timeout=0.05)


def test_the_machine_file_restores_and_its_state_round_trips(machine_blob: bytes) -> None:
    machine = snapshot.machine_from_bytes(machine_blob, output=lambda b: None)
    again = snapshot.machine_to_bytes(machine)
    first = json.loads(_members(machine_blob)["state.json"])
    second = json.loads(_members(again)["state.json"])
    first.pop("counter"), second.pop("counter")  # the clock moved on
    assert first == second
