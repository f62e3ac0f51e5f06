"""Example devices built on :mod:`vgic.pci` (docs/pci.md)."""
