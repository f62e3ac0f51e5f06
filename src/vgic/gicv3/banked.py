"""Interrupt state kept as bitmaps: SGIs and PPIs of one CPU, or the SPIs (IHI 0069 4.1).

:class:`InterruptBank` holds, for a range of INTIDs, the enable, pending, active, group,
level and configuration state as Python integers (one bit per INTID) and the priorities
as bytes. The best candidate for a CPU is found by masking the bitmaps and looking only at
the set bits (a few per CPU), never by walking every INTID.

* Edge-triggered interrupts latch pending on a rising edge or a write to ISPENDR; the
  acknowledge clears it. Level-sensitive ones are pending while their line is high or
  the latch is set (4.1.2).
* Acknowledge makes an interrupt active; an active interrupt is not signalled again
  until it is deactivated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vgic.checks import FieldError, hexbytes, mapping, only, req, uint
from vgic.regs import Reader, Writer

# The set/clear register pairs over a bank's bitmaps (IHI 0069 12.9, 12.10), by name
# without the register number: register -> (bitmap, operation).
BITMAP_REGISTERS: dict[str, tuple[str, str | None]] = {
    "IGROUPR": ("group", None),
    "ISENABLER": ("enabled", "set"),
    "ICENABLER": ("enabled", "clear"),
    "ISPENDR": ("pending", "set"),
    "ICPENDR": ("pending", "clear"),
    "ISACTIVER": ("active", "set"),
    "ICACTIVER": ("active", "clear"),
}


# The priority bits GICD_IPRIORITYR<n> / GICR_IPRIORITYR<n> writes keep: 5, as QEMU's GIC
# (unimplemented low-order bits are RAZ/WI: IHI 0069, GICD_IPRIORITYR<n>).
PRIORITY_BITS_MASK = 0xF8
_BITMAPS = ("enabled", "latched", "level", "active", "group", "edge")


@dataclass(frozen=True)
class InterruptBankState:
    """The saved state of an :class:`InterruptBank`: one bit per INTID in each bitmap
    (bit n is INTID n), and one priority byte per INTID from 0 to the bank's last."""

    enabled: int
    latched: int
    level: int
    active: int
    group: int
    edge: int
    priority: bytes

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {f: getattr(self, f) for f in _BITMAPS}
        d["priority"] = self.priority.hex()
        return d

    @classmethod
    def from_dict(cls, d: object, first: int, count: int) -> InterruptBankState:
        """Bitmaps with no bit outside INTIDs [first, first + count), priorities for INTIDs
        0 .. first + count - 1 with the unimplemented bits and those below ``first`` zero."""
        m = mapping(d)
        only(m, (*_BITMAPS, "priority"))
        valid = ((1 << count) - 1) << first
        bitmaps: dict[str, int] = {}
        for f in _BITMAPS:
            v = uint(req(m, f), first + count, f)
            if v & ~valid:
                raise FieldError(f, f"has bits outside INTIDs {first} to {first + count - 1}")
            bitmaps[f] = v
        prio = hexbytes(req(m, "priority"), first + count, "priority")
        if len(prio) != first + count:
            raise FieldError("priority", f"holds {len(prio)} priorities, not {first + count}")
        if any(prio[:first]):
            raise FieldError("priority", f"sets priorities of INTIDs below {first}, which are not this bank's")
        if any(p & ~PRIORITY_BITS_MASK for p in prio):
            raise FieldError(
                "priority", f"has bits outside the implemented mask {PRIORITY_BITS_MASK:#x} (GICD_IPRIORITYR<n>)"
            )
        return cls(priority=prio, **bitmaps)


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class InterruptBank:
    """INTIDs [first, first + count): SGIs+PPIs (0, 32) or SPIs (32, n)."""

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count
        self.reset()

    def reset(self) -> None:
        self.enabled = 0
        self.latched = 0  # edge latch and ISPENDR
        self.level = 0  # input line levels
        self.active = 0
        self.group = 0  # 1 = Group 1 (IGROUPR)
        self.edge = 0  # 1 = edge-triggered (ICFGR odd bits)
        self.priority = bytearray(self.first + self.count)

    def save_state(self) -> InterruptBankState:
        return InterruptBankState(self.enabled, self.latched, self.level, self.active, self.group, self.edge,
                                  bytes(self.priority))  # fmt: skip

    def load_state(self, state: InterruptBankState) -> None:
        if len(state.priority) != len(self.priority) or any(getattr(state, f) & ~self._valid for f in _BITMAPS):
            raise ValueError("saved interrupt state does not fit this interrupt bank")
        self.enabled, self.latched, self.level = state.enabled, state.latched, state.level
        self.active, self.group, self.edge = state.active, state.group, state.edge
        self.priority = bytearray(state.priority)

    @property
    def pending(self) -> int:
        return self.latched | (self.level & ~self.edge)

    def set_level(self, intid: int, level: bool) -> bool:
        """Drive an input line. Returns True if the pending state may have changed."""
        bit = 1 << intid
        old = self.level & bit
        if level:
            self.level |= bit
            if not old and self.edge & bit:
                self.latched |= bit
            return True
        self.level &= ~bit
        return bool(old)

    def best(self, group: int, allowed: int = -1) -> tuple[int, int] | None:
        """(priority, INTID) of the best pending, enabled, inactive interrupt of ``group``."""
        pending = self.latched | (self.level & ~self.edge)  # self.pending, without a call
        cand = pending & self.enabled & ~self.active & allowed
        cand &= self.group if group else ~self.group
        if not cand:
            return None
        best: tuple[int, int] | None = None
        for intid in _bits(cand):
            key = (self.priority[intid], intid)
            if best is None or key < best:
                best = key
        return best

    def acknowledge(self, intid: int) -> None:
        bit = 1 << intid
        self.latched &= ~bit
        self.active |= bit

    def deactivate(self, intid: int) -> bool:
        bit = 1 << intid
        if not self.active & bit:
            return False
        self.active &= ~bit
        return True

    # -- the set/clear register pairs (ISENABLER/ICENABLER and friends) ---------------
    def word(self, which: str, n: int) -> int:
        """32-bit word ``n`` of a bitmap, as GICD_/GICR_ I*R<n> registers read it."""
        value = self.pending if which == "pending" else getattr(self, which)
        return (value >> (32 * n)) & 0xFFFFFFFF

    def set_bits(self, which: str, n: int, value: int) -> None:
        value = (value & 0xFFFFFFFF) << (32 * n) & self._valid
        setattr(self, "latched" if which == "pending" else which, getattr(self, _attr(which)) | value)

    def clear_bits(self, which: str, n: int, value: int) -> None:
        value = (value & 0xFFFFFFFF) << (32 * n) & self._valid
        setattr(self, _attr(which), getattr(self, _attr(which)) & ~value)

    def write_word(self, which: str, n: int, value: int) -> None:
        shift = 32 * n
        mask = 0xFFFFFFFF << shift & self._valid
        setattr(self, which, (getattr(self, which) & ~mask) | ((value << shift) & mask))

    @property
    def _valid(self) -> int:
        return ((1 << self.count) - 1) << self.first

    def icfgr(self, n: int) -> int:
        """GICx_ICFGR<n>: two bits per INTID, bit 1 = edge-triggered."""
        v = 0
        for i in range(16):
            if self.edge >> (16 * n + i) & 1:
                v |= 2 << (2 * i)
        return v

    def write_icfgr(self, n: int, value: int, fixed_edge: int = 0) -> None:
        for i in range(16):
            intid = 16 * n + i
            if not self._valid >> intid & 1:
                continue
            bit = 1 << intid
            if fixed_edge & bit:
                continue
            if value >> (2 * i + 1) & 1:
                self.edge |= bit
            else:
                self.edge &= ~bit


def _attr(which: str) -> str:
    return "latched" if which == "pending" else which


def bitmap_handlers(bank: InterruptBank, suffix: str = "", word: int | None = None,
                    after: Callable[[], None] = lambda: None) -> dict[str, tuple[Reader, Writer]]:  # fmt: skip
    """The handlers of every register of :data:`BITMAP_REGISTERS` over ``bank``, by
    register name + ``suffix``, for a RegisterBank's handler table.

    ``word`` fixes the bitmap word (the redistributor's ...R0 registers); otherwise the
    register's array index is the word. ``after`` runs after each write."""
    handlers: dict[str, tuple[Reader, Writer]] = {}
    for name, (which, op) in BITMAP_REGISTERS.items():

        def read(index: int, which: str = which) -> int:
            return bank.word(which, index if word is None else word)

        def write(index: int, value: int, mask: int, which: str = which, op: str | None = op) -> None:
            n = index if word is None else word
            value &= mask
            if op == "set":
                bank.set_bits(which, n, value)
            elif op == "clear":
                bank.clear_bits(which, n, value)
            else:
                bank.write_word(which, n, value)
            after()

        handlers[f"{name}{suffix}"] = (read, write)
    return handlers
