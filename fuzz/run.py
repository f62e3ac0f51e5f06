"""Run a fuzzing campaign against the GIC and ITS models, with a progress display.

    .venv/bin/python fuzz/run.py [--ops 10000000] [--workers N] [--seconds S] [--engine E]

N worker processes run in parallel, each with its own working corpus under build/fuzz/
seeded from fuzz/corpus/. ``--engine atheris``: every worker is a coverage-guided
libFuzzer worker (fuzz/fuzz_gic.py; coverage instrumentation makes it ~5x slower);
``python``: every worker is the pure-Python mutator (fuzz/mutator.py); ``mixed`` (the
default with atheris installed): worker 0 is atheris, the others the Python mutator. One status line shows operations,
ops/s, inputs, corpus size and violations. Violating inputs land in fuzz/crashes/ and
tests/fuzz_regressions/ (libFuzzer timeouts and crashes too). Exit status 1 if any
violation was found. ``--make-seeds`` regenerates the small seed corpus in fuzz/corpus/.
``--target snapshot|cli`` fuzzes the files and command lines vgic reads instead
(fuzz/inputs.py); ``--target all`` shares the time between the three.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from crashes import CRASHES, REGRESSIONS, save_violation  # noqa: E402
from mutator import Campaign, load_corpus  # noqa: E402

WORK = ROOT / "build" / "fuzz"
SEEDS = HERE / "corpus"


def line(ops: int, rate: float, inputs: int, corpus: int, violations: int, elapsed: float, extra: str = "") -> str:
    m, s = divmod(int(elapsed), 60)
    return (f"[{m:3d}:{s:02d}] ops {ops:>12,}  {rate:>8,.0f} ops/s  inputs {inputs:>9,}  corpus {corpus:>6,}  "
            f"violations {violations}{extra}")  # fmt: skip


def run_atheris(args: argparse.Namespace) -> dict[str, object]:
    WORK.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(parents=True, exist_ok=True)
    per_worker = args.ops  # workers run until the total reaches --ops; the parent stops them
    procs: dict[int, subprocess.Popen[bytes]] = {}
    done_ops: dict[int, int] = {}  # ops of finished runs of each worker slot
    last: dict[int, dict[str, float]] = {}

    def start(i: int) -> None:
        corpus = WORK / f"corpus-{i}"
        corpus.mkdir(exist_ok=True)
        stats = WORK / f"stats-{i}.json"
        stats.unlink(missing_ok=True)
        remaining = per_worker - done_ops.get(i, 0)
        env = dict(os.environ, VGIC_FUZZ_STATS=str(stats), VGIC_FUZZ_MAX_OPS=str(max(1, remaining)))
        if args.engine == "atheris" or (args.engine == "mixed" and i == 0):
            cmd = [sys.executable, str(HERE / "fuzz_gic.py"), str(corpus), str(SEEDS), "-max_len=4096",
                   "-len_control=0", f"-timeout={args.timeout}", "-rss_limit_mb=4096", f"-seed={args.seed + i + 1}",
                   f"-artifact_prefix={CRASHES}/", "-print_final_stats=1"]  # fmt: skip
        else:
            cmd = [sys.executable, str(HERE / "run.py"), "--worker", str(corpus), "--seed", str(args.seed + i + 1),
                   "--seconds", str(args.seconds)]  # fmt: skip
        log = open(WORK / f"worker-{i}.log", "ab")  # noqa: SIM115 - owned by the child
        procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    for i in range(args.workers):
        start(i)
    t0 = time.monotonic()
    known_artifacts = {p.name for p in CRASHES.iterdir()}
    violations = 0
    try:
        while procs:
            time.sleep(1.0)
            for i, p in list(procs.items()):
                f = WORK / f"stats-{i}.json"
                with contextlib.suppress(OSError, ValueError):  # a worker not started yet
                    last[i] = json.loads(f.read_text())
                if p.poll() is not None:
                    del procs[i]
                    done_ops[i] = done_ops.get(i, 0) + int(last.get(i, {}).get("ops", 0))
                    violations += int(last.get(i, {}).get("violations", 0))
                    last.pop(i, None)
                    if p.returncode != 0:  # libFuzzer stopped on a crash/timeout/OOM: keep it and go on
                        for art in CRASHES.iterdir():
                            if art.name not in known_artifacts and not art.name.endswith((".bin", ".txt")):
                                shutil.copy(art, REGRESSIONS / f"{art.name}.bin")
                                violations += 1
                        known_artifacts = {q.name for q in CRASHES.iterdir()}
                    total = sum(done_ops.values()) + sum(int(s.get("ops", 0)) for s in last.values())
                    if total < args.ops and time.monotonic() - t0 < args.seconds:
                        start(i)
            ops = sum(done_ops.values()) + sum(int(s.get("ops", 0)) for s in last.values())
            inputs = sum(int(s.get("inputs", 0)) for s in last.values())
            viol = violations + sum(int(s.get("violations", 0)) for s in last.values())
            corpus = sum(len(os.listdir(WORK / f"corpus-{i}")) for i in range(args.workers))
            elapsed = time.monotonic() - t0
            status = line(ops, ops / max(elapsed, 1e-9), inputs, corpus, viol, elapsed, f"  workers {len(procs)}")
            print("\r" + status if sys.stdout.isatty() else status, end="" if sys.stdout.isatty() else "\n", flush=True)
            if elapsed > args.seconds or ops >= args.ops:
                for p in procs.values():
                    p.terminate()
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
    print()
    elapsed = time.monotonic() - t0
    ops = sum(done_ops.values()) + sum(int(s.get("ops", 0)) for s in last.values())
    viol = violations + sum(int(s.get("violations", 0)) for s in last.values())
    return {"ops": ops, "violations": viol, "seconds": elapsed, "ops_per_s": ops / elapsed}


def run_worker(args: argparse.Namespace) -> int:
    """One Python-mutator worker under run_atheris's supervision (stats in VGIC_FUZZ_STATS)."""
    corpus_dir = Path(args.worker)
    stats_file = os.environ.get("VGIC_FUZZ_STATS")
    max_ops = int(os.environ.get("VGIC_FUZZ_MAX_OPS", str(args.ops)))
    c = Campaign(seed=args.seed, corpus=load_corpus(SEEDS, corpus_dir))
    t0 = time.monotonic()
    state = {"last": 0.0, "saved": len(c.corpus)}

    def progress(camp: Campaign, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - state["last"] < 1.0:
            return
        state["last"] = now
        for data in camp.corpus[state["saved"] :]:
            (corpus_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
        state["saved"] = len(camp.corpus)
        if stats_file:
            Path(stats_file + ".tmp").write_text(json.dumps({
                "ops": camp.stats.ops, "inputs": camp.inputs, "violations": len(camp.violations),
                "commands": camp.stats.commands, "msis": camp.stats.msis, "delivered": camp.stats.delivered,
                "acks": camp.stats.acks, "features": len(camp.stats.features), "elapsed": now - t0,
                "pid": os.getpid()}))  # fmt: skip
            os.replace(stats_file + ".tmp", stats_file)

    c.run(max_ops, args.seconds, on_violation=save_violation, progress=progress)
    progress(c, final=True)
    return 0


def run_fallback(args: argparse.Namespace) -> dict[str, object]:
    c = Campaign(seed=args.seed, corpus=load_corpus(SEEDS))
    t0 = time.monotonic()
    state = {"last": 0.0}

    def progress(camp: Campaign) -> None:
        now = time.monotonic()
        if now - state["last"] >= 1.0:
            state["last"] = now
            el = now - t0
            print(line(camp.stats.ops, camp.stats.ops / el, camp.inputs, len(camp.corpus), len(camp.violations), el),
                  flush=True)  # fmt: skip

    c.run(args.ops, args.seconds, on_violation=save_violation, progress=progress)
    elapsed = time.monotonic() - t0
    return {"engine": "python-mutator", "ops": c.stats.ops, "violations": len(c.violations), "seconds": elapsed,
            "ops_per_s": c.stats.ops / elapsed}  # fmt: skip


def make_seeds() -> None:
    """A small seed corpus: valid bring-ups in both modes, with short random tails."""
    rng = random.Random(2024)
    SEEDS.mkdir(exist_ok=True)
    n = 0
    for mode in (0x00, 0x02, 0x01, 0x03):
        for cpus in (0, 3, 7):
            flags = 0x40 | rng.randrange(64) if not mode & 1 else 0
            head = bytes([mode, cpus, flags, rng.randrange(256)])
            (SEEDS / f"seed-{n:02d}").write_bytes(head + bytes(rng.randrange(256) for _ in range(rng.randint(96, 384))))
            n += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=10_000_000)
    ap.add_argument("--seconds", type=float, default=24 * 3600)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=60, help="libFuzzer per-input timeout (s)")
    ap.add_argument("--engine", choices=("mixed", "atheris", "python", "inprocess"), default="mixed")
    ap.add_argument("--no-atheris", action="store_true", help="same as --engine inprocess")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--make-seeds", action="store_true")
    ap.add_argument("--target", choices=("gic", "snapshot", "cli", "all"), default="gic",
                    help="gic: guest operations on the models (default); snapshot: mutated snapshot files; "
                         "cli: mutated command lines (fuzz/inputs.py); all: the three, time shared")  # fmt: skip
    args = ap.parse_args()
    if args.make_seeds:
        make_seeds()
        return 0
    if args.target != "gic":
        from inputs import campaign

        targets = ("snapshot", "cli") if args.target == "all" else (args.target,)
        share = args.seconds / (len(targets) + (args.target == "all"))
        results = [campaign(t, share, None if args.target == "all" else args.ops, args.seed) for t in targets]
        if args.target == "all":  # and the models, for the rest of the time
            args.seconds = share
            results.append(run_fallback(args) if args.workers <= 1 else run_atheris(args))
        print(json.dumps(results))
        return 1 if any(r["violations"] for r in results) else 0
    if args.worker:
        return run_worker(args)
    try:
        import atheris  # noqa: F401
    except ImportError:
        if args.engine in ("mixed", "atheris"):
            args.engine = "python" if args.workers > 1 else "inprocess"
    if args.no_atheris:
        args.engine = "inprocess"
    summary = run_fallback(args) if args.engine == "inprocess" else run_atheris(args)
    summary["engine"] = args.engine
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
