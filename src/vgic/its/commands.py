"""ITS commands: decoding, encoding and text form (IHI 0069 6.3).

A command is 32 bytes, four little-endian doublewords DW0..DW3, opcode in DW0[7:0].
:func:`decode` turns them into one typed, frozen record per command, once; the ITS then
dispatches on the record's type to one handler per command. :func:`encode` is the
inverse (drivers in tests, the assembler in tools) and :func:`format_command` /
:func:`parse_command` give the one-line text form used by ``vgic decode``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import ClassVar

_CMD = struct.Struct("<4Q")
COMMAND_SIZE = 32


class Opcode(enum.IntEnum):
    MOVI = 0x01
    INT = 0x03
    CLEAR = 0x04
    SYNC = 0x05
    MAPD = 0x08
    MAPC = 0x09
    MAPTI = 0x0A
    MAPI = 0x0B
    INV = 0x0C
    INVALL = 0x0D
    MOVALL = 0x0E
    DISCARD = 0x0F
    # GICv4 virtual-LPI commands: decoded by name, not implemented (GITS_TYPER.Virtual=0).
    VMOVI = 0x21
    VMOVP = 0x22
    VSGI = 0x23
    VSYNC = 0x25
    VMAPP = 0x29
    VMAPTI = 0x2A
    VMAPI = 0x2B
    VINVALL = 0x2D
    INVDB = 0x2E


def _bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every decoded command."""

    opcode: ClassVar[int] = -1

    @property
    def name(self) -> str:
        return type(self).__name__.upper()

    def words(self) -> tuple[int, int, int, int]:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Movi(Command):
    """MOVI: move the LPI of (DeviceID, EventID) to collection ICID (6.3.11)."""

    opcode: ClassVar[int] = Opcode.MOVI
    device_id: int
    event_id: int
    icid: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode | self.device_id << 32, self.event_id, self.icid, 0)


@dataclass(frozen=True, slots=True)
class _EventCommand(Command):
    """A command naming one event: DeviceID in DW0[63:32], EventID in DW1[31:0]."""

    device_id: int
    event_id: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode | self.device_id << 32, self.event_id, 0, 0)


@dataclass(frozen=True, slots=True)
class Int(_EventCommand):
    """INT: make the LPI of (DeviceID, EventID) pending (6.3.5)."""

    opcode: ClassVar[int] = Opcode.INT


@dataclass(frozen=True, slots=True)
class Clear(_EventCommand):
    """CLEAR: remove the pending state of the LPI of (DeviceID, EventID) (6.3.1)."""

    opcode: ClassVar[int] = Opcode.CLEAR


@dataclass(frozen=True, slots=True)
class Sync(Command):
    """SYNC: complete every earlier operation for redistributor RDbase (6.3.13)."""

    opcode: ClassVar[int] = Opcode.SYNC
    rdbase: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode, 0, self.rdbase << 16, 0)


@dataclass(frozen=True, slots=True)
class Mapd(Command):
    """MAPD: map DeviceID to an ITT of 2^(Size+1) events at ITT_addr, or unmap (6.3.8)."""

    opcode: ClassVar[int] = Opcode.MAPD
    device_id: int
    size: int  # EventID bits - 1
    itt_addr: int  # byte address, 256-byte aligned
    valid: bool

    def words(self) -> tuple[int, int, int, int]:
        dw2 = (self.itt_addr & 0x000FFFFFFFFFFF00) | (int(self.valid) << 63)
        return (self.opcode | self.device_id << 32, self.size & 0x1F, dw2, 0)


@dataclass(frozen=True, slots=True)
class Mapc(Command):
    """MAPC: map collection ICID to redistributor RDbase, or unmap it (6.3.7)."""

    opcode: ClassVar[int] = Opcode.MAPC
    icid: int
    rdbase: int
    valid: bool

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode, 0, self.icid | self.rdbase << 16 | int(self.valid) << 63, 0)


@dataclass(frozen=True, slots=True)
class Mapti(Command):
    """MAPTI: map (DeviceID, EventID) to LPI pINTID in collection ICID (6.3.10)."""

    opcode: ClassVar[int] = Opcode.MAPTI
    device_id: int
    event_id: int
    pintid: int
    icid: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode | self.device_id << 32, self.event_id | self.pintid << 32, self.icid, 0)


@dataclass(frozen=True, slots=True)
class Mapi(Command):
    """MAPI: MAPTI with pINTID = EventID (6.3.9)."""

    opcode: ClassVar[int] = Opcode.MAPI
    device_id: int
    event_id: int
    icid: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode | self.device_id << 32, self.event_id, self.icid, 0)


@dataclass(frozen=True, slots=True)
class Inv(_EventCommand):
    """INV: reload the configuration of the LPI of (DeviceID, EventID) (6.3.6)."""

    opcode: ClassVar[int] = Opcode.INV


@dataclass(frozen=True, slots=True)
class Invall(Command):
    """INVALL: reload the configuration of every LPI of collection ICID (6.3.4)."""

    opcode: ClassVar[int] = Opcode.INVALL
    icid: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode, 0, self.icid, 0)


@dataclass(frozen=True, slots=True)
class Movall(Command):
    """MOVALL: move every pending LPI of RDbase1 to RDbase2 (6.3.12)."""

    opcode: ClassVar[int] = Opcode.MOVALL
    rdbase1: int
    rdbase2: int

    def words(self) -> tuple[int, int, int, int]:
        return (self.opcode, 0, self.rdbase1 << 16, self.rdbase2 << 16)


