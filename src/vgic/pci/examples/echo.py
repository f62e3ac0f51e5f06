"""A user-written MSI-X device in a page of Python: a DMA copy engine.

The guest programs a source, a destination and a length in BAR 0, then writes an
MSI-X vector number to GO. The device copies up to 4 KiB of guest memory with two
bus-master accesses, counts the copy in DONE and signals the vector. Plug it in with
``vgic run --pci vgic.pci.examples.echo:EchoDevice IMAGE`` or, from Python,
``machine.pci.plug(EchoDevice())``. docs/pci.md walks through it.
"""

from __future__ import annotations

from vgic.pci.function import Bar, BarKind, PciFunction

SRC, DST, LEN, GO, DONE = 0x00, 0x08, 0x10, 0x14, 0x18  # BAR 0 registers
VECTORS = 4
MAX_COPY = 4096  # bounded work per access: a guest cannot ask for more


class EchoDevice(PciFunction):
    def __init__(self) -> None:
        super().__init__(vendor_id=0x1B36, device_id=0x00FE, class_code=0xFF0000, name="echo")
        self.add_bar(Bar(0, 0x1000))  # registers: 4 KiB, 32-bit
        self.add_bar(Bar(2, 0x1000, BarKind.MEM64))  # MSI-X table at 0, PBA at 0x800
        self.add_express()
        self.add_msix(VECTORS, bar=2, table=0x000, pba=0x800)
        self.regs = {SRC: 0, DST: 0, LEN: 0}
        self.done = 0

    def bar_read(self, index: int, offset: int, size: int) -> int:
        if index == 0 and offset == DONE:
            return self.done
        if index == 0 and offset & ~7 in (SRC, DST):
            return self.regs[offset & ~7] >> (8 * (offset & 4)) & 0xFFFF_FFFF
        return self.regs.get(offset, 0) if index == 0 else 0

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        if index != 0:
            return
        if offset & ~7 in (SRC, DST) and size == 4:  # 64-bit registers, written as two halves
            base, shift = offset & ~7, 8 * (offset & 4)
            self.regs[base] = self.regs[base] & ~(0xFFFF_FFFF << shift) | value << shift
        elif offset == LEN:
            self.regs[LEN] = value
        elif offset == GO:
            self.copy(vector=value)
        else:
            self.diag(f"write of {value:#x} to unknown register {offset:#x}")

    def copy(self, vector: int) -> None:
        length = self.regs[LEN]
        if length > MAX_COPY:
            self.diag(f"copy of {length} bytes refused: at most {MAX_COPY}")
            return
        data = self.dma_read(self.regs[SRC], length)  # None (and a diagnostic) if refused
        if data is not None and self.dma_write(self.regs[DST], data):
            self.done += 1
            self.signal(vector)  # MSI-X message with this function's requester ID
