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

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vgic.checks import FieldError, at, exactly, items, mapping, only, req, text, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.cpu_interface import CpuInterface, CpuInterfaceState
from vgic.gicv3.distributor import GICD_FRAME_SIZE, GICD_IIDR_QEMU, Distributor, DistributorState, SpiView
from vgic.gicv3.redistributor import (
    RD_FRAME_SIZE,
    SGI_FRAME_OFFSET,
    Redistributor,
    RedistributorConfig,
    RedistributorState,
)
from vgic.gicv3.sgi import SgiFrame, SgiFrameState
from vgic.its.config import ItsConfig
from vgic.its.its import Its
from vgic.its.registers import ITS_FRAME_SIZE
from vgic.its.state import ItsState
from vgic.memory import GuestMemory

# QEMU virt's memory map (-M virt,gic-version=3,its=on)
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
    def from_dict(cls, d: object, max_cpus: int = MAX_CPUS) -> GicConfig:
        """The inverse of :meth:`to_dict`, every field checked: a FieldError (ValueError)
        naming the field otherwise, and never a configuration :class:`Gic` would refuse."""
        m = mapping(d)
        only(m, ("num_cpus", "its", "redistributor", "pri_bits", "num_spis", "gicd_base", "its_bases",
                 "gicr_base", "gicd_iidr", "profile"))  # fmt: skip
        its: list[ItsConfig] = []
        for n, i in enumerate(items(req(m, "its"), 8, "its")):
            with at("its"), at(n):
                its.append(ItsConfig.from_dict(mapping(i)))
        with at("redistributor"):
            redistributor = RedistributorConfig.from_dict(mapping(req(m, "redistributor")))
        with at("its_bases"):
            its_bases = tuple(uint(b, 52, f"[{n}]") for n, b in enumerate(items(req(m, "its_bases"), 8)))
        config = cls(
            num_cpus=uint(req(m, "num_cpus"), 16, "num_cpus"),
            its=tuple(its),
            redistributor=redistributor,
            pri_bits=uint(req(m, "pri_bits"), 4, "pri_bits"),
            num_spis=uint(req(m, "num_spis"), 10, "num_spis"),
            gicd_base=uint(req(m, "gicd_base"), 52, "gicd_base"),
            its_bases=its_bases,
            gicr_base=uint(req(m, "gicr_base"), 52, "gicr_base"),
            gicd_iidr=uint(req(m, "gicd_iidr"), 32, "gicd_iidr"),
            profile=text(req(m, "profile"), 64, "profile"),
        )
        if not 1 <= config.num_cpus <= max_cpus:
            raise FieldError("num_cpus", f"{config.num_cpus} is not 1 to {max_cpus}")
        if not 5 <= config.pri_bits <= 8:
            raise FieldError("pri_bits", f"{config.pri_bits} is not 5 to 8 (ICC_CTLR_EL1.PRIbits + 1)")
        if config.num_spis % 32 or config.num_spis > 988:
            raise FieldError("num_spis", f"{config.num_spis} is not a multiple of 32 up to 988 (GICD_TYPER)")
        if len(config.its_bases) < len(config.its):
            raise FieldError("its_bases", "gives fewer base addresses than there are ITSes")
        for n, i in enumerate(config.its):
            with at("its"), at(n):
                i.check_layout(config.num_cpus)
        frames = sorted(config.frames(), key=lambda f: f[1])
        for name, base, _ in frames:
            if base % GICD_FRAME_SIZE:
                raise FieldError(name, f"{base:#x} is not 64 KiB aligned (the GIC's register frames are 64 KiB)")
        for (name, base, size), (other, start, _) in itertools.pairwise(frames):
            if base + size > start:
                raise FieldError(other, f"{start:#x} is inside {name}'s frames ({base:#x}, {size:#x} bytes)")
        return config

    def frames(self) -> list[tuple[str, int, int]]:
        """(field, base, size) of each block of register frames: the distributor, each
        ITS, the redistributors (each RD_base and SGI_base frame pair in turn)."""
        return [
            ("gicd_base", self.gicd_base, GICD_FRAME_SIZE),
            *((f"its_bases[{n}]", base, ITS_FRAME_SIZE) for n, base in enumerate(self.its_bases[: len(self.its)])),
            ("gicr_base", self.gicr_base, RD_FRAME_SIZE * self.num_cpus),
        ]


# == the GIC's state ======================================================================