@dataclass(frozen=True, slots=True)
class Discard(_EventCommand):
    """DISCARD: remove the mapping of (DeviceID, EventID) and its pending state (6.3.3)."""

    opcode: ClassVar[int] = Opcode.DISCARD


@dataclass(frozen=True, slots=True)
class Unknown(Command):
    """Any other opcode, including the GICv4 ones this ITS does not implement."""

    raw: tuple[int, int, int, int]

    @property
    def code(self) -> int:
        return self.raw[0] & 0xFF

    @property
    def name(self) -> str:
        try:
            return Opcode(self.code).name
        except ValueError:
            return f"OPCODE_{self.code:#04x}"

    def words(self) -> tuple[int, int, int, int]:
        return self.raw


def _rdbase(dw: int) -> int:
    return _bits(dw, 51, 16)


def decode_words(dw0: int, dw1: int, dw2: int, dw3: int) -> Command:
    """Decode one command from its four doublewords."""
    op = dw0 & 0xFF
    dev = dw0 >> 32
    ev = dw1 & 0xFFFFFFFF
    icid = dw2 & 0xFFFF
    if op == Opcode.MOVI:
        return Movi(dev, ev, icid)
    if op == Opcode.INT:
        return Int(dev, ev)
    if op == Opcode.CLEAR:
        return Clear(dev, ev)
    if op == Opcode.SYNC:
        return Sync(_rdbase(dw2))
    if op == Opcode.MAPD:
        return Mapd(dev, dw1 & 0x1F, dw2 & 0x000FFFFFFFFFFF00, bool(dw2 >> 63))
    if op == Opcode.MAPC:
        return Mapc(icid, _rdbase(dw2), bool(dw2 >> 63))
    if op == Opcode.MAPTI:
        return Mapti(dev, ev, dw1 >> 32, icid)
    if op == Opcode.MAPI:
        return Mapi(dev, ev, icid)
    if op == Opcode.INV:
        return Inv(dev, ev)
    if op == Opcode.INVALL:
        return Invall(icid)
    if op == Opcode.MOVALL:
        return Movall(_rdbase(dw2), _rdbase(dw3))
    if op == Opcode.DISCARD:
        return Discard(dev, ev)
    return Unknown((dw0, dw1, dw2, dw3))


def decode(data: bytes | bytearray | memoryview) -> Command:
    """Decode one 32-byte command."""
    dw0, dw1, dw2, dw3 = _CMD.unpack_from(data)
    return decode_words(dw0, dw1, dw2, dw3)


def encode(cmd: Command) -> bytes:
    """The 32 bytes of a command."""
    return _CMD.pack(*(w & 0xFFFFFFFFFFFFFFFF for w in cmd.words()))


# -- text form ----------------------------------------------------------------------

_FIELD_NAMES = {
    "device_id": "DeviceID",
    "event_id": "EventID",
    "icid": "ICID",
    "pintid": "pINTID",
    "size": "Size",
    "itt_addr": "ITT_addr",
    "valid": "V",
    "rdbase": "RDbase",
    "rdbase1": "RDbase1",
    "rdbase2": "RDbase2",
}
_BY_NAME: dict[str, type[Command]] = {
    c.__name__.upper(): c for c in (Movi, Int, Clear, Sync, Mapd, Mapc, Mapti, Mapi, Inv, Invall, Movall, Discard)
}


def format_command(cmd: Command) -> str:
    """One line: the command name, then its fields named as in the spec."""
    if isinstance(cmd, Unknown):
        return cmd.name + " " + " ".join(f"DW{i}={w:#018x}" for i, w in enumerate(cmd.raw))
    parts = [cmd.name]
    for f in fields(cmd):
        v = getattr(cmd, f.name)
        text = str(int(v)) if isinstance(v, bool) else (f"{v:#x}" if f.name in ("itt_addr", "device_id") else str(v))
        parts.append(f"{_FIELD_NAMES[f.name]}={text}")
    return " ".join(parts)


def parse_command(text: str) -> Command:
    """Inverse of :func:`format_command` (numbers in any Python integer syntax)."""
    words = text.split()
    if not words:
        raise ValueError("empty command")
    name = words[0].upper()
    values: dict[str, int] = {}
    for w in words[1:]:
        key, sep, val = w.partition("=")
        if not sep:
            raise ValueError(f"expected FIELD=VALUE, got {w!r}")
        values[key.lower()] = int(val, 0)
    if name.startswith("OPCODE_") or name not in _BY_NAME:
        dws = tuple(values.get(f"dw{i}", 0) for i in range(4))
        if name.startswith("OPCODE_"):
            return Unknown((dws[0] & ~0xFF | int(name[7:], 0), dws[1], dws[2], dws[3]))
        if name in Opcode.__members__:
            return Unknown((dws[0] & ~0xFF | Opcode[name], dws[1], dws[2], dws[3]))
        raise ValueError(f"unknown command {words[0]!r}")
    cls = _BY_NAME[name]
    kwargs: dict[str, object] = {}
    for f in fields(cls):
        key = _FIELD_NAMES[f.name].lower()
        if key not in values:
            raise ValueError(f"{name} needs {_FIELD_NAMES[f.name]}")
        kwargs[f.name] = bool(values[key]) if f.name == "valid" else values[key]
    return cls(**kwargs)
