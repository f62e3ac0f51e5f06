"""A generic ECAM PCI Express host bridge laid out as QEMU's virt machine has it.

:class:`PcieHost` is a ``pci-host-ecam-generic`` root complex with one root bus (bus 0):

* **ECAM** (PCIe Base 4.0, 7.2.2): configuration space at ``ecam_base`` + (bus << 20 |
  device << 15 | function << 12 | register). A function that is not there reads as
  all-ones (Vendor ID 0xFFFF), so a scan finds nothing; writes to it are dropped.
* **Windows**: a 32-bit and a 64-bit memory window (bus address = CPU address) and a
  64 KiB I/O window (bus address 0). An access is routed to the function whose BAR
  contains it, if that function's Command register enables the space (Memory Space /
  I/O Space Enable, PCI 3.0 6.2.2); anything else reads all-ones, as an Unsupported
  Request completion does, and a write is dropped, both with a diagnostic.
* **INTx**: INTA..INTD of device ``d`` reach SPI ``intx_spi_base`` + (d + pin - 1) % 4
  (the swizzle the device tree's ``interrupt-map`` describes), level-sensitive, shared.
* **00:00.0** is the host bridge function itself (vendor 0x1b36, device 0x0008, class
  060000, as QEMU's).
* :meth:`PcieHost.poll` runs the functions' deferred work (bounded per call).

The host knows nothing of CPUs. Its :attr:`regions` are plain ``(base, size, read,
write)`` tuples for whatever maps MMIO, and interrupt messages leave through an
:class:`~vgic.pci.function.MsiSink`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vgic.events import EventLog, Kind
from vgic.memory import GuestMemory
from vgic.pci.function import (
    CMD_IO_SPACE,
    CMD_MEMORY_SPACE,
    HEADER_TYPE,
    INTERRUPT_PIN,
    BarKind,
    MsiSink,
    PciFunction,
)

# QEMU virt's layout (hw/arm/virt.c's memory map, as its device tree shows it)
ECAM_BASE, ECAM_SIZE = 0x40_1000_0000, 0x1000_0000  # "high" ECAM: 256 buses
MMIO32_BASE, MMIO32_SIZE = 0x1000_0000, 0x2EFF_0000
PIO_BASE, PIO_SIZE = 0x3EFF_0000, 0x1_0000
MMIO64_BASE, MMIO64_SIZE = 0x80_0000_0000, 0x80_0000_0000
INTX_SPI_BASE = 3  # INTA..INTD swizzled onto SPIs 3..6 (INTIDs 35..38)
MAX_DEVICES = 32

HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE = 0x1B36, 0x0008  # Red Hat, QEMU PCIe host bridge
CLASS_HOST_BRIDGE = 0x060000

ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


@dataclass(frozen=True)
class HostLayout:
    """Where the host's windows are (CPU physical addresses) and its INTx SPIs."""

    ecam_base: int = ECAM_BASE
    ecam_size: int = ECAM_SIZE
    mmio32_base: int = MMIO32_BASE
    mmio32_size: int = MMIO32_SIZE
    pio_base: int = PIO_BASE
    pio_size: int = PIO_SIZE
    mmio64_base: int = MMIO64_BASE
    mmio64_size: int = MMIO64_SIZE
    intx_spi_base: int = INTX_SPI_BASE

    @property
    def buses(self) -> int:
        return self.ecam_size >> 20


class HostBridge(PciFunction):
    """00:00.0: the host bridge's own function (no BARs, no interrupts)."""

    def __init__(self) -> None:
        super().__init__(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, CLASS_HOST_BRIDGE, interrupt_pin=0,
                         name="host-bridge")  # fmt: skip


Region = tuple[int, int, Callable[[int, int], int], Callable[[int, int, int], None]]
_Decode = tuple[int, int, PciFunction, int]  # start, end, function, BAR index


