"""Loading guest images the way QEMU's ``-kernel`` and ``-bios`` do (docs/machine.md).

* ELF: PT_LOAD segments at their physical addresses; entry at e_entry.
* arm64 Image (magic "ARM\\x64" at 0x38): at RAM base + text_offset, entry there.
* A gzip-compressed image (Debian's arm64 ``vmlinuz``): decompressed first, as QEMU's
  ``load_aarch64_image`` does, then loaded as an arm64 Image or flat binary.
* Anything else: a flat binary at RAM base + 0x80000.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from vgic.memory import GuestMemory, MemoryFault

FLAT_OFFSET = 0x80000
ARM64_MAGIC = b"ARM\x64"
GZIP_MAGIC = b"\x1f\x8b"
GUNZIP_LIMIT = 256 << 20  # QEMU's LOAD_IMAGE_MAX_GUNZIP_BYTES


class ImageError(Exception):
    """An image vgic cannot load: the message says why."""


@dataclass(frozen=True)
class Loaded:
    entry: int
    low: int
    high: int  # one past the last byte loaded
    kind: str


def load_image(mem: GuestMemory, data: bytes, ram_base: int) -> Loaded:
    if not data:
        raise ImageError("the image is empty")
    if data[:4] == b"\x7fELF":
        return _load_elf(mem, data)
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data)
    if len(data) >= 0x40 and data[0x38:0x3C] == ARM64_MAGIC:
        text_offset = struct.unpack_from("<Q", data, 8)[0]
        image_size = struct.unpack_from("<Q", data, 16)[0]
        if image_size == 0:
            text_offset = FLAT_OFFSET
        return _place(mem, data, ram_base + text_offset, "arm64 Image")
    return _place(mem, data, ram_base + FLAT_OFFSET, "flat binary")


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, GUNZIP_LIMIT)
    except zlib.error as e:
        raise ImageError(f"the gzip-compressed image is corrupt: {e}") from None
    if d.unconsumed_tail:
        raise ImageError(f"the gzip-compressed image is larger than {GUNZIP_LIMIT >> 20} MiB uncompressed")
    if not d.eof:
        raise ImageError("the gzip-compressed image is truncated")
    if not out:
        raise ImageError("the gzip-compressed image is empty")
    return out


def _place(mem: GuestMemory, data: bytes, addr: int, kind: str) -> Loaded:
    try:
        mem.write_bytes(addr, data)
    except MemoryFault as e:
        raise ImageError(f"{kind} of {len(data)} bytes does not fit in RAM at {addr:#x}") from e
    return Loaded(addr, addr, addr + len(data), kind)


def _load_elf(mem: GuestMemory, data: bytes) -> Loaded:
    if len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise ImageError("only little-endian ELF64 images are supported")
    (e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum) = struct.unpack_from(
        "<HHIQQQIHHH", data, 16
    )
    if e_machine != 183:
        raise ImageError(f"ELF machine {e_machine} is not AArch64 (183)")
    if e_type not in (2, 3):
        raise ImageError("the ELF file is not an executable")
    low, high = None, 0
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 56 > len(data):
            raise ImageError("truncated ELF program header table")
        p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", data, off)
        if p_type != 1 or p_memsz == 0:
            continue
        if p_offset + p_filesz > len(data) or p_filesz > p_memsz:
            raise ImageError("truncated ELF segment")
        try:
            mem.write_bytes(p_paddr, data[p_offset : p_offset + p_filesz])
            if p_memsz > p_filesz:
                mem.fill(p_paddr + p_filesz, p_memsz - p_filesz)
        except MemoryFault as e:
            raise ImageError(f"ELF segment at {p_paddr:#x} ({p_memsz:#x} bytes) is outside RAM") from e
        low = p_paddr if low is None else min(low, p_paddr)
        high = max(high, p_paddr + p_memsz)
    if low is None:
        raise ImageError("the ELF file has no loadable segment")
    return Loaded(e_entry, low, high, "ELF")
