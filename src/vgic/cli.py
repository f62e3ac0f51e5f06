"""The ``vgic`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgic", description="GICv3 ITS reference model and virt machine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the built-in demo")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from vgic import demo

        demo.run()
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
