"""ITS tables in guest memory: device table, collection table, ITTs (IHI 0069 5.2).

The architecture leaves entry formats IMPLEMENTATION DEFINED and shows software only
GITS_BASER<n>.Entry_Size and GITS_TYPER.ITT_entry_size. vgic's formats (docs/tables.md),
in the first 8 bytes of entries of 8 bytes or more (the rest is zero):

* DTE  [63] V, [48:5] ITT_addr[51:8], [4:0] Size (EventID bits - 1)
* CTE  [63] V, [35:0] RDbase (processor number, or PA[51:16] when GITS_TYPER.PTA=1)
* ITE  [63] V, [47:16] pINTID, [15:0] ICID

and, for the compact entries some implementations use (GIC-600: 4-byte ITEs, 2-byte CTEs),
V in the entry's top bit with the fields packed below it (:class:`EntryLayout`).

The walks here only compute addresses and encode/decode entries; they read and write
guest memory and let :class:`~vgic.memory.MemoryFault` through to the ITS, which turns it
into a command error. A table is described once, by :class:`TableGeometry`, from a BASER.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgic.memory import GuestMemory, MemoryFault

PAGE_SIZES = (4096, 16384, 65536)  # GITS_BASER.Page_Size 0, 1, 2
L1_ENTRY_SIZE = 8  # an Indirect table's level-1 entries: [63] Valid, L2 page address


@dataclass(frozen=True, slots=True)
class TableGeometry:
    """Where a table described by a GITS_BASER<n> lives, and how many IDs it holds."""

    base: int  # physical address of the (level-1) table
    page_size: int
    pages: int  # Size + 1
    entry_size: int
    indirect: bool

    @property
    def bytes(self) -> int:
        return self.page_size * self.pages

    @property
    def capacity(self) -> int:
        """How many IDs the table can index (5.2.1)."""
        if self.indirect:
            return (self.bytes // L1_ENTRY_SIZE) * (self.page_size // self.entry_size)
        return self.bytes // self.entry_size


class TableWalkError(Exception):
    """An ID the table cannot hold: beyond its size, or behind an invalid level-1 entry."""


def entry_address(mem: GuestMemory, geo: TableGeometry, ident: int) -> int:
    """Guest physical address of the entry for ``ident``.

    For a two-level table the level-1 index is ``ident // (page_size / entry_size)``, each
    level-1 entry 8 bytes (5.2.1). Raises :class:`TableWalkError` when the ID is beyond
    the table or its level-1 entry is not Valid, and MemoryFault for unreachable memory.
    """
    if ident < 0 or ident >= geo.capacity:
        raise TableWalkError(f"ID {ident:#x} is beyond the table's {geo.capacity} entries")
    if not geo.indirect:
        return geo.base + ident * geo.entry_size
    per_page = geo.page_size // geo.entry_size
    l1 = mem.read64(geo.base + (ident // per_page) * L1_ENTRY_SIZE)
    if not l1 >> 63:
        raise TableWalkError(f"level-1 entry {ident // per_page} for ID {ident:#x} is not Valid")
    l2 = l1 & 0x000FFFFFFFFFF000 & ~(geo.page_size - 1)
    return l2 + (ident % per_page) * geo.entry_size


def iter_entries(mem: GuestMemory, geo: TableGeometry, limit: int) -> tuple[list[tuple[int, int]], int, bool]:
    """(ID, first 8 bytes of the entry) of every entry of a table that is not all zero,
    for tools; how many level-1 and table entries the walk looked at; and whether it
    stopped at ``limit`` of them, so a guest-made table of any size costs at most that
    much. Unreadable pages are skipped."""
    out: list[tuple[int, int]] = []
    per_page = geo.page_size // geo.entry_size
    seen = 0
    pages: list[tuple[int, int]] = []  # (first ID, address of a page of entries)
    if geo.indirect:
        for i in range(geo.bytes // L1_ENTRY_SIZE):
            seen += 1
            if seen > limit:
                return out, limit, True
            try:
                l1 = mem.read64(geo.base + i * L1_ENTRY_SIZE)
            except MemoryFault:
                break
            if l1 >> 63:
                pages.append((i * per_page, l1 & 0x000F_FFFF_FFFF_F000 & ~(geo.page_size - 1)))
    else:
        pages = [(p * per_page, geo.base + p * geo.page_size) for p in range(geo.pages)]
    width = min(geo.entry_size, 8)
    for first, addr in pages:
        if seen + per_page > limit:
            return out, seen, True
        try:
            data = mem.read_bytes(addr, geo.page_size)
        except MemoryFault:
            continue
        seen += per_page
        if not any(data):
            continue
        for k in range(per_page):
            raw = int.from_bytes(data[k * geo.entry_size : k * geo.entry_size + width], "little")
            if raw:
                out.append((first + k, raw))
    return out, seen, False


# -- entries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """DTE: a mapped device's ITT."""

    itt_addr: int
    size: int  # EventID bits - 1

    @property
    def events(self) -> int:
        return 1 << (self.size + 1)

    def encode(self) -> int:
        return 1 << 63 | ((self.itt_addr >> 8) & ((1 << 44) - 1)) << 5 | (self.size & 0x1F)

    @staticmethod
    def decode(raw: int) -> DeviceEntry | None:
        if not raw >> 63:
            return None
        return DeviceEntry(((raw >> 5) & ((1 << 44) - 1)) << 8, raw & 0x1F)


