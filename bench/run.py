"""vgic benchmarks: the model API, guests on vgic's machine and on QEMU, and whole boots.

    make bench               (builds the guests, then runs this)
    .venv/bin/python bench/run.py [--quick] [--no-qemu] [--only model|e2e|boot|linux] [--repeat N]

Every figure in the table comes from this one run. Model-API rows drive the Python
objects directly (what a VMM embedding vgic pays per operation); end-to-end rows are what
the guest measures with CNTVCT under ``vgic run`` and under QEMU TCG (the bench_msi and
bench_loop guests); boot rows are wall-clock times of whole runs, the median of
``--repeat`` (default 3): Debian's Linux to a busybox /init that powers off, on 4 CPUs and
on 1 (the kernel and busybox ``make third-party`` fetches), and Debian's U-Boot to its
prompt, ``version``, ``poweroff`` (tests/test_uboot.py's session), each under vgic's
default (timed) engine, its deterministic mode, and QEMU; Linux NVMe rows are Debian's
kernel reading an NVMe disk with 4 KiB direct I/O on 4 CPUs, timed inside the guest.
The last lines give the vgic/QEMU ratios (``n/a`` without QEMU or the guest).

The model's MSI rows and the end-to-end guest rows are measured twice: with the
pure-Python package and with the optional mypyc build of the hot path
(scripts/build_compiled.py, rows marked ``[mypyc]``; ``vgic run`` picks it up from
``PYTHONPATH``), which this run builds when it can (a C compiler and the Python headers).
``--compiled`` runs everything against that build.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ROOT / "build" / "compiled"  # scripts/build_compiled.py's output
sys.path.insert(0, str(COMPILED if "--compiled" in sys.argv else ROOT / "src"))

from vgic.compiled import is_compiled  # noqa: E402
from vgic.events import EventLog, Kind  # noqa: E402
from vgic.gic import Gic, GicConfig  # noqa: E402
from vgic.gicv3.redistributor import LPI_BASE, RedistributorConfig  # noqa: E402
from vgic.its import commands as C  # noqa: E402
from vgic.its.config import ItsConfig  # noqa: E402
from vgic.its.registers import ItsTyper  # noqa: E402
from vgic.memory import GuestMemory  # noqa: E402

GUESTS = ROOT / "guests" / "out"
RAM_BASE = 0x4000_0000
CPUS = 4
ID_BITS = 20  # LPI and EventID bits of the model under test: room for 1M distinct LPIs
HOT_KINDS = frozenset({Kind.TRANSLATION, Kind.LPI_PENDING, Kind.ACKNOWLEDGE, Kind.EOI, Kind.DEACTIVATE, Kind.COMMAND})
GITS_CWRITER = 0x88
CHUNKS = 10  # MSI loops are timed in chunks and the best chunk is reported


@dataclass
class Row:
    section: str
    what: str
    value: float | None  # the figure
    unit: str
    qemu: float | None = None  # QEMU's figure in the same unit, when there is one
    note: str = ""


# == the model API ========================================================================


class Model:
    """A 4-CPU GIC with one ITS, tables set up through the driver (MMIO and commands)."""

    def __init__(self, queue_pages: int = 16, keep_hot_events: bool = False) -> None:
        from vgic.driver import Allocator, ItsDriver

        self.mem = GuestMemory()
        self.mem.add_ram(RAM_BASE, 512 << 20)
        keep = frozenset(Kind) if keep_hot_events else frozenset(Kind) - HOT_KINDS
        self.log = EventLog(keep=keep)
        cfg = GicConfig(
            num_cpus=CPUS,
            its=(ItsConfig(typer=ItsTyper(idbits=ID_BITS)),),
            redistributor=RedistributorConfig(lpi_id_bits=ID_BITS),
        )
        self.gic = Gic(self.mem, cfg, self.log)
        self.its = self.gic.its[0]
        self.drv = ItsDriver(self.gic, Allocator(RAM_BASE, 512 << 20))
        self.drv.setup_lpis(id_bits=ID_BITS)
        for cpu in self.gic.cpus:
            cpu.write_sysreg("ICC_PMR_EL1", 0xFF)
        self.drv.setup_its(queue_pages=queue_pages, table_pages=16)
        self.queue = self.drv.queue_base
        self.queue_bytes = queue_pages * 4096
        self.wr = 0
        self.run([C.Mapc(icid, icid, True) for icid in range(CPUS)])

    def run(self, cmds: list[C.Command]) -> float:
        """Put commands in the ring (untimed), then time the CWRITER write that runs them."""
        total = 0.0
        per_batch = self.queue_bytes // 32 - 1
        for start in range(0, len(cmds), per_batch):
            batch = cmds[start : start + per_batch]
            data = b"".join(C.encode(c) for c in batch)
            end = self.wr + len(data)
            if end <= self.queue_bytes:
                self.mem.write_bytes(self.queue + self.wr, data)
            else:
                split = self.queue_bytes - self.wr
                self.mem.write_bytes(self.queue + self.wr, data[:split])
                self.mem.write_bytes(self.queue, data[split:])
            self.wr = end % self.queue_bytes
            t0 = time.perf_counter()
            self.its.write(GITS_CWRITER, 4, self.wr)
            while self.its.busy:  # past one access's worth of commands, as a polling driver would
                self.its.work(1 << 20)
            total += time.perf_counter() - t0
        if self.its.stalled or self.log.counts[Kind.COMMAND_ERROR]:
            raise RuntimeError(f"command error in the benchmark: {self.log.errors[-1:]}")
        return total

    def map_events(self, devices: int, per_device: int, first_device: int = 0) -> list[tuple[int, int, int]]:
        """MAPD + MAPTI for devices x per_device events; returns (device, event, cpu) triples."""
        bits = max(1, (per_device - 1).bit_length())
        cmds: list[C.Command] = []
        out = []
        n = 0
        for d in range(first_device, first_device + devices):
            itt = self.drv.heap.alloc(max(256, (1 << bits) * self.its.typer.itt_entry_size), 256)
            cmds.append(C.Mapd(d, bits - 1, itt, True))
            for e in range(per_device):
                icid = n % CPUS
                cmds.append(C.Mapti(d, e, LPI_BASE + n, icid))
                out.append((d, e, icid))
                n += 1
        self.run(cmds)
        return out

    def drain(self) -> None:
        for cpu in self.gic.cpus:
            while (intid := cpu.read_sysreg("ICC_IAR1_EL1")) != 1023:
                cpu.write_sysreg("ICC_EOIR1_EL1", intid)


def bench_msi_sizes(quick: bool) -> list[Row]:
    """translate + set pending + acknowledge + EOI per MSI, at three table sizes.

    The sizes are timed in interleaved chunks (10, 10k, 1M, 10, 10k, 1M, ...) and the best
    chunk of each is kept, so a busy host slows every size alike and the ratio stays fair."""
    samples = 30_000 if quick else 200_000
    sizes = [(10, 1), (100, 100), (1000, 1000)] if not quick else [(10, 1), (100, 100), (250, 400)]
    setups = []
    for devices, per_device in sizes:
        m = Model()
        events = m.map_events(devices, per_device)
        rng = random.Random(1)
        picks = [events[rng.randrange(len(events))] for _ in range(samples)]
        setups.append((m, picks))
    gc.collect()
    chunk = samples // CHUNKS
    best = [float("inf")] * len(sizes)  # other processes' noise only ever adds time
    for start in range(0, chunk * CHUNKS, chunk):
        for k, (m, picks) in enumerate(setups):
            msi, cpus = m.its.translate, m.gic.cpus
            ok = 0
            t0 = time.perf_counter()
            for d, e, c in picks[start : start + chunk]:
                msi(d, e)
                cpu = cpus[c]
                intid = cpu.read_sysreg("ICC_IAR1_EL1")
                cpu.write_sysreg("ICC_EOIR1_EL1", intid)
                ok += intid != 1023
            best[k] = min(best[k], time.perf_counter() - t0)
            if ok != chunk:
                raise RuntimeError(f"{chunk - ok} MSIs were not delivered")
    rows = []
    for (devices, per_device), dt in zip(sizes, best, strict=True):
        ns = dt / chunk * 1e9
        rows.append(Row("model", f"MSI translate+pend+ack+EOI, {devices * per_device:,} events / {devices} devices",
                        ns, "ns/MSI", note=f"{1e9 / ns:,.0f} MSI/s, best of {CHUNKS} chunks"))  # fmt: skip
    rows.append(Row("model", "O(1) check: ns/MSI largest / smallest table", best[-1] / best[0], "x"))
    return rows


def build_compiled() -> str | None:
    """Build the mypyc package into COMPILED when out of date (scripts/build_compiled.py);
    None when it is there, else why it could not be built."""
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_compiled.py")], capture_output=True, text=True
    )
    return None if build.returncode == 0 else build.stderr.strip()[-200:] or "not built"


def bench_compiled(quick: bool) -> list[Row]:
    """The MSI rows under the mypyc build, in a child process (built first if need be)."""
    why = build_compiled()
    if why is not None:
        return [Row("model", "MSI rows, mypyc build", None, "", note=why)]
    child = subprocess.run([sys.executable, __file__, "--compiled", "--hot-rows", *(["--quick"] if quick else [])],
                           capture_output=True, text=True)  # fmt: skip
    if child.returncode != 0:
        raise RuntimeError(f"the compiled bench failed:\n{child.stderr[-2000:]}")
    rows = [Row(**r) for r in json.loads(child.stdout)]
    return [dataclasses.replace(r, what=f"[mypyc] {r.what}") for r in rows if not r.what.startswith("O(1)")]


def bench_translate_only(quick: bool) -> list[Row]:
    """Its.translate alone: DTE, ITE and CTE lookups and the LPI made pending on its redistributor.

    Every MSI of a chunk hits a different LPI (so none coalesces with a pending one); the
    LPIs are acknowledged between chunks, outside the timing. Best of the chunks."""
    devices, per_device = (100, 100) if quick else (1000, 50)
    m = Model()
    events = m.map_events(devices, per_device)
    random.Random(2).shuffle(events)
    msi = m.its.translate
    best = float("inf")
    for _ in range(CHUNKS):
        gc.collect()
        t0 = time.perf_counter()
        ok = sum(msi(d, e) for d, e, _ in events)
        best = min(best, time.perf_counter() - t0)
        if ok != len(events):
            raise RuntimeError(f"{len(events) - ok} MSIs were not translated")
        m.drain()
    ns = best / len(events) * 1e9
    return [Row("model", f"MSI translation only (Its.translate -> LPI pending), {len(events):,} events", ns, "ns/MSI",
                note=f"{1e9 / ns:,.0f} MSI/s, each to a distinct LPI, best of {CHUNKS} passes")]  # fmt: skip


def bench_commands(quick: bool) -> list[Row]:
    rows = []
    n = 2048 if quick else 8192
    m = Model(queue_pages=16)
    dev, bits = 7, 16
    itt = m.drv.heap.alloc((1 << bits) * m.its.typer.itt_entry_size, 256)
    m.run([C.Mapd(dev, bits - 1, itt, True)])
    lpi = LPI_BASE + 100_000

    mixes: dict[str, Callable[[int], list[C.Command]]] = {
        "MAPTI": lambda base: [C.Mapti(dev, base + i, lpi + base + i, i % CPUS) for i in range(n)],
        "INT": lambda base: [C.Int(dev, i) for i in range(n)],
        "INV": lambda base: [C.Inv(dev, i) for i in range(n)],
        "SYNC": lambda base: [C.Sync(i % CPUS) for i in range(n)],
    }
    m.run(mixes["MAPTI"](0))  # events 0..n-1 mapped for INT and INV
    base = n
    for name, make in mixes.items():
        cmds = make(base)
        base += n
        m.drain()
        dt = m.run(cmds)
        rows.append(
            Row("model", f"commands: {name} x{n} via CWRITER", n / dt, "cmd/s", note=f"{dt / n * 1e6:.2f} us/cmd")
        )
    m.drain()
    mix: list[C.Command] = []
    for i in range(n // 4):
        e = base + i
        mix += [C.Mapti(dev, e, lpi + e, i % CPUS), C.Int(dev, e), C.Inv(dev, e), C.Sync(i % CPUS)]
    dt = m.run(mix)
    rows.append(Row("model", "commands: MAPTI/INT/INV/SYNC mix", len(mix) / dt, "cmd/s",
                    note=f"{dt / len(mix) * 1e6:.2f} us/cmd"))  # fmt: skip
    return rows


def bench_collection_wide(quick: bool) -> list[Row]:
    """INVALL and MOVALL with few vs many LPIs on the collection (many elsewhere both times)."""
    rows = []
    many = 10_000 if quick else 50_000
    few = 10
    reps = 50 if quick else 200
    m = Model()
    rds = m.gic.redistributors
    # cpu0: few pending; cpu1: many pending. Collections 0..3 are on cpus 0..3.
    for i in range(few):
        rds[0].set_lpi_pending(LPI_BASE + i)
    for i in range(many):
        rds[1].set_lpi_pending(LPI_BASE + 1000 + i)
    for icid in (0, 1):  # few, many
        count = len(rds[icid].pending_lpis)
        dt = m.run([C.Invall(icid) for _ in range(reps)])
        rows.append(Row("model", f"INVALL, {count:,} LPIs on the collection ({few + many:,} pending in all)",
                        dt / reps * 1e6, "us/cmd"))  # fmt: skip
    for src, dst in ((0, 2), (1, 3)):  # few, many
        count = len(rds[src].pending_lpis)
        # there and back: every command moves `count` LPIs
        dt = m.run([C.Movall(src, dst) if k % 2 == 0 else C.Movall(dst, src) for k in range(reps // 10 * 2)])
        rows.append(Row("model", f"MOVALL, {count:,} LPIs on the collection ({few + many:,} pending in all)",
                        dt / (reps // 10 * 2) * 1e6, "us/cmd"))  # fmt: skip
    return rows


def bench_memory(quick: bool) -> list[Row]:
    devices, per = (20, 1000) if quick else (100, 1000)
    m = Model()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    events = m.map_events(devices, per)
    for d, e, _ in events:  # touch every event: translation caches fully populated
        m.its.translate(d, e)
    m.drain()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del events
    return [Row("model", f"host bytes per mapped event ({devices * per:,} mapped, tracemalloc)",
                (after - before) / (devices * per), "B/event", note="guest tables are in guest RAM, not counted")]  # fmt: skip


# == end to end ============================================================================

BENCH_LINE = re.compile(r"\[impl\] bench (\w+) idbits (\d+) iters (\d+) ticks (\d+) freq (\d+)")
QEMU_CMD = ["-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-m", "512M", "-nographic", "-net", "none"]


def parse(out: str) -> dict[tuple[str, int], float]:
    """ns per operation by (name, idbits)."""
    res = {}
    for m in BENCH_LINE.finditer(out):
        name, idbits, iters, ticks, freq = m.group(1), *map(int, m.groups()[1:])
        res[(name, idbits)] = ticks / freq / iters * 1e9
    return res


VGIC = [sys.executable, "-m", "vgic.cli"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def run_guest(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env or ENV)
    out = p.stdout.replace("\r", "")
    if "PASS" not in out.splitlines()[-1:] and not out.rstrip().endswith("PASS"):
        raise RuntimeError(f"{' '.join(cmd)} did not PASS:\n{out[-2000:]}\n{p.stderr[-2000:]}")
    return out, time.perf_counter() - t0


def bench_e2e(use_qemu: bool) -> tuple[list[Row], float | None]:
    qemu = shutil.which("qemu-system-aarch64") if use_qemu else None
    ours: dict[tuple[str, int], float] = {}
    theirs: dict[tuple[str, int], float] = {}
    compiled: dict[tuple[str, int], float] = {}
    built = build_compiled() is None
    compiled_env = {**ENV, "PYTHONPATH": os.pathsep.join([str(COMPILED), ENV["PYTHONPATH"]])}
    for guest in ("bench_msi_14", "bench_msi"):
        elf = GUESTS / f"{guest}.elf"
        if not elf.exists():
            raise SystemExit(f"no {elf}: run make -C guests")
        out, _ = run_guest([*VGIC, "run", "--timeout", "600", str(elf)], 660)
        ours.update(parse(out))
        if built:  # the same guest with the model's mypyc build (vgic run uses it from PYTHONPATH)
            out, _ = run_guest([*VGIC, "run", "--timeout", "600", str(elf)], 660, env=compiled_env)
            compiled.update(parse(out))
        if qemu:
            out, _ = run_guest([qemu, *QEMU_CMD, "-kernel", str(elf)], 300)
            theirs.update(parse(out))
    labels = {
        "msi": "guest: MSI (TRANSLATER store, IAR1 poll, EOIR1)",
        "int": "guest: INT command + IAR1 + EOIR1",
        "its_read": "guest: ITS MMIO read (GITS_CTLR)",
        "icc_read": "guest: ICC sysreg read (ICC_RPR_EL1)",
    }
    rows = []
    for idbits in (14, 16):
        for name, label in labels.items():
            rows.append(Row("e2e", f"{label}, {idbits} ID bits", ours.get((name, idbits)), "ns",
                            theirs.get((name, idbits))))  # fmt: skip
    for idbits in (14, 16):
        for name, label in labels.items():
            if (name, idbits) in compiled:
                rows.append(Row("e2e", f"[mypyc] {label}, {idbits} ID bits", compiled[(name, idbits)], "ns",
                                theirs.get((name, idbits))))  # fmt: skip
    ratio = None
    if ("msi", 16) in theirs and ("msi", 16) in ours:
        ratio = ours[("msi", 16)] / theirs[("msi", 16)]
    return rows, ratio


# == Linux + NVMe ==================================================================


NVME_READS_PER_CPU = 2048
NVME_DISK_BYTES = 16 << 20


def _linux_guest() -> Any:
    """tests/linux_guest.py, loaded by path (the initramfs builder, the workload, its parser)."""
    import importlib.util

    if "linux_guest" not in sys.modules:
        spec = importlib.util.spec_from_file_location("linux_guest", ROOT / "tests" / "linux_guest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["linux_guest"] = module  # before exec: its dataclasses look themselves up
        spec.loader.exec_module(module)
    return sys.modules["linux_guest"]


def run_linux_nvme(lg: Any, initrd: Path, disk: Path, vgic: bool) -> tuple[Any, float]:
    """One boot of the NVMe workload on vgic or QEMU: (parsed run, host seconds for the whole run)."""
    append = "console=ttyAMA0 panic=-1"
    drive = ["-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "nvme,drive=d0,serial=vgic0"]
    cmd = lg.vgic_command(initrd, append, CPUS, timeout=1800, extra=["--nvme", str(disk)]) if vgic else None
    cmd = cmd or lg.qemu_command(initrd, append, CPUS, extra=drive)
    env, timeout = (lg.vgic_env(), 1900) if vgic else (None, 300)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                       timeout=timeout, env=env)  # fmt: skip
    seconds = time.perf_counter() - t0
    run = lg.parse_nvme(p.stdout)
    reads = NVME_READS_PER_CPU * CPUS
    if p.returncode != 0 or not run.done or run.total_reads != reads or any(r[1] for r in run.reads):
        raise RuntimeError(f"{cmd[0]}: the NVMe workload failed (status {p.returncode}, {run.total_reads}/{reads} "
                           f"reads):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")  # fmt: skip
    return run, seconds


def bench_linux_nvme(use_qemu: bool) -> list[Row]:
    """Debian's kernel on 4 CPUs reading an NVMe disk: 2048 4 KiB direct reads pinned to each
    CPU in turn (tests/linux_guest.py's workload), timed inside the guest (the ns clock of
    /proc/timer_list around each ``taskset -c N dd``, so the time includes starting taskset
    and dd but not the boot). MSIs are the nvme lines of /proc/interrupts over the reads."""
    lg = _linux_guest()
    labels = (f"guest: Linux NVMe 4 KiB direct reads, {NVME_READS_PER_CPU}/CPU on {CPUS} CPUs",
              "guest: Linux NVMe MSIs during those reads", "guest: Linux NVMe whole run, boot to power-off (host)")  # fmt: skip
    missing = lg.missing_third_party(lg.KERNEL, lg.BUSYBOX)
    has_nvme = lg.vgic_run_has("--nvme")
    if missing or (not (use_qemu and lg.QEMU) and not has_nvme):
        why = missing or "no QEMU and vgic run has no --nvme"
        return [
            Row("linux", label, None, unit, note=why)
            for label, unit in zip(labels, ("read/s", "MSI/s", "s"), strict=True)
        ]
    import tempfile

    figures: dict[bool, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        initrd, disk = Path(tmp) / "initrd.cpio", Path(tmp) / "disk.img"
        initrd.write_bytes(lg.busybox_initramfs(lg.nvme_script(reads_per_cpu=NVME_READS_PER_CPU, checks=False)))
        image = random.Random(1).randbytes(NVME_DISK_BYTES)
        for on_vgic in (False, True):
            if (on_vgic and not has_nvme) or (not on_vgic and not (use_qemu and lg.QEMU)):
                continue
            print(f"[bench] Linux NVMe on {'vgic' if on_vgic else 'QEMU'} ...", file=sys.stderr, flush=True)
            disk.write_bytes(image)
            run, seconds = run_linux_nvme(lg, initrd, disk, on_vgic)
            figures[on_vgic] = (run.total_reads / run.read_seconds, run.read_msis() / run.read_seconds, seconds)
    ours, theirs = figures.get(True), figures.get(False)
    note = "" if has_nvme else "vgic: n/a, vgic run has no --nvme yet"
    return [Row("linux", label, ours[k] if ours else None, unit, theirs[k] if theirs else None, note)
            for k, (label, unit) in enumerate(zip(labels, ("read/s", "MSI/s", "s"), strict=True))]  # fmt: skip


LOOP_LINE = re.compile(r"\[impl\] bench loop (\w+) iters (\d+) insns (\d+) ticks (\d+) freq (\d+)")


def parse_loop(out: str) -> dict[str, float]:
    """MIPS by loop name, from the guest's own CNTVCT timing."""
    res = {}
    for m in LOOP_LINE.finditer(out):
        iters, insns, ticks, freq = map(int, m.groups()[1:])
        res[m.group(1)] = iters * insns / (ticks / freq) / 1e6
    return res


