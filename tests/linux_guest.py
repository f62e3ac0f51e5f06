"""Linux guests for the tests and the benchmarks: a busybox initramfs and QEMU/vgic command lines.

The parts are third-party and unmodified: Debian's arm64 kernel and Debian's
``busybox-static`` (``make third-party`` puts both in the cache). What is built here is
the initramfs: a newc cpio archive (directories, symlinks, regular files; no device nodes,
the kernel's built-in initramfs supplies /dev/console) with busybox at /bin/busybox, a
symlink for each applet the scripts use, and a given /init shell script.

Importable from the tests (``from linux_guest import ...``) and, by path, from
bench/run.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VGIC_THIRD_PARTY_DIR", ROOT / ".cache" / "third-party"))
KERNEL = CACHE / "vmlinuz"
BUSYBOX = CACHE / "busybox"
QEMU = shutil.which("qemu-system-aarch64")
QEMU_MACHINE = ["-M", "virt,gic-version=3,its=on", "-cpu", "cortex-a57", "-nographic", "-net", "none", "-no-reboot"]

# Applets linked in /bin (all in Debian's busybox-static); /init may also run
# `/bin/busybox --install -s` for the rest.
APPLETS = (
    "sh", "basename", "cat", "cut", "date", "dd", "echo", "grep", "head", "ls", "md5sum", "mkdir", "mount", "nproc",
    "poweroff", "printf", "readlink", "sed", "sleep", "sync", "taskset", "tr", "uname", "usleep", "wc", "yes",
)  # fmt: skip


def missing_third_party(*paths: Path) -> str | None:
    """Why a test needing ``paths`` must skip, or None when they are all in the cache."""
    absent = [p.name for p in paths if not p.is_file() or p.stat().st_size == 0]
    if not absent:
        return None
    return f"no {', '.join(absent)} in {CACHE}: run `make third-party` (scripts/fetch-third-party.sh)"


# -- newc cpio -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive: a directory, a symlink (data = target) or a file."""

    name: str
    mode: int  # file type and permission bits, as st_mode
    data: bytes = b""

    @classmethod
    def dir(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, 0o040000 | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, 0o100000 | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, 0o120777, target.encode())


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive of ``entries``, ending with TRAILER!!! and padded to 512."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], 1):
        name = entry.name.lstrip("/").encode() + b"\0"
        nlink = 2 if entry.mode & 0o170000 == 0o040000 else 1
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + name
        out += bytes(-len(out) % 4)
        out += entry.data + bytes(-len(entry.data) % 4)
    return bytes(out + bytes(-len(out) % 512))


