"""The ``vgic`` command line.

* ``vgic run IMAGE``: a guest on the virt machine (QEMU-like options), with snapshot,
  restore, migration, tracing and the driver-writer's report.
* ``vgic decode`` / ``vgic asm``: ITS command queues to text and back.
* ``vgic inspect SNAPSHOT``: tables, collections and LPI state of a snapshot.
* ``vgic demo``: the model-level narrated demo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with on a bad command line


class SpecError(ValueError):
    """A bad -drive/-device/--nvme specification (exit status 2, one line)."""


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


def _size(text: str) -> int:
    """QEMU-style memory sizes: 512M, 1G, 256 (MiB)."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t) << 20


def _read(path: str | None, what: str) -> bytes | None:
    from vgic.machine.loader import ImageError

    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {what} {path}: {e.strerror}") from None


def _build(args: argparse.Namespace) -> Any:
    from vgic import snapshot
    from vgic.its.config import ErrorPolicy
    from vgic.machine.loader import ImageError
    from vgic.machine.virt import MachineConfig, VirtMachine

    if args.restore:
        return snapshot.load_machine(args.restore)
    config = MachineConfig(
        memory=_size(args.memory),
        smp=args.smp,
        bootargs=args.append or "",
        profile=args.profile,
        its_errors=None if args.its_errors is None else ErrorPolicy(args.its_errors),
        deterministic=args.deterministic,
    )
    bios = _read(args.bios, "firmware")
    machine = VirtMachine(config, bios=bios)
    _plug_disks(machine, nvme_disks(args))
    for spec in args.pci or []:
        machine.pci.plug(load_device(spec))
    dtb = _read(args.dtb, "device tree")
    if args.image is None and bios is None:
        raise ImageError("give an IMAGE to run, --bios FIRMWARE, or --restore SNAPSHOT")
    if args.image is not None:
        image = _read(args.image, "image")
        assert image is not None
        machine.load(image, initrd=_read(args.initrd, "initrd"), dtb=dtb)
    else:
        machine.boot_bios(dtb)
    return machine


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
    import time

    from vgic import snapshot
    from vgic.machine.loader import ImageError
    from vgic.machine.virt import ExitStatus
    from vgic.tools import report as report_mod
    from vgic.tools.trace import Tracer

    try:
        nvme_disks(args)
    except SpecError as e:
        print(f"vgic run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if (args.restore or args.snapshot_on or args.migrate_on) and (args.nvme or args.drive or args.device or args.pci):
        print("vgic run: error: snapshots do not hold PCI device state: no --nvme, -device or --pci with "
              "--restore, --snapshot-on or --migrate-on", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    try:
        machine = _build(args)
    except SpecError as e:
        print(f"vgic run: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ImageError, ValueError, snapshot.SnapshotError) as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer
    tracer = None
    trace_file = None

    def attach(m: Any) -> None:
        nonlocal tracer
        m.attach_input(stdin)
        if trace_file is not None:
            tracer = Tracer(m.log, trace_file, "json" if args.trace.endswith(".json") else "text",
                            lambda: m.current_cpu, len(m.cpus))  # fmt: skip

    if args.trace:
        trace_file = open(args.trace, "w")  # noqa: SIM115 - closed below
    attach(machine)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    pause = args.snapshot_on[0] if args.snapshot_on else args.migrate_on
    if pause:
        machine.pause_on(pause)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = machine.run(timeout=left)
        if result.status is not ExitStatus.PAUSED:
            break
        if args.snapshot_on:
            snapshot.save_machine(machine, args.snapshot_on[1])
            print(f"\nvgic: snapshot written to {args.snapshot_on[1]}", file=sys.stderr)
            break
        # migration: snapshot, tear down, restore into a new machine, go on
        blob = snapshot.machine_to_bytes(machine)
        if tracer is not None:
            tracer.close()
            tracer = None
        old = machine
        machine = snapshot.machine_from_bytes(blob)
        del old
        print(f"\nvgic: migrated ({len(blob)} bytes of state)", file=sys.stderr)
        attach(machine)
    if tracer is not None:
        tracer.close()
    if trace_file is not None:
        trace_file.close()
    status = result.status
    if status not in (ExitStatus.OFF, ExitStatus.PAUSED):
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
            Path(args.report_to).write_text(text + "\n")
        else:
            print(text, file=sys.stderr)
    if args.decode:
        for n in range(len(machine.gic.its)):
            print(f"== ITS {n} command queue", file=sys.stderr)
            print(live_queue(machine.gic, n), file=sys.stderr)
    if args.inspect:
        from vgic.tools import inspector

        print(inspector.report(machine.gic), file=sys.stderr)
    return 0 if status is ExitStatus.PAUSED else int(status)


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
    creadr, cwriter = its.read_CREADR(0), its.read_CWRITER(0)
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


def _decode(args: argparse.Namespace) -> int:
    from vgic import snapshot
    from vgic.tools.decode import decode_queue

    marks: dict[int, str] = {}
    typer = None
    ncpus = None
    if args.snapshot:
        try:
            machine = snapshot.load_machine(args.snapshot)
        except snapshot.SnapshotError as e:
            print(f"vgic: {e}", file=sys.stderr)
            return EXIT_ERROR
        text = live_queue(machine.gic, args.its, args.all)
        print(text)
        return 3 if args.strict and "  !! " in text else 0
    else:
        try:
            data = Path(args.file).read_bytes()[args.offset :]
        except (OSError, TypeError) as e:
            print(f"vgic: cannot read {args.file}: {e}", file=sys.stderr)
            return EXIT_ERROR
        if args.length is not None:
            data = data[: args.length]
    bad = 0
    for line in decode_queue(data, 0, typer, ncpus, marks):
        if not args.all and not args.snapshot and line.command.name == "OPCODE_0x00" and not any(line.command.words()):
            continue  # an empty slot
        bad += bool(line.problems)
        print(line)
    return 3 if bad and args.strict else 0


def _asm(args: argparse.Namespace) -> int:
    from vgic.tools.decode import assemble

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    try:
        data = assemble(text.splitlines())
    except ValueError as e:
        print(f"vgic: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.output == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.output).write_bytes(data)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vgic import snapshot
    from vgic.tools import inspector

    try:
        machine = snapshot.load_machine(args.snapshot)
        gic = machine.gic
    except snapshot.SnapshotError as e:
        try:
            gic = snapshot.load_gic(args.snapshot)
        except snapshot.SnapshotError:
            print(f"vgic: {e}", file=sys.stderr)
            return EXIT_ERROR
    print(inspector.report(gic, limit=args.limit))
    return 0


def main(argv: list[str] | None = None) -> int:
    from vgic.profiles import DEFAULT_PROFILE, PROFILES

    parser = argparse.ArgumentParser(prog="vgic", description="GICv3 ITS reference model and virt machine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the model-level narrated demo")

    run = sub.add_parser("run", help="run an aarch64 guest on the virt machine (QEMU-like options)")
    run.add_argument("image", nargs="?", help="ELF, arm64 Image or flat binary (as QEMU's -kernel)")
    run.add_argument("-m", "--memory", default="512M", help="RAM size (default 512M)")
    run.add_argument("--smp", type=int, default=1, help="number of CPUs (default 1)")
    run.add_argument("--append", help="kernel command line (/chosen/bootargs)")
    run.add_argument("--dtb", help="use this device tree blob instead of generating one")
    run.add_argument("--initrd", help="initial ramdisk")
    run.add_argument("--bios", help="firmware run from the flash at address 0 (as QEMU's -bios)")
    run.add_argument("--timeout", type=float, help="stop after this many seconds (exit status 5)")
    run.add_argument("--profile", choices=tuple(PROFILES), default=DEFAULT_PROFILE,
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
    run.add_argument("--migrate-on", metavar="PAUSE",
                     help="at PAUSE, snapshot, tear the machine down, restore into a new one and go on")  # fmt: skip
    run.add_argument("--trace", metavar="FILE",
                     help="write a trace: Chrome/Perfetto JSON if FILE ends in .json, else plain text")  # fmt: skip
    run.add_argument(
        "--report",
        action="store_true",
        help="at exit, print the report of ITS errors and questionable guest actions (stderr)",
    )
    run.add_argument("--report-to", metavar="FILE", help="write that report to FILE instead")  # fmt: skip
    run.add_argument("--inspect", action="store_true", help="at exit, print the ITS tables and LPI state")
    run.add_argument("--decode", action="store_true", help="at exit, disassemble the ITS command queues")
    run.add_argument("--nvme", action="append", metavar="FILE", help="an NVMe disk on a raw image FILE (PCIe)")
    run.add_argument("-drive", action="append", metavar="SPEC",
                     help="QEMU's spelling: file=FILE,if=none,id=ID,format=raw (with -device nvme,drive=ID)")  # fmt: skip
    run.add_argument("-device", action="append", metavar="SPEC", help="QEMU's spelling: nvme,drive=ID[,serial=S]")
    run.add_argument("--pci", action="append", metavar="MODULE:FACTORY",
                     help="plug in a Python PCI device: FACTORY() from MODULE (dotted name or .py file)")  # fmt: skip

    dec = sub.add_parser("decode", help="disassemble an ITS command queue")
    dec.add_argument("file", nargs="?", help="a file of 32-byte commands or a memory dump")
    dec.add_argument("--offset", type=lambda s: int(s, 0), default=0, help="where the queue starts in FILE")
    dec.add_argument("--length", type=lambda s: int(s, 0), help="bytes to decode")
    dec.add_argument("--snapshot", help="decode the command queue of a machine snapshot")
    dec.add_argument("--its", type=int, default=0, help="which ITS of the snapshot")
    dec.add_argument("--all", action="store_true", help="show empty slots and the whole queue")
    dec.add_argument("--strict", action="store_true", help="exit status 3 if any command has a problem")

    asm = sub.add_parser("asm", help="assemble ITS commands from text (one per line) into 32-byte commands")
    asm.add_argument("input", help="text file, or - for stdin")
    asm.add_argument("-o", "--output", default="-", help="output file (default stdout)")

    ins = sub.add_parser("inspect", help="print the ITS tables and LPI state of a snapshot")
    ins.add_argument("snapshot")
    ins.add_argument("--limit", type=int, default=1 << 20, help="most table entries scanned per table")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from vgic import demo

        demo.run()
        return 0
    if args.command == "decode":
        if not args.file and not args.snapshot:
            parser.error("decode needs FILE or --snapshot")
        return _decode(args)
    handlers = {"run": _run, "asm": _asm, "inspect": _inspect}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