def bench_loop(use_qemu: bool, repeat: int) -> tuple[list[Row], float | None]:
    """Guest code alone: MIPS of the bench_loop guest's two loops, median of ``repeat`` runs."""
    elf = GUESTS / "bench_loop.elf"
    if not elf.exists():
        raise SystemExit(f"no {elf}: run make -C guests")
    qemu = shutil.which("qemu-system-aarch64") if use_qemu else None

    def median_mips(cmd: list[str], runs: int) -> dict[str, float]:
        samples = [parse_loop(run_guest(cmd, 660)[0]) for _ in range(runs)]
        return {name: statistics.median(s[name] for s in samples) for name in samples[0]}

    ours = median_mips([*VGIC, "run", "--timeout", "600", str(elf)], repeat)
    counted = median_mips([*VGIC, "run", "--deterministic", "--timeout", "600", str(elf)], 1)
    theirs = median_mips([qemu, *QEMU_CMD, "-kernel", str(elf)], repeat) if qemu else {}
    labels = {
        "alu": "guest code: ALU loop (4-instruction block)",
        "mem": "guest code: load/store loop (7 instructions)",
    }
    rows = []
    for name, label in labels.items():
        rows.append(Row("mips", label, ours.get(name), "MIPS", theirs.get(name),
                        note=f"median of {repeat}; here vgic/QEMU compares speeds: below 1 is slower"))  # fmt: skip
        rows.append(Row("mips", label + ", --deterministic", counted.get(name), "MIPS", theirs.get(name)))
    ratio = theirs["alu"] / ours["alu"] if "alu" in theirs and "alu" in ours else None
    return rows, ratio


