"""The PCI framework and the host bridge: configuration space, BARs, capabilities,
MSI/MSI-X masking and pending bits, Bus Master Enable, INTx, and requester-ID MSIs that
reach the ITS as their DeviceID (vgic.pci, vgic.machine.pci.Fabric).

Every access goes through what a guest or a device can do: ECAM reads and writes, BAR
accesses through the host's windows, and a device's own calls (signal, DMA, INTx).
"""

from __future__ import annotations

import pytest

from vgic.driver import Allocator, ItsDriver
from vgic.events import EventLog, Kind
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.machine.pci import Fabric
from vgic.memory import GuestMemory
from vgic.pci.function import Bar, BarKind, PciFunction
from vgic.pci.host import ECAM_BASE, MMIO32_BASE, MMIO64_BASE, PcieHost

RAM = 0x4000_0000
LPI = 8192
ITS_TRANSLATER = 0x0808_0000 + 0x1_0040  # QEMU virt's ITS + GITS_TRANSLATER

# Configuration register offsets (PCI Local Bus 3.0, 6.1), spelled out for the tests
COMMAND, STATUS, CLASS, HEADER, BAR0, CAP_PTR, INT_LINE, INT_PIN = 0x04, 0x06, 0x08, 0x0E, 0x10, 0x34, 0x3C, 0x3D
MEM, IO, BME, INTX_DISABLE = 1 << 1, 1 << 0, 1 << 2, 1 << 10