class PcieHost:
    """The root complex: ECAM, windows, INTx routing, the root bus's functions."""

    def __init__(
        self,
        memory: GuestMemory,
        log: EventLog,
        sink: MsiSink,
        set_spi: Callable[[int, bool], None] | None = None,
        layout: HostLayout | None = None,
    ) -> None:
        self.memory = memory
        self.log = log
        self.sink = sink
        self.layout = layout or HostLayout()
        self._set_spi = set_spi
        self.functions: dict[int, PciFunction] = {}  # devfn -> function, bus 0
        self._mem: list[_Decode] = []
        self._io: list[_Decode] = []
        self._intx: dict[int, set[int]] = {}  # SPI -> devfns asserting it
        self._pollers: list[PciFunction] = []
        self.plug(HostBridge(), slot=0)

    # == the bus =========================================================================
    def plug(self, function: PciFunction, slot: int | None = None, fn: int = 0) -> PciFunction:
        """Put ``function`` at 00:slot.fn (the first free slot when ``slot`` is None)."""
        if slot is None:
            slot = next((s for s in range(1, MAX_DEVICES) if s << 3 | fn not in self.functions), None)
            if slot is None:
                raise ValueError("the root bus is full")
        if not 0 <= slot < MAX_DEVICES or not 0 <= fn < 8:
            raise ValueError("slot is 0..31 and function 0..7")
        devfn = slot << 3 | fn
        if devfn in self.functions:
            raise ValueError(f"00:{slot:02x}.{fn} is taken")
        if function.bus is not None:
            raise ValueError("the function is already plugged in")
        function.bus = self
        function.bus_number = 0
        function.devfn = devfn
        self.functions[devfn] = function
        if fn:  # function 0 of a multi-function device says so (Header Type bit 7)
            zero = self.functions.get(slot << 3)
            if zero is not None:
                zero.config.set(HEADER_TYPE, 1, zero.config.get(HEADER_TYPE, 1) | 0x80)
        if type(function).poll is not PciFunction.poll:
            self._pollers.append(function)
        self.decode_changed()
        return function

    @property
    def regions(self) -> list[Region]:
        """(base, size, read(offset, size), write(offset, size, value)) to map as MMIO."""
        lay = self.layout
        return [
            (lay.ecam_base, lay.ecam_size, self.ecam_read, self.ecam_write),
            (lay.mmio32_base, lay.mmio32_size, self._mmio32_read, self._mmio32_write),
            (lay.pio_base, lay.pio_size, self._pio_read, self._pio_write),
            (lay.mmio64_base, lay.mmio64_size, self._mmio64_read, self._mmio64_write),
        ]

    def poll(self) -> bool:
        """Every function's deferred work (the machine calls this between slices).
        True if any function did some."""
        busy = False
        for function in self._pollers:
            busy = function.poll() or busy
        return busy

    def reset(self) -> None:
        for function in self.functions.values():
            function.reset()

    def _diag(self, message: str, rule: str | None = None) -> None:
        self.log.record(Kind.DIAGNOSTIC, "pcie", message, rule=rule)

    # == ECAM ============================================================================
    def _config_target(self, offset: int, size: int) -> tuple[PciFunction | None, int]:
        bus, devfn, reg = offset >> 20, offset >> 12 & 0xFF, offset & 0xFFF
        if size not in (1, 2, 4) or reg % size:
            self._diag(f"{size}-byte configuration access at {bus:02x}:{devfn >> 3:02x}.{devfn & 7} register "
                       f"{reg:#x}: not a naturally aligned 1, 2 or 4-byte access", "PCIe Base 7.2.2")  # fmt: skip
            return None, reg
        if bus != 0:
            return None, reg
        return self.functions.get(devfn), reg

    def ecam_read(self, offset: int, size: int) -> int:
        function, reg = self._config_target(offset, size)
        if function is None:
            return ALL_ONES.get(size, 0xFFFF_FFFF)
        return function.config_read(reg, size)

    def ecam_write(self, offset: int, size: int, value: int) -> None:
        function, reg = self._config_target(offset, size)
        if function is not None:
            function.config_write(reg, size, value & ALL_ONES[size])

    # == windows =========================================================================
    def decode_changed(self) -> None:
        """Rebuild the BAR decode from every function's BARs and Command register."""
        mem: list[_Decode] = []
        io: list[_Decode] = []
        for function in self.functions.values():
            cmd = function.command
            for index, bar in function.bars.items():
                start = function.bar_address(index)
                if bar.kind is BarKind.IO:
                    if cmd & CMD_IO_SPACE:
                        io.append((start, start + bar.size, function, index))
                elif cmd & CMD_MEMORY_SPACE:
                    mem.append((start, start + bar.size, function, index))
        self._mem, self._io = mem, io

    def _find(self, table: list[_Decode], address: int) -> _Decode | None:
        for d in table:
            if d[0] <= address < d[1]:
                return d
        return None

    def mem_read(self, address: int, size: int) -> int:
        """A read of bus memory address ``address`` (what the windows forward)."""
        d = self._find(self._mem, address)
        if d is None:
            self._diag(f"read of {size} bytes at PCI memory address {address:#x}: no BAR claims it (all-ones)")
            return ALL_ONES.get(size, 0xFFFF_FFFF)
        return d[2].mmio_read(d[3], address - d[0], size)

    def mem_write(self, address: int, size: int, value: int) -> None:
        d = self._find(self._mem, address)
        if d is None:
            self._diag(f"write of {value:#x} at PCI memory address {address:#x}: no BAR claims it (dropped)")
            return
        d[2].mmio_write(d[3], address - d[0], size, value)

    def io_read(self, port: int, size: int) -> int:
        d = self._find(self._io, port)
        if d is None:
            self._diag(f"read of I/O port {port:#x}: no BAR claims it (all-ones)")
            return ALL_ONES.get(size, 0xFFFF_FFFF)
        return d[2].mmio_read(d[3], port - d[0], size)

    def io_write(self, port: int, size: int, value: int) -> None:
        d = self._find(self._io, port)
        if d is None:
            self._diag(f"write of {value:#x} to I/O port {port:#x}: no BAR claims it (dropped)")
            return
        d[2].mmio_write(d[3], port - d[0], size, value)

    def _mmio32_read(self, offset: int, size: int) -> int:
        return self.mem_read(self.layout.mmio32_base + offset, size)

    def _mmio32_write(self, offset: int, size: int, value: int) -> None:
        self.mem_write(self.layout.mmio32_base + offset, size, value)

    def _mmio64_read(self, offset: int, size: int) -> int:
        return self.mem_read(self.layout.mmio64_base + offset, size)

    def _mmio64_write(self, offset: int, size: int, value: int) -> None:
        self.mem_write(self.layout.mmio64_base + offset, size, value)

    def _pio_read(self, offset: int, size: int) -> int:
        return self.io_read(offset, size)

    def _pio_write(self, offset: int, size: int, value: int) -> None:
        self.io_write(offset, size, value)

    # == INTx ============================================================================
    def intx_spi(self, function: PciFunction) -> int | None:
        """The SPI number (not INTID) a function's INTx pin reaches, or None (no pin)."""
        pin = function.config.get(INTERRUPT_PIN, 1)
        if not 1 <= pin <= 4:
            return None
        return self.layout.intx_spi_base + ((function.devfn >> 3) + pin - 1) % 4

    def set_intx(self, function: PciFunction, level: bool) -> None:
        spi = self.intx_spi(function)
        if spi is None:
            return
        holders = self._intx.setdefault(spi, set())
        before = bool(holders)
        if level:
            holders.add(function.devfn)
        else:
            holders.discard(function.devfn)
        if bool(holders) != before and self._set_spi is not None:
            self._set_spi(32 + spi, bool(holders))

    # == save/restore ====================================================================
    def save_state(self) -> dict[str, object]:
        return {f"{devfn}": f.save_state() for devfn, f in self.functions.items()}

    def load_state(self, state: dict[str, dict[str, object]]) -> None:
        for key, s in state.items():
            function = self.functions.get(int(key))
            if function is None:
                raise ValueError(f"the snapshot has a PCI function at devfn {key} this machine lacks")
            function.load_state(s)
        self.decode_changed()
