"""vgic: an executable reference model of the Arm GICv3 ITS, with a virt machine that
runs real aarch64 guests against it (README.md)."""

__version__ = "0.1.0"
