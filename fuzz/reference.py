"""An independent table walker for the fuzzer: what an MSI *should* translate to.

Written from the architecture (IHI 0069 5.2, 12.19.1) and vgic's documented entry
formats (docs/tables.md: 8-byte and larger entries, and the compact 4-byte ITE / 2-byte CTE; the formats are IMPLEMENTATION DEFINED, only Entry_Size is
visible), sharing no code with ``vgic.its``. Given guest memory and what a guest can read
back from GITS_BASER<n> / GITS_TYPER, it walks

    DeviceID -> (L1 ->) DTE -> ITE -> CTE -> RDbase

and reports the target, or why there is none. Every guest address it reads is recorded in
:attr:`Walk.touched`, so the fuzzer can tell whether the guest scribbled over an entry
behind the ITS's back (then the ITS may legitimately answer from its cache, 5.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vgic.memory import GuestMemory, MemoryFault

PAGE_SIZES = (4096, 16384, 65536)
BASER_DEVICE, BASER_COLLECTION = 1, 4


@dataclass
class Geometry:
    base: int
    page: int
    pages: int
    entry: int
    indirect: bool

    @property
    def capacity(self) -> int:
        size = self.page * self.pages
        return (size // 8) * (self.page // self.entry) if self.indirect else size // self.entry


def parse_baser(v: int) -> tuple[int, Geometry | None]:
    """(Type, geometry or None when not Valid) of a GITS_BASER<n> value as read back."""
    kind = v >> 56 & 7
    if not v >> 63:
        return kind, None
    page = PAGE_SIZES[min(v >> 8 & 3, 2)]
    base = v & 0x0000_FFFF_FFFF_F000 & ~(page - 1)
    if page == 65536:
        base |= (v >> 12 & 0xF) << 48
    return kind, Geometry(base, page, (v & 0xFF) + 1, (v >> 48 & 0x1F) + 1, bool(v >> 62 & 1))


@dataclass
class Typer:
    devbits: int
    idbits: int
    ite_size: int
    pta: bool
    hcc: int
    collections: int
    icid_bits: int

    @staticmethod
    def parse(v: int) -> Typer:
        cil = bool(v >> 36 & 1)
        cidbits = (v >> 32 & 0xF) + 1 if cil else 16
        return Typer(
            devbits=(v >> 13 & 0x1F) + 1,
            idbits=(v >> 8 & 0x1F) + 1,
            ite_size=(v >> 4 & 0xF) + 1,
            pta=bool(v >> 19 & 1),
            hcc=v >> 24 & 0xFF,
            collections=1 << cidbits,
            icid_bits=cidbits,
        )


@dataclass
class Walk:
    """The outcome of one walk."""

    touched: list[tuple[int, int]] = field(default_factory=list)  # (address, size) read
    dte: tuple[int, int] | None = None  # (ITT address, Size)
    ite: tuple[int, int] | None = None  # (pINTID, ICID)
    rdbase: int | None = None
    why: str = ""


class Walker:
    """Walks one ITS's tables as the guest programmed them."""

    def __init__(self, mem: GuestMemory, its_read: Callable[[int, int], int]) -> None:
        self.mem = mem
        self.its_read = its_read

    def _read64(self, w: Walk, addr: int, size: int = 8) -> int:
        """The first min(size, 8) bytes of an entry of ``size`` bytes, little-endian."""
        w.touched.append((addr, size))
        if not self.mem.contains(addr, size):
            raise MemoryFault(addr, size, False)
        return int.from_bytes(self.mem.read_bytes(addr, min(size, 8)), "little")

    def tables(self) -> tuple[Typer, Geometry | None, Geometry | None]:
        typer = Typer.parse(self.its_read(0x8, 8))
        dt = ct = None
        for n in range(8):
            kind, geo = parse_baser(self.its_read(0x100 + 8 * n, 8))
            if kind == BASER_DEVICE and dt is None:
                dt = geo
            elif kind == BASER_COLLECTION and ct is None:
                ct = geo
        return typer, dt, ct

    def entry_address(self, w: Walk, geo: Geometry, ident: int) -> int | None:
        if ident >= geo.capacity:
            w.why = "beyond table"
            return None
        if not geo.indirect:
            return geo.base + ident * geo.entry
        per_page = geo.page // geo.entry
        l1 = self._read64(w, geo.base + (ident // per_page) * 8)
        if not l1 >> 63:
            w.why = "L1 invalid"
            return None
        return (l1 & 0x000F_FFFF_FFFF_F000 & ~(geo.page - 1)) + (ident % per_page) * geo.entry

    def dte(self, w: Walk, typer: Typer, dt: Geometry | None, device_id: int) -> tuple[int, int] | None:
        if dt is None or device_id >= 1 << typer.devbits:
            w.why = "device OOR"
            return None
        addr = self.entry_address(w, dt, device_id)
        if addr is None:
            return None
        raw = self._read64(w, addr)
        if not raw >> 63:
            w.why = "unmapped device"
            return None
        return ((raw >> 5) & ((1 << 44) - 1)) << 8, raw & 0x1F

    def ite(self, w: Walk, typer: Typer, dte: tuple[int, int], event_id: int) -> tuple[int, int] | None:
        itt, size = dte
        if event_id >= 1 << (size + 1):
            w.why = "event OOR"
            return None
        raw = self._read64(w, itt + event_id * typer.ite_size, typer.ite_size)
        if typer.ite_size < 8:  # compact: V at the top, pINTID above the ICID bits
            if not raw >> (8 * typer.ite_size - 1) & 1:
                w.why = "unmapped event"
                return None
            return (raw >> typer.icid_bits) & ((1 << typer.idbits) - 1), raw & ((1 << typer.icid_bits) - 1)
        if not raw >> 63:
            w.why = "unmapped event"
            return None
        return (raw >> 16) & 0xFFFFFFFF, raw & 0xFFFF

    def cte(self, w: Walk, typer: Typer, ct: Geometry | None, icid: int) -> int | None:
        """RDbase of a memory-held collection (None: unmapped or not in memory)."""
        if icid >= typer.collections or icid < typer.hcc or ct is None:
            w.why = "collection OOR or held in the ITS"
            return None
        addr = self.entry_address(w, ct, icid - typer.hcc)
        if addr is None:
            return None
        raw = self._read64(w, addr, ct.entry)
        top = 63 if ct.entry >= 8 else 8 * ct.entry - 1
        if not raw >> top & 1:
            w.why = "unmapped collection"
            return None
        return raw & ((1 << min(top, 36)) - 1)

    def translate(self, device_id: int, event_id: int) -> Walk:
        w = Walk()
        try:
            typer, dt, ct = self.tables()
            w.dte = self.dte(w, typer, dt, device_id)
            if w.dte is None:
                return w
            w.ite = self.ite(w, typer, w.dte, event_id)
            if w.ite is None:
                return w
            if w.ite[1] < typer.hcc:
                w.why = "HCC collection"
                return w
            w.rdbase = self.cte(w, typer, ct, w.ite[1])
        except MemoryFault:
            w.why = "memory fault"
        return w
