"""``python -m vgic``: the ``vgic`` command line."""

from vgic.cli import main

raise SystemExit(main())
