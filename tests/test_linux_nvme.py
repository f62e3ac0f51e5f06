"""Debian's Linux kernel drives vgic's NVMe disk through the ITS, as it does on QEMU.

The kernel (.cache/third-party/vmlinuz, with the PCI generic host, PCI MSI and NVMe built
in) boots on 4 CPUs with ``--nvme`` on a 16 MiB image of random bytes. The initramfs is
Debian's static busybox (arm64) with a shell script as /init that:

* takes the md5 of /dev/nvme0n1;
* reads 512 blocks with O_DIRECT pinned to each CPU in turn (``taskset``);
* writes one sector and reads it back;
* moves the admin queue's vector to CPU 2 (Linux then sends MOVI) and asks for a rescan,
  which is admin traffic on the new CPU;
* prints /proc/interrupts, then powers off.

Checked under vgic: the md5 equals the image's, each I/O queue's ITS-MSI interrupts land
on its own CPU, the admin vector's later interrupts land on CPU 2, the written sector is in
the image file, and the report shows the ITS commands (MAPD, MAPTI, MOVI, DISCARD) with no
command error. With QEMU installed, the same run on QEMU gives the same md5, the same
queues and the same interrupt layout.

Skipped without the kernel or busybox. Busybox comes from Debian:
``apt-get download busybox-static:arm64 && dpkg-deb -x busybox-static_*.deb out && cp
out/bin/busybox .cache/third-party/busybox``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VGIC_THIRD_PARTY_DIR", ROOT / ".cache" / "third-party"))
KERNEL = CACHE / "vmlinuz"
BUSYBOX = Path(os.environ.get("VGIC_BUSYBOX", CACHE / "busybox"))
QEMU = shutil.which("qemu-system-aarch64")
APPEND = "console=ttyAMA0 panic=-1"
SMP = 4
TIMEOUT = float(os.environ.get("VGIC_THIRD_PARTY_TIMEOUT", "600"))
DISK_SIZE = 16 << 20
SECTOR = 100
MESSAGE = b"vgic-nvme-write-test"

pytestmark = pytest.mark.skipif(
    not (KERNEL.exists() and BUSYBOX.exists()),
    reason=f"needs {KERNEL} (make third-party) and Debian's busybox-static (arm64) at {BUSYBOX}",
)

INIT = """#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "md5: $(md5sum < /dev/nvme0n1)"
for c in 0 1 2 3; do
  taskset -c $c dd if=/dev/nvme0n1 of=/dev/null bs=4096 count=512 iflag=direct 2>/dev/null
  echo "cpu$c: read done"
done
echo "vgic-nvme-write-test" | dd of=/dev/nvme0n1 bs=512 seek=100 conv=sync,fsync oflag=direct 2>/dev/null
echo "readback: $(dd if=/dev/nvme0n1 bs=512 skip=100 count=1 iflag=direct 2>/dev/null | head -c 20)"
irq=$(grep nvme0q0 /proc/interrupts | cut -d: -f1 | tr -d ' ')
echo "admin-before: $(grep nvme0q0 /proc/interrupts)"
echo 2 > /proc/irq/$irq/smp_affinity_list
echo 1 > /sys/class/nvme/nvme0/rescan_controller
sleep 1
cat /proc/interrupts
echo "vgic-nvme: done"
poweroff -f
"""


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive: (name, mode, data); a symlink's data is its target."""
    out = b""
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        head = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        out += head + bytes(-len(head) % 4) + data + bytes(-len(data) % 4)
    return out + bytes(-len(out) % 512)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    d = tmp_path_factory.mktemp("linux-nvme")
    initrd = d / "initrd.cpio"
    initrd.write_bytes(_cpio([("bin", 0o40755, b""), ("dev", 0o40755, b""), ("proc", 0o40755, b""),
                              ("sys", 0o40755, b""), ("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
                              ("bin/sh", 0o120777, b"busybox"), ("init", 0o100755, INIT.encode())]))  # fmt: skip
    data = random.Random(2024).randbytes(DISK_SIZE)
    ours, theirs = d / "vgic.img", d / "qemu.img"
    ours.write_bytes(data)
    theirs.write_bytes(data)
    return initrd, ours, theirs, hashlib.md5(data).hexdigest()


def interrupts(console: str) -> dict[str, list[int]]:
    """nvme0qN -> per-CPU counts, from the /proc/interrupts the guest printed last."""
    out: dict[str, list[int]] = {}
    for line in console.splitlines():
        m = re.match(r"\s*\d+:\s+((?:\d+\s+){" + str(SMP) + r"})ITS-MSI\s+\d+\s+Edge\s+(nvme0q\d+)", line)
        if m:
            out[m.group(2)] = [int(x) for x in m.group(1).split()]
    return out


def check_layout(console: str, image_md5: str) -> dict[str, list[int]]:
    assert f"md5: {image_md5}" in console
    assert f"readback: {MESSAGE.decode()}" in console
    assert "vgic-nvme: done" in console
    irqs = interrupts(console)
    assert sorted(irqs) == [f"nvme0q{n}" for n in range(SMP + 1)]  # admin + one I/O queue per CPU
    for n in range(1, SMP + 1):
        counts = irqs[f"nvme0q{n}"]
        assert counts[n - 1] >= 512 and sum(counts) == counts[n - 1], (n, counts)  # only its own CPU
    before = re.search(r"admin-before:\s*\d+:\s+((?:\d+\s+){" + str(SMP) + "})", console)
    assert before is not None
    admin_before = [int(x) for x in before.group(1).split()]
    assert irqs["nvme0q0"][2] > admin_before[2]  # the rescan's completions came to CPU 2
    return irqs


def test_linux_reads_and_writes_the_nvme_disk_through_the_its(files: tuple[Path, Path, Path, str]) -> None:
    initrd, image, qemu_image, image_md5 = files
    report = image.with_suffix(".report")
    cmd = [sys.executable, "-m", "vgic.cli", "run", "--smp", str(SMP), "--append", APPEND, "--initrd", str(initrd),
           "--nvme", str(image), "--report-to", str(report), "--timeout", str(TIMEOUT), str(KERNEL)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT + 60)
    console = p.stdout.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace") + "\n" + "\n".join(console.splitlines()[-40:])
    ours = check_layout(console, image_md5)
    with image.open("rb") as f:
        f.seek(SECTOR * 512)
        assert f.read(len(MESSAGE)) == MESSAGE  # the guest's write is in the image file
    text = report.read_text()
    assert "ITS command errors: 0" in text
    counted = re.search(r"its0: (.*)", text)
    assert counted is not None
    for command in ("MAPD", "MAPTI", "MAPC", "MOVI", "DISCARD", "SYNC"):
        assert f"{command} x" in counted.group(1), counted.group(1)
    if QEMU is None:
        return
    q = subprocess.run([QEMU, "-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-m", "512M", "-nographic",
                        "-net", "none", "-no-reboot", "-smp", str(SMP), "-kernel", str(KERNEL), "-initrd", str(initrd),
                        "-append", APPEND, "-drive", f"file={qemu_image},if=none,id=d0,format=raw",
                        "-device", "nvme,drive=d0,serial=x"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=180)  # fmt: skip
    theirs = check_layout(q.stdout.decode(errors="replace"), image_md5)
    assert sorted(theirs) == sorted(ours)
