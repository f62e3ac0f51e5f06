"""A pure-Python mutation fuzzer: the fallback when atheris is not installed.

It keeps a corpus, mutates a pick of it (bit flips, interesting bytes, insertions,
deletions, splices), runs it through :func:`harness.run_one`, and keeps inputs that reach a
feature (operation kind, command kind, MMIO register, MSI outcome, ...) not seen before: a
poor man's coverage guidance. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import Stats, Violation, run_one

INTERESTING = (0, 1, 2, 3, 7, 8, 0x10, 0x1F, 0x20, 0x40, 0x41, 0x7F, 0x80, 0xFF)
MAX_LEN = 4096


def load_corpus(*dirs: Path) -> list[bytes]:
    out = []
    for d in dirs:
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return out


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data or b"\0")
    for _ in range(rng.randint(1, 6)):
        how = rng.randrange(7)
        pos = rng.randrange(len(buf))
        if how == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif how == 1:
            buf[pos] = rng.choice(INTERESTING)
        elif how == 2:
            buf[pos] = rng.randrange(256)
        elif how == 3 and len(buf) < MAX_LEN:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif how == 4 and len(buf) > 4:
            del buf[pos : pos + rng.randint(1, min(16, len(buf) - 2))]
        elif how == 5 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut : cut + rng.randint(1, 256)]) + buf[pos:]
        elif how == 6 and len(buf) < MAX_LEN - 512 and rng.random() < 0.3:  # grow: longer operation streams
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(64, 512)))
        else:
            src = rng.randrange(len(buf))
            n = rng.randint(1, 32)
            buf[pos:pos] = buf[src : src + n]
    return bytes(buf[:MAX_LEN])


@dataclass
class Campaign:
    seed: int = 0
    stats: Stats = field(default_factory=Stats)
    corpus: list[bytes] = field(default_factory=list)
    inputs: int = 0
    violations: list[tuple[bytes, str]] = field(default_factory=list)

    def run(self, max_ops: int, seconds: float, on_violation: Callable[[bytes, str], object] | None = None,
            progress: Callable[[Campaign], None] | None = None) -> Campaign:  # fmt: skip
        rng = random.Random(self.seed)
        if not self.corpus:
            self.corpus = [bytes(rng.randrange(256) for _ in range(64))]
        deadline = time.monotonic() + seconds
        queue = list(self.corpus)  # run every seed once first
        while self.stats.ops < max_ops and time.monotonic() < deadline:
            data = queue.pop() if queue else mutate(rng, rng.choice(self.corpus), self.corpus)
            seen = len(self.stats.features)
            self.inputs += 1
            try:
                run_one(data, self.stats)
            except Violation as v:
                self.violations.append((data, str(v)))
                if on_violation is not None:
                    on_violation(data, str(v))
            if len(self.stats.features) > seen:
                self.corpus.append(data)
            if progress is not None:
                progress(self)
        return self