@dataclass(frozen=True)
class GicState:
    """The saved state of a whole GIC: each block's own state type, one redistributor,
    SGI frame and CPU interface per CPU, one state per ITS."""

    distributor: DistributorState
    redistributors: tuple[RedistributorState, ...]
    sgi_frames: tuple[SgiFrameState, ...]
    cpus: tuple[CpuInterfaceState, ...]
    its: tuple[ItsState, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (format 2: each redistributor's object holds its SGI frame as "sgi")."""
        return {
            "distributor": self.distributor.to_dict(),
            "redistributors": [
                {**rd.to_dict(), "sgi": sgi.to_dict()}
                for rd, sgi in zip(self.redistributors, self.sgi_frames, strict=True)
            ],
            "cpus": [cpu.to_dict() for cpu in self.cpus],
            "its": [its.to_dict() for its in self.its],
        }

    @classmethod
    def from_dict(cls, d: object, config: GicConfig) -> GicState:
        """Every block's state checked against ``config``; FieldError naming the field."""
        m = mapping(d)
        only(m, ("distributor", "redistributors", "cpus", "its"))
        with at("distributor"):
            distributor = DistributorState.from_dict(req(m, "distributor"), config.num_spis)
        n = config.num_cpus
        rds: list[RedistributorState] = []
        sgis: list[SgiFrameState] = []
        with at("redistributors"):
            for i, r in enumerate(exactly(req(m, "redistributors"), n)):
                with at(i):
                    rds.append(RedistributorState.from_dict(r, config.redistributor, known=("sgi",)))
                    with at("sgi"):
                        sgis.append(SgiFrameState.from_dict(req(mapping(r), "sgi")))
        with at("cpus"):
            cpus = []
            for i, c in enumerate(exactly(req(m, "cpus"), n)):
                with at(i):
                    cpus.append(CpuInterfaceState.from_dict(c, config.pri_bits))
        with at("its"):
            its = []
            for i, s in enumerate(exactly(req(m, "its"), len(config.its))):
                with at(i):
                    its.append(ItsState.from_dict(s, config.its[i], n))
        return cls(distributor, tuple(rds), tuple(sgis), tuple(cpus), tuple(its))


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
            cpu = CpuInterface(i, sources, self.log, lock=rd.lock, pri_bits=config.pri_bits,
                               id_bits=config.redistributor.lpi_id_bits)  # fmt: skip
            cpu.on_sgi = self.send_sgi
            rd.on_change = cpu.update
            rd.on_pend = cpu.pended_locked  # the redistributor holds the lock it shares with cpu
            self.redistributors.append(rd)
            self.sgi_frames.append(sgi)
            self.cpus.append(cpu)
        for rd in self.redistributors:
            rd.peers = self.redistributors
        self.distributor.attach_cpus([rd.affinity for rd in self.redistributors])
        self.distributor.on_change = self._update_all
        self.its = [Its(memory, self.log, self.redistributors, c, index=n) for n, c in enumerate(config.its)]
        handlers = [(self.distributor.read, self.distributor.write), *((its.read, its.write) for its in self.its),
                    (self._gicr_read, self._gicr_write)]  # fmt: skip
        self._regions: list[_Handler] = [
            (base, size, read, write) for (_, base, size), (read, write) in zip(config.frames(), handlers, strict=True)
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

    def save_state(self) -> GicState:
        return GicState(
            self.distributor.save_state(),
            tuple(rd.save_state() for rd in self.redistributors),
            tuple(sgi.save_state() for sgi in self.sgi_frames),
            tuple(cpu.save_state() for cpu in self.cpus),
            tuple(its.save_state() for its in self.its),
        )

    def load_state(self, state: GicState) -> None:
        """Load a state from :meth:`save_state` or :meth:`GicState.from_dict` (checked
        against this GIC's configuration), without side effects: no command runs."""
        n = len(self.redistributors)
        counts = (len(state.redistributors), len(state.sgi_frames), len(state.cpus), len(state.its))
        if counts != (n, n, n, len(self.its)):
            raise ValueError("the saved state has a different number of CPUs or ITSes")
        self.distributor.load_state(state.distributor)
        for rd, sgi, cpu, rs, ss, cs in zip(self.redistributors, self.sgi_frames, self.cpus, state.redistributors,
                                            state.sgi_frames, state.cpus, strict=True):  # fmt: skip
            rd.load_state(rs)
            sgi.load_state(ss)
            cpu.load_state(cs)
        for its, s in zip(self.its, state.its, strict=True):
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
