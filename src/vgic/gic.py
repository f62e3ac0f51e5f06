"""A whole GICv3: distributor, one redistributor and CPU interface per CPU, and ITSes.

:class:`Gic` wires the blocks together over one :class:`~vgic.memory.GuestMemory` and one
:class:`~vgic.events.EventLog`, and routes physical addresses to them with QEMU's virt
memory map by default. It knows nothing of CPU engines: a machine calls :meth:`Gic.read`
/ :meth:`Gic.write` for MMIO, the CPU interfaces for ICC_* registers, and listens to
``cpu.on_irq``.

    mem = GuestMemory(); mem.add_ram(0x40000000, 64 << 20)
    gic = Gic(mem, GicConfig(num_cpus=4))
    gic.its[0].translate(device_id=1, event_id=0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vgic.checks import items, mapping, text, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.cpu_interface import CpuInterface
from vgic.gicv3.distributor import GICD_FRAME_SIZE, GICD_IIDR_QEMU, Distributor, SpiView
from vgic.gicv3.redistributor import RD_FRAME_SIZE, SGI_FRAME_OFFSET, Redistributor, RedistributorConfig
from vgic.gicv3.sgi import SgiFrame
from vgic.its.config import ItsConfig
from vgic.its.its import Its
from vgic.its.registers import ITS_FRAME_SIZE
from vgic.memory import GuestMemory

# QEMU virt (platform-notes.md)
VIRT_GICD_BASE = 0x0800_0000
VIRT_ITS_BASE = 0x0808_0000
VIRT_GICR_BASE = 0x080A_0000


MAX_CPUS = 512  # redistributors a GIC may have here (GICR_TYPER.Processor_Number is 16 bits)


def virt_mpidr(cpu: int) -> int:
    """Affinity of CPU ``cpu`` as QEMU's virt machine gives it: clusters of 8 (Aff1.Aff0)."""
    return (cpu // 8) << 8 | (cpu % 8)


@dataclass(frozen=True)
class GicConfig:
    """The GIC's shape and the choices it makes. The defaults are QEMU 7.2's virt machine
    (the ``qemu`` profile); :func:`vgic.profiles.gic_config` builds the other profiles."""

    num_cpus: int = 1
    its: tuple[ItsConfig, ...] = field(default_factory=lambda: (ItsConfig(),))
    redistributor: RedistributorConfig = field(default_factory=RedistributorConfig)
    pri_bits: int = 5
    num_spis: int = 224  # QEMU virt's GICD_TYPER.ITLinesNumber = 7
    gicd_base: int = VIRT_GICD_BASE
    its_bases: tuple[int, ...] = (VIRT_ITS_BASE,)
    gicr_base: int = VIRT_GICR_BASE
    mpidr: Callable[[int], int] = virt_mpidr
    gicd_iidr: int = GICD_IIDR_QEMU
    profile: str = "qemu"  # the named profile these choices came from (vgic.profiles)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (snapshots). ``mpidr`` is not saved: virt_mpidr is assumed."""
        return {
            "num_cpus": self.num_cpus,
            "its": [i.to_dict() for i in self.its],
            "redistributor": self.redistributor.to_dict(),
            "pri_bits": self.pri_bits,
            "num_spis": self.num_spis,
            "gicd_base": self.gicd_base,
            "its_bases": list(self.its_bases),
            "gicr_base": self.gicr_base,
            "gicd_iidr": self.gicd_iidr,
            "profile": self.profile,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], max_cpus: int = MAX_CPUS) -> GicConfig:
        """The inverse of :meth:`to_dict`, every field checked; ValueError otherwise."""
        d = mapping(d, "GIC configuration")
        its = tuple(ItsConfig.from_dict(mapping(i, "ITS configuration")) for i in items(d["its"], 8, "its"))
        config = cls(
            num_cpus=uint(d["num_cpus"], 16, "num_cpus"),
            its=its,
            redistributor=RedistributorConfig.from_dict(mapping(d["redistributor"], "redistributor")),
            pri_bits=uint(d["pri_bits"], 4, "pri_bits"),
            num_spis=uint(d["num_spis"], 10, "num_spis"),
            gicd_base=uint(d["gicd_base"], 52, "gicd_base"),
            its_bases=tuple(uint(b, 52, "its_bases") for b in items(d["its_bases"], 8, "its_bases")),
            gicr_base=uint(d["gicr_base"], 52, "gicr_base"),
            gicd_iidr=uint(d["gicd_iidr"], 32, "gicd_iidr"),
            profile=text(d["profile"], 64, "profile"),
        )
        if not 1 <= config.num_cpus <= max_cpus:
            raise ValueError(f"num_cpus must be 1 to {max_cpus}")
        if not 5 <= config.pri_bits <= 8 or config.num_spis % 32 or config.num_spis > 988:
            raise ValueError("pri_bits 5..8, num_spis a multiple of 32 up to 988")
        if len(config.its_bases) < len(config.its):
            raise ValueError("each ITS needs a base address")
        return config


