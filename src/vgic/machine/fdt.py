"""The device tree of the virt machine, built with libfdt (pylibfdt).

Nodes follow what QEMU's ``-M virt,gic-version=3,its=on`` provides for these devices
(docs/machine.md): memory, cpus with their MPIDR in ``reg``, psci, the GICv3 ``intc``
with its ``its`` child (msi-controller), the architected timer, the PL011 with
``/chosen/stdout-path``, the APB clock, and the 32 virtio-mmio slots (present, empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import libfdt

from vgic.gic import GicConfig
from vgic.gicv3.redistributor import RD_FRAME_SIZE
from vgic.pci.host import HostLayout

PL011_BASE = 0x0900_0000
PL011_SPI = 1
VIRTIO_BASE = 0x0A00_0000
VIRTIO_SLOTS = 32
VIRTIO_SLOT_SIZE = 0x200
VIRTIO_SPI_BASE = 16

PHANDLE_INTC, PHANDLE_ITS, PHANDLE_CLK = 0x8001, 0x8002, 0x8000

GIC_SPI, GIC_PPI = 0, 1
IRQ_LEVEL_HI, IRQ_EDGE_RISING = 4, 1


@dataclass(frozen=True)
class FdtOptions:
    ram_base: int
    ram_size: int
    mpidrs: tuple[int, ...]
    gic: GicConfig
    bootargs: str = ""
    initrd: tuple[int, int] | None = None  # (start, end)
    psci_method: str = "hvc"
    pcie: HostLayout | None = None  # the generic ECAM host bridge, when the machine has one


def _cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def _reg(addr: int, size: int) -> bytes:
    return _cells(addr >> 32, addr & 0xFFFFFFFF, size >> 32, size & 0xFFFFFFFF)


def build(opts: FdtOptions) -> bytes:
    """The flattened device tree blob."""
    sw = libfdt.FdtSw()
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_u32("#address-cells", 2)
    sw.property_u32("#size-cells", 2)
    sw.property_string("compatible", "linux,dummy-virt")
    sw.property_string("model", "linux,dummy-virt")
    sw.property_u32("interrupt-parent", PHANDLE_INTC)

    sw.begin_node("psci")
    sw.property("compatible", b"arm,psci-1.0\0arm,psci-0.2\0arm,psci\0")
    sw.property_string("method", opts.psci_method)
    sw.property_u32("cpu_suspend", 0xC4000001)
    sw.property_u32("cpu_off", 0x84000002)
    sw.property_u32("cpu_on", 0xC4000003)
    sw.property_u32("migrate", 0xC4000005)
    sw.end_node()

    sw.begin_node(f"memory@{opts.ram_base:x}")
    sw.property_string("device_type", "memory")
    sw.property("reg", _reg(opts.ram_base, opts.ram_size))
    sw.end_node()

    sw.begin_node("cpus")
    sw.property_u32("#address-cells", 1)
    sw.property_u32("#size-cells", 0)
    for mpidr in opts.mpidrs:
        sw.begin_node(f"cpu@{mpidr:x}")
        sw.property_string("device_type", "cpu")
        sw.property_string("compatible", "arm,cortex-a57")
        sw.property_u32("reg", mpidr)
        if len(opts.mpidrs) > 1:
            sw.property_string("enable-method", "psci")
        sw.end_node()
    sw.end_node()

    g = opts.gic
    sw.begin_node(f"intc@{g.gicd_base:x}")
    sw.property_u32("phandle", PHANDLE_INTC)
    sw.property("reg", _reg(g.gicd_base, 0x10000) + _reg(g.gicr_base, RD_FRAME_SIZE * g.num_cpus))
    sw.property_u32("#redistributor-regions", 1)
    sw.property_string("compatible", "arm,gic-v3")
    sw.property_u32("#size-cells", 2)
    sw.property_u32("#address-cells", 2)
    sw.property("ranges", b"")
    sw.property("interrupt-controller", b"")
    sw.property_u32("#interrupt-cells", 3)
    # no "interrupts": QEMU lists the maintenance interrupt only with virtualization=on
    for base in g.its_bases[: len(g.its)]:
        sw.begin_node(f"its@{base:x}")
        sw.property_u32("phandle", PHANDLE_ITS)
        sw.property("reg", _reg(base, 0x20000))
        sw.property_u32("#msi-cells", 1)
        sw.property("msi-controller", b"")
        sw.property_string("compatible", "arm,gic-v3-its")
        sw.end_node()
    sw.end_node()

    sw.begin_node("timer")
    sw.property("interrupts", _cells(GIC_PPI, 13, IRQ_LEVEL_HI, GIC_PPI, 14, IRQ_LEVEL_HI,
                                     GIC_PPI, 11, IRQ_LEVEL_HI, GIC_PPI, 10, IRQ_LEVEL_HI))  # fmt: skip
    sw.property("always-on", b"")
    sw.property("compatible", b"arm,armv8-timer\0arm,armv7-timer\0")
    sw.end_node()

    sw.begin_node("apb-pclk")
    sw.property_u32("phandle", PHANDLE_CLK)
    sw.property_string("clock-output-names", "clk24mhz")
    sw.property_u32("clock-frequency", 24_000_000)
    sw.property_u32("#clock-cells", 0)
    sw.property_string("compatible", "fixed-clock")
    sw.end_node()

    sw.begin_node(f"pl011@{PL011_BASE:x}")
    sw.property("clock-names", b"uartclk\0apb_pclk\0")
    sw.property("clocks", _cells(PHANDLE_CLK, PHANDLE_CLK))
    sw.property("interrupts", _cells(GIC_SPI, PL011_SPI, IRQ_LEVEL_HI))
    sw.property("reg", _reg(PL011_BASE, 0x1000))
    sw.property("compatible", b"arm,pl011\0arm,primecell\0")
    sw.end_node()

    for slot in range(VIRTIO_SLOTS):
        base = VIRTIO_BASE + slot * VIRTIO_SLOT_SIZE
        sw.begin_node(f"virtio_mmio@{base:x}")
        sw.property("dma-coherent", b"")
        sw.property("interrupts", _cells(GIC_SPI, VIRTIO_SPI_BASE + slot, IRQ_EDGE_RISING))
        sw.property("reg", _reg(base, VIRTIO_SLOT_SIZE))
        sw.property_string("compatible", "virtio,mmio")
        sw.end_node()

    if opts.pcie is not None and g.its:
        _pcie(sw, opts.pcie)

    sw.begin_node("chosen")
    sw.property_string("stdout-path", f"/pl011@{PL011_BASE:x}")
    if opts.bootargs:
        sw.property_string("bootargs", opts.bootargs)
    if opts.initrd is not None:
        sw.property("linux,initrd-start", (opts.initrd[0]).to_bytes(8, "big"))
        sw.property("linux,initrd-end", (opts.initrd[1]).to_bytes(8, "big"))
    sw.end_node()

    sw.end_node()
    return bytes(sw.as_fdt().as_bytearray())


def _pcie(sw: libfdt.FdtSw, lay: HostLayout) -> None:
    """QEMU virt's ``pcie@10000000`` node: ECAM, ranges, msi-map onto the ITS, INTx map.

    ``ranges`` entries are (PCI address: 3 cells, CPU address: 2, size: 2); the first PCI
    cell's space code is 01 I/O, 10 32-bit memory, 11 64-bit memory (IEEE 1275 PCI binding).
    ``interrupt-map`` gives INTA..INTD (1..4) of device slot s the SPI
    ``intx_spi_base + (s + pin - 1) % 4``, level-high; the mask keeps slot bits 11..12.
    """
    sw.begin_node(f"pcie@{lay.mmio32_base:x}")
    imap: list[int] = []
    for slot in range(4):
        for pin in range(1, 5):
            spi = lay.intx_spi_base + (slot + pin - 1) % 4
            imap += [slot << 11, 0, 0, pin, PHANDLE_INTC, 0, 0, GIC_SPI, spi, IRQ_LEVEL_HI]
    sw.property("interrupt-map-mask", _cells(0x1800, 0, 0, 7))
    sw.property("interrupt-map", _cells(*imap))
    sw.property_u32("#interrupt-cells", 1)
    ranges = [
        (0x0100_0000, 0, lay.pio_base, lay.pio_size),
        (0x0200_0000, lay.mmio32_base, lay.mmio32_base, lay.mmio32_size),
        (0x0300_0000, lay.mmio64_base, lay.mmio64_base, lay.mmio64_size),
    ]
    sw.property("ranges", b"".join(_cells(space, pci >> 32, pci & 0xFFFFFFFF) + _reg(cpu, size)
                                   for space, pci, cpu, size in ranges))  # fmt: skip
    sw.property("reg", _reg(lay.ecam_base, lay.ecam_size))
    sw.property("msi-map", _cells(0, PHANDLE_ITS, 0, 0x10000))
    sw.property("dma-coherent", b"")
    sw.property("bus-range", _cells(0, lay.buses - 1))
    sw.property_u32("linux,pci-domain", 0)
    sw.property_u32("#size-cells", 2)
    sw.property_u32("#address-cells", 3)
    sw.property_string("device_type", "pci")
    sw.property_string("compatible", "pci-host-ecam-generic")
    sw.end_node()
