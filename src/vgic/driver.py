"""A guest-side GICv3/ITS driver in Python, for tests, the demo and benchmarks.

It does what an OS driver does (Linux's irq-gic-v3-its.c flow): allocate the LPI
configuration and pending tables and the ITS tables in guest RAM, program GICR_* and
GITS_* through MMIO only, write commands into the ring and move GITS_CWRITER. It never
reaches into a model's internals, so it exercises exactly what a guest can.
"""

from __future__ import annotations

from vgic.gic import Gic
from vgic.gicv3.redistributor import LPI_BASE, RD_FRAME_SIZE
from vgic.its import commands as C
from vgic.its.registers import BASER_TYPE_COLLECTION, BASER_TYPE_DEVICE

GITS_CTLR, GITS_TYPER, GITS_CBASER, GITS_CWRITER, GITS_CREADR = 0x0, 0x8, 0x80, 0x88, 0x90
GITS_BASER = 0x100
GITS_TRANSLATER = 0x10040
GICR_CTLR, GICR_WAKER, GICR_PROPBASER, GICR_PENDBASER = 0x0, 0x14, 0x70, 0x78
GICR_SETLPIR, GICR_CLRLPIR, GICR_INVLPIR, GICR_INVALLR = 0x40, 0x48, 0xA0, 0xB0

INNER_SHAREABLE = 1 << 10
RAWAWB = 7


class Allocator:
    """A bump allocator over a guest RAM range."""

    def __init__(self, base: int, size: int) -> None:
        self.next = base
        self.end = base + size

    def alloc(self, size: int, align: int = 4096) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise MemoryError("driver heap exhausted")
        self.next = addr + size
        return addr


