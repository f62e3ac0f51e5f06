"""The ``vgic`` command line.

* ``vgic run IMAGE``: a guest on the virt machine (QEMU-like options, QEMU's single-dash
  spellings too), with snapshot, restore, migration, tracing and the driver-writer's report.
* ``vgic decode`` / ``vgic asm``: ITS command queues to text and back.
* ``vgic inspect SNAPSHOT``: tables, collections and LPI state of a snapshot.
* ``vgic demo``: the model-level narrated demo.

Every error is one line on stderr with a documented exit status (``EPILOG``), never a
traceback: options are checked, and output files tried, before a guest runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import signal
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

from vgic import __version__
from vgic.files import read_bounded, read_limited

EXIT_ERROR = 1  # a bad image, snapshot or input file, a failed write, a missing extra
EXIT_USAGE = 2  # bad options (argparse exits with 2 too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

RAM_BASE = 0x4000_0000
RAM_ALIGN = 64 << 10  # RAM sizes are rounded up to this (QEMU rounds to 8 KiB; hosts have up to 64 KiB pages)
MAX_RAM = 255 << 30  # RAM at 0x4000_0000 must end below the PCIe ECAM at 0x40_1000_0000
FLASH_SIZE = 64 << 20  # -bios: the virt machine's flash at 0
DTB_LIMIT = 2 << 20  # -dtb: arm64 Linux maps at most 2 MiB of device tree (MAX_FDT_SIZE)
QUEUE_FILE_LIMIT = 256 << 20  # decode FILE: a queue (GITS_CBASER.Size allows 1 MiB) or a memory dump
ASM_LIMIT = 64 << 20  # asm INPUT: command text
MACHINE_EXTRA = "pip install 'vgic[machine]'"

EPILOG = """\
exit status: 0 the guest called PSCI SYSTEM_OFF (or --snapshot-on / --dumpdtb wrote its file),
1 a bad image, snapshot or input file, a failed write, or a missing extra (nothing ran, or an
output was lost), 2 bad options (checked before anything runs, output paths included),
3 guest crash, 4 hang, 5 timeout, 6 PSCI SYSTEM_RESET, 130 interrupted (Ctrl-C).
docs/machine.md describes each."""


class UsageError(ValueError):
    """Bad options: exit status 2, one line."""


SpecError = UsageError  # the name -drive/-device/--nvme errors had


class Failure(Exception):
    """A file, image or resource problem: exit status 1, one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block): ``PROG: error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _options(text: str, what: str, first: str | None = None) -> dict[str, str]:
    """QEMU's ``key=value,key=value`` option syntax; ``first`` names a leading bare word."""
    out: dict[str, str] = {}
    for i, item in enumerate(text.split(",")):
        if "=" not in item:
            if i == 0 and first is not None and item:
                out[first] = item
                continue
            raise SpecError(f"{what} '{text}': '{item}' is not key=value")
        key, value = item.split("=", 1)
        if not key or key in out:
            raise SpecError(f"{what} '{text}': {'empty' if not key else 'repeated'} key '{key}'")
        out[key] = value
    return out


# -- argparse types: each refuses with a one-line reason ------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([KMGTPE]?)(I?B)?")
_UNITS = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