_Handler = tuple[int, int, Callable[[int, int], int], Callable[[int, int, int], None]]


class Gic:
    """The GIC of one machine."""

    def __init__(self, memory: GuestMemory, config: GicConfig | None = None, log: EventLog | None = None) -> None:
        self.config = config = config or GicConfig()
        if len(config.its_bases) < len(config.its):
            raise ValueError("each ITS needs a base address")
        self.memory = memory
        self.log = log or EventLog()
        self.distributor = Distributor(self.log, config.redistributor.lpi_id_bits, config.num_spis, config.gicd_iidr)
        self.redistributors: list[Redistributor] = []
        self.sgi_frames: list[SgiFrame] = []  # each redistributor's SGI_base frame
        self.cpus: list[CpuInterface] = []
        for i in range(config.num_cpus):
            aff = config.mpidr(i)
            affinity = (aff >> 32 & 0xFF) << 24 | (aff & 0xFFFFFF)
            rd = Redistributor(i, affinity, memory, self.log, config.redistributor,
                               last=i == config.num_cpus - 1, base=config.gicr_base + i * RD_FRAME_SIZE)  # fmt: skip
            sgi = SgiFrame(rd, self.distributor.group_enabled)
            sources = [rd, sgi, SpiView(self.distributor, i)]
            cpu = CpuInterface(i, sources, self.log, lock=rd.lock, pri_bits=config.pri_bits,  # type: ignore[arg-type]
                               id_bits=config.redistributor.lpi_id_bits)  # fmt: skip
            cpu.on_sgi = self.send_sgi
            rd.on_change = cpu.update
            self.redistributors.append(rd)
            self.sgi_frames.append(sgi)
            self.cpus.append(cpu)
        for rd in self.redistributors:
            rd.peers = self.redistributors
        self.distributor.attach_cpus([rd.affinity for rd in self.redistributors])
        self.distributor.on_change = self._update_all
        self.its = [Its(memory, self.log, self.redistributors, c, index=n) for n, c in enumerate(config.its)]
        self._regions: list[_Handler] = [
            (config.gicd_base, GICD_FRAME_SIZE, self.distributor.read, self.distributor.write),
            *(
                (base, ITS_FRAME_SIZE, its.read, its.write)
                for base, its in zip(config.its_bases, self.its, strict=False)
            ),
            (config.gicr_base, RD_FRAME_SIZE * config.num_cpus, self._gicr_read, self._gicr_write),
        ]

    # == save/restore ==================================================================
    def fingerprint(self) -> dict[str, object]:
        """The configuration a snapshot must be restored into (validated on restore)."""
        c = self.config
        return {
            "num_cpus": c.num_cpus,
            "num_spis": c.num_spis,
            "pri_bits": c.pri_bits,
            "redistributor": repr(c.redistributor),
            "its": [repr(i) for i in c.its],
            "its_bases": list(c.its_bases[: len(c.its)]),
            "gicd_base": c.gicd_base,
            "gicr_base": c.gicr_base,
            "gicd_iidr": c.gicd_iidr,
            "profile": c.profile,
        }

    def save_state(self) -> dict[str, object]:
        return {
            "distributor": self.distributor.save_state(),
            "redistributors": [
                {**rd.save_state(), "sgi": sgi.save_state()}
                for rd, sgi in zip(self.redistributors, self.sgi_frames, strict=True)
            ],
            "cpus": [cpu.save_state() for cpu in self.cpus],
            "its": [its.save_state() for its in self.its],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.distributor.load_state(state["distributor"])
        if len(state["redistributors"]) != len(self.redistributors) or len(state["its"]) != len(self.its):
            raise ValueError("the snapshot has a different number of CPUs or ITSes")
        for rd, sgi, s in zip(self.redistributors, self.sgi_frames, state["redistributors"], strict=True):
            rd.load_state(s)
            sgi.load_state(s["sgi"])
        for cpu, s in zip(self.cpus, state["cpus"], strict=True):
            cpu.load_state(s)
        for its, s in zip(self.its, state["its"], strict=True):
            its.load_state(s)
        self._update_all()

    # == deferred work (bounded per guest access) =====================================
    @property
    def busy(self) -> bool:
        """Work is left over from guest accesses: commands in an ITS queue, or LPI-wide
        jobs of a redistributor (INVALL, MOVALL, reading or writing a pending table)."""
        return any(its.busy for its in self.its) or any(rd.busy for rd in self.redistributors)

    def work(self, units: int = 64) -> int:
        """Do at most ``units`` units of that work (:data:`vgic.its.its.ACCESS_UNITS` is one
        access's worth); returns the units used. ``vgic run`` calls this between slices; a
        Python embedder calls it until :attr:`busy` is False."""
        used = 0
        for its in self.its:
            if used < units and its.busy:
                used += its.work(units - used)
        for rd in self.redistributors:
            if used < units and rd.busy:
                used += rd.work(units - used)
        return used

    def _update_all(self) -> None:
        for cpu in self.cpus:
            cpu.update()

    def send_sgi(self, sender: int, value: int, group: int) -> None:
        """ICC_SGI1R_EL1 / ICC_SGI0R_EL1 (12.2.21): TargetList, Aff1..3, INTID, IRM."""
        intid = value >> 24 & 0xF
        if value >> 40 & 1:  # IRM: every PE but the sender
            targets = [i for i in range(len(self.cpus)) if i != sender]
        else:
            aff3, aff2, aff1 = value >> 48 & 0xFF, value >> 32 & 0xFF, value >> 16 & 0xFF
            rs = value >> 44 & 0xF
            targets = []
            for i, rd in enumerate(self.redistributors):
                a = rd.affinity
                if (a >> 24 & 0xFF, a >> 16 & 0xFF, a >> 8 & 0xFF) != (aff3, aff2, aff1):
                    continue
                aff0 = a & 0xFF
                if aff0 >> 4 == rs and value >> (aff0 & 0xF) & 1:
                    targets.append(i)
        for i in targets:
            self.sgi_frames[i].raise_sgi(intid)

    def set_ppi(self, cpu: int, intid: int, level: bool) -> None:
        self.sgi_frames[cpu].set_ppi(intid, level)

    def set_spi(self, intid: int, level: bool) -> None:
        self.distributor.set_spi(intid, level)

    @property
    def regions(self) -> list[_Handler]:
        """(base, size, read(offset, size), write(offset, size, value)) per MMIO region."""
        return list(self._regions)

    def _gicr_read(self, offset: int, size: int) -> int:
        cpu, inner = divmod(offset, RD_FRAME_SIZE)
        if inner >= SGI_FRAME_OFFSET:
            return self.sgi_frames[cpu].read(inner - SGI_FRAME_OFFSET, size)
        return self.redistributors[cpu].read(inner, size)

    def _gicr_write(self, offset: int, size: int, value: int) -> None:
        cpu, inner = divmod(offset, RD_FRAME_SIZE)
        if inner >= SGI_FRAME_OFFSET:
            self.sgi_frames[cpu].write(inner - SGI_FRAME_OFFSET, size, value)
        else:
            self.redistributors[cpu].write(inner, size, value)

    def read(self, address: int, size: int) -> int:
        """A load from a GIC physical address (RAZ outside every frame)."""
        for base, length, read, _ in self._regions:
            if base <= address < base + length:
                return read(address - base, size)
        self.log.record(Kind.DIAGNOSTIC, "gic", f"read of {address:#x} outside the GIC: RAZ")
        return 0

    def write(self, address: int, size: int, value: int) -> None:
        """A store to a GIC physical address (ignored outside every frame)."""
        for base, length, _, write in self._regions:
            if base <= address < base + length:
                write(address - base, size, value)
                return
        self.log.record(Kind.DIAGNOSTIC, "gic", f"write of {address:#x} outside the GIC: ignored")