@dataclass(frozen=True, slots=True)
class InterruptEntry:
    """ITE: a physical LPI and its collection."""

    pintid: int
    icid: int

    def encode(self) -> int:
        return 1 << 63 | (self.pintid & 0xFFFFFFFF) << 16 | (self.icid & 0xFFFF)

    @staticmethod
    def decode(raw: int) -> InterruptEntry | None:
        if not raw >> 63:
            return None
        return InterruptEntry((raw >> 16) & 0xFFFFFFFF, raw & 0xFFFF)


def encode_collection(rdbase: int) -> int:
    """CTE for a mapped collection."""
    return 1 << 63 | (rdbase & ((1 << 36) - 1))


def decode_collection(raw: int) -> int | None:
    """RDbase of a CTE, or None when the collection is unmapped."""
    if not raw >> 63:
        return None
    return raw & ((1 << 36) - 1)


@dataclass(frozen=True, slots=True)
class EntryLayout:
    """Entry sizes of one ITS and how its ITEs and CTEs are packed into them.

    Entries of 8 bytes or more use the formats above. A compact ITE (fewer than 8 bytes)
    is ``[8*size-1] V, [icid_bits+idbits-1 : icid_bits] pINTID, [icid_bits-1:0] ICID``; a
    compact CTE is ``[8*size-1] V, [8*size-2:0] RDbase``. :meth:`check` says whether the
    IDs the ITS reports (GITS_TYPER) fit the chosen sizes.
    """

    ite_size: int = 12
    cte_size: int = 8
    dte_size: int = 8
    idbits: int = 16  # GITS_TYPER.ID_bits: a pINTID is below 2^idbits
    icid_bits: int = 16  # bits of an ICID (CIDbits, or 16 with CIL=0)

    def check(self, rdbase_bits: int) -> str | None:
        """Why these sizes cannot hold the IDs, or None when they can."""
        if self.dte_size < 8:
            return "device table entries need 8 bytes"
        if self.ite_size < 8 and 1 + self.idbits + self.icid_bits > 8 * self.ite_size:
            return f"a {self.ite_size}-byte ITE cannot hold {self.idbits} ID bits and {self.icid_bits} ICID bits"
        if self.cte_size < 8 and 1 + rdbase_bits > 8 * self.cte_size:
            return f"a {self.cte_size}-byte CTE cannot hold a {rdbase_bits}-bit RDbase"
        return None

    @staticmethod
    def read_size(size: int) -> int:
        """How many bytes of an entry hold its fields."""
        return min(size, 8)

    def encode_ite(self, ite: InterruptEntry) -> int:
        if self.ite_size >= 8:
            return ite.encode()
        icid_mask = (1 << self.icid_bits) - 1
        pintid = ite.pintid & ((1 << self.idbits) - 1)
        return 1 << (8 * self.ite_size - 1) | pintid << self.icid_bits | (ite.icid & icid_mask)

    def decode_ite(self, raw: int) -> InterruptEntry | None:
        if self.ite_size >= 8:
            return InterruptEntry.decode(raw)
        if not raw >> (8 * self.ite_size - 1) & 1:
            return None
        pintid = raw >> self.icid_bits & ((1 << self.idbits) - 1)
        return InterruptEntry(pintid, raw & ((1 << self.icid_bits) - 1))

    def encode_cte(self, rdbase: int) -> int:
        if self.cte_size >= 8:
            return encode_collection(rdbase)
        top = 8 * self.cte_size - 1
        return 1 << top | (rdbase & ((1 << top) - 1))

    def decode_cte(self, raw: int) -> int | None:
        if self.cte_size >= 8:
            return decode_collection(raw)
        top = 8 * self.cte_size - 1
        return raw & ((1 << top) - 1) if raw >> top & 1 else None