class ItsDriver:
    """Drive one ITS of a :class:`Gic` as a guest would, through MMIO."""

    def __init__(self, gic: Gic, heap: Allocator, its: int = 0) -> None:
        self.gic = gic
        self.mem = gic.memory
        self.heap = heap
        self.its_base = gic.config.its_bases[its]
        self.its_index = its
        self.queue_base = 0
        self.queue_bytes = 0
        self.prop_table = 0
        self.lpi_id_bits = 16
        self.itts: dict[int, int] = {}

    # -- MMIO helpers --------------------------------------------------------------------
    def its_read(self, offset: int, size: int = 4) -> int:
        return self.gic.read(self.its_base + offset, size)

    def its_write(self, offset: int, value: int, size: int = 4) -> None:
        self.gic.write(self.its_base + offset, size, value)

    def its_write64(self, offset: int, value: int) -> None:
        """As a CPU engine does it: two 32-bit halves, low first."""
        self.its_write(offset, value & 0xFFFFFFFF)
        self.its_write(offset + 4, value >> 32)

    def its_read64(self, offset: int) -> int:
        return self.its_read(offset) | self.its_read(offset + 4) << 32

    def gicr_write(self, cpu: int, offset: int, value: int, size: int = 4) -> None:
        self.gic.write(self.gic.config.gicr_base + cpu * RD_FRAME_SIZE + offset, size, value)

    def gicr_read(self, cpu: int, offset: int, size: int = 4) -> int:
        return self.gic.read(self.gic.config.gicr_base + cpu * RD_FRAME_SIZE + offset, size)

    # -- redistributors and CPU interfaces (Linux: its_cpu_init_lpis) --------------------
    def setup_lpis(self, id_bits: int = 16, priority: int = 0xA0, enable: bool = True) -> None:
        """Configuration table for LPIs [8192, 2^id_bits), a pending table per CPU, LPIs on."""
        self.lpi_id_bits = id_bits
        nlpis = (1 << id_bits) - LPI_BASE
        self.prop_table = self.heap.alloc(nlpis, 4096)
        self.mem.fill(self.prop_table, nlpis, priority | (1 if enable else 0) | 2)
        for cpu in range(len(self.gic.cpus)):
            pend = self.heap.alloc(max((1 << id_bits) // 8, 65536), 65536)
            self.gicr_write(cpu, GICR_WAKER, 0)
            self.gicr_write(cpu, GICR_PROPBASER, self.prop_table | INNER_SHAREABLE | RAWAWB << 7 | (id_bits - 1), 8)
            self.gicr_write(cpu, GICR_PENDBASER, pend | INNER_SHAREABLE | RAWAWB << 7, 8)
            self.gicr_write(cpu, GICR_CTLR, 1)
            self.gic.cpus[cpu].write_sysreg("ICC_PMR_EL1", 0xF0)
            self.gic.cpus[cpu].write_sysreg("ICC_IGRPEN1_EL1", 1)

    def pending_table(self, cpu: int) -> int:
        return self.gicr_read(cpu, GICR_PENDBASER, 8) & 0x000F_FFFF_FFFF_0000

    def configure_lpi(self, intid: int, priority: int = 0xA0, enabled: bool = True) -> None:
        """Write an LPI's configuration byte (software must then INV it)."""
        self.mem.write8(self.prop_table + intid - LPI_BASE, priority & 0xFC | 2 | int(enabled))

    # -- the ITS (Linux: its_probe_one, its_alloc_tables) ---------------------------------
    def setup_its(self, queue_pages: int = 1, table_pages: int = 1, two_level: bool = False,
                  page_size_code: int = 0) -> None:  # fmt: skip
        self.queue_bytes = queue_pages * 4096
        self.queue_base = self.heap.alloc(self.queue_bytes, 65536)
        self.its_write64(GITS_CBASER, 1 << 63 | RAWAWB << 59 | self.queue_base | INNER_SHAREABLE | queue_pages - 1)
        self.its_write64(GITS_CWRITER, 0)
        page = (4096, 16384, 65536)[page_size_code]
        for n in range(8):
            baser = self.its_read64(GITS_BASER + 8 * n)
            kind = baser >> 56 & 7
            if kind not in (BASER_TYPE_DEVICE, BASER_TYPE_COLLECTION):
                continue
            indirect = two_level and kind == BASER_TYPE_DEVICE
            table = self.heap.alloc(table_pages * page, 65536)
            pa = table & 0x0000_FFFF_FFFF_F000
            if page == 65536:
                pa = (table & 0x0000_FFFF_FFFF_0000) | (table >> 48 & 0xF) << 12
            value = (1 << 63 | int(indirect) << 62 | RAWAWB << 59 | (baser & (0x7 << 56 | 0x1F << 48)) | pa
                     | INNER_SHAREABLE | page_size_code << 8 | table_pages - 1)  # fmt: skip
            self.its_write64(GITS_BASER + 8 * n, value)
            if indirect:
                self.device_l1 = (table, page)
        self.its_write(GITS_CTLR, 1)

    def add_l2_page(self, device_id: int) -> None:
        """Give a two-level device table the level-2 page holding ``device_id``."""
        table, page = self.device_l1
        per_page = page // 8
        l2 = self.heap.alloc(page, page)
        self.mem.write64(table + (device_id // per_page) * 8, 1 << 63 | l2)

    @property
    def typer(self) -> int:
        return self.its_read64(GITS_TYPER)

    @property
    def creadr(self) -> int:
        return self.its_read64(GITS_CREADR)

    @property
    def cwriter(self) -> int:
        return self.its_read64(GITS_CWRITER)

    def send(self, *cmds: C.Command, retry: bool = False) -> None:
        """Write commands at CWRITER and advance it (wrapping), as a driver does."""
        offset = self.cwriter & 0xFFFE0
        for cmd in cmds:
            self.mem.write_bytes(self.queue_base + offset, C.encode(cmd))
            offset = (offset + 32) % self.queue_bytes
        self.its_write64(GITS_CWRITER, offset | int(retry))
        self.wait()

    def wait(self, polls: int = 1 << 20) -> bool:
        """Poll GITS_CREADR until the queue is done or stalled, as a driver does (each read
        lets the ITS run a bounded number of commands). True if CREADR reached CWRITER."""
        target = self.cwriter & 0xFFFE0
        its = self.gic.its[self.its_index]
        for _ in range(polls):
            if self.its_read64(GITS_CREADR) & 1:
                return False
            if not its.busy:  # nothing left to run: where did it end?
                return self.its_read64(GITS_CREADR) & 0xFFFE0 == target
        return False

    # -- common flows ---------------------------------------------------------------------
    def map_device(self, device_id: int, event_bits: int) -> int:
        itt = self.heap.alloc(max(256, (1 << event_bits) * (((self.typer >> 4) & 0xF) + 1)), 256)
        self.itts[device_id] = itt
        self.send(C.Mapd(device_id, event_bits - 1, itt, True))
        return itt

    def msi(self, device_id: int, event_id: int) -> bool:
        """A device MSI (the bus supplies the DeviceID)."""
        return self.gic.its[self.its_index].translate(device_id, event_id)

    def cpu_store_translater(self, event_id: int) -> None:
        """A plain CPU store to GITS_TRANSLATER (no requester: the default DeviceID)."""
        self.its_write(GITS_TRANSLATER, event_id)

    def ack(self, cpu: int) -> int:
        """Acknowledge and EOI one interrupt on ``cpu``; 1023 if none."""
        ci = self.gic.cpus[cpu]
        intid = ci.read_sysreg("ICC_IAR1_EL1")
        if intid != 1023:
            ci.write_sysreg("ICC_EOIR1_EL1", intid)
        return intid

    def drain(self, cpu: int, limit: int = 1 << 20) -> list[int]:
        """Acknowledge everything pending on ``cpu``, in delivery order."""
        out = []
        for _ in range(limit):
            intid = self.ack(cpu)
            if intid == 1023:
                break
            out.append(intid)
        return out