def memory_size(text: str) -> int:
    """QEMU's ``-m`` sizes: ``512M``, ``1G``, ``1.5G``, ``1T``, ``size=2G``; a bare number is
    MiB, a ``B`` suffix bytes. Rounded up to 64 KiB; at most what the address map holds."""
    t = text.strip().upper().removeprefix("SIZE=")
    m = _SIZE.fullmatch(t)
    if m is None:
        if "," in t:
            raise argparse.ArgumentTypeError(f"'{text}': no memory hotplug (slots=, maxmem=): give only the size")
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (512M, 1G, 1.5G; a bare number is MiB)")
    number, unit, b = m.groups()
    shift = _UNITS[unit] if unit else (0 if b else 20)
    size = Fraction(number) * (1 << shift)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': RAM must be larger than 0")
    if size > MAX_RAM:
        raise argparse.ArgumentTypeError(
            f"'{text}': the virt machine has room for at most 255G of RAM "
            f"(from {RAM_BASE:#x} to the PCIe ECAM at 0x4010000000)"
        )
    return -(-math.ceil(size) // RAM_ALIGN) * RAM_ALIGN


_TOPOLOGY = ("sockets", "dies", "clusters", "cores", "threads")


def smp_count(text: str) -> int:
    """``-smp N`` or QEMU's ``-smp [cpus=]N[,sockets=S,dies=D,clusters=C,cores=C,threads=T,maxcpus=M]``:
    the number of CPUs, 1 to 64. The topology must multiply out to it; vgic numbers its CPUs
    in clusters of 8 whatever it says (docs/machine.md)."""
    try:
        d = _options(text, "-smp", first="cpus")
        unknown = set(d) - {"cpus", "maxcpus", *_TOPOLOGY}
        if unknown:
            raise SpecError(f"'{text}': unsupported option {sorted(unknown)[0]}")
        values = {k: int(v) for k, v in d.items()}
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a CPU count") from None
    if any(v < 1 for v in values.values()):
        raise argparse.ArgumentTypeError(f"'{text}': every count must be at least 1")
    topo = {k: values[k] for k in _TOPOLOGY if k in values}
    total = values.get("maxcpus", values.get("cpus"))
    if topo:
        product = math.prod(topo.values())
        missing = [k for k in ("cores", "sockets") if k not in topo]
        if total is not None and product != total and missing and total % product == 0:
            product = total  # QEMU computes the missing count
        if total is not None and product != total:
            shape = " * ".join(f"{k} ({topo.get(k, 1)})" for k in _TOPOLOGY)
            raise argparse.ArgumentTypeError(f"'{text}': {shape} != {total} CPUs")
        total = product
    assert total is not None
    cpus = values.get("cpus", total)
    if cpus != total:
        raise argparse.ArgumentTypeError(f"'{text}': vgic has no CPU hotplug: maxcpus and the topology must be cpus")
    if not 1 <= cpus <= 64:
        raise argparse.ArgumentTypeError(f"'{text}': the virt machine has 1 to 64 CPUs")
    return cpus


def text_arg(text: str) -> str:
    """Text that reaches the guest (a command line, a pause marker): it must be UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = os.fsencode(text)
        raise argparse.ArgumentTypeError(f"{raw[:40]!r} is not UTF-8 text (byte {raw[e.start]:#04x})") from None
    return text


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{text}': give a positive number of seconds")
    return value


def count(text: str) -> int:
    """A non-negative integer, in any base Python reads (``0x40``)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is negative")
    return value


def check_output(path: str, option: str) -> None:
    """Refuse an output path that cannot be written: checked before a guest runs."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{option} {path}: no such directory {parent}")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise UsageError(f"{option} {path}: permission denied")


# -- QEMU's machine options: accepted when they describe what vgic is ----------------------

_ON, _OFF = ("on", "yes", "true"), ("off", "no", "false")


def machine_options(specs: list[str]) -> str | None:
    """``-machine``/``-M`` specs (QEMU's ``virt,gic-version=3,its=on,dumpdtb=FILE``): refuse
    what vgic is not; returns the ``dumpdtb`` FILE, if any."""
    dumpdtb = None
    for text in specs:
        d = _options(text, "-machine", first="type")
        kind = d.pop("type", "virt")
        if kind != "virt" and not re.fullmatch(r"virt-\d+\.\d+", kind):
            raise UsageError(f"-machine '{text}': vgic is QEMU's virt machine, not {kind}")
        for key, value in d.items():
            if key == "dumpdtb":
                dumpdtb = value
            elif key == "gic-version":
                if value not in ("3", "max"):
                    raise UsageError(f"-machine '{text}': vgic models a GICv3 only (gic-version=3)")
            elif key == "its":
                if value not in _ON:
                    raise UsageError(f"-machine '{text}': vgic's GIC always has an ITS (its=on)")
            elif key == "highmem":
                if value not in _ON:
                    raise UsageError(f"-machine '{text}': vgic's PCIe ECAM and 64-bit window are high (highmem=on)")
            elif key in ("secure", "virtualization", "mte"):
                if value not in _OFF:
                    raise UsageError(f"-machine '{text}': vgic's CPUs have EL1 and EL0 only ({key}=off)")
            elif key == "accel":
                if value != "tcg":
                    raise UsageError(f"-machine '{text}': vgic runs its CPUs on Unicorn (accel=tcg at most)")
            else:
                raise UsageError(f"-machine '{text}': unsupported property {key}")
    return dumpdtb


def qemu_options(args: argparse.Namespace) -> None:
    """QEMU's ``-cpu``, ``-net``, ``-kernel`` next to vgic's own: refuse what does not fit."""
    if args.cpu is not None and args.cpu != "cortex-a57":
        raise UsageError(f"-cpu {args.cpu}: vgic's CPUs are Cortex-A57s (-cpu cortex-a57)")
    for net in args.net or []:
        if net != "none":
            raise UsageError(f"-net {net}: vgic has no network devices (-net none)")
    if args.kernel is not None:
        if args.image is not None:
            raise UsageError(f"give the image once: -kernel {args.kernel} or IMAGE {args.image}")
        args.image = args.kernel
    dumpdtb = machine_options(args.machine or [])
    if dumpdtb is not None and args.dumpdtb is not None and dumpdtb != args.dumpdtb:
        raise UsageError(f"--dumpdtb {args.dumpdtb} and -machine dumpdtb={dumpdtb}: give one")
    args.dumpdtb = args.dumpdtb or dumpdtb


def nvme_disks(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(image, serial, read-only) per NVMe disk from --nvme and QEMU's -drive/-device."""
    disks = [(path, f"vgic-nvme{n}", False) for n, path in enumerate(args.nvme or [])]
    drives: dict[str, dict[str, str]] = {}
    for text in args.drive or []:
        d = _options(text, "-drive")
        unknown = set(d) - {"file", "if", "id", "format", "readonly"}
        if unknown:
            raise SpecError(f"-drive '{text}': unsupported option {sorted(unknown)[0]}")
        if "file" not in d or "id" not in d:
            raise SpecError(f"-drive '{text}': needs file= and id=")
        if d.get("if", "none") != "none":
            raise SpecError(f"-drive '{text}': only if=none is supported (attach it with -device nvme,drive=ID)")
        if d.get("format", "raw") != "raw":
            raise SpecError(f"-drive '{text}': only format=raw is supported")
        if d.get("readonly", "off") not in ("on", "off"):
            raise SpecError(f"-drive '{text}': readonly is on or off")
        if d["id"] in drives:
            raise SpecError(f"-drive '{text}': id '{d['id']}' is used twice")
        drives[d["id"]] = d
    used: set[str] = set()
    for text in args.device or []:
        d = _options(text, "-device", first="driver")
        if d.get("driver") != "nvme":
            raise SpecError(f"-device '{text}': only the nvme device is supported")
        unknown = set(d) - {"driver", "drive", "serial"}
        if unknown:
            raise SpecError(f"-device '{text}': unsupported option {sorted(unknown)[0]}")
        drive = drives.get(d.get("drive", ""))
        if drive is None:
            raise SpecError(f"-device '{text}': drive= must name a -drive id")
        if drive["id"] in used:
            raise SpecError(f"-device '{text}': drive '{drive['id']}' is already attached")
        used.add(drive["id"])
        disks.append((drive["file"], d.get("serial", f"vgic-nvme{len(disks)}"), drive.get("readonly") == "on"))
    for drive_id in drives.keys() - used:
        raise SpecError(f"-drive id={drive_id} is not attached to any -device")
    return disks


def _read(path: str | None, what: str, limit: int) -> bytes | None:
    if path is None:
        return None
    try:
        return read_bounded(path, limit)
    except OSError as e:
        raise Failure(f"cannot read {what} {path}: {e.strerror}") from None


def _need_machine() -> None:
    """Import the virt machine, or fail in one line naming the extra it needs."""
    try:
        import vgic.machine.virt  # noqa: F401
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("unicorn", "libfdt"):
            raise
        raise Failure(f"the virt machine needs the 'machine' extra (Unicorn and pylibfdt): {MACHINE_EXTRA}") from None


def _restore(path: str) -> Any:
    from vgic import snapshot

    try:
        return snapshot.load_machine(path)
    except (MemoryError, OSError) as e:
        raise Failure(f"cannot restore {path}: {getattr(e, 'strerror', None) or e}") from None


_MACHINE_OPTIONS = (("image", "IMAGE"), ("memory", "-m"), ("smp", "--smp"), ("append", "--append"),
                    ("dtb", "--dtb"), ("initrd", "--initrd"), ("bios", "--bios"), ("profile", "--profile"),
                    ("its_errors", "--its-errors"), ("dumpdtb", "--dumpdtb"))  # fmt: skip


def _check_run(args: argparse.Namespace) -> None:
    """Every option of ``vgic run`` that can be checked before a guest runs."""
    qemu_options(args)
    nvme_disks(args)
    if (args.restore or args.snapshot_on or args.migrate_on) and (args.nvme or args.drive or args.device or args.pci):
        raise UsageError("snapshots do not hold PCI device state: no --nvme, -device or --pci with "
                         "--restore, --snapshot-on or --migrate-on")  # fmt: skip
    if args.restore:
        given = [name for attr, name in _MACHINE_OPTIONS if getattr(args, attr) is not None]
        given += ["--deterministic"] if args.deterministic else []  # the snapshot keeps its engine mode
        if given:
            raise UsageError(
                f"--restore continues the snapshot's machine as it was: {', '.join(given)} cannot change it"
            )
    elif args.image is None and args.bios is None and args.dumpdtb is None:
        raise UsageError("give an IMAGE to run (or -kernel IMAGE), --bios FIRMWARE, or --restore SNAPSHOT")
    if args.snapshot_on and args.migrate_on:
        raise UsageError("--snapshot-on stops at its pause, --migrate-on goes on: give one")
    if args.snapshot_on:
        try:
            text_arg(args.snapshot_on[0])
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--snapshot-on PAUSE: {e}") from None
    outputs = [(args.trace, "--trace"), (args.report_to, "--report-to"), (args.dumpdtb, "--dumpdtb")]
    if args.snapshot_on:
        outputs.append((args.snapshot_on[1], "--snapshot-on"))
    for path, option in outputs:
        if path is not None:
            check_output(path, option)


def _build(args: argparse.Namespace) -> Any:
    from vgic.its.config import ErrorPolicy
    from vgic.machine.virt import MachineConfig, VirtMachine
    from vgic.profiles import DEFAULT_PROFILE

    if args.restore:
        return _restore(args.restore)
    config = MachineConfig(
        memory=512 << 20 if args.memory is None else args.memory,
        smp=1 if args.smp is None else args.smp,
        bootargs=args.append or "",
        profile=args.profile or DEFAULT_PROFILE,
        its_errors=None if args.its_errors is None else ErrorPolicy(args.its_errors),
        deterministic=args.deterministic,
    )
    bios = _read(args.bios, "firmware", FLASH_SIZE)
    try:
        machine = VirtMachine(config, bios=bios)
    except (MemoryError, OSError) as e:
        raise Failure(f"cannot allocate {config.memory >> 20} MiB of guest RAM on this host: "
                      f"{getattr(e, 'strerror', None) or 'out of memory'}") from None  # fmt: skip
    _plug_disks(machine, nvme_disks(args))
    for spec in args.pci or []:
        machine.pci.plug(load_device(spec))
    dtb = _read(args.dtb, "device tree", DTB_LIMIT)
    if args.image is not None:
        image = _read(args.image, "image", config.memory)
        assert image is not None
        machine.load(image, initrd=_read(args.initrd, "initrd", config.memory), dtb=dtb)
    elif bios is not None:
        machine.boot_bios(dtb)
    return machine


def _device_tree(machine: Any, args: argparse.Namespace) -> bytes:
    """The device tree the guest is given (QEMU's dumpdtb): as placed in RAM, or, with no
    image or firmware loaded, the one that would be generated."""
    if args.image is None and args.bios is None:
        return bytes(machine.device_tree())
    header = machine.memory.read_bytes(machine.dtb_address, 8)
    return bytes(machine.memory.read_bytes(machine.dtb_address, int.from_bytes(header[4:8], "big")))


def load_device(spec: str) -> Any:
    """``MODULE:FACTORY`` (a dotted module name or a .py file): ``FACTORY()`` gives a
    PciFunction to plug in (docs/pci.md)."""
    import importlib
    import importlib.util

    from vgic.pci.function import PciFunction

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"--pci '{spec}': expected MODULE:FACTORY")
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        device = getattr(module, attr)()
    except Exception as e:  # a user's module: any failure is a bad option
        raise SpecError(f"--pci '{spec}': {type(e).__name__}: {e}") from None
    if not isinstance(device, PciFunction):
        raise SpecError(f"--pci '{spec}': {attr}() did not return a vgic.pci.function.PciFunction")
    return device


def _plug_disks(machine: Any, disks: list[tuple[str, str, bool]]) -> None:
    from vgic.machine.loader import ImageError
    from vgic.pci.nvme import Disk, Nvme

    for path, serial, read_only in disks:
        try:
            disk = Disk(path, read_only=read_only)
        except OSError as e:
            raise ImageError(f"cannot open disk image {path}: {e.strerror}") from None
        machine.pci.plug(Nvme(disk, serial=serial))


def _run(args: argparse.Namespace) -> int:
    try:
        _check_run(args)
        _need_machine()
        trace_file = None if args.trace is None else open(args.trace, "w", encoding="utf-8")  # noqa: SIM115
    except UsageError as e:
        print(f"vgic run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"vgic run: error: --trace {args.trace}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run_machine(args, trace_file)
    finally:
        if trace_file is not None:
            with contextlib.suppress(OSError):  # the tracer has said why already
                trace_file.close()


def _run_machine(args: argparse.Namespace, trace_file: Any) -> int:
    import time

    from vgic import snapshot
    from vgic.machine.loader import ImageError

    try:
        machine = _build(args)
    except UsageError as e:
        print(f"vgic run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (Failure, ImageError, ValueError, snapshot.SnapshotError) as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.dumpdtb is not None:
        try:
            Path(args.dumpdtb).write_bytes(_device_tree(machine, args))
        except OSError as e:
            print(f"vgic: cannot write --dumpdtb {args.dumpdtb}: {e.strerror}", file=sys.stderr)
            return EXIT_ERROR
        print(f"vgic: device tree written to {args.dumpdtb}", file=sys.stderr)
        return 0

    from vgic.events import Kind
    from vgic.machine.virt import ExitStatus
    from vgic.tools import report as report_mod
    from vgic.tools.trace import Tracer

    lost: list[str] = []  # outputs that could not be written: exit status 1 if the guest was fine

    def trace_failed(e: OSError) -> None:
        lost.append("trace")
        print(f"\nvgic: --trace {args.trace}: {e.strerror or e}; tracing stopped", file=sys.stderr)

    stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer
    machine.attach_input(stdin)
    tracer = None
    if trace_file is not None:
        # one tracer for the whole run: a migration restores into a machine built with the
        # same event log, so the trace (and the report) go on across it
        tracer = Tracer(machine.log, trace_file, "json" if args.trace.endswith(".json") else "text",
                        lambda: None if machine is None else machine.current_cpu, len(machine.cpus),
                        on_error=trace_failed)  # fmt: skip
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        # Never raise inside the guest's run (a Unicorn hook, a model holding its lock):
        # ask the machine to pause at its next scheduling round, as --snapshot-on does.
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: the machine did not stop, leave now
            os.write(2, b"\nvgic: interrupted again: exiting at once\n")
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        if machine is not None:  # (None while migrating: the loop checks the flag after it)
            machine.pause_requested = True
            machine.pause_when = lambda: True

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (an embedding): Ctrl-C stays as it was
        previous = None
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    pause = args.snapshot_on[0] if args.snapshot_on else args.migrate_on
    if pause:
        machine.pause_on(pause)
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = machine.run(timeout=left)
            if result.status is not ExitStatus.PAUSED or interrupted:
                break
            if args.snapshot_on:
                try:
                    snapshot.save_machine(machine, args.snapshot_on[1])
                except (OSError, snapshot.SnapshotError) as e:
                    lost.append("snapshot")
                    print(f"\nvgic: cannot write the snapshot {args.snapshot_on[1]}: "
                          f"{getattr(e, 'strerror', None) or e}", file=sys.stderr)  # fmt: skip
                else:
                    print(f"\nvgic: snapshot written to {args.snapshot_on[1]}", file=sys.stderr)
                break
            # migration: snapshot, tear down, restore into a new machine (same log), go on
            blob = snapshot.machine_to_bytes(machine)
            log = machine.log
            machine = None  # the old machine goes before the new one is built
            try:
                machine = snapshot.machine_from_bytes(blob, log=log)
            except (MemoryError, OSError, snapshot.SnapshotError) as e:
                print(f"\nvgic: the migration failed: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
                if tracer is not None:
                    tracer.close()
                return EXIT_ERROR
            log.record(Kind.STATE, "machine", f"migrated: {len(blob)} bytes of state restored into a new machine")
            print(f"\nvgic: migrated ({len(blob)} bytes of state)", file=sys.stderr)
            machine.attach_input(stdin)
            if interrupted:  # Ctrl-C while migrating
                break
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if tracer is not None:
        tracer.close()
    status = result.status
    if interrupted:
        print("\nvgic: interrupted (Ctrl-C)", file=sys.stderr)
    elif status not in (ExitStatus.OFF, ExitStatus.PAUSED):
        print(f"\nvgic: {result.reason} (exit status {int(status)})", file=sys.stderr)
        for cpu in machine.cpus:
            print(f"vgic:   CPU{cpu.index} {cpu.state.value} PC={cpu.pc:#x}", file=sys.stderr)
        if machine.last_exception:
            print(f"vgic:   last exception: {machine.last_exception}", file=sys.stderr)
        for ev in machine.log.errors[-5:]:
            print(f"vgic:   ITS error: {ev}", file=sys.stderr)
    if args.report or args.report_to:
        text = report_mod.report(machine.log, machine.gic)
        if args.report_to:
            try:
                Path(args.report_to).write_text(text + "\n", encoding="utf-8")
            except OSError as e:
                lost.append("report")
                print(f"vgic: cannot write --report-to {args.report_to}: {e.strerror}", file=sys.stderr)
        else:
            print(text, file=sys.stderr)
    if args.decode:
        for n in range(len(machine.gic.its)):
            print(f"== ITS {n} command queue", file=sys.stderr)
            print(live_queue(machine.gic, n), file=sys.stderr)
    if args.inspect:
        from vgic.tools import inspector

        print(inspector.report(machine.gic), file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    code = 0 if status is ExitStatus.PAUSED else int(status)
    return EXIT_ERROR if code == 0 and lost else code


def live_queue(gic: Any, its_index: int = 0, whole: bool = False) -> str:
    """The command queue of a live (or restored) ITS, with CREADR/CWRITER marked."""
    from vgic.memory import MemoryFault
    from vgic.tools.decode import decode_queue

    its = gic.its[its_index]
    cbaser = its.regs.get("CBASER")
    if not cbaser >> 63:
        return f"ITS {its_index} has no command queue (GITS_CBASER.Valid=0)"
    base, size = cbaser & 0x000F_FFFF_FFFF_F000, ((cbaser & 0xFF) + 1) * 4096
    try:
        data = gic.memory.read_bytes(base, size)
    except MemoryFault:
        return f"the command queue of ITS {its_index} at {base:#x} is outside guest RAM"
    creadr, cwriter = its.creadr, its.cwriter  # properties: a register read would run queued commands
    pointers = {creadr & ~1: "GITS_CREADR" + (" (stalled here)" if creadr & 1 else "")}
    pointers[cwriter] = pointers.get(cwriter, "") + (", " if cwriter in pointers else "") + "GITS_CWRITER"
    marks = {}
    for offset, code, message, command in its.error_history:  # the latest error at each offset
        then = "skipped" if message.endswith("command skipped") else "stalled"
        detail = f"{then}; the command then: {command}" if command else then
        marks[offset] = f"error {code:#08x} {message.split(':')[0]} ({detail})"
    for off, text in pointers.items():
        marks[off] = text if off not in marks else f"{marks[off]}, {text}"
    end = size if whole else max(cwriter, creadr & ~1 if creadr & 1 else 0)
    if creadr & 1:
        end = max(end, (creadr & ~1) + 32)
    lines = [str(line) for line in decode_queue(data[:end], 0, its.typer, len(gic.cpus), marks)]
    if end < size and end in pointers:
        lines.append(f"{end:#07x}  <- {pointers[end]}")
    return "\n".join(lines)


def _snapshot_gic(path: str) -> Any:
    """The GIC of a machine snapshot (which needs the machine extra) or of a GIC snapshot."""
    from vgic import snapshot

    try:
        try:
            _need_machine()
            return snapshot.load_machine(path).gic
        except (Failure, snapshot.SnapshotError) as e:
            first = e
        try:
            return snapshot.load_gic(path)
        except snapshot.SnapshotError:
            raise Failure(str(first)) from None
    except (MemoryError, OSError) as e:
        raise Failure(f"cannot restore {path}: {getattr(e, 'strerror', None) or e}") from None


def _decode(args: argparse.Namespace) -> int:
    from vgic.tools.decode import decode_queue

    if args.file is not None and args.snapshot is not None:
        print("vgic decode: error: give FILE or --snapshot, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.snapshot:
        try:
            gic = _snapshot_gic(args.snapshot)
        except Failure as e:
            print(f"vgic: {e}", file=sys.stderr)
            return EXIT_ERROR
        if args.its >= len(gic.its):
            n = len(gic.its)
            print(f"vgic decode: error: --its {args.its}: the snapshot has {n} ITS{'es' if n != 1 else ''} "
                  f"(--its 0{f' to {n - 1}' if n > 1 else ''})", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        text = live_queue(gic, args.its, args.all)
        print(text)
        return 3 if args.strict and "  !! " in text else 0
    try:
        data = read_bounded(args.file, QUEUE_FILE_LIMIT)[args.offset :]
    except OSError as e:
        print(f"vgic: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    if args.length is not None:
        data = data[: args.length]
    bad = 0
    for line in decode_queue(data, 0, None, None, {}):
        if not args.all and line.command.name == "OPCODE_0x00" and not any(line.command.words()):
            continue  # an empty slot
        bad += bool(line.problems)
        print(line)
    return 3 if bad and args.strict else 0


def _asm(args: argparse.Namespace) -> int:
    from vgic.tools.decode import assemble

    if args.output != "-":
        try:
            check_output(args.output, "-o")
        except UsageError as e:
            print(f"vgic asm: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    name = "stdin" if args.input == "-" else args.input
    try:
        raw = read_limited(sys.stdin.buffer, ASM_LIMIT) if args.input == "-" else read_bounded(args.input, ASM_LIMIT)
        text = raw.decode("utf-8")
    except OSError as e:
        print(f"vgic: cannot read {name}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    except UnicodeDecodeError as e:
        print(f"vgic: {name} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})", file=sys.stderr)
        return EXIT_ERROR
    try:
        data = assemble(text.splitlines())
    except ValueError as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            Path(args.output).write_bytes(data)
    except OSError as e:
        print(f"vgic: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vgic.tools import inspector

    try:
        gic = _snapshot_gic(args.snapshot)
    except Failure as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(inspector.report(gic, limit=args.limit))
    return 0


def _parser() -> argparse.ArgumentParser:
    from vgic.profiles import PROFILES

    parser = _Parser(prog="vgic", description="GICv3 ITS reference model and virt machine", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"vgic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the model-level narrated demo")

    run = sub.add_parser("run", help="run an aarch64 guest on the virt machine (QEMU-like options)", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Run an aarch64 guest on vgic's copy of QEMU's -M virt,gic-version=3,its=on. "
                                     "QEMU's spellings work too: -kernel, -append, -initrd, -dtb, -bios, -smp, "
                                     "and -M virt,...,dumpdtb=FILE, -cpu cortex-a57, -nographic, -net none, "
                                     "-no-reboot, which describe what vgic is anyway.")  # fmt: skip
    run.add_argument("image", nargs="?", help="ELF, arm64 Image or flat binary (as QEMU's -kernel)")
    run.add_argument("-kernel", dest="kernel", metavar="IMAGE", help=argparse.SUPPRESS)
    run.add_argument("-m", "--memory", type=memory_size, metavar="SIZE",
                     help="RAM size: 512M, 1G, 1.5G; a bare number is MiB (default 512M, at most 255G)")  # fmt: skip
    run.add_argument("--smp", "-smp", type=smp_count, metavar="N",
                     help="number of CPUs, 1 to 64 (default 1); QEMU's N,sockets=S,cores=C,threads=T too")  # fmt: skip
    run.add_argument("--append", "-append", type=text_arg, metavar="CMDLINE",
                     help="kernel command line (/chosen/bootargs)")  # fmt: skip
    run.add_argument("--dtb", "-dtb", metavar="FILE", help="use this device tree blob instead of generating one")
    run.add_argument("--initrd", "-initrd", metavar="FILE", help="initial ramdisk")
    run.add_argument("--bios", "-bios", metavar="FILE", help="firmware run from the flash at address 0")
    run.add_argument("--timeout", type=seconds, help="stop after this many seconds (exit status 5)")
    run.add_argument("--profile", choices=tuple(PROFILES),
                     help="the GIC's implementation choices: qemu (default: what QEMU's virt machine "
                          "presents), kvm, gic-600, or strict (stall on every error; docs/choices.md)")  # fmt: skip
    run.add_argument("--its-errors", choices=("stall", "continue"),
                     help="override the profile's ITS error policy: stall or skip every command error")  # fmt: skip
    run.add_argument("--deterministic", action="store_true",
                     help="CPUs take turns in counted slices of instructions: a reproducible interleaving, "
                          "guest code several times slower (docs/machine.md)")  # fmt: skip
    run.add_argument("--snapshot-on", nargs=2, metavar=("PAUSE", "FILE"),
                     help="at PAUSE ('input': the guest waits for serial input; else a text the guest "
                          "prints) write a snapshot to FILE and stop")  # fmt: skip
    run.add_argument("--restore", metavar="FILE", help="continue from a snapshot instead of booting")
    run.add_argument("--migrate-on", type=text_arg, metavar="PAUSE",
                     help="at PAUSE, snapshot, tear the machine down, restore into a new one and go on")  # fmt: skip
    run.add_argument("--trace", metavar="FILE",
                     help="write a trace: Chrome/Perfetto JSON if FILE ends in .json, else plain text")  # fmt: skip
    run.add_argument(
        "--report",
        action="store_true",
        help="at exit, print the report of ITS errors and questionable guest actions (stderr)",
    )
    run.add_argument("--report-to", metavar="FILE", help="write that report to FILE instead")
    run.add_argument("--inspect", action="store_true", help="at exit, print the ITS tables and LPI state")
    run.add_argument("--decode", action="store_true", help="at exit, disassemble the ITS command queues")
    run.add_argument("--dumpdtb", metavar="FILE", help="write the device tree the guest would get to FILE and exit")
    run.add_argument("--nvme", action="append", metavar="FILE", help="an NVMe disk on a raw image FILE (PCIe)")
    run.add_argument("-drive", action="append", metavar="SPEC",
                     help="QEMU's spelling: file=FILE,if=none,id=ID,format=raw (with -device nvme,drive=ID)")  # fmt: skip
    run.add_argument("-device", action="append", metavar="SPEC", help="QEMU's spelling: nvme,drive=ID[,serial=S]")
    run.add_argument("--pci", action="append", metavar="MODULE:FACTORY",
                     help="plug in a Python PCI device: FACTORY() from MODULE (dotted name or .py file)")  # fmt: skip
    # QEMU options that only describe what vgic is anyway (anything else is refused)
    run.add_argument("-machine", "-M", action="append", dest="machine", metavar="virt[,PROP=VALUE...]",
                     help=argparse.SUPPRESS)  # fmt: skip
    run.add_argument("-cpu", dest="cpu", help=argparse.SUPPRESS)
    run.add_argument("-net", "-nic", action="append", dest="net", help=argparse.SUPPRESS)
    run.add_argument("-nographic", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("-no-reboot", dest="no_reboot", action="store_true", help=argparse.SUPPRESS)

    dec = sub.add_parser("decode", help="disassemble an ITS command queue")
    dec.add_argument("file", nargs="?", help="a file of 32-byte commands or a memory dump")
    dec.add_argument("--offset", type=count, default=0, help="where the queue starts in FILE")
    dec.add_argument("--length", type=count, help="bytes to decode")
    dec.add_argument("--snapshot", help="decode the command queue of a snapshot")
    dec.add_argument("--its", type=count, default=0, help="which ITS of the snapshot")
    dec.add_argument("--all", action="store_true", help="show empty slots and the whole queue")
    dec.add_argument("--strict", action="store_true", help="exit status 3 if any command has a problem")

    asm = sub.add_parser("asm", help="assemble ITS commands from text (one per line) into 32-byte commands")
    asm.add_argument("input", help="text file, or - for stdin")
    asm.add_argument("-o", "--output", default="-", help="output file (default stdout)")

    ins = sub.add_parser("inspect", help="print the ITS tables and LPI state of a snapshot")
    ins.add_argument("snapshot")
    ins.add_argument("--limit", type=count, default=1 << 16,
                     help="most table entries the report looks at, over every table (default 65536)")  # fmt: skip
    return parser


def _printable_streams() -> None:
    """A path that is not UTF-8 (``$'\\xff.bin'``) reaches us with surrogates; messages that
    name it are printed with a backslash escape rather than raise UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from vgic import demo

            demo.run()
            return 0
        if args.command == "decode" and not args.file and not args.snapshot:
            print("vgic decode: error: give FILE or --snapshot", file=sys.stderr)
            return EXIT_USAGE
        handlers = {"run": _run, "decode": _decode, "asm": _asm, "inspect": _inspect}
        return handlers[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C outside a guest's run (loading, writing, decoding)
        print("\nvgic: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vgic decode ... | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
