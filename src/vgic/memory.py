"""Guest physical memory.

A :class:`GuestMemory` is a set of RAM regions at guest physical addresses. Each region
is backed by an anonymous ``mmap``: the host kernel commits a page only when it is first
written, so host memory grows with what the guest writes, never with the sizes a guest
programs into GITS_BASER or GICR_PROPBASER. Reads of never-written pages cost nothing.

Every access is bounds-checked. An access that is not wholly inside one RAM region raises
:class:`MemoryFault`; device models catch it and turn it into architected behaviour (a
command error, an ignored MSI) plus a diagnostic, so it never escapes to the embedder.
The same buffers can be handed to a CPU engine (``Region.address``) so that CPU and
device models share RAM without copying.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

from vgic.compiled import mypyc_attr

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MemoryFault(Exception):
    """An access that is not wholly inside guest RAM."""

    def __init__(self, address: int, size: int, write: bool) -> None:
        kind = "write" if write else "read"
        super().__init__(f"guest memory {kind} of {size} bytes at {address:#x} is outside RAM")
        self.address = address
        self.size = size
        self.write = write


@dataclass
class Region:
    """One contiguous RAM region, backed by an anonymous mapping (or a buffer the
    embedder owns)."""

    base: int
    size: int
    buf: mmap.mmap | bytearray = field(repr=False)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def address(self) -> int:
        """Host address of the backing buffer (for ``Uc.mem_map_ptr``)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf))


@mypyc_attr(allow_interpreted_subclasses=True)  # embedders and tests extend it
class GuestMemory:
    """Sparse, bounds-checked, little-endian guest physical memory."""

    def __init__(self) -> None:
        self._regions: list[Region] = []
        self._bases: list[int] = []
        # The last region hit: almost every access lands in the one RAM region.
        self._last: Region | None = None

    # -- layout ----------------------------------------------------------------------
    def add_ram(self, base: int, size: int, buffer: mmap.mmap | bytearray | None = None) -> Region:
        """Add a RAM region of ``size`` bytes at guest physical ``base`` (page aligned).

        ``buffer`` (writable, at least ``size`` bytes) is memory the caller already owns,
        for instance what it maps into its own CPU engine: the GIC then reads and writes
        the very bytes the guest sees. By default a fresh anonymous mapping backs it."""
        if base < 0 or size <= 0 or base % mmap.PAGESIZE or size % mmap.PAGESIZE:
            raise ValueError("RAM base and size must be positive multiples of the page size")
        if buffer is not None and len(buffer) < size:
            raise ValueError(f"the buffer holds {len(buffer)} bytes, fewer than {size}")
        for r in self._regions:
            if base < r.end and r.base < base + size:
                raise ValueError(f"RAM at {base:#x} overlaps the region at {r.base:#x}")
        if buffer is None:
            buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region = Region(base, size, buffer)
        self._regions.append(region)
        self._regions.sort(key=lambda r: r.base)
        self._bases = [r.base for r in self._regions]
        return region

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def contains(self, address: int, size: int = 1) -> bool:
        """True when ``[address, address + size)`` lies wholly inside one RAM region."""
        return self._find(address, size) is not None

    def _find(self, address: int, size: int) -> Region | None:
        r = self._last
        if r is not None and r.base <= address and address + size <= r.base + r.size:
            return r
        i = bisect_right(self._bases, address) - 1
        if i < 0:
            return None
        r = self._regions[i]
        if size < 0 or address + size > r.base + r.size:
            return None
        self._last = r
        return r

    def _locate(self, address: int, size: int, write: bool) -> tuple[mmap.mmap | bytearray, int]:
        r = self._find(address, size)
        if r is None:
            raise MemoryFault(address, size, write)
        return r.buf, address - r.base

    # -- scalar access ---------------------------------------------------------------
    def read8(self, address: int) -> int:
        r = self._find(address, 1)  # _locate, inline: an LPI's configuration byte per MSI
        if r is None:
            raise MemoryFault(address, 1, False)
        return r.buf[address - r.base]

    def read16(self, address: int) -> int:
        buf, off = self._locate(address, 2, False)
        return int(_U16.unpack_from(buf, off)[0])

    def read32(self, address: int) -> int:
        buf, off = self._locate(address, 4, False)
        return int(_U32.unpack_from(buf, off)[0])

    def read64(self, address: int) -> int:
        buf, off = self._locate(address, 8, False)
        return int(_U64.unpack_from(buf, off)[0])

    def write8(self, address: int, value: int) -> None:
        buf, off = self._locate(address, 1, True)
        buf[off] = value & 0xFF

    def write16(self, address: int, value: int) -> None:
        buf, off = self._locate(address, 2, True)
        _U16.pack_into(buf, off, value & 0xFFFF)

    def write32(self, address: int, value: int) -> None:
        buf, off = self._locate(address, 4, True)
        _U32.pack_into(buf, off, value & 0xFFFFFFFF)

    def write64(self, address: int, value: int) -> None:
        buf, off = self._locate(address, 8, True)
        _U64.pack_into(buf, off, value & 0xFFFFFFFFFFFFFFFF)

    def read(self, address: int, size: int) -> int:
        """Read a little-endian integer of ``size`` bytes (1, 2, 4 or 8)."""
        return int.from_bytes(self.read_bytes(address, size), "little")

    def write(self, address: int, size: int, value: int) -> None:
        """Write a little-endian integer of ``size`` bytes (1, 2, 4 or 8)."""
        self.write_bytes(address, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # -- bulk access -----------------------------------------------------------------
    def read_bytes(self, address: int, size: int) -> bytes:
        buf, off = self._locate(address, size, False)
        return bytes(buf[off : off + size])

    def write_bytes(self, address: int, data: bytes | bytearray | memoryview) -> None:
        buf, off = self._locate(address, len(data), True)
        buf[off : off + len(data)] = bytes(data)

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        buf, off = self._locate(address, size, True)
        buf[off : off + size] = bytes([byte & 0xFF]) * size

    def set_bit(self, address: int, bit: int, value: bool) -> None:
        """Set or clear bit ``bit`` (0..7) of the byte at ``address``."""
        buf, off = self._locate(address, 1, True)
        if value:
            buf[off] |= 1 << bit
        else:
            buf[off] &= ~(1 << bit) & 0xFF