def _load_test_module(name: str) -> ModuleType:
    """tests/NAME.py as a module (the boots reuse the tests' initramfs and U-Boot session)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))  # for the helpers they import (linux_guest)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(run: Callable[[], bool], repeat: int) -> float | None:
    """Median wall time of ``repeat`` runs, or None when a run failed."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if not run():
            return None
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_boot(use_qemu: bool, repeat: int) -> tuple[list[Row], dict[str, float | None]]:
    """Wall time of whole boots under vgic (timed and deterministic engines) and QEMU."""
    qemu = shutil.which("qemu-system-aarch64") if use_qemu else None
    rows: list[Row] = []
    ratios: dict[str, float | None] = {"linux-4": None, "linux-1": None, "u-boot": None}
    tp = _load_test_module("test_third_party")
    if tp.KERNEL.exists():
        initrd = Path(tempfile.mkdtemp()) / "initrd.cpio"
        initrd.write_bytes(_linux_guest().busybox_initramfs(tp.INIT_SCRIPT))
        for smp in (4, 1):
            common = ["--smp", str(smp), "--append", tp.APPEND, "--initrd", str(initrd)]

            def linux(cmd: list[str]) -> Callable[[], bool]:
                def run() -> bool:
                    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=900, env=ENV)
                    return p.returncode == 0 and tp.INIT_MESSAGE.encode() in p.stdout

                return run

            ours = _timed(linux([*VGIC, "run", *common, "--timeout", "600", str(tp.KERNEL)]), repeat)
            counted = _timed(linux([*VGIC, "run", "--deterministic", *common, "--timeout", "600", str(tp.KERNEL)]), 1)
            theirs = None
            if qemu:
                theirs = _timed(linux([qemu, *QEMU_CMD, "-no-reboot", *common, "-kernel", str(tp.KERNEL)]), repeat)
            what = f"boot: Linux to /init and power-off, {smp} CPU{'s' if smp > 1 else ''}"
            rows.append(Row("boot", what, ours, "s", theirs, note=f"median of {repeat}"))
            rows.append(Row("boot", what + ", --deterministic", counted, "s", theirs, note="one run"))
            ratios[f"linux-{smp}"] = ours / theirs if ours and theirs else None
    else:
        print(f"[bench] no {tp.KERNEL}: `make third-party` fetches it; Linux boots skipped", file=sys.stderr)
    ub = _load_test_module("test_uboot")
    if ub.UBOOT.exists():

        def uboot(cmd: list[str]) -> Callable[[], bool]:
            def run() -> bool:
                _, status, _ = ub._session(cmd, boot_timeout=120)
                return bool(status == 0)

            return run

        vgic_cmd = [*VGIC, "run", "--bios", str(ub.UBOOT), "--timeout", "300"]
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = ENV["PYTHONPATH"]  # the session's child inherits it
        try:
            ours = _timed(uboot(vgic_cmd), repeat)
            counted = _timed(uboot([*vgic_cmd, "--deterministic"]), 1)
            theirs = _timed(uboot([qemu, *QEMU_CMD, "-bios", str(ub.UBOOT)]), repeat) if qemu else None
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = saved
        what = "boot: U-Boot to its prompt, version, poweroff"
        rows.append(Row("boot", what, ours, "s", theirs, note=f"median of {repeat}"))
        rows.append(Row("boot", what + ", --deterministic", counted, "s", theirs, note="one run"))
        ratios["u-boot"] = ours / theirs if ours and theirs else None
    else:
        print(f"[bench] no {ub.UBOOT} (Debian's u-boot-qemu); U-Boot skipped", file=sys.stderr)
    return rows, ratios


