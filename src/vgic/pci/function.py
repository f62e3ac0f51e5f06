"""A PCI Express function: configuration space, BARs, capabilities, MSI/MSI-X, INTx, DMA.

:class:`PciFunction` is what a device model subclasses. It owns a 4 KiB configuration
space (PCI Express Base 4.0, 7.2.2: ECAM gives every function 4 KiB) with the type-0
header (PCI Local Bus 3.0, 6.1), BARs sized by write masks (6.2.5.1), a capability list
(6.7) and, when asked for, the PCI Express capability (PCIe Base 7.5.3), MSI (PCI 3.0
6.8.1) and MSI-X (6.8.2) with its table and PBA in a BAR. A device model implements
``bar_read``/``bar_write`` for its registers and calls:

* :meth:`PciFunction.signal` to send interrupt vector ``n``: an MSI-X or MSI message, a
  memory write of the message data to the message address with the function's
  requester ID (bus << 8 | device << 3 | function), held pending while masked;
* :meth:`PciFunction.set_intx` for the legacy level-sensitive INTx pin;
* :meth:`PciFunction.dma_read` / :meth:`PciFunction.dma_write` for bus-master accesses to
  guest memory, refused while Command.Bus Master Enable is 0 (PCIe Base 7.5.1.1.3).

Everything a guest can do wrong is reported as a ``Kind.DIAGNOSTIC`` event and answered
as the bus would (all-ones, dropped write); nothing raises out of the model. The module
knows nothing of CPUs: the bus a function is plugged into (:class:`Bus`) is a protocol,
implemented by :class:`vgic.pci.host.PcieHost`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from vgic.events import EventLog, Kind
from vgic.memory import GuestMemory, MemoryFault

CONFIG_SIZE = 4096  # PCIe extended configuration space per function

# Type-0 header offsets (PCI Local Bus 3.0, 6.1)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_CODE, CACHE_LINE_SIZE, LATENCY_TIMER = 0x08, 0x09, 0x0C, 0x0D
HEADER_TYPE, BIST, BAR0 = 0x0E, 0x0F, 0x10
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, EXPANSION_ROM, CAPABILITIES_POINTER = 0x2C, 0x2E, 0x30, 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D

# Command register bits (6.2.2)
CMD_IO_SPACE, CMD_MEMORY_SPACE, CMD_BUS_MASTER = 1 << 0, 1 << 1, 1 << 2
CMD_PARITY_ERROR_RESPONSE, CMD_SERR, CMD_INTX_DISABLE = 1 << 6, 1 << 8, 1 << 10
# Status register bits (6.2.3)
STS_INTERRUPT, STS_CAPABILITIES_LIST = 1 << 3, 1 << 4
STS_W1C = 0xF900  # master data parity error, signalled/received target/master abort, SERR, parity

# Capability IDs (PCI Code and ID Assignment)
CAP_ID_MSI, CAP_ID_EXP, CAP_ID_MSIX = 0x05, 0x10, 0x11

# Interrupt pins (Interrupt Pin register: 1 = INTA# ... 4 = INTD#)
INTA, INTB, INTC, INTD = 1, 2, 3, 4


class ExpressType(enum.IntEnum):
    """PCI Express Capabilities register, Device/Port Type (PCIe Base 7.5.3.2)."""

    ENDPOINT = 0x0
    LEGACY_ENDPOINT = 0x1
    RC_INTEGRATED_ENDPOINT = 0x9


class BarKind(enum.Enum):
    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


@dataclass(frozen=True)
class Bar:
    """A Base Address Register (PCI 3.0 6.2.5.1): its size is a power of two."""

    index: int
    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if self.size & (self.size - 1) or not 0 <= self.index <= 5:
            raise ValueError("a BAR's size is a power of two and its index 0..5")
        if self.kind is BarKind.IO and not 4 <= self.size <= 256:
            raise ValueError("an I/O BAR is 4 to 256 bytes")
        if self.kind is not BarKind.IO and self.size < 16:
            raise ValueError("a memory BAR is at least 16 bytes")
        if self.kind is BarKind.MEM64 and self.index == 5:
            raise ValueError("a 64-bit BAR takes two BAR slots")
        if self.kind is BarKind.MEM32 and self.size > 1 << 31:
            raise ValueError("a 32-bit BAR is at most 2 GiB")

    @property
    def flags(self) -> int:
        """The read-only low bits: I/O space, type, prefetchable."""
        if self.kind is BarKind.IO:
            return 1
        return (0b10 << 1 if self.kind is BarKind.MEM64 else 0) | (8 if self.prefetchable else 0)


class MsiSink(Protocol):
    """Where a function's memory writes of interrupt messages go (the machine's fabric).

    An address on an ITS's GITS_TRANSLATER becomes an MSI with DeviceID =
    ``requester_id``; any other address is an ordinary 32-bit memory write. Never raises.
    """

    def msi_write(self, address: int, data: int, requester_id: int) -> None: ...


class Bus(Protocol):
    """What a function sees of the bus it is plugged into (implemented by PcieHost)."""

    memory: GuestMemory
    log: EventLog
    sink: MsiSink

    def decode_changed(self) -> None:
        """A BAR or the Command register changed: rebuild the address decode."""

    def set_intx(self, function: PciFunction, level: bool) -> None:
        """The function's INTx pin is now at ``level``."""


