"""The ``vgic`` command line: ``vgic run`` (a guest on the virt machine) and ``vgic demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> int:
    """QEMU-style memory sizes: 512M, 1G, 256 (MiB)."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t) << 20


def _run(args: argparse.Namespace) -> int:
    from vgic.its.its import ErrorPolicy, ItsConfig
    from vgic.machine.loader import ImageError
    from vgic.machine.virt import ExitStatus, MachineConfig, VirtMachine

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read {what} {path}: {e.strerror}") from None

    try:
        config = MachineConfig(
            memory=_size(args.memory),
            smp=args.smp,
            bootargs=args.append or "",
            its=ItsConfig(error_policy=ErrorPolicy(args.its_errors)),
        )
        bios = read(args.bios, "firmware")
        machine = VirtMachine(config, bios=bios)
        dtb = read(args.dtb, "device tree")
        if args.image is None and bios is None:
            raise ImageError("give an IMAGE to run, or --bios FIRMWARE")
        if args.image is not None:
            image = read(args.image, "image")
            assert image is not None
            machine.load(image, initrd=read(args.initrd, "initrd"), dtb=dtb)
        else:
            machine.boot_bios(dtb)
    except (ImageError, ValueError) as e:
        print(f"vgic: {e}", file=sys.stderr)
        return int(ExitStatus.ERROR)
    machine.attach_input(None if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer)
    result = machine.run(timeout=args.timeout)
    if result.status is not ExitStatus.OFF:
        print(f"\nvgic: {result.reason} (exit status {int(result.status)})", file=sys.stderr)
        for cpu in machine.cpus:
            print(f"vgic:   CPU{cpu.index} {cpu.state.value} PC={cpu.pc:#x}", file=sys.stderr)
        if machine.last_exception:
            print(f"vgic:   last exception: {machine.last_exception}", file=sys.stderr)
        for ev in machine.log.errors[-5:]:
            print(f"vgic:   ITS error: {ev}", file=sys.stderr)
    return int(result.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgic", description="GICv3 ITS reference model and virt machine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the built-in demo")
    run = sub.add_parser("run", help="run an aarch64 guest on the virt machine (QEMU-like options)")
    run.add_argument("image", nargs="?", help="ELF, arm64 Image or flat binary (as QEMU's -kernel)")
    run.add_argument("-m", "--memory", default="512M", help="RAM size (default 512M)")
    run.add_argument("--smp", type=int, default=1, help="number of CPUs (default 1)")
    run.add_argument("--append", help="kernel command line (/chosen/bootargs)")
    run.add_argument("--dtb", help="use this device tree blob instead of generating one")
    run.add_argument("--initrd", help="initial ramdisk")
    run.add_argument("--bios", help="firmware run from the flash at address 0 (as QEMU's -bios)")
    run.add_argument("--timeout", type=float, help="stop after this many seconds (exit status 5)")
    run.add_argument("--its-errors", choices=("stall", "continue"), default="stall",
                     help="ITS command error policy (default stall)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "demo":
        from vgic import demo

        demo.run()
        return 0
    if args.command == "run":
        return _run(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
