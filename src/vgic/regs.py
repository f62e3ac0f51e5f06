"""Memory-mapped register files described as data.

A device lists its registers as :class:`Register` rows (name, offset, width, reset,
access policy, writable bits). :class:`RegisterBank` turns MMIO accesses into calls on
the device, with one rule set for every GIC block:

* A 64-bit register is also two 32-bit halves: CPU engines split 64-bit accesses, and
  the architecture permits 32-bit access to either half (IHI 0069 12.1.3).
* A plain storage register keeps its value; writes change only ``wmask`` bits.
* A register with behaviour is bound explicitly to its handlers, in a table the device
  passes in (name -> (``read(index)``, ``write(index, value, mask)``)), the way KVM's
  register descriptors carry their accessors. ``mask`` tells which bits the access wrote,
  so a handler acting on a field knows whether that field was written. The bank checks
  the table when it is built: a handler for a register that does not exist, a reader of a
  write-only register, a writer of a read-only one, or a ``read_*``/``write_*`` method of
  the device bound to nothing is a ValueError, never a silently dead handler.
* Offsets with no register are reserved: RAZ/WI (IHI 0069 12.1.2), with a diagnostic.
* Access widths (documented in docs/choices.md): 32-bit everywhere; 64-bit on 64-bit
  registers; a 64-bit access to a 32-bit register is split into two 32-bit accesses (what
  the Unicorn engine does anyway) with a diagnostic; 8-bit only on registers marked
  ``byte_access`` (8- and 16-bit); anything else, and misaligned accesses, are RAZ/WI with a
  diagnostic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from vgic.checks import FieldError, at, exactly, mapping, uint
from vgic.events import EventLog, Kind


class Access(enum.Enum):
    RW = "RW"
    RO = "RO"
    WO = "WO"
    RAZ_WI = "RAZ/WI"


# Bound once for the access paths: an Enum member looked up on its class costs ~75 ns.
_RO: Final = Access.RO
_WO: Final = Access.WO
_RAZ_WI: Final = Access.RAZ_WI


@dataclass(frozen=True, slots=True)
class Register:
    name: str
    offset: int
    width: int = 4  # bytes: 4 or 8
    reset: int = 0
    access: Access = Access.RW
    wmask: int = -1  # writable bits of a storage register (-1: all)
    count: int = 1  # an array of registers at offset + i * width
    byte_access: bool = False  # 8- and 16-bit accesses permitted (e.g. GICD_IPRIORITYR, the PL011's)

    @property
    def size(self) -> int:
        return self.width * self.count


@dataclass(frozen=True)
class RegisterBankState:
    """The saved values of a register file: register name -> one value per index.

    Read-only and RAZ/WI registers are saved (the format carries every register) but never
    restored: what they read comes from the configuration, not from the file."""

    values: Mapping[str, tuple[int, ...]]

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(vals) for name, vals in self.values.items()}

    @classmethod
    def from_dict(cls, d: object, registers: Iterable[Register]) -> RegisterBankState:
        """Every register of ``registers`` once, each a list of ``count`` values within
        the register's width (IHI 0069 12.1.3: 32 or 64 bits), and no other name."""
        saved = mapping(d)
        rows = {r.name: r for r in registers}
        for name in saved:
            if name not in rows:
                raise FieldError(str(name)[:40], "is no register of this block")
        values: dict[str, tuple[int, ...]] = {}
        for r in rows.values():
            if r.name not in saved:
                raise FieldError(r.name, "missing")
            with at(r.name):
                vals = exactly(saved[r.name], r.count)
                values[r.name] = tuple(uint(v, 8 * r.width, f"[{i}]") for i, v in enumerate(vals))
        return cls(MappingProxyType(values))


_Slot = tuple[Register, int, int]  # register, index in its array, byte offset within it
Reader = Callable[[int], int]  # (index) -> value
Writer = Callable[[int, int, int], None]  # (index, value, mask)
Handlers = Mapping[str, tuple[Reader | None, Writer | None]]


_LAYOUTS: dict[tuple[Register, ...], dict[int, _Slot]] = {}


def _layout(registers: tuple[Register, ...]) -> dict[int, _Slot]:
    """Word offset -> slot, computed once per register list (a GICD has ~1,300 words):
    it is immutable, so every bank of the same device type shares it."""
    words = _LAYOUTS.get(registers)
    if words is not None:
        return words
    words = {}
    for r in registers:
        for i in range(r.count):
            base = r.offset + i * r.width
            for w in range(0, r.width, 4):
                if base + w in words:
                    raise ValueError(f"register {r.name} overlaps at {base + w:#x}")
                words[base + w] = (r, i, w)
    if len(_LAYOUTS) < 64:
        _LAYOUTS[registers] = words
    return words


