"""The virt machine's PCI Express: the host bridge on QEMU's addresses, and the fabric
that carries devices' interrupt messages.

:func:`attach` is the one call the machine makes: it builds a
:class:`~vgic.pci.host.PcieHost` whose INTx lines drive the distributor's SPIs 3..6 and
whose message writes go through :class:`Fabric`, adds the host's ECAM and windows to the
machine's MMIO regions and its deferred work to the machine's pollers. Devices are then
plugged with ``machine.pci.plug(device)`` before the machine runs.
"""

from __future__ import annotations

from vgic.events import EventLog, Kind
from vgic.gic import Gic
from vgic.memory import GuestMemory, MemoryFault
from vgic.pci.host import PcieHost

GITS_TRANSLATER = 0x1_0040  # in the ITS's second 64 KiB frame (IHI 0069 12.19.21)


class Fabric:
    """The :class:`~vgic.pci.function.MsiSink` of the machine: where a device's message
    write lands. GITS_TRANSLATER of an ITS becomes ``Its.translate(requester ID, data)``, as a
    write carrying the bus's requester ID does on hardware; guest RAM takes the 32-bit
    write; any other address is dropped with a diagnostic."""

    def __init__(self, memory: GuestMemory, log: EventLog, gic: Gic) -> None:
        self.memory = memory
        self.log = log
        self.translaters = {
            base + GITS_TRANSLATER: its for base, its in zip(gic.config.its_bases, gic.its, strict=False)
        }
        self.messages = 0

    def msi_write(self, address: int, data: int, requester_id: int) -> None:
        self.messages += 1
        its = self.translaters.get(address)
        if its is not None:
            its.translate(requester_id, data & 0xFFFF_FFFF)
            return
        try:
            self.memory.write32(address, data)
        except MemoryFault:
            self.log.record(Kind.DIAGNOSTIC, "pcie", f"message write of {data:#x} by requester {requester_id:#06x} "
                            f"to {address:#x}: neither GITS_TRANSLATER nor RAM, dropped",
                            device_id=requester_id)  # fmt: skip


def host(memory: GuestMemory, log: EventLog, gic: Gic) -> PcieHost:
    """The machine's PCIe host, its messages going through a :class:`Fabric` to ``gic``
    and its INTx lines to the distributor's SPIs. The machine maps ``host.regions`` and
    calls ``host.poll`` between scheduling rounds."""
    return PcieHost(memory, log, Fabric(memory, log, gic), gic.set_spi)