class ConfigSpace:
    """4 KiB of configuration registers with per-byte write and write-1-to-clear masks."""

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        """Set a register's value, whatever its masks say (the device's own view)."""
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_masks(self, offset: int, size: int, wmask: int = 0, w1c: int = 0) -> None:
        self.wmask[offset : offset + size] = wmask.to_bytes(size, "little")
        self.w1cmask[offset : offset + size] = w1c.to_bytes(size, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: writable bits take the value, W1C bits written as 1 clear."""
        for i in range(size):
            o, b = offset + i, value >> (8 * i) & 0xFF
            self.data[o] = (self.data[o] & ~self.wmask[o] | b & self.wmask[o]) & ~(b & self.w1cmask[o]) & 0xFF


# -- MSI (PCI 3.0 6.8.1) ----------------------------------------------------------------
MSI_CTRL_ENABLE, MSI_CTRL_64BIT, MSI_CTRL_PVM = 1 << 0, 1 << 7, 1 << 8
# -- MSI-X (PCI 3.0 6.8.2) --------------------------------------------------------------
MSIX_CTRL_FUNCTION_MASK, MSIX_CTRL_ENABLE = 1 << 14, 1 << 15
MSIX_ENTRY_SIZE = 16
MSIX_VECTOR_CONTROL_MASK = 1


class PciFunction:
    """One PCI Express function. Subclass it; see the module docstring and docs/pci.md.

    ``name`` appears in the event log as the source ``name@BB:DD.F``.
    """

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = INTA,
        name: str = "pci",
    ) -> None:
        self.name = name
        self.config = c = ConfigSpace()
        self.bus: Bus | None = None
        self.devfn = 0
        self.bus_number = 0
        self.bars: dict[int, Bar] = {}
        self._cap_end = 0x40  # next free byte for a capability
        self._last_cap = CAPABILITIES_POINTER
        self.msi_offset: int | None = None
        self.msi_vectors = 0
        self.msix_offset: int | None = None
        self.msix_vectors = 0
        self.msix_bar = 0
        self.msix_table = 0
        self.msix_pba = 0
        self.express_offset: int | None = None
        self._msix_entries = bytearray()
        self._msix_pending = bytearray()
        self._intx = False
        c.set(VENDOR_ID, 2, vendor_id)
        c.set(DEVICE_ID, 2, device_id)
        c.set(REVISION_ID, 1, revision)
        c.set(CLASS_CODE, 3, class_code)
        c.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        c.set(SUBSYSTEM_ID, 2, subsystem_id)
        c.set(INTERRUPT_PIN, 1, interrupt_pin)
        c.set_masks(COMMAND, 2, CMD_IO_SPACE | CMD_MEMORY_SPACE | CMD_BUS_MASTER | CMD_PARITY_ERROR_RESPONSE
                    | CMD_SERR | CMD_INTX_DISABLE)  # fmt: skip
        c.set_masks(STATUS, 2, w1c=STS_W1C)
        c.set_masks(CACHE_LINE_SIZE, 1, 0xFF)
        c.set_masks(INTERRUPT_LINE, 1, 0xFF)

    # == identity ======================================================================
    @property
    def requester_id(self) -> int:
        """Bus << 8 | Device << 3 | Function: the ID on this function's memory writes."""
        return self.bus_number << 8 | self.devfn

    @property
    def address(self) -> str:
        return f"{self.bus_number:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"

    @property
    def source(self) -> str:
        return f"{self.name}@{self.address}"

    @property
    def command(self) -> int:
        return self.config.get(COMMAND, 2)

    @property
    def log(self) -> EventLog | None:
        return None if self.bus is None else self.bus.log

    def diag(self, message: str, rule: str = "") -> None:
        """Report a questionable guest action (never raises)."""
        if self.bus is not None:
            self.bus.log.record(Kind.DIAGNOSTIC, self.source, message, rule=rule or None)

    # == building (before the function is plugged in) ==================================
    def add_bar(self, bar: Bar) -> Bar:
        """Declare a BAR. Its address bits are writable down to its size (sizing)."""
        off = BAR0 + 4 * bar.index
        taken = set(self.bars) | {b.index + 1 for b in self.bars.values() if b.kind is BarKind.MEM64}
        if bar.index in taken or (bar.kind is BarKind.MEM64 and bar.index + 1 in taken):
            raise ValueError(f"BAR {bar.index} is already in use")
        self.bars[bar.index] = bar
        self.config.set(off, 4, bar.flags)
        if bar.kind is BarKind.IO:
            self.config.set_masks(off, 4, ~(bar.size - 1) & 0xFFFF_FFFC)
        else:
            self.config.set_masks(off, 4, ~(bar.size - 1) & 0xFFFF_FFF0)
            if bar.kind is BarKind.MEM64:
                self.config.set_masks(off + 4, 4, (~(bar.size - 1) >> 32) & 0xFFFF_FFFF)
        return bar

    def add_capability(self, cap_id: int, size: int) -> int:
        """Append a capability of ``size`` bytes to the list; returns its offset."""
        off = (self._cap_end + 3) & ~3
        if off + size > 0x100:
            raise ValueError("the capability list is full (256-byte header space)")
        self.config.set(off, 1, cap_id)
        self.config.set(self._last_cap if self._last_cap == CAPABILITIES_POINTER else self._last_cap + 1, 1, off)
        self.config.set(STATUS, 2, self.config.get(STATUS, 2) | STS_CAPABILITIES_LIST)
        self._last_cap = off
        self._cap_end = off + size
        return off

    def add_express(self, kind: ExpressType = ExpressType.ENDPOINT) -> int:
        """The PCI Express capability, version 2 (PCIe Base 7.5.3): 2.5 GT/s x1 link."""
        off = self.add_capability(CAP_ID_EXP, 0x3C)
        c = self.config
        c.set(off + 2, 2, int(kind) << 4 | 2)  # PCI Express Capabilities: type, version 2
        c.set(off + 4, 4, 1 << 15)  # Device Capabilities: role-based error reporting, MPS 128
        # Device Control: error reporting enables, relaxed ordering, MPS, extended tags,
        # no snoop, max read request size (7.5.3.4)
        c.set(off + 8, 2, 0x2810)  # relaxed ordering, no snoop, MRRS 512 (reset values)
        c.set_masks(off + 8, 2, 0x7CFF)  # all but Extended/Phantom enables and FLR
        c.set_masks(off + 0xA, 2, w1c=0x000F)  # Device Status: error detected bits
        if kind is not ExpressType.RC_INTEGRATED_ENDPOINT:  # an RCiEP has no link (7.5.3.6)
            c.set(off + 0xC, 4, 1 << 4 | 1)  # Link Capabilities: x1, 2.5 GT/s
            c.set_masks(off + 0x10, 2, 0x01C3)  # Link Control: ASPM, RCB, common clock, ext sync
            c.set(off + 0x12, 2, 1 << 4 | 1)  # Link Status: x1 at 2.5 GT/s
            c.set(off + 0x2C, 4, 1 << 1)  # Link Capabilities 2: 2.5 GT/s supported
            c.set(off + 0x30, 2, 1)  # Link Control 2: target 2.5 GT/s
        c.set_masks(off + 0x28, 2, 0x0400 | 0x001F)  # Device Control 2: completion timeout, LTR
        self.express_offset = off
        return off

    def add_msi(self, vectors: int = 1) -> int:
        """An MSI capability, 64-bit with per-vector masking, for 1..32 vectors."""
        if vectors not in (1, 2, 4, 8, 16, 32):
            raise ValueError("MSI vectors are 1, 2, 4, 8, 16 or 32")
        off = self.add_capability(CAP_ID_MSI, 0x18)
        c = self.config
        c.set(off + 2, 2, MSI_CTRL_PVM | MSI_CTRL_64BIT | (vectors.bit_length() - 1) << 1)
        c.set_masks(off + 2, 2, 0x0070 | MSI_CTRL_ENABLE)  # Multiple Message Enable, Enable
        c.set_masks(off + 4, 4, 0xFFFF_FFFC)  # Message Address (dword aligned)
        c.set_masks(off + 8, 4, 0xFFFF_FFFF)  # Message Upper Address
        c.set_masks(off + 0xC, 2, 0xFFFF)  # Message Data
        c.set_masks(off + 0x10, 4, (1 << vectors) - 1)  # Mask Bits
        self.msi_offset = off
        self.msi_vectors = vectors
        return off

    def add_msix(self, vectors: int, bar: int, table: int, pba: int) -> int:
        """An MSI-X capability; the table and the PBA live in memory BAR ``bar`` at the
        given offsets (8-byte aligned; table entries are 16 bytes, PBA bits in qwords)."""
        if not 1 <= vectors <= 2048:
            raise ValueError("MSI-X has 1 to 2048 vectors")
        b = self.bars.get(bar)
        if b is None or b.kind is BarKind.IO:
            raise ValueError("the MSI-X table needs a memory BAR declared first")
        pba_size = (vectors + 63) // 64 * 8
        if table % 8 or pba % 8 or table + vectors * MSIX_ENTRY_SIZE > b.size or pba + pba_size > b.size:
            raise ValueError("the MSI-X table and PBA must be 8-byte aligned inside the BAR")
        if table < pba + pba_size and pba < table + vectors * MSIX_ENTRY_SIZE:
            raise ValueError("the MSI-X table and PBA overlap")
        off = self.add_capability(CAP_ID_MSIX, 12)
        c = self.config
        c.set(off + 2, 2, vectors - 1)
        c.set_masks(off + 2, 2, MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK)
        c.set(off + 4, 4, table | bar)
        c.set(off + 8, 4, pba | bar)
        self.msix_offset = off
        self.msix_vectors = vectors
        self.msix_bar, self.msix_table, self.msix_pba = bar, table, pba
        self._msix_entries = bytearray(vectors * MSIX_ENTRY_SIZE)
        self._msix_pending = bytearray(pba_size)
        for v in range(vectors):  # every vector starts masked (6.8.2.9)
            self._msix_entries[v * MSIX_ENTRY_SIZE + 12] = MSIX_VECTOR_CONTROL_MASK
        return off

    # == reset ==========================================================================
    def reset(self) -> None:
        """Conventional reset of the function's PCI state (BARs, Command, MSI, MSI-X).
        Subclasses extend it to reset their own state."""
        c = self.config
        c.set(COMMAND, 2, 0)
        c.set(STATUS, 2, c.get(STATUS, 2) & STS_CAPABILITIES_LIST)
        for bar in self.bars.values():
            c.set(BAR0 + 4 * bar.index, 4, bar.flags)
            if bar.kind is BarKind.MEM64:
                c.set(BAR0 + 4 * bar.index + 4, 4, 0)
        if self.msi_offset is not None:
            o = self.msi_offset
            c.set(o + 2, 2, c.get(o + 2, 2) & ~0x0071)
            for r in (4, 8, 0xC, 0x10, 0x14):
                c.set(o + r, 4 if r != 0xC else 2, 0)
        if self.msix_offset is not None:
            c.set(self.msix_offset + 2, 2, self.msix_vectors - 1)
            self._msix_entries[:] = bytes(len(self._msix_entries))
            for v in range(self.msix_vectors):
                self._msix_entries[v * MSIX_ENTRY_SIZE + 12] = MSIX_VECTOR_CONTROL_MASK
            self._msix_pending[:] = bytes(len(self._msix_pending))
        if self._intx:
            self.set_intx(False)
        if self.bus is not None:
            self.bus.decode_changed()

    # == configuration space access (from the host's ECAM) =============================
    def config_read(self, offset: int, size: int) -> int:
        return self.config.get(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        c = self.config
        old_cmd = c.get(COMMAND, 2)
        msix_ctrl = c.get(self.msix_offset + 2, 2) if self.msix_offset is not None else 0
        c.write(offset, size, value)
        end = offset + size
        if offset < BAR0 + 24 and end > COMMAND:
            if offset < COMMAND + 2 and c.get(COMMAND, 2) & CMD_INTX_DISABLE != old_cmd & CMD_INTX_DISABLE:
                self._update_intx_line()
            if self.bus is not None:
                self.bus.decode_changed()
        mx = self.msix_offset
        if mx is not None and offset < mx + 4 and end > mx + 2 and msix_ctrl != c.get(mx + 2, 2):
            self._msix_flush()  # enabled or unmasked: pending vectors go out (6.8.2.9)
        mi = self.msi_offset
        if mi is not None and offset < mi + 0x14 and end > mi:
            self._msi_flush()  # enabled or unmasked: pending vectors go out (6.8.1)

    # == BAR access (from the host's windows) ==========================================
    def bar_address(self, index: int) -> int:
        """The address a BAR is programmed with (bus address)."""
        bar = self.bars[index]
        low = self.config.get(BAR0 + 4 * index, 4)
        if bar.kind is BarKind.IO:
            return low & ~3
        addr = low & ~0xF
        if bar.kind is BarKind.MEM64:
            addr |= self.config.get(BAR0 + 4 * index + 4, 4) << 32
        return addr

    def mmio_read(self, index: int, offset: int, size: int) -> int:
        """A read of BAR ``index`` (the host calls this); MSI-X table and PBA are served here."""
        if self.msix_offset is not None and index == self.msix_bar:
            t = offset - self.msix_table
            if 0 <= t < len(self._msix_entries):
                return self._msix_read(t, size)
            p = offset - self.msix_pba
            if 0 <= p < len(self._msix_pending):
                return int.from_bytes(self._msix_pending[p : p + size].ljust(size, b"\0"), "little")
        return self.bar_read(index, offset, size)

    def mmio_write(self, index: int, offset: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1
        if self.msix_offset is not None and index == self.msix_bar:
            t = offset - self.msix_table
            if 0 <= t < len(self._msix_entries):
                self._msix_write(t, size, value)
                return
            p = offset - self.msix_pba
            if 0 <= p < len(self._msix_pending):
                self.diag(f"write of {value:#x} to the MSI-X PBA at {offset:#x}: read-only, ignored",
                          "PCI 3.0 6.8.2.10")  # fmt: skip
                return
        self.bar_write(index, offset, size, value)

    def bar_read(self, index: int, offset: int, size: int) -> int:
        """A device's registers: override. ``offset`` is relative to the BAR."""
        return 0

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        """A device's registers: override."""

    def poll(self) -> bool:
        """Deferred work, called by the machine between scheduling slices: override.
        It must do a bounded amount of work per call, and returns True if it did any
        (the machine then does not sleep before the next round)."""
        return False

    # == interrupts ======================================================================
    @property
    def msix_enabled(self) -> bool:
        return self.msix_offset is not None and bool(self.config.get(self.msix_offset + 2, 2) & MSIX_CTRL_ENABLE)

    @property
    def msi_enabled(self) -> bool:
        return self.msi_offset is not None and bool(self.config.get(self.msi_offset + 2, 2) & MSI_CTRL_ENABLE)

    def signal(self, vector: int) -> bool:
        """Send interrupt ``vector`` by MSI-X, else MSI. Returns False when neither is
        enabled (the device then uses INTx, :meth:`set_intx`). A masked vector is held
        pending and sent when unmasked (6.8.2.9, 6.8.1.7)."""
        if self.msix_enabled:
            if not 0 <= vector < self.msix_vectors:
                self.diag(f"MSI-X vector {vector} does not exist (table size {self.msix_vectors})")
                return True
            if self._msix_masked(vector):
                self._msix_pending[vector >> 3] |= 1 << (vector & 7)
            else:
                self._msix_send(vector)
            return True
        if self.msi_enabled:
            assert self.msi_offset is not None
            o = self.msi_offset
            enabled = 1 << (self.config.get(o + 2, 2) >> 4 & 7)
            if vector >= enabled:
                self.diag(f"MSI vector {vector} is beyond the {enabled} vectors Multiple Message Enable "
                          f"allows: sent as vector {vector % enabled}", "PCI 3.0 6.8.1.3")  # fmt: skip
                vector %= enabled
            if self.config.get(o + 0x10, 4) >> vector & 1:
                self.config.set(o + 0x14, 4, self.config.get(o + 0x14, 4) | 1 << vector)
            else:
                self._msi_send(vector)
            return True
        return False

    def set_intx(self, level: bool) -> None:
        """Drive INTx (level-sensitive): reaches the host unless Command.Interrupt Disable."""
        self._intx = level
        s = self.config.get(STATUS, 2)
        self.config.set(STATUS, 2, s | STS_INTERRUPT if level else s & ~STS_INTERRUPT)
        self._update_intx_line()

    def _update_intx_line(self) -> None:
        if self.bus is not None and self.config.get(INTERRUPT_PIN, 1):
            self.bus.set_intx(self, self._intx and not self.command & CMD_INTX_DISABLE)

    def _message(self, address: int, data: int, what: str) -> None:
        if self.bus is None:
            return
        if not self.command & CMD_BUS_MASTER:
            self.diag(f"{what} dropped: Bus Master Enable is 0 (an MSI is a memory write)", "PCIe Base 7.5.1.1.3")
            return
        if address & 3:
            self.diag(f"{what} to unaligned address {address:#x}", "PCI 3.0 6.8.2.5")
        self.bus.sink.msi_write(address, data, self.requester_id)

    def _msix_entry(self, vector: int) -> tuple[int, int, int]:
        e = self._msix_entries
        o = vector * MSIX_ENTRY_SIZE
        address = int.from_bytes(e[o : o + 8], "little")
        return address, int.from_bytes(e[o + 8 : o + 12], "little"), int.from_bytes(e[o + 12 : o + 16], "little")

    def _msix_masked(self, vector: int) -> bool:
        assert self.msix_offset is not None
        if self.config.get(self.msix_offset + 2, 2) & MSIX_CTRL_FUNCTION_MASK:
            return True
        return bool(self._msix_entry(vector)[2] & MSIX_VECTOR_CONTROL_MASK)

    def msix_pending(self, vector: int) -> bool:
        return bool(self._msix_pending[vector >> 3] >> (vector & 7) & 1)

    def _msix_send(self, vector: int) -> None:
        address, data, _ = self._msix_entry(vector)
        self._msix_pending[vector >> 3] &= ~(1 << (vector & 7)) & 0xFF
        self._message(address, data, f"MSI-X vector {vector} (data {data:#x} to {address:#x})")

    def _msix_flush(self) -> None:
        """Send the pending vectors that are no longer masked (6.8.2.9)."""
        if not self.msix_enabled or not any(self._msix_pending):
            return
        for v in range(self.msix_vectors):
            if self.msix_pending(v) and not self._msix_masked(v):
                self._msix_send(v)

    def _msix_read(self, offset: int, size: int) -> int:
        if size not in (4, 8) or offset % size:
            self.diag(f"{size}-byte read at MSI-X table offset {offset:#x}: only aligned DWORD and QWORD "
                      f"accesses are defined", "PCI 3.0 6.8.2")  # fmt: skip
            size = min(size, len(self._msix_entries) - offset)
        return int.from_bytes(self._msix_entries[offset : offset + size], "little")

    def _msix_write(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset % size:
            self.diag(f"{size}-byte write at MSI-X table offset {offset:#x} ignored: only aligned DWORD and "
                      f"QWORD accesses are defined", "PCI 3.0 6.8.2")  # fmt: skip
            return
        vector = offset // MSIX_ENTRY_SIZE
        was_masked = self._msix_masked(vector)
        entry = bytearray(self._msix_entries[vector * 16 : vector * 16 + 16])
        rel = offset % MSIX_ENTRY_SIZE
        entry[rel : rel + size] = value.to_bytes(size, "little")
        entry[13:16] = b"\0\0\0"  # Vector Control bits 31:1 are reserved (RsvdP: keep 0)
        if not was_masked and entry[:12] != self._msix_entries[vector * 16 : vector * 16 + 12]:
            self.diag(f"MSI-X vector {vector}'s address or data changed while unmasked", "PCI 3.0 6.8.2.9")
        self._msix_entries[vector * 16 : vector * 16 + 16] = entry
        if was_masked and not self._msix_masked(vector) and self.msix_pending(vector) and self.msix_enabled:
            self._msix_send(vector)

    def _msi_send(self, vector: int) -> None:
        assert self.msi_offset is not None
        o = self.msi_offset
        enabled = 1 << (self.config.get(o + 2, 2) >> 4 & 7)
        address = self.config.get(o + 4, 4) | self.config.get(o + 8, 4) << 32
        data = self.config.get(o + 0xC, 2) & ~(enabled - 1) | vector
        self.config.set(o + 0x14, 4, self.config.get(o + 0x14, 4) & ~(1 << vector))
        self._message(address, data, f"MSI vector {vector} (data {data:#x} to {address:#x})")

    def _msi_flush(self) -> None:
        if not self.msi_enabled:
            return
        assert self.msi_offset is not None
        o = self.msi_offset
        pending = self.config.get(o + 0x14, 4) & ~self.config.get(o + 0x10, 4)
        for v in range(32):
            if pending >> v & 1:
                self._msi_send(v)

    # == DMA (bus mastering) =============================================================
    def dma_read(self, address: int, size: int) -> bytes | None:
        """Read guest memory as this function's bus-master read. None (and a diagnostic)
        if Bus Master Enable is 0 or the range is not wholly in RAM."""
        if self.bus is None:
            return None
        if not self.command & CMD_BUS_MASTER:
            self.diag(f"DMA read of {size} bytes at {address:#x} refused: Bus Master Enable is 0",
                      "PCIe Base 7.5.1.1.3")  # fmt: skip
            return None
        try:
            return self.bus.memory.read_bytes(address, size)
        except MemoryFault:
            self.diag(f"DMA read of {size} bytes at {address:#x} is outside guest RAM (unsupported request)")
            return None

    def dma_write(self, address: int, data: bytes | bytearray | memoryview) -> bool:
        """Write guest memory as a bus master; False (and a diagnostic) when refused."""
        if self.bus is None:
            return False
        if not self.command & CMD_BUS_MASTER:
            self.diag(f"DMA write of {len(data)} bytes at {address:#x} refused: Bus Master Enable is 0",
                      "PCIe Base 7.5.1.1.3")  # fmt: skip
            return False
        try:
            self.bus.memory.write_bytes(address, data)
        except MemoryFault:
            self.diag(f"DMA write of {len(data)} bytes at {address:#x} is outside guest RAM (dropped)")
            return False
        return True

    # == save/restore ====================================================================
    def save_state(self) -> dict[str, object]:
        return {
            "config": self.config.data.hex(),
            "msix_entries": self._msix_entries.hex(),
            "msix_pending": self._msix_pending.hex(),
            "intx": self._intx,
        }

    def load_state(self, state: dict[str, object]) -> None:
        self.config.data[:] = bytes.fromhex(str(state["config"]))
        self._msix_entries[:] = bytes.fromhex(str(state["msix_entries"]))
        self._msix_pending[:] = bytes.fromhex(str(state["msix_pending"]))
        self._intx = bool(state["intx"])
        if self.bus is not None:
            self.bus.decode_changed()
            self._update_intx_line()
