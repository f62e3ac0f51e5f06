"""The Arm PrimeCell UART (PL011), as on QEMU's virt machine at 0x09000000.

Transmit goes to a callback at once (the FIFO never fills); receive comes from
:meth:`Pl011.feed` into a 16-entry FIFO (or 1 entry with FIFOs disabled). The interrupt
(SPI 1 on virt) follows UARTRIS & UARTIMSC for the receive and transmit sources.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vgic.checks import FieldError, at, boolean, hexbytes, mapping, only, req, uint
from vgic.events import EventLog
from vgic.regs import Access, Register, RegisterBank, RegisterBankState, id_registers

PL011_SIZE = 0x1000

FR_RXFE = 1 << 4
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6
FR_TXFE = 1 << 7
INT_RX = 1 << 4
INT_TX = 1 << 5
INT_RT = 1 << 6
LCR_FEN = 1 << 4
INT_ALL = 0x7FF  # UARTRIS/UARTIMSC: the eleven interrupt bits [10:0]
RX_LIMIT = 1 << 20  # received bytes a snapshot may carry (the model's receive queue grows with input)

# The PL011's registers are 8 or 16 bits wide in 32-bit slots, and software accesses them
# with loads and stores of any of the three sizes: Linux's amba-pl011 driver uses 16-bit
# ones (readw/writew) unless the device tree says reg-io-width = <4>, which QEMU's does
# not. So every register but the identification ones takes 8-, 16- and 32-bit accesses.
PL011_REGISTERS: list[Register] = [
    Register("DR", 0x000, 4, byte_access=True),
    Register("RSR", 0x004, 4, byte_access=True),
    Register("FR", 0x018, 4, access=Access.RO, byte_access=True),
    Register("ILPR", 0x020, 4, byte_access=True),
    Register("IBRD", 0x024, 4, byte_access=True),
    Register("FBRD", 0x028, 4, byte_access=True),
    Register("LCR_H", 0x02C, 4, byte_access=True),
    Register("CR", 0x030, 4, reset=0x300, byte_access=True),
    Register("IFLS", 0x034, 4, reset=0x12, byte_access=True),
    Register("IMSC", 0x038, 4, byte_access=True),
    Register("RIS", 0x03C, 4, access=Access.RO, byte_access=True),
    Register("MIS", 0x040, 4, access=Access.RO, byte_access=True),
    Register("ICR", 0x044, 4, access=Access.WO, byte_access=True),
    Register("DMACR", 0x048, 4, byte_access=True),
    # PeriphID0..3, PCellID0..3
    *id_registers((0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1), 0xFE0, tuple(f"ID{i}" for i in range(8))),
]


@dataclass(frozen=True)
class Pl011State:
    """The saved UART: registers, the bytes received and not yet read, UARTRIS, and the
    level of the interrupt output."""

    regs: RegisterBankState
    rx: bytes
    ris: int
    level: bool

    def to_dict(self) -> dict[str, object]:
        return {"regs": self.regs.to_dict(), "rx": self.rx.hex(), "ris": self.ris, "level": self.level}

    @classmethod
    def from_dict(cls, d: object) -> Pl011State:
        """UARTIMSC and UARTRIS within their eleven bits (PL011 TRM 3.3.10, 3.3.11); the
        receive interrupts (RXRIS, RTRIS) set exactly while received bytes wait; the output
        level is UARTRIS & UARTIMSC != 0, as the model drives it."""
        m = mapping(d)
        only(m, ("regs", "rx", "ris", "level"))
        with at("regs"):
            regs = RegisterBankState.from_dict(req(m, "regs"), PL011_REGISTERS)
            imsc = regs.values["IMSC"][0]
            if imsc & ~INT_ALL:
                raise FieldError("IMSC", f"{imsc:#x} has bits beyond UARTIMSC[10:0]")
        rx = hexbytes(req(m, "rx"), RX_LIMIT, "rx")
        ris = uint(req(m, "ris"), 11, "ris")
        if ris & (INT_RX | INT_RT) != (INT_RX | INT_RT if rx else 0):
            raise FieldError("ris", f"{ris:#x}: RXRIS and RTRIS are set exactly while received bytes wait")
        level = boolean(req(m, "level"), "level")
        if level != bool(ris & imsc):
            raise FieldError("level", f"{level} is not UARTRIS & UARTIMSC != 0")
        return cls(regs, rx, ris, level)


class Pl011:
    def __init__(self, log: EventLog, on_tx: Callable[[int], None], on_irq: Callable[[bool], None]) -> None:
        self.on_tx = on_tx
        self.on_irq = on_irq
        self.rx: deque[int] = deque()
        self.ris = INT_TX
        self.reads_waiting = 0  # polls of an empty receive FIFO since the last feed or transmit
        handlers = {
            "DR": (self.read_DR, self.write_DR),
            "FR": (self.read_FR, None),
            "RIS": (self.read_RIS, None),
            "MIS": (self.read_MIS, None),
            "IMSC": (None, self.write_IMSC),
            "ICR": (None, self.write_ICR),
        }
        self.regs = RegisterBank(PL011_REGISTERS, log, "pl011", handlers, device=self, rule="PL011 TRM 3.2")
        self._level = False

    def save_state(self) -> Pl011State:
        return Pl011State(self.regs.save_state(), bytes(self.rx), self.ris, self._level)

    def load_state(self, state: Pl011State) -> None:
        self.regs.load_state(state.regs)
        self.rx = deque(state.rx)
        self.ris = state.ris
        self._level = state.level

    def read(self, offset: int, size: int) -> int:
        return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.regs.write(offset, size, value)

    @property
    def _depth(self) -> int:
        return 16 if self.regs.get("LCR_H") & LCR_FEN else 1

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the receive line."""
        self.rx.extend(data)
        self.reads_waiting = 0
        if self.rx:
            self.ris |= INT_RX | INT_RT
        self._update()

    def read_DR(self, index: int) -> int:
        if not self.rx:
            self.reads_waiting += 1
            return 0
        c = self.rx.popleft()
        if not self.rx:
            self.ris &= ~(INT_RX | INT_RT)
        self._update()
        return c

    def write_DR(self, index: int, value: int, mask: int) -> None:
        if not mask & 0xFF:
            return  # a store to the byte lanes above the data: nothing to transmit
        self.reads_waiting = 0  # a guest that transmits is not waiting for input
        self.on_tx(value & 0xFF)
        self.ris |= INT_TX
        self._update()

    def read_FR(self, index: int) -> int:
        fr = FR_TXFE
        if not self.rx:
            fr |= FR_RXFE
            self.reads_waiting += 1
        elif len(self.rx) >= self._depth:
            fr |= FR_RXFF
        return fr

    def read_RIS(self, index: int) -> int:
        return self.ris

    def read_MIS(self, index: int) -> int:
        return self.ris & self.regs.get("IMSC")

    def write_IMSC(self, index: int, value: int, mask: int) -> None:
        self.regs.set("IMSC", (self.regs.get("IMSC") & ~mask | value & mask) & INT_ALL)
        self._update()

    def write_ICR(self, index: int, value: int, mask: int) -> None:
        self.ris &= ~(value & mask & ~(INT_RX | INT_RT) if self.rx else value & mask)
        self._update()

    def _update(self) -> None:
        level = bool(self.ris & self.regs.get("IMSC"))
        if level != self._level:
            self._level = level
            self.on_irq(level)