# == the table ===========================================================================


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def print_table(rows: list[Row]) -> None:
    w = max(len(r.what) for r in rows)
    head = f"{'benchmark':<{w}}  {'vgic':>12}  {'QEMU 7.2':>12}  {'vgic/QEMU':>9}  unit"
    print(head)
    print("-" * (len(head) + 12))
    section = None
    for r in rows:
        if section is not None and r.section != section:
            print()
        section = r.section
        ratio = f"{r.value / r.qemu:.2f}" if r.value is not None and r.qemu else "-"
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.what:<{w}}  {fmt(r.value):>12}  {fmt(r.qemu):>12}  {ratio:>9}  {r.unit}{note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer samples")
    ap.add_argument("--no-qemu", action="store_true", help="skip QEMU even when installed")
    ap.add_argument("--only", choices=("model", "e2e", "boot", "linux"), help="run one part")
    ap.add_argument("--repeat", type=int, help="runs per boot timing, the median is shown (default 3, --quick 1)")
    ap.add_argument("--compiled", action="store_true", help="use the mypyc build (scripts/build_compiled.py)")
    ap.add_argument("--hot-rows", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compiled and not is_compiled():
        print("bench: no mypyc build: run scripts/build_compiled.py", file=sys.stderr)
        return 1
    repeat = args.repeat or (1 if args.quick else 3)
    rows: list[Row] = []
    ratio = None
    mips_ratio = None
    boot_ratios: dict[str, float | None] = {}
    t0 = time.perf_counter()
    if args.hot_rows:  # the child of bench_compiled: the MSI rows, as JSON
        rows = bench_translate_only(args.quick) + bench_msi_sizes(args.quick)
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return 0
    if args.only in (None, "model"):
        for part in (bench_translate_only, bench_msi_sizes, bench_commands, bench_collection_wide, bench_memory):
            print(f"[bench] {part.__name__} ...", file=sys.stderr, flush=True)
            rows += part(args.quick)
        if not args.compiled:
            print("[bench] the MSI rows again, mypyc build ...", file=sys.stderr, flush=True)
            rows += bench_compiled(args.quick)
    if args.only in (None, "e2e"):
        print("[bench] end to end (vgic run, QEMU) ...", file=sys.stderr, flush=True)
        e2e, ratio = bench_e2e(not args.no_qemu)
        rows += e2e
        qemu_msi = next((r.qemu for r in e2e if r.what.startswith("guest: MSI") and "16 ID" in r.what), None)
        model_msi = next((r.value for r in rows if r.what.startswith("MSI translate") and "1,000,000" in r.what), None)
        if model_msi is None:
            model_msi = next((r.value for r in rows if r.what.startswith("MSI translate")), None)
        translate = next((r.value for r in rows if r.what.startswith("MSI translation only")), None)
        if qemu_msi and translate:
            rows.append(Row("vs", "QEMU guest ns/MSI (16 ID bits) / vgic model-API ns/translation", qemu_msi / translate,
                            "x faster", note="target >= 10"))  # fmt: skip
        if qemu_msi and model_msi:
            rows.append(Row("vs", "QEMU guest ns/MSI (16 ID bits) / vgic model-API ns/(MSI+ack+EOI)",
                            qemu_msi / model_msi, "x faster"))  # fmt: skip
        print("[bench] guest code (bench_loop) ...", file=sys.stderr, flush=True)
        loop_rows, mips_ratio = bench_loop(not args.no_qemu, repeat)
        rows += loop_rows
    if args.only in (None, "boot"):
        print(f"[bench] boots (median of {repeat}) ...", file=sys.stderr, flush=True)
        boot_rows, boot_ratios = bench_boot(not args.no_qemu, repeat)
        rows += boot_rows
    if args.only in (None, "linux"):
        rows += bench_linux_nvme(not args.no_qemu)
    print_table(rows)

    def show(r: float | None) -> str:
        return "n/a" if r is None else f"{r:.2f}"

    print(f"\n(all figures from this run, {time.perf_counter() - t0:.0f} s)")
    if args.only in (None, "boot"):
        print(f"boot vgic/qemu ratio, Linux 4 CPUs: {show(boot_ratios.get('linux-4'))} (target <= 4)")
        print(f"boot vgic/qemu ratio, Linux 1 CPU: {show(boot_ratios.get('linux-1'))} (target <= 6)")
        print(f"boot vgic/qemu ratio, U-Boot: {show(boot_ratios.get('u-boot'))}")
    if args.only in (None, "e2e"):
        print(f"guest code (ALU loop) qemu/vgic MIPS ratio: {show(mips_ratio)} (target <= 2)")
        print(f"end-to-end vgic/qemu ratio: {show(ratio)}")
    reads = next((r for r in rows if r.section == "linux" and r.unit == "read/s"), None)
    if reads is not None:
        slowdown = f"{reads.qemu / reads.value:.2f}" if reads.value and reads.qemu else "n/a"
        print(f"linux nvme reads/s qemu/vgic ratio (vgic's slowdown): {slowdown} (target <= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
