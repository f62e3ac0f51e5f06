"""What one NVMe doorbell write costs the host (the bounded-work budget, docs/pci.md).

    PYTHONPATH=src .venv/bin/python bench/nvme_doorbell.py

Drives the controller with the Python driver of tests/test_nvme.py (no CPU engine): the
worst case (64 reads of 128 KiB queued behind one SQ tail doorbell: the doorbell runs at
most INLINE_BUDGET units, the rest goes to poll()) and Linux's pattern (one 4 KiB read
per doorbell).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_nvme import N, make


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        img = Path(d) / "disk.img"
        img.write_bytes(random.Random(1).randbytes(16 << 20))
        drv, _ = make(img)
        drv.enable()
        drv.create_io(1, entries=1024)
        buf = drv.data.alloc(128 << 10)
        prp1, prp2 = drv.prps(buf, 128 << 10)
        worst = []
        for rep in range(30):
            for _ in range(64):
                drv.put(1, drv.command(N.NVM_READ, nsid=1, prp1=prp1, prp2=prp2, cdw=(rep * 8, 0, 255)), ring=False)
            t = time.perf_counter()
            drv.ring(1)
            worst.append(time.perf_counter() - t)
            while drv.nvme.poll():
                drv.reap(1)
            drv.reap(1)
        small = []
        for i in range(2000):
            drv.put(1, drv.command(N.NVM_READ, nsid=1, prp1=buf, cdw=(i, 0, 7)), ring=False)
            t = time.perf_counter()
            drv.ring(1)
            small.append(time.perf_counter() - t)
            drv.reap(1)
        worst.sort()
        small.sort()
        print(f"SQ doorbell with 64 x 128 KiB reads queued: median {worst[len(worst) // 2] * 1e6:.0f} us, "
              f"max {worst[-1] * 1e6:.0f} us")  # fmt: skip
        print(f"SQ doorbell with one 4 KiB read: median {small[len(small) // 2] * 1e6:.1f} us, "
              f"max {small[-1] * 1e6:.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
