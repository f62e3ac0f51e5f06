"""The GICv3 distributor (IHI 0069 12.9): identification and control.

This block reports the GIC's capabilities (GICD_TYPER: LPI support and INTID bits) and
holds GICD_CTLR. Affinity routing is always enabled (ARE_NS=1) with a single security
state (DS=1), as on QEMU's virt machine.
"""

from __future__ import annotations

import threading

from vgic.events import EventLog
from vgic.regs import Access, Register, RegisterBank

GICD_FRAME_SIZE = 0x10000

CTLR_ENABLE_GRP0 = 1 << 0
CTLR_ENABLE_GRP1 = 1 << 1
CTLR_ARE = 1 << 4
CTLR_DS = 1 << 6
CTLR_RWP = 1 << 31

GICD_IIDR_VALUE = 0x5600043B
_ID = (0x44, 0x00, 0x00, 0x00, 0x92, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
_ID_NAMES = ("PIDR4", "PIDR5", "PIDR6", "PIDR7", "PIDR0", "PIDR1", "PIDR2", "PIDR3",
             "CIDR0", "CIDR1", "CIDR2", "CIDR3")  # fmt: skip

GICD_REGISTERS: list[Register] = [
    Register("CTLR", 0x0000, 4, reset=CTLR_ARE | CTLR_DS),
    Register("TYPER", 0x0004, 4, access=Access.RO),
    Register("IIDR", 0x0008, 4, reset=GICD_IIDR_VALUE, access=Access.RO),
    Register("TYPER2", 0x000C, 4, access=Access.RO),
    Register("STATUSR", 0x0010, 4, access=Access.RAZ_WI),
    *(
        Register(name, 0xFFD0 + 4 * i, 4, reset=val, access=Access.RO)
        for i, (name, val) in enumerate(zip(_ID_NAMES, _ID, strict=True))
    ),
]


class Distributor:
    """GICD: control and identification; SPIs come with the virt machine."""

    def __init__(self, log: EventLog, lpi_id_bits: int = 16, num_spis: int = 0) -> None:
        self.log = log
        self.lpi_id_bits = lpi_id_bits
        self.num_spis = num_spis
        self.lock = threading.RLock()
        self.regs = RegisterBank(self, GICD_REGISTERS, log, "gicd")

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self.regs.write(offset, size, value)

    def read_TYPER(self, index: int) -> int:
        """ITLinesNumber, LPIS[17], IDbits[23:19] (12.9.38)."""
        lines = (self.num_spis + 32 + 31) // 32 - 1
        return lines | 1 << 17 | (self.lpi_id_bits - 1) << 19

    def write_CTLR(self, index: int, value: int, mask: int) -> None:
        """EnableGrp0/EnableGrp1 are RW; ARE and DS are fixed at 1 (RAO/WI)."""
        v = self.regs.get("CTLR")
        grp = CTLR_ENABLE_GRP0 | CTLR_ENABLE_GRP1
        v = (v & ~(grp & mask)) | (value & grp & mask)
        self.regs.set("CTLR", v | CTLR_ARE | CTLR_DS)