class Sink:
    """An MsiSink that records the messages."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, int]] = []

    def msi_write(self, address: int, data: int, requester_id: int) -> None:
        self.messages.append((address, data, requester_id))


class Gadget(PciFunction):
    """A test device: a 4 KiB 32-bit BAR, a 16 KiB 64-bit BAR with 4 MSI-X vectors, an I/O
    BAR, the PCI Express capability. Its registers echo writes."""

    def __init__(self) -> None:
        super().__init__(0x1234, 0x5678, 0xFF0000, revision=3, name="gadget")
        self.add_bar(Bar(0, 0x1000))
        self.add_bar(Bar(2, 0x4000, BarKind.MEM64))
        self.add_bar(Bar(4, 0x20, BarKind.IO))
        self.add_express()
        self.add_msix(4, bar=2, table=0x0, pba=0x800)
        self.regs: dict[tuple[int, int], int] = {}

    def bar_read(self, index: int, offset: int, size: int) -> int:
        return self.regs.get((index, offset), 0xA5)

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        self.regs[(index, offset)] = value


class MsiGadget(PciFunction):
    def __init__(self) -> None:
        super().__init__(0x1234, 0x0001, 0xFF0000, name="msi")
        self.add_msi(4)


@pytest.fixture
def env() -> tuple[PcieHost, Sink, list[tuple[int, bool]]]:
    mem = GuestMemory()
    mem.add_ram(RAM, 16 << 20)
    sink = Sink()
    spis: list[tuple[int, bool]] = []
    host = PcieHost(mem, EventLog(), sink, lambda intid, level: spis.append((intid, level)))
    return host, sink, spis


def cfg(slot: int, reg: int, fn: int = 0, bus: int = 0) -> int:
    return bus << 20 | slot << 15 | fn << 12 | reg


def assign(host: PcieHost, slot: int, bar0: int = MMIO32_BASE, bar2: int = MMIO64_BASE) -> None:
    host.ecam_write(cfg(slot, BAR0), 4, bar0)
    host.ecam_write(cfg(slot, BAR0 + 8), 4, bar2 & 0xFFFF_FFFF)
    host.ecam_write(cfg(slot, BAR0 + 12), 4, bar2 >> 32)
    host.ecam_write(cfg(slot, BAR0 + 16), 4, 0x1000)


def diagnostics(host: PcieHost) -> list[str]:
    return [e.message for e in host.log.of(Kind.DIAGNOSTIC)]


# -- configuration space -----------------------------------------------------------------------


def test_host_bridge_at_00_00_0_and_empty_slots_read_all_ones(env) -> None:
    host, _, _ = env
    assert host.ecam_read(cfg(0, 0), 4) == 0x0008_1B36
    assert host.ecam_read(cfg(0, CLASS), 4) >> 8 == 0x060000
    assert host.ecam_read(cfg(0, HEADER), 1) == 0
    assert host.ecam_read(cfg(1, 0), 4) == 0xFFFF_FFFF  # no device: master abort
    assert host.ecam_read(cfg(0, 0, bus=1), 2) == 0xFFFF
    assert host.ecam_read(cfg(0, 0, fn=1), 4) == 0xFFFF_FFFF
    host.ecam_write(cfg(5, COMMAND), 2, 0xFFFF)  # dropped, not an exception


def test_bar_sizing_32_64_and_io(env) -> None:
    host, _, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assert slot == 1 and g.requester_id == 0x08
    for reg in range(BAR0, BAR0 + 24, 4):
        host.ecam_write(cfg(slot, reg), 4, 0xFFFF_FFFF)
    sized = [host.ecam_read(cfg(slot, reg), 4) for reg in range(BAR0, BAR0 + 24, 4)]
    assert sized[0] == 0xFFFF_F000  # 4 KiB, 32-bit, non-prefetchable
    assert sized[2] == 0xFFFF_C004 and sized[3] == 0xFFFF_FFFF  # 16 KiB, 64-bit (type 10b)
    assert sized[4] == 0xFFFF_FFE1  # 32 bytes of I/O
    assert sized[1] == sized[5] == 0  # unimplemented BARs
    assign(host, slot)
    assert g.bar_address(0) == MMIO32_BASE
    assert g.bar_address(2) == MMIO64_BASE
    assert g.bar_address(4) == 0x1000


def test_capability_walk_and_express(env) -> None:
    host, _, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assert host.ecam_read(cfg(slot, STATUS), 2) & 1 << 4  # Capabilities List
    found = []
    ptr = host.ecam_read(cfg(slot, CAP_PTR), 1)
    while ptr:
        found.append((host.ecam_read(cfg(slot, ptr), 1), ptr))
        ptr = host.ecam_read(cfg(slot, ptr + 1), 1)
        assert len(found) < 48
    assert [cap for cap, _ in found] == [0x10, 0x11]  # PCI Express, MSI-X
    exp = found[0][1]
    assert host.ecam_read(cfg(slot, exp + 2), 2) == 0x0002  # version 2, Endpoint
    msix = found[1][1]
    assert host.ecam_read(cfg(slot, msix + 2), 2) & 0x7FF == 3  # table size 4 (N-1)
    assert host.ecam_read(cfg(slot, msix + 4), 4) == 0x0 | 2  # table at 0 in BAR 2
    assert host.ecam_read(cfg(slot, msix + 8), 4) == 0x800 | 2  # PBA at 0x800 in BAR 2
    # read-only fields stay
    host.ecam_write(cfg(slot, 0), 4, 0)
    host.ecam_write(cfg(slot, msix + 4), 4, 0x1234_5678)
    assert host.ecam_read(cfg(slot, 0), 4) == 0x5678_1234
    assert host.ecam_read(cfg(slot, msix + 4), 4) == 2


def test_memory_space_enable_gates_bar_decode(env) -> None:
    host, _, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    assert host.mem_read(MMIO32_BASE + 8, 4) == 0xFFFF_FFFF  # not decoded yet
    host.mem_write(MMIO32_BASE + 8, 4, 7)
    assert g.regs == {}
    assert any("no BAR claims it" in m for m in diagnostics(host))
    host.ecam_write(cfg(slot, COMMAND), 2, MEM)
    host.mem_write(MMIO32_BASE + 8, 4, 7)
    assert g.regs[(0, 8)] == 7 and host.mem_read(MMIO32_BASE + 8, 4) == 7
    assert host.mem_read(MMIO64_BASE + 0x1000, 4) == 0xA5  # BAR 2 (64-bit window)
    assert host.io_read(0x1004, 4) == 0xFFFF_FFFF  # I/O Space Enable is still 0
    host.ecam_write(cfg(slot, COMMAND), 2, MEM | IO)
    assert host.io_read(0x1004, 4) == 0xA5
    host.ecam_write(cfg(slot, COMMAND), 2, 0)
    assert host.mem_read(MMIO32_BASE + 8, 4) == 0xFFFF_FFFF


# -- MSI-X --------------------------------------------------------------------------------------


def msix_setup(host: PcieHost, slot: int, enable: bool = True) -> int:
    """Program 4 vectors: address 0x4000_1000 + 4n, data 0x100 + n; returns the cap offset."""
    ptr = host.ecam_read(cfg(slot, CAP_PTR), 1)
    while host.ecam_read(cfg(slot, ptr), 1) != 0x11:
        ptr = host.ecam_read(cfg(slot, ptr + 1), 1)
    host.ecam_write(cfg(slot, COMMAND), 2, MEM | BME)
    for v in range(4):
        host.mem_write(MMIO64_BASE + 16 * v, 4, RAM + 0x1000 + 4 * v)
        host.mem_write(MMIO64_BASE + 16 * v + 4, 4, 0)
        host.mem_write(MMIO64_BASE + 16 * v + 8, 4, 0x100 + v)
    if enable:
        host.ecam_write(cfg(slot, ptr + 2), 2, 1 << 15)
    return ptr


def unmask(host: PcieHost, vector: int) -> None:
    host.mem_write(MMIO64_BASE + 16 * vector + 12, 4, 0)


def test_msix_vectors_start_masked_and_pending_is_sent_on_unmask(env) -> None:
    host, sink, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    msix_setup(host, slot)
    assert host.mem_read(MMIO64_BASE + 12, 4) == 1  # Vector Control.Mask after reset
    assert g.signal(2) is True
    assert sink.messages == []
    assert host.mem_read(MMIO64_BASE + 0x800, 4) == 1 << 2  # PBA bit 2
    unmask(host, 2)
    assert sink.messages == [(RAM + 0x1008, 0x102, 0x08)]
    assert host.mem_read(MMIO64_BASE + 0x800, 4) == 0
    g.signal(2)
    assert sink.messages[-1] == (RAM + 0x1008, 0x102, 0x08)
    assert len(sink.messages) == 2


def test_msix_function_mask_holds_every_vector(env) -> None:
    host, sink, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    cap = msix_setup(host, slot)
    for v in range(4):
        unmask(host, v)
    host.ecam_write(cfg(slot, cap + 2), 2, 1 << 15 | 1 << 14)  # Enable + Function Mask
    g.signal(0)
    g.signal(3)
    assert sink.messages == []
    assert host.mem_read(MMIO64_BASE + 0x800, 8) == 0b1001
    host.ecam_write(cfg(slot, cap + 2), 2, 1 << 15)
    assert [m[1] for m in sink.messages] == [0x100, 0x103]
    assert host.mem_read(MMIO64_BASE + 0x800, 8) == 0


def test_msix_disabled_falls_back_and_pba_is_read_only(env) -> None:
    host, _, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    msix_setup(host, slot, enable=False)
    assert g.signal(0) is False  # no MSI-X, no MSI: the device uses INTx
    host.mem_write(MMIO64_BASE + 0x800, 4, 0xF)
    assert host.mem_read(MMIO64_BASE + 0x800, 4) == 0
    assert any("PBA" in m for m in diagnostics(host))
    g.msix_vectors and g.signal(7)  # beyond the table: diagnostic, no exception
    host.mem_write(MMIO64_BASE + 3, 1, 0xFF)  # a byte write into the table: ignored
    assert host.mem_read(MMIO64_BASE, 4) == RAM + 0x1000


def test_bus_master_enable_gates_messages_and_dma(env) -> None:
    host, sink, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    cap = msix_setup(host, slot)
    unmask(host, 1)
    host.ecam_write(cfg(slot, COMMAND), 2, MEM)  # BME off
    host.ecam_write(cfg(slot, cap + 2), 2, 1 << 15)
    g.signal(1)
    assert sink.messages == []
    assert g.dma_read(RAM, 16) is None
    assert g.dma_write(RAM, b"x") is False
    assert sum("Bus Master Enable is 0" in m for m in diagnostics(host)) == 3
    host.ecam_write(cfg(slot, COMMAND), 2, MEM | BME)
    assert g.dma_write(RAM + 0x20, b"hello") and g.dma_read(RAM + 0x20, 5) == b"hello"
    assert g.dma_read(0x1000, 4) is None  # outside RAM: a diagnostic, not an exception
    assert g.dma_write(RAM + (16 << 20) - 2, b"four") is False
    g.signal(1)
    assert sink.messages == [(RAM + 0x1004, 0x101, 0x08)]


# -- MSI ----------------------------------------------------------------------------------------


def test_msi_multiple_message_and_per_vector_masking(env) -> None:
    host, sink, _ = env
    g = host.plug(MsiGadget(), slot=4)
    cap = host.ecam_read(cfg(4, CAP_PTR), 1)
    assert host.ecam_read(cfg(4, cap), 1) == 0x05
    ctrl = host.ecam_read(cfg(4, cap + 2), 2)
    assert ctrl >> 1 & 7 == 2 and ctrl & 1 << 7 and ctrl & 1 << 8  # 4 vectors, 64-bit, PVM
    host.ecam_write(cfg(4, COMMAND), 2, BME)
    host.ecam_write(cfg(4, cap + 4), 4, 0x0808_0000 + 0x1_0040)
    host.ecam_write(cfg(4, cap + 8), 4, 0)
    host.ecam_write(cfg(4, cap + 0xC), 2, 0x20)
    host.ecam_write(cfg(4, cap + 0x10), 4, 0b0010)  # mask vector 1
    host.ecam_write(cfg(4, cap + 2), 2, 2 << 4 | 1)  # 4 vectors enabled
    g.signal(0)
    g.signal(1)
    g.signal(3)
    assert sink.messages == [(ITS_TRANSLATER, 0x20, 0x20), (ITS_TRANSLATER, 0x23, 0x20)]
    assert host.ecam_read(cfg(4, cap + 0x14), 4) == 0b0010  # pending bit of vector 1
    host.ecam_write(cfg(4, cap + 0x10), 4, 0)
    assert sink.messages[-1] == (ITS_TRANSLATER, 0x21, 0x20)
    assert host.ecam_read(cfg(4, cap + 0x14), 4) == 0


# -- INTx ---------------------------------------------------------------------------------------


def test_intx_swizzle_level_and_interrupt_disable(env) -> None:
    host, _, spis = env
    g = host.plug(Gadget(), slot=2)
    assert host.ecam_read(cfg(2, INT_PIN), 1) == 1  # INTA
    host.ecam_write(cfg(2, INT_LINE), 1, 0x23)
    assert host.ecam_read(cfg(2, INT_LINE), 1) == 0x23
    g.set_intx(True)
    assert spis == [(32 + 3 + (2 + 1 - 1) % 4, True)]  # slot 2, INTA -> SPI 5 (INTID 37)
    assert host.ecam_read(cfg(2, STATUS), 2) & 1 << 3  # Interrupt Status
    host.ecam_write(cfg(2, COMMAND), 2, INTX_DISABLE)
    assert spis[-1] == (37, False)
    host.ecam_write(cfg(2, COMMAND), 2, 0)
    assert spis[-1] == (37, True)
    # a second device on the same SPI (slot 6, INTA -> (6 + 0) % 4 = 2 -> SPI 5): shared line
    h = host.plug(Gadget(), slot=6)
    h.set_intx(True)
    g.set_intx(False)
    assert spis[-1] == (37, True)
    h.set_intx(False)
    assert spis[-1] == (37, False)


def test_reset_clears_bars_command_and_msix(env) -> None:
    host, _, _ = env
    g = host.plug(Gadget())
    slot = g.devfn >> 3
    assign(host, slot)
    msix_setup(host, slot)
    g.signal(0)
    g.reset()
    assert host.ecam_read(cfg(slot, COMMAND), 2) == 0
    assert g.bar_address(0) == 0 and not g.msix_enabled and not g.msix_pending(0)


# -- requester ID -> DeviceID through the ITS ---------------------------------------------------


def test_msix_message_reaches_the_its_as_the_requester_id() -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, 64 << 20)
    gic = Gic(mem, GicConfig(num_cpus=2), EventLog())
    d = ItsDriver(gic, Allocator(RAM + (32 << 20), 16 << 20))
    d.setup_lpis()
    d.setup_its()
    host = PcieHost(mem, gic.log, Fabric(mem, gic.log, gic), gic.set_spi)
    g = host.plug(Gadget(), slot=3)
    rid = g.requester_id
    assert rid == 3 << 3
    d.map_device(rid, 2)
    d.send(C.Mapc(0, 1, True), C.Mapti(rid, 1, LPI + 5, 0), C.Sync(1))
    d.configure_lpi(LPI + 5)
    d.send(C.Inv(rid, 1), C.Sync(1))
    assign(host, 3)
    cap = msix_setup(host, 3)
    host.mem_write(MMIO64_BASE + 16, 4, ITS_TRANSLATER)  # vector 1 -> GITS_TRANSLATER, EventID 1
    host.mem_write(MMIO64_BASE + 24, 4, 1)
    unmask(host, 1)
    host.ecam_write(cfg(3, cap + 2), 2, 1 << 15)
    g.signal(1)
    assert d.drain(1) == [LPI + 5]
    assert d.drain(0) == []
    # a DeviceID nobody mapped (same EventID from another slot) is a translation fault
    other = host.plug(Gadget(), slot=4)
    assign(host, 4, bar0=MMIO32_BASE + 0x10000, bar2=MMIO64_BASE + 0x10000)
    host.ecam_write(cfg(4, COMMAND), 2, MEM | BME)
    host.mem_write(MMIO64_BASE + 0x10000, 4, ITS_TRANSLATER)
    host.mem_write(MMIO64_BASE + 0x10008, 4, 1)
    host.mem_write(MMIO64_BASE + 0x1000C, 4, 0)
    host.ecam_write(cfg(4, cap + 2), 2, 1 << 15)
    other.signal(0)
    faults = gic.log.of(Kind.TRANSLATION_FAULT)
    assert faults and faults[-1].device_id == 4 << 3


def test_fabric_writes_ram_or_reports() -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, 1 << 20)
    gic = Gic(mem, GicConfig(num_cpus=1), EventLog())
    fabric = Fabric(mem, gic.log, gic)
    fabric.msi_write(RAM + 0x40, 0xDEAD_BEEF, 0x10)
    assert mem.read32(RAM + 0x40) == 0xDEAD_BEEF
    fabric.msi_write(0x1234_0000, 1, 0x10)
    assert any("neither GITS_TRANSLATER nor RAM" in e.message for e in gic.log.of(Kind.DIAGNOSTIC))


def test_unaligned_or_odd_config_accesses_never_raise(env) -> None:
    host, _, _ = env
    host.plug(Gadget())
    assert host.ecam_read(cfg(1, 0x2), 4) == 0xFFFF_FFFF  # misaligned dword
    assert host.ecam_read(cfg(1, 0x1), 8) == 0xFFFF_FFFF_FFFF_FFFF
    host.ecam_write(cfg(1, 0x3), 2, 0xFFFF)
    assert host.ecam_read(cfg(1, 0xFFC), 4) == 0  # extended space: zero
    assert any("naturally aligned" in m for m in diagnostics(host))


def test_the_host_regions_are_qemus_layout(env) -> None:
    host, _, _ = env
    bases = [(b, s) for b, s, _, _ in host.regions]
    assert bases == [(ECAM_BASE, 0x1000_0000), (0x1000_0000, 0x2EFF_0000), (0x3EFF_0000, 0x10000),
                     (0x80_0000_0000, 0x80_0000_0000)]  # fmt: skip


# -- the ITS command counts in the report ---------------------------------------------------------


def test_report_counts_the_commands_per_command() -> None:
    from vgic.tools.report import report

    mem = GuestMemory()
    mem.add_ram(RAM, 64 << 20)
    gic = Gic(mem, GicConfig(num_cpus=2), EventLog.quiet())
    d = ItsDriver(gic, Allocator(RAM, 32 << 20))
    d.setup_lpis()
    d.setup_its()
    d.map_device(8, 2)
    d.send(C.Mapc(0, 0, True), C.Mapti(8, 0, LPI, 0), C.Sync(0), C.Inv(8, 0), C.Sync(0), C.Movi(8, 0, 0))
    text = report(gic.log, gic)
    assert "ITS commands executed: 7" in text
    assert "  its0: INV x1, MAPC x1, MAPD x1, MAPTI x1, MOVI x1, SYNC x2" in text


# -- the example device (docs/pci.md) --------------------------------------------------------------


def test_the_example_echo_device_copies_and_signals_through_the_its() -> None:
    from vgic.pci.examples.echo import DONE, DST, GO, LEN, SRC, EchoDevice

    mem = GuestMemory()
    mem.add_ram(RAM, 64 << 20)
    gic = Gic(mem, GicConfig(num_cpus=2), EventLog())
    d = ItsDriver(gic, Allocator(RAM + (32 << 20), 16 << 20))
    d.setup_lpis()
    d.setup_its()
    host = PcieHost(mem, gic.log, Fabric(mem, gic.log, gic), gic.set_spi)
    echo = host.plug(EchoDevice())
    slot = echo.devfn >> 3
    # the guest: assign BARs, enable memory and bus mastering, MSI-X vector 2 -> EventID 2
    assign(host, slot)
    cap = msix_setup(host, slot)
    host.mem_write(MMIO64_BASE + 32, 4, ITS_TRANSLATER)
    host.mem_write(MMIO64_BASE + 40, 4, 2)
    unmask(host, 2)
    d.map_device(echo.requester_id, 2)
    d.send(C.Mapc(1, 1, True), C.Mapti(echo.requester_id, 2, LPI + 9, 1), C.Sync(1))
    d.configure_lpi(LPI + 9)
    d.send(C.Inv(echo.requester_id, 2), C.Sync(1))
    host.ecam_write(cfg(slot, cap + 2), 2, 1 << 15)
    mem.write_bytes(RAM + 0x1000, b"echo, echo")
    for reg, value in ((SRC, RAM + 0x1000), (SRC + 4, 0), (DST, RAM + 0x2000), (DST + 4, 0), (LEN, 10), (GO, 2)):
        host.mem_write(MMIO32_BASE + reg, 4, value)
    assert mem.read_bytes(RAM + 0x2000, 10) == b"echo, echo"
    assert host.mem_read(MMIO32_BASE + DONE, 4) == 1
    assert d.drain(1) == [LPI + 9]
    host.mem_write(MMIO32_BASE + LEN, 4, 1 << 20)  # too long: refused with a diagnostic
    host.mem_write(MMIO32_BASE + GO, 4, 2)
    assert host.mem_read(MMIO32_BASE + DONE, 4) == 1
    assert any("refused" in e.message for e in gic.log.of(Kind.DIAGNOSTIC))


# -- vgic run: --nvme, -drive/-device, --pci -----------------------------------------------------

# movz x0, #8; movk x0, #0x8400, lsl #16; hvc #0 (PSCI SYSTEM_OFF)
OFF = bytes.fromhex("000180d2") + (0xF2B08000).to_bytes(4, "little") + (0xD4000002).to_bytes(4, "little")


def test_vgic_run_plugs_disks_and_python_devices(tmp_path, capsys) -> None:
    from vgic import cli

    image = tmp_path / "off.bin"
    image.write_bytes(OFF)
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 16))
    example = "vgic.pci.examples.echo:EchoDevice"
    argv = ["run", "--nvme", str(disk), "-drive", f"file={disk},if=none,id=d0,format=raw",
            "-device", "nvme,drive=d0,serial=abc", "--pci", example, "--timeout", "30", str(image)]  # fmt: skip
    assert cli.main(argv) == 0
    args = cli.argparse.Namespace(nvme=[str(disk)], drive=[f"file={disk},if=none,id=d0"],
                                  device=["nvme,drive=d0,serial=abc"])  # fmt: skip
    assert cli.nvme_disks(args) == [(str(disk), "vgic-nvme0", False), (str(disk), "abc", False)]
    assert type(cli.load_device(example)).__name__ == "EchoDevice"


@pytest.mark.parametrize("extra", [
    ["-drive", "file=x.img,if=virtio,id=d0", "-device", "nvme,drive=d0"],
    ["-drive", "file=x.img,if=none,id=d0,format=qcow2", "-device", "nvme,drive=d0"],
    ["-drive", "file=x.img,if=none,id=d0"],
    ["-device", "nvme,drive=nope"],
    ["-device", "virtio-blk,drive=d0", "-drive", "file=x.img,if=none,id=d0"],
    ["-drive", "file=x.img,if=none,id=d0,cache=none", "-device", "nvme,drive=d0"],
    ["--pci", "no.such.module:Thing"],
    ["--pci", "vgic.pci.examples.echo"],
    ["--pci", "vgic.pci.examples.echo:MAX_COPY"],
])  # fmt: skip
def test_bad_device_specs_are_one_line_errors_with_status_2(tmp_path, capsys, extra) -> None:
    from vgic import cli

    image = tmp_path / "off.bin"
    image.write_bytes(OFF)
    assert cli.main(["run", *extra, str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vgic run: error: ") and "\n" not in err