class RegisterBank:
    """Dispatch MMIO accesses to a device's registers.

    Storage registers keep their values in :attr:`values` (``name -> list per index``),
    which save/restore and inspection read directly.
    """

    def __init__(
        self,
        registers: Sequence[Register],
        log: EventLog,
        source: str,
        handlers: Handlers | None = None,
        device: object | None = None,
        rule: str = "IHI0069 12.1",
    ) -> None:
        """``handlers`` binds registers to behaviour; ``device``, when given, is checked to
        have no ``read_*``/``write_*`` method left out of ``handlers``; ``rule`` is the
        document section access diagnostics cite (the GIC's by default)."""
        self.log = log
        self.source = source
        self.rule = rule
        self.registers = {r.name: r for r in registers}
        self.values: dict[str, list[int]] = {r.name: [r.reset] * r.count for r in registers}
        self._readers: dict[str, Reader | None] = dict.fromkeys(self.registers)
        self._writers: dict[str, Writer | None] = dict.fromkeys(self.registers)
        for name, (read, write) in (handlers or {}).items():
            r = self.registers.get(name)
            if r is None:
                raise ValueError(f"{source}: a handler is bound to {name}, which is no register here")
            if read is not None and r.access in (Access.WO, Access.RAZ_WI):
                raise ValueError(f"{source}: {name} is {r.access.value}: a read handler would never run")
            if write is not None and r.access in (Access.RO, Access.RAZ_WI):
                raise ValueError(f"{source}: {name} is {r.access.value}: a write handler would never run")
            self._readers[name], self._writers[name] = read, write
        if device is not None:
            bound = {f"read_{n}" for n, f in self._readers.items() if f} | {
                f"write_{n}" for n, f in self._writers.items() if f
            }
            for attr in dir(type(device)):
                if attr.startswith(("read_", "write_")) and attr[attr.index("_") + 1 :].isupper() and attr not in bound:
                    raise ValueError(f"{source}: {type(device).__name__}.{attr} is bound to no register")
        self._words = _layout(tuple(registers))

    def reset(self) -> None:
        for r in self.registers.values():
            self.values[r.name] = [r.reset] * r.count

    # -- save/restore -------------------------------------------------------------------
    def save_state(self) -> RegisterBankState:
        return RegisterBankState(MappingProxyType({name: tuple(vals) for name, vals in self.values.items()}))

    def load_state(self, state: RegisterBankState | Mapping[str, object]) -> None:
        """Restore the registers software or the model can change (RW, WO); a JSON dict is
        checked with :meth:`RegisterBankState.from_dict` first (ValueError if it does not fit)."""
        if not isinstance(state, RegisterBankState):
            state = RegisterBankState.from_dict(dict(state), self.registers.values())
        if state.values.keys() != self.registers.keys():
            raise ValueError(f"{self.source}: the saved registers are not this block's")
        for name, r in self.registers.items():
            if r.access in (Access.RW, Access.WO):
                vals = state.values[name]
                if len(vals) != r.count:
                    raise ValueError(f"{self.source}: saved register {name} does not fit this model")
                self.values[name] = list(vals)

    # -- value access for handlers and tools ----------------------------------------
    def get(self, name: str, index: int = 0) -> int:
        return self.values[name][index]

    def set(self, name: str, value: int, index: int = 0) -> None:
        r = self.registers[name]
        self.values[name][index] = value & ((1 << (8 * r.width)) - 1)

    def peek(self, name: str, index: int = 0) -> int:
        """The full value a read of the register would return (no side effects)."""
        r = self.registers[name]
        return self._value(r, index)

    def _value(self, r: Register, index: int) -> int:
        reader = self._readers[r.name]  # bound only to readable registers (__init__)
        if reader is not None:
            return reader(index)
        if r.access is _RAZ_WI or r.access is _WO:
            return 0
        return self.values[r.name][index]

    # -- MMIO ------------------------------------------------------------------------
    def _diag(self, message: str, offset: int) -> None:
        self.log.record(Kind.DIAGNOSTIC, self.source, message, offset=offset, rule=self.rule)

    def read(self, offset: int, size: int) -> int:
        """A guest load of ``size`` bytes at ``offset``; never raises."""
        if size == 8 and offset % 8 == 0:
            slot = self._words.get(offset)
            if slot is not None and slot[0].width == 4:
                self._diag(f"64-bit read of 32-bit register {slot[0].name}: split in two", offset)
                return self.read(offset, 4) | (self.read(offset + 4, 4) << 32)
            if slot is None:
                return self._reserved(offset, size, None)
            r, i, _ = slot
            return self._value(r, i)
        if size == 4 and offset % 4 == 0:
            slot = self._words.get(offset)
            if slot is None:
                return self._reserved(offset, size, None)
            r, i, w = slot
            return (self._value(r, i) >> (8 * w)) & 0xFFFFFFFF
        if size in (1, 2) and offset % size == 0:
            slot = self._words.get(offset & ~3)
            if slot is not None and slot[0].byte_access:
                r, i, w = slot
                shift = 8 * (w + (offset & 3))
                return (self._value(r, i) >> shift) & ((1 << (8 * size)) - 1)
        self._diag(f"unsupported {size}-byte read at {offset:#x}: RAZ", offset)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest store of ``size`` bytes at ``offset``; never raises."""
        if size == 8 and offset % 8 == 0:
            slot = self._words.get(offset)
            if slot is not None and slot[0].width == 4:
                self._diag(f"64-bit write of 32-bit register {slot[0].name}: split in two", offset)
                self.write(offset, 4, value & 0xFFFFFFFF)
                self.write(offset + 4, 4, value >> 32)
                return
            if slot is None:
                self._reserved(offset, size, value)
                return
            r, i, _ = slot
            self._store(r, i, value & 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, offset)
            return
        if size == 4 and offset % 4 == 0:
            slot = self._words.get(offset)
            if slot is None:
                self._reserved(offset, size, value)
                return
            r, i, w = slot
            shift = 8 * w
            self._store(r, i, (value & 0xFFFFFFFF) << shift, 0xFFFFFFFF << shift, offset)
            return
        if size in (1, 2) and offset % size == 0:
            slot = self._words.get(offset & ~3)
            if slot is not None and slot[0].byte_access:
                r, i, w = slot
                shift = 8 * (w + (offset & 3))
                bits = (1 << (8 * size)) - 1
                self._store(r, i, (value & bits) << shift, bits << shift, offset)
                return
        self._diag(f"unsupported {size}-byte write at {offset:#x}: ignored", offset)

    def _store(self, r: Register, index: int, value: int, mask: int, offset: int) -> None:
        writer = self._writers[r.name]  # bound only to writable registers (__init__)
        if writer is not None:
            writer(index, value, mask)
            return
        if r.access is _RO:
            self._diag(f"write to read-only register {r.name}: ignored", offset)
            return
        if r.access is _RAZ_WI:
            return
        m = mask & r.wmask
        old = self.values[r.name][index]
        self.values[r.name][index] = (old & ~m) | (value & m)

    def _reserved(self, offset: int, size: int, value: int | None) -> int:
        if value is None:
            self._diag(f"{size * 8}-bit read of reserved offset {offset:#x}: RAZ", offset)
        else:
            self._diag(f"{size * 8}-bit write of reserved offset {offset:#x}: WI", offset)
        return 0


# The identification registers of the GIC's blocks (IHI 0069 12.1.4): PIDR4..7,
# PIDR0..3, CIDR0..3, one byte each, in the last 48 bytes of a 64 KB frame.
GIC_ID_NAMES = ("PIDR4", "PIDR5", "PIDR6", "PIDR7", "PIDR0", "PIDR1", "PIDR2", "PIDR3",
                "CIDR0", "CIDR1", "CIDR2", "CIDR3")  # fmt: skip


def id_registers(values: tuple[int, ...], base: int = 0xFFD0, names: tuple[str, ...] = GIC_ID_NAMES) -> list[Register]:
    """Read-only 32-bit identification registers ``names`` at ``base``, ``base + 4``, ..."""
    return [
        Register(n, base + 4 * i, 4, reset=v, access=Access.RO)
        for i, (n, v) in enumerate(zip(names, values, strict=True))
    ]


def field(value: int, hi: int, lo: int) -> int:
    """Bits ``[hi:lo]`` of ``value``."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def deposit(value: int, hi: int, lo: int, new: int) -> int:
    """``value`` with bits ``[hi:lo]`` replaced by ``new``."""
    mask = ((1 << (hi - lo + 1)) - 1) << lo
    return (value & ~mask) | ((new << lo) & mask)