def busybox_initramfs(init: str, busybox: Path = BUSYBOX, applets: Sequence[str] = APPLETS,
                      files: dict[str, bytes] | None = None) -> bytes:  # fmt: skip
    """An initramfs: /bin/busybox with ``applets`` linked to it, the usual mount points, and
    ``init`` as the /init script (``#!/bin/sh`` is added when it has no ``#!`` line)."""
    if not init.startswith("#!"):
        init = "#!/bin/sh\n" + init
    entries = [CpioEntry.dir(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp")]
    entries.append(CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries += [CpioEntry.symlink(f"bin/{a}", "busybox") for a in applets]
    entries += [CpioEntry.file(name, data) for name, data in (files or {}).items()]
    entries.append(CpioEntry.file("init", init.encode(), 0o755))
    return newc_archive(entries)


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """The members of a newc archive, {name: (mode, data)}: the inverse of newc_archive."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        head = archive[pos : pos + 110]
        if head[:6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, archive[pos : pos + size])
        pos += size + (-size % 4)


# -- running a kernel -------------------------------------------------------------------------


def qemu_command(initrd: Path, append: str, smp: int = 4, memory: str = "512M", kernel: Path = KERNEL,
                 extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """QEMU's virt machine (GICv3 + ITS) booting ``kernel`` with ``initrd``."""
    assert QEMU is not None, "qemu-system-aarch64 is not installed"
    return [QEMU, *QEMU_MACHINE, "-m", memory, "-smp", str(smp), "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", append, *extra]  # fmt: skip


def vgic_command(initrd: Path, append: str, smp: int = 4, memory: str = "512M", kernel: Path = KERNEL,
                 timeout: float = 600, extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """``python -m vgic.cli run`` with the same machine as qemu_command."""
    return [sys.executable, "-m", "vgic.cli", "run", "-m", memory, "--smp", str(smp), "--initrd", str(initrd),
            "--append", append, "--timeout", str(timeout), *extra, str(kernel)]  # fmt: skip


def vgic_env() -> dict[str, str]:
    """The environment for a vgic subprocess: this tree's src/ first on PYTHONPATH."""
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def vgic_run_has(option: str) -> bool:
    """Whether ``vgic run --help`` lists ``option`` (e.g. ``--nvme``)."""
    p = subprocess.run([sys.executable, "-m", "vgic.cli", "run", "--help"], capture_output=True, text=True,
                       env=vgic_env(), stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    return p.returncode == 0 and option in p.stdout.split()


# -- the NVMe workload ----------------------------------------------------------------------

MARK = "@vgic"  # every line the workload prints for the parser starts with this


def nvme_script(reads_per_cpu: int | None = None, sector: int = 1000, pattern: str = "vgic-nvme sector",
                checks: bool = True, wait_s: int = 30) -> str:  # fmt: skip
    """The /init of the NVMe workload (busybox sh).

    Waits for /dev/nvme0n1, then on each CPU in turn reads the disk with 4 KiB direct
    I/O pinned there (``reads_per_cpu`` reads, or the whole disk), timed inside the guest
    (``/proc/timer_list``'s ns clock, read with shell builtins only) and with the nvme
    lines of /proc/interrupts after each pass. With ``checks``: the md5 of the device,
    one logical block at ``sector`` written with ``pattern`` lines and read back (direct
    I/O), the admin vector moved to another CPU through smp_affinity_list followed by a
    controller rescan (admin commands), and the whole /proc/interrupts. Then poweroff -f.
    """
    count = f" count={reads_per_cpu}" if reads_per_cpu is not None else ""
    script = f"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk   # the console is the workload's from here
M={MARK}
now() {{  # nanoseconds since boot into $t, without starting a process
  if [ -r /proc/timer_list ]; then {{ read -r t; read -r t; read -r t; }} < /proc/timer_list; t=${{t#now at }}; t=${{t% nsecs}}
  else read -r t _ < /proc/uptime; t=$(( ${{t%.*}} * 1000000000 + 1${{t#*.}}0000000 - 1000000000 )); fi
}}
irqs() {{ echo "$M irqs $1"; grep nvme /proc/interrupts; echo "$M irqs-end"; }}
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt {wait_s * 10} ]; do usleep 100000; i=$((i + 1)); done
if [ ! -b /dev/nvme0n1 ]; then
  echo "$M no-nvme"; cat /proc/interrupts; ls /sys/bus/pci/devices /sys/class/nvme; poweroff -f
fi
cpus=$(nproc)
lbs=$(cat /sys/block/nvme0n1/queue/logical_block_size)
echo "$M ready cpus=$cpus lbs=$lbs bytes=$(( $(cat /sys/block/nvme0n1/size) * 512 ))" \\
  "pci=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)")"
irqs start
n=0
while [ $n -lt $cpus ]; do
  now; t0=$t
  taskset -c $n dd if=/dev/nvme0n1 of=/dev/null bs=4096{count} iflag=direct 2>/tmp/dd.err; rc=$?
  now; t1=$t
  read -r rec _ < /tmp/dd.err
  echo "$M read cpu=$n rc=$rc records=${{rec%%+*}} t0=$t0 t1=$t1"
  irqs read$n
  n=$((n + 1))
done
"""
    if checks:
        script += f"""echo "$M md5 $(md5sum < /dev/nvme0n1)"
yes '{pattern}' | head -c $lbs > /tmp/sector
dd if=/tmp/sector of=/dev/nvme0n1 bs=$lbs seek={sector} count=1 oflag=direct conv=notrunc 2>/dev/null; rc=$?
sync
echo "$M wrote sector={sector} rc=$rc md5=$(md5sum < /tmp/sector)"
echo "$M readback sector={sector} md5=$(dd if=/dev/nvme0n1 bs=$lbs skip={sector} count=1 iflag=direct 2>/dev/null | md5sum)"
admin=$(grep 'nvme0q0$' /proc/interrupts | cut -d: -f1 | tr -d ' ')
eff=$(cat /proc/irq/$admin/effective_affinity_list)
new=$((cpus - 1)); [ "$eff" = "$new" ] && new=0
irqs admin-before
echo $new > /proc/irq/$admin/smp_affinity_list
echo "$M admin irq=$admin was=$eff new=$new now=$(cat /proc/irq/$admin/effective_affinity_list)"
before=$(grep 'nvme0q0$' /proc/interrupts)
echo 1 > /sys/class/nvme/nvme0/rescan_controller
i=0
while [ "$(grep 'nvme0q0$' /proc/interrupts)" = "$before" ] && [ $i -lt 250 ]; do usleep 40000; i=$((i + 1)); done
usleep 200000
irqs admin-after
echo "$M interrupts"
cat /proc/interrupts
echo "$M interrupts-end"
"""
    return script + 'echo "$M done"\npoweroff -f\n'


@dataclass(frozen=True)
class IrqLine:
    """One line of /proc/interrupts: the IRQ number, per-CPU counts, chip, hwirq and name."""

    irq: int
    counts: tuple[int, ...]
    chip: str
    name: str

    def cpus(self) -> frozenset[int]:
        """The CPUs on which this interrupt was taken at least once."""
        return frozenset(c for c, n in enumerate(self.counts) if n)


def parse_interrupts(lines: Iterable[str], ncpus: int) -> dict[str, IrqLine]:
    """{name: IrqLine} for the numbered lines of /proc/interrupts (names are the last word)."""
    out = {}
    for line in lines:
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        words = rest.split()
        if len(words) < ncpus + 2 or not all(w.isdigit() for w in words[:ncpus]):
            continue
        out[words[-1]] = IrqLine(int(head), tuple(int(w) for w in words[:ncpus]), words[ncpus], words[-1])
    return out


@dataclass
class NvmeRun:
    """What the NVMe workload printed, parsed (see nvme_script)."""

    transcript: str
    ready: bool = False
    done: bool = False
    cpus: int = 0
    lbs: int = 0
    disk_bytes: int = 0
    pci: str = ""  # the controller's PCI address, e.g. 0000:00:01.0
    irqs: dict[str, dict[str, IrqLine]] | None = None  # tag -> {name: line}: start, read<n>, admin-*
    reads: list[tuple[int, int, int, int]] | None = None  # (cpu, status, records, ns)
    md5: str | None = None
    written_md5: str | None = None
    readback_md5: str | None = None
    admin_irq: int | None = None
    admin_was: str | None = None
    admin_new: int | None = None
    admin_now: str | None = None
    interrupts: dict[str, IrqLine] | None = None  # the whole /proc/interrupts at the end

    @property
    def requester_id(self) -> int:
        """The controller's PCI requester ID, bus << 8 | device << 3 | function: its ITS DeviceID."""
        bus, dev, fn = (int(x, 16) for x in re.split(r"[:.]", self.pci)[1:])
        return bus << 8 | dev << 3 | fn

    @property
    def io_queues(self) -> list[str]:
        """The I/O queues' interrupt names (nvme0q1...), from the last table printed."""
        table = self.interrupts or (self.irqs or {}).get(f"read{self.cpus - 1}", {})
        return sorted((n for n in table if n.startswith("nvme0q") and n != "nvme0q0"), key=lambda n: int(n[6:]))

    def delta(self, before: str, after: str) -> dict[str, tuple[int, ...]]:
        """Per-CPU interrupt counts of each nvme line between two printed tables."""
        assert self.irqs is not None
        a, b = self.irqs[before], self.irqs[after]
        return {n: tuple(y - x for x, y in zip(a[n].counts, b[n].counts, strict=True)) for n in b if n in a}

    def read_deltas(self) -> dict[int, dict[str, tuple[int, ...]]]:
        """{cpu: {line: per-CPU counts}} of the interrupts taken during the read pinned to cpu."""
        tags = ["start"] + [f"read{n}" for n in range(self.cpus)]
        return {n: self.delta(tags[n], tags[n + 1]) for n in range(self.cpus)}

    def layout(self) -> dict[str, list[int]]:
        """{nvme line: CPUs it was taken on} at the end: the interrupt layout."""
        return {n: sorted(line.cpus()) for n, line in (self.interrupts or {}).items() if n.startswith("nvme")}

    @property
    def total_reads(self) -> int:
        return sum(r[2] for r in self.reads or [])

    @property
    def read_seconds(self) -> float:
        return sum(r[3] for r in self.reads or []) / 1e9

    def read_msis(self) -> int:
        """The nvme interrupts taken during the timed reads, all CPUs."""
        return sum(sum(c) for d in self.read_deltas().values() for c in d.values())


def _fields(text: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


def parse_nvme(transcript: str) -> NvmeRun:
    """Parse the console of a run of nvme_script (kernel lines and CRs are ignored)."""
    run = NvmeRun(transcript, irqs={}, reads=[])
    lines = transcript.replace("\r", "").split("\n")
    assert run.irqs is not None and run.reads is not None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line.startswith(MARK + " "):
            continue
        word, _, rest = line[len(MARK) + 1 :].partition(" ")
        f = _fields(rest)
        if word == "ready":
            run.ready, run.cpus, run.lbs, run.disk_bytes = True, int(f["cpus"]), int(f["lbs"]), int(f["bytes"])
            run.pci = f.get("pci", "")
        elif word in ("irqs", "interrupts"):
            end = f"{MARK} {word}-end"
            table = []
            while i < len(lines) and lines[i].strip() != end:
                table.append(lines[i])
                i += 1
            parsed = parse_interrupts(table, run.cpus)
            if word == "irqs":
                run.irqs[rest.strip()] = parsed
            else:
                run.interrupts = parsed
        elif word == "read":
            run.reads.append((int(f["cpu"]), int(f["rc"]), int(f["records"] or 0), int(f["t1"]) - int(f["t0"])))
        elif word == "md5":
            run.md5 = rest.split()[0]
        elif word == "wrote":
            run.written_md5 = f["md5"].split()[0] if f.get("rc") == "0" else None
        elif word == "readback":
            run.readback_md5 = f["md5"].split()[0]
        elif word == "admin":
            run.admin_irq, run.admin_was, run.admin_new, run.admin_now = (
                int(f["irq"]), f["was"], int(f["new"]), f["now"])  # fmt: skip
        elif word == "done":
            run.done = True
    return run


# -- the ITS commands a guest sent ------------------------------------------------------------

ITS_TRACE = "gicv3_its_cmd*"  # QEMU's trace events for the ITS commands (-trace with -D FILE)
_KEPT_FIELDS = ("DeviceID", "EventID", "ICID", "pINTID", "Size", "V")  # not ITT_addr, RDbase: allocations


def _its_command(name: str, fields: Iterable[tuple[str, str]]) -> str:
    kept = {k: int(v, 0) for k, v in fields if k in _KEPT_FIELDS}
    return " ".join([name.upper()] + [f"{k}={kept[k]:#x}" if k == "DeviceID" else f"{k}={kept[k]}"
                                      for k in _KEPT_FIELDS if k in kept])  # fmt: skip


def qemu_its_commands(trace: str) -> list[str]:
    """The ITS commands in a QEMU ``-trace 'gicv3_its_cmd*'`` log, normalized (see its_command)."""
    out = []
    for m in re.finditer(r"GICv3 ITS: command (\w+)([^\n]*)", trace):
        out.append(_its_command(m.group(1), re.findall(r"(\w+) (0x[0-9a-fA-F]+|\d+)", m.group(2))))
    return out


def vgic_its_commands(decoded: str) -> list[str]:
    """The ITS commands in ``vgic run --decode`` output (queue offset order), normalized."""
    out = []
    for m in re.finditer(r"^0x[0-9a-f]+  ([A-Z]+)((?: \w+=\w+)*)", decoded, re.M):
        out.append(_its_command(m.group(1), re.findall(r"(\w+)=(\w+)", m.group(2))))
    return out


def without_resends(commands: Sequence[str]) -> tuple[list[str], list[str]]:
    """The commands without Linux's lazy-disable resends, and the resends taken out.

    Linux disables an IRQ lazily: if the interrupt arrives while it is disabled (say
    between nvme_poll_irqdisable's disable_irq and enable_irq, when the controller
    completes an admin command in that window), the handler masks it (INV), and enable_irq
    unmasks it (INV) and resends it (INT): ``INV e, SYNC, INV e, SYNC, INT e, SYNC``. Whether
    it happens depends on when the completion lands, on any machine; it is not a
    difference between two ITSes."""
    out: list[str] = []
    resends: list[str] = []
    i = 0
    while i < len(commands):
        window = [c.split() for c in commands[i : i + 6]]
        if len(window) == 6 and [w[0] for w in window] == ["INV", "SYNC", "INV", "SYNC", "INT", "SYNC"]:
            event = window[0][1:]
            if window[2][1:] == event and window[4][1:] == event:
                resends.append(commands[i + 4])
                i += 6
                continue
        out.append(commands[i])
        i += 1
    return out, resends


def its_command_differences(expected: Sequence[str], got: Sequence[str]) -> list[str]:
    """Where two normalized command lists differ: position by position, comparing the name and
    the fields both lines have (QEMU's trace omits some, e.g. INVALL's ICID)."""

    def same(a: str, b: str) -> bool:
        wa, wb = a.split(), b.split()
        fa, fb = dict(w.split("=") for w in wa[1:]), dict(w.split("=") for w in wb[1:])
        return wa[0] == wb[0] and all(fa[k] == fb[k] for k in fa.keys() & fb.keys())

    out = [f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(expected, got, strict=False)) if not same(a, b)]
    if len(expected) != len(got):
        out.append(f"{len(expected)} commands vs {len(got)}")
    return out


# -- vgic's exit report -------------------------------------------------------------------------

_GIC_SOURCE = re.compile(r"(its|gicr|gicd|gic)\d*")
_QUESTION_SECTIONS = (  # the report's sections that question the guest (others, e.g. counts, do not)
    "ITS command errors", "Questionable guest actions", "MSIs that were not translated", "LPIs the redistributors ignored",
)  # fmt: skip


def gic_questions(report: str) -> list[str]:
    """The entries of a ``vgic run --report`` that question what the guest did with the GIC and
    its ITS: every command error, untranslated MSI and ignored LPI, and the questionable
    actions of the ITS, redistributors, distributor and CPU interfaces (a CPU's own aborts,
    which an OS takes in its stride, and other devices' entries are left out)."""
    out = []
    section = ""
    for line in report.splitlines():
        if not line.startswith(" "):
            section = line.split(":")[0]
            continue
        if section not in _QUESTION_SECTIONS or line.startswith("      "):
            continue  # another section, or the command/rule detail lines of an error
        source, _, message = line.strip().partition(": ")
        if section == "Questionable guest actions" and not (
            _GIC_SOURCE.fullmatch(source) or (source.startswith("cpu") and not message.startswith("external abort"))
        ):
            continue
        out.append(f"{section}: {line.strip()}")
    return out
