"""Fuzzing the files and command lines vgic reads: snapshots and ``vgic`` arguments.

    .venv/bin/python fuzz/run.py --target snapshot [--seconds S | --ops N] [--seed K]
    .venv/bin/python fuzz/run.py --target cli      [--seconds S | --ops N] [--seed K]

**Snapshots.** Seeds are the files in tests/data/ plus a GIC snapshot and a machine
snapshot made at start. Each case flips bytes of the archive, or edits one value of a
JSON member (a boundary integer, another type, a deleted key, deep nesting) and re-signs
the member so the checks behind the checksums are reached. The invariant: restoring
either succeeds or raises ``SnapshotError``; a restored machine then runs a slice without
a Python exception.

**Command lines.** Each case draws ``vgic`` arguments from the options' grammar with
hostile values (sizes with odd units, missing/directory/unwritable paths, non-UTF-8 bytes,
conflicting options) and calls the CLI in-process with a short ``--timeout``. The
invariant: it ends with one of the documented exit statuses, never another exception.

A violating input is saved in fuzz/crashes/ with its traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRASHES = HERE / "crashes"
STATUSES = {0, 1, 2, 3, 4, 5, 6, 130}  # vgic's documented exit statuses (docs/machine.md)


# == snapshots ==================================================================================


def _seeds() -> list[bytes]:
    from vgic import snapshot
    from vgic.driver import Allocator, ItsDriver
    from vgic.gic import Gic
    from vgic.its import commands as C
    from vgic.memory import GuestMemory
    from vgic.profiles import gic_config

    seeds = [p.read_bytes() for p in sorted((ROOT / "tests" / "data").glob("*.vgic"))]
    mem = GuestMemory()
    mem.add_ram(0x4000_0000, 4 << 20)
    gic = Gic(mem, gic_config("qemu", 2))
    d = ItsDriver(gic, Allocator(0x4000_0000, 4 << 20))
    d.setup_lpis(id_bits=14)
    d.setup_its()
    d.send(C.Mapc(0, 0, True), C.Mapc(1, 1, True))
    d.map_device(3, 2)
    d.send(C.Mapti(3, 0, 8192, 0), C.Mapti(3, 1, 8193, 1), C.Int(3, 0), C.Int(3, 1))
    buf = io.BytesIO()
    snapshot.save_gic(gic, buf)
    seeds.append(buf.getvalue())
    return seeds


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def _pack(members: dict[str, bytes]) -> bytes:
    manifest = json.loads(members["manifest.json"])
    if isinstance(manifest, dict) and isinstance(manifest.get("sha256"), dict):
        for name in manifest["sha256"]:
            if name in members:
                manifest["sha256"][name] = hashlib.sha256(members[name]).hexdigest()
        members = {**members, "manifest.json": json.dumps(manifest).encode()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return out.getvalue()


INTERESTING: list[object] = [0, 1, -1, 2, 7, 31, 32, 63, 64, 255, 256, 4095, 4096, 8191, 8192, 65535, 65536, 1 << 31, 1 << 32,
               1 << 52, 1 << 62, 1 << 64, True, False, None, "", "x", [], {}, 1.5, [[[[[[]]]]]]]  # fmt: skip


def _edit(value: object, rng: random.Random, depth: int = 0) -> object:
    """One random change somewhere inside a JSON value."""
    if isinstance(value, dict) and value and depth < 12:
        key = rng.choice(sorted(value))
        if rng.random() < 0.08:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _edit(value[key], rng, depth + 1)}
    if isinstance(value, list) and value and depth < 12:
        i = rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.05:
            return value[:i] + value[i + 1 :]
        if roll < 0.1:
            return [*value, value[i]]
        return [*value[:i], _edit(value[i], rng, depth + 1), *value[i + 1 :]]
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value ^ (1 << rng.randrange(64))
    return rng.choice(INTERESTING)


def snapshot_case(data: bytes, rng: random.Random) -> bytes:
    """A mutated snapshot: flipped bytes, or one JSON value edited and re-signed."""
    roll = rng.random()
    if roll < 0.3:
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if roll < 0.35:
        return data[: rng.randrange(len(data))]
    members = _members(data)
    name = rng.choice([n for n in members if n.endswith(".json")])
    try:
        doc = json.loads(members[name])
    except ValueError:
        return data
    members[name] = json.dumps(_edit(doc, rng)).encode()
    return _pack(members) if name != "manifest.json" or rng.random() < 0.5 else _pack_raw(members)


def _pack_raw(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return out.getvalue()


def check_snapshot(data: bytes) -> None:
    """Restoring either works or raises SnapshotError; a restored machine runs a slice."""
    from vgic import snapshot

    kind = b'"kind": "machine"' in data or b'"kind":"machine"' in data
    try:
        if kind:
            machine = snapshot.load_machine(io.BytesIO(data), output=lambda b: None)
            machine.run(timeout=0.2)
        else:
            gic = snapshot.load_gic(io.BytesIO(data))
            while gic.busy:
                gic.work(1 << 10)
    except snapshot.SnapshotError:
        pass


# == command lines ==============================================================================

SIZES = ["512M", "1G", "1T", "1024G", "infG", "nanM", "-1G", "0", "1X", "64K", "1.5G", "256", "4096M", "1G,maxmem=2G"]
BAD_TEXT = ["\udcff\udcfe", "a" * 5000, "", "console=ttyAMA0"]


# Files a command line may name, copied into the campaign's own directory before every
# case: a case may write over any of them (`asm -o`, `--report-to`), never over the tree.
INPUT_FILES = {"image.elf": ROOT / "guests" / "out" / "its_demo.elf",
               "format1.vgic": ROOT / "tests" / "data" / "gic-format1.vgic",
               "text.md": ROOT / "README.md"}  # fmt: skip


def _stage(tmp: Path) -> None:
    for name, source in INPUT_FILES.items():
        if (tmp / name).is_dir():
            shutil.rmtree(tmp / name)
        shutil.copyfile(source, tmp / name)


def _paths(tmp: Path) -> list[str]:
    return [str(tmp / "missing" / "f"), str(tmp), "/dev/full", str(tmp / "out.json"), str(tmp / "out.txt"),
            *(str(tmp / name) for name in INPUT_FILES), str(tmp / "\udcff.bin"), ""]  # fmt: skip


def cli_case(rng: random.Random, tmp: Path) -> list[str]:
    """A random ``vgic`` command line."""
    paths = _paths(tmp)
    sub = rng.choice(["run", "run", "run", "decode", "asm", "inspect", "demo", "--version", "bogus"])
    if sub in ("--version", "bogus", "demo"):
        return [sub] if sub != "demo" or rng.random() < 0.1 else ["--version"]
    argv = [sub]
    if sub == "run":
        options: list[Callable[[], list[str]]] = [
            lambda: [rng.choice(["-m", "--memory"]), rng.choice(SIZES)],
            lambda: [rng.choice(["-smp", "--smp"]), rng.choice(["1", "4", "0", "65", "2,sockets=2", "x", "4,cores=3"])],
            lambda: [rng.choice(["-append", "--append"]), rng.choice(BAD_TEXT)],
            lambda: ["--trace", rng.choice(paths)],
            lambda: ["--report-to", rng.choice(paths)],
            lambda: ["--report"],
            lambda: ["--decode"],
            lambda: ["--inspect"],
            lambda: ["--deterministic"],
            lambda: ["--profile", rng.choice(["qemu", "kvm", "gic-600", "strict", "nope"])],
            lambda: ["--its-errors", rng.choice(["stall", "continue", "maybe"])],
            lambda: ["--snapshot-on", rng.choice(["input", "PASS", "\udcff"]), rng.choice(paths)],
            lambda: ["--migrate-on", rng.choice(["input", "check ok"])],
            lambda: ["--restore", rng.choice(paths)],
            lambda: ["--dumpdtb", rng.choice(paths)],
            lambda: [rng.choice(["-dtb", "--dtb", "-initrd", "--initrd", "-bios", "--bios"]), rng.choice(paths)],
            lambda: ["-M", rng.choice(["virt", "virt,gic-version=3,its=on", "virt,gic-version=2", "pc"])],
            lambda: ["-cpu", rng.choice(["cortex-a57", "max"])],
            lambda: ["--nvme", rng.choice(paths)],
        ]
        for _ in range(rng.randint(0, 5)):
            argv += rng.choice(options)()
        if rng.random() < 0.8:
            argv.append(rng.choice(paths))
        argv += ["--timeout", rng.choice(["0.2", "0", "-1", "nan"])]
    elif sub == "decode":
        argv += rng.choice(
            [[rng.choice(paths)], ["--snapshot", rng.choice(paths), "--its", rng.choice(["0", "5", "-1"])]]
        )
    elif sub == "asm":
        argv += [rng.choice(paths), "-o", rng.choice([*paths, "-"])]
    else:
        argv += [rng.choice(paths), "--limit", rng.choice(["10", "0", "-5", "1e9"])]
    return argv


def check_cli(argv: list[str]) -> int:
    """The CLI ends with a documented exit status and never raises anything else."""
    from vgic import cli

    # Streams as a UTF-8 terminal has them: strict, so a path that is not text must be
    # printed with care; a binary buffer under stdout for `asm -o -`.
    raw = io.BytesIO()
    sink = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    stdin = sys.stdin
    try:
        sys.stdin = io.TextIOWrapper(io.BytesIO(b""))
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                status = cli.main(argv)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdin = stdin
    if status not in STATUSES:
        raise AssertionError(f"exit status {status} is not a documented one")
    text = raw.getvalue().decode("utf-8", "replace")
    if "Traceback" in text:
        raise AssertionError("a traceback was printed:\n" + text[-2000:])
    return status


# == the campaign ===============================================================================


def campaign(target: str, seconds: float | None, ops: int | None, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    seeds = _seeds() if target == "snapshot" else []
    t0 = time.monotonic()
    done = violations = 0
    statuses: dict[int, int] = {}
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        os.chdir(tmp)  # relative outputs (a snapshot named "PASS", a report) land here too
        while (ops is None or done < ops) and (seconds is None or time.monotonic() - t0 < seconds):
            if target == "snapshot":
                case: bytes | list[str] = snapshot_case(rng.choice(seeds), rng)
            else:
                _stage(tmp)
                case = cli_case(rng, tmp)
            try:
                if isinstance(case, bytes):
                    check_snapshot(case)
                else:
                    status = check_cli(case)
                    statuses[status] = statuses.get(status, 0) + 1
            except Exception:
                violations += 1
                name = hashlib.sha256(repr(case).encode(errors="surrogateescape")).hexdigest()[:16]
                body = case if isinstance(case, bytes) else json.dumps(case).encode(errors="surrogateescape")
                (CRASHES / f"{target}-{name}.bin").write_bytes(body)
                (CRASHES / f"{target}-{name}.txt").write_text(traceback.format_exc())
            done += 1
            if done % 50 == 0:
                rate = done / (time.monotonic() - t0)
                print(f"\r[{target}] cases {done:>8,}  {rate:6.1f}/s  violations {violations}", end="", file=sys.stderr)
        os.chdir(home)
    elapsed = time.monotonic() - t0
    print(file=sys.stderr)
    result: dict[str, object] = {
        "target": target,
        "cases": done,
        "violations": violations,
        "seconds": round(elapsed, 1),
    }
    if statuses:
        result["exit_statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    return result


if __name__ == "__main__":  # pragma: no cover - fuzz/run.py is the entry point
    os.environ.setdefault("VGIC_QUIET", "1")
    print(json.dumps(campaign(sys.argv[1], float(sys.argv[2]), None, 0)))
