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

from vgic.checks import FieldError, at, boolean, distinct, exactly, items, mapping, only, req, text, uint
from vgic.events import EventLog, Kind
from vgic.gicv3.cpu_interface import CpuInterface, CpuInterfaceState
from vgic.gicv3.distributor import GICD_FRAME_SIZE, GICD_IIDR_QEMU, Distributor, DistributorState, SpiView
from vgic.gicv3.redistributor import (
    LPI_BASE,
    RD_FRAME_SIZE,
    SGI_FRAME_OFFSET,
    Redistributor,
    RedistributorConfig,
    RedistributorState,
)
from vgic.gicv3.sgi import SgiFrame, SgiFrameState
from vgic.its.its import CACHE_LIMIT, ERROR_HISTORY, TABLE_ENTRY_SIZE, Its, ItsConfig
from vgic.its.registers import BASER_TYPE_DEVICE, BASER_TYPE_NONE, ITS_FRAME_SIZE, gits_registers
from vgic.memory import GuestMemory
from vgic.regs import RegisterBankState

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
        return config


# == SEAM: the ITS state ================================================================
# Until vgic.its provides ItsState (a frozen dataclass: to_dict(), ItsState.from_dict(d,
# config, num_redistributors) validating every field, Its.save_state() -> ItsState and
# Its.load_state(ItsState)), the GIC carries each ITS's state as the dict of today's
# Its.save_state() ("regs" a RegisterBankState), checked here as far as this layer can.
# When ItsState lands: ItsStateSeam -> ItsState, _its_state_to_dict -> ItsState.to_dict,
# _its_state_from_dict -> ItsState.from_dict, and delete this block.
ItsStateSeam = dict[str, Any]
_ITS_FIELDS = ("regs", "enabled", "stalled", "queue_invalid", "creadr", "cwriter", "hcc_collections", "devices",
               "collections", "unsynced", "errors")  # fmt: skip
_CBASER_MASK = 0xB8EF_FFFF_FFFF_FCFF  # Valid, InnerCache, OuterCache, PA[51:12], Shareability, Size (12.19.3)


def _its_state_to_dict(state: ItsStateSeam) -> dict[str, Any]:
    regs = state["regs"]
    return {**state, "regs": regs.to_dict() if isinstance(regs, RegisterBankState) else regs}


def _its_state_from_dict(d: object, config: ItsConfig, num_redistributors: int) -> ItsStateSeam:
    """What this layer can check of an ITS's saved state: every field's JSON type and the
    ranges the GIC's configuration sets. GITS_CREADR/GITS_CWRITER offsets are 32-byte
    aligned (Offset[19:5], 12.19.4-5) and inside the queue GITS_CBASER.Size gives, CWRITER
    beyond it exactly when the queue is marked invalid; Enabled=1 needs a Valid GITS_CBASER
    and device table (12.19.6); GITS_BASER<n> Type and Entry_Size are the configured ones and
    Page_Size an accepted encoding (never the reserved 0b11, 12.19.1); collections, the HCC
    collections and unsynced CPUs name redistributors that exist; cached DTEs and ITEs fit
    GITS_TYPER's DeviceID, EventID and collection ID widths and hold LPI INTIDs (5.1)."""
    m = mapping(d)
    only(m, _ITS_FIELDS)
    typer = config.typer
    with at("regs"):
        regs = RegisterBankState.from_dict(req(m, "regs"), gits_registers(config.iidr, config.id_registers))
        cbaser = regs.values["CBASER"][0]
        if cbaser & ~_CBASER_MASK:
            raise FieldError("CBASER", f"{cbaser:#x} sets bits GITS_CBASER does not keep")
        basers = regs.values["BASER"]
        for n, kind in enumerate(config.baser_types):
            v = basers[n]
            if kind == BASER_TYPE_NONE:
                if v:
                    raise FieldError(f"BASER[{n}]", f"{v:#x}: GITS_BASER{n} is not implemented (RES0)")
                continue
            entry_size = TABLE_ENTRY_SIZE if kind == BASER_TYPE_DEVICE else config.collection_entry_size
            if v >> 56 & 7 != kind or (v >> 48 & 0x1F) + 1 != entry_size:
                raise FieldError(f"BASER[{n}]", f"{v:#x} has another Type or Entry_Size than this ITS's")
            if v >> 8 & 3 not in config.baser_page_sizes:
                raise FieldError(f"BASER[{n}]", f"Page_Size {v >> 8 & 3} is not an encoding this ITS accepts")
    enabled = boolean(req(m, "enabled"), "enabled")
    stalled = boolean(req(m, "stalled"), "stalled")
    queue_invalid = boolean(req(m, "queue_invalid"), "queue_invalid")
    queue = ((cbaser & 0xFF) + 1) * 4096
    creadr = uint(req(m, "creadr"), 20, "creadr")
    cwriter = uint(req(m, "cwriter"), 20, "cwriter")
    for name, v in (("creadr", creadr), ("cwriter", cwriter)):
        if v % 32:
            raise FieldError(name, f"{v:#x} is not a multiple of 32 (a command's offset)")
    if creadr >= queue:
        raise FieldError("creadr", f"{creadr:#x} is beyond the {queue:#x}-byte command queue")
    if queue_invalid != (cwriter >= queue):
        raise FieldError("cwriter", f"{cwriter:#x} with a {queue:#x}-byte queue: beyond it exactly when "
                         "queue_invalid is set")  # fmt: skip
    if enabled:
        if not cbaser >> 63:
            raise FieldError("enabled", "the ITS is enabled but GITS_CBASER is not Valid")
        device = [basers[n] for n, k in enumerate(config.baser_types) if k == BASER_TYPE_DEVICE]
        if not device or not device[0] >> 63:
            raise FieldError("enabled", "the ITS is enabled but its device table (GITS_BASER) is not Valid")
    rdbase_bits = 36 if typer.pta else 16
    hcc: dict[int, int] = {}
    with at("hcc_collections"):
        for n, pair in enumerate(items(req(m, "hcc_collections"), typer.hcc)):
            with at(n):
                icid, rdbase = exactly(pair, 2)
                key = uint(icid, 8, "[0]")
                if key >= typer.hcc or key in hcc:
                    raise FieldError("[0]", f"ICID {key} is not a collection held in the ITS, or is there twice")
                hcc[key] = uint(rdbase, rdbase_bits, "[1]")
                if not typer.pta and hcc[key] >= num_redistributors:
                    raise FieldError("[1]", f"redistributor {hcc[key]} does not exist")
    devices: list[list[Any]] = []
    seen: set[int] = set()
    cached = 0
    with at("devices"):
        for n, dev in enumerate(items(req(m, "devices"), CACHE_LIMIT)):
            with at(n):
                dev_id, itt, size, events = exactly(dev, 4)
                ident = uint(dev_id, typer.devbits, "[0]")
                if ident in seen:
                    raise FieldError("[0]", f"DeviceID {ident:#x} is cached twice")
                seen.add(ident)
                addr = uint(itt, 52, "[1]")
                if addr % 256:
                    raise FieldError("[1]", f"ITT address {addr:#x} is not 256-byte aligned")
                bits = uint(size, 5, "[2]")
                if bits >= typer.idbits:
                    raise FieldError("[2]", f"Size {bits} gives more EventID bits than GITS_TYPER.ID_bits")
                evs: list[tuple[int, int, int]] = []
                with at(3):
                    for k, ev in enumerate(items(events, CACHE_LIMIT)):
                        with at(k):
                            event, pintid, icid = exactly(ev, 3)
                            evs.append((uint(event, bits + 1, "[0]"), uint(pintid, typer.idbits, "[1]"),
                                        uint(icid, 16, "[2]")))  # fmt: skip
                            if evs[-1][1] < LPI_BASE:
                                raise FieldError("[1]", f"{evs[-1][1]} is not an LPI INTID")
                            if evs[-1][2] >= typer.collections:
                                raise FieldError("[2]", f"ICID {evs[-1][2]} is beyond GITS_TYPER's collections")
                    if len({e[0] for e in evs}) != len(evs):
                        raise FieldError("", "caches an EventID twice")
                cached += 1 + len(evs)
                devices.append([ident, addr, bits, sorted(evs)])  # as Its.save_state() lists them
        if cached > CACHE_LIMIT:
            raise FieldError("", f"caches {cached} entries, more than the ITS's {CACHE_LIMIT}")
    collections: dict[int, int] = {}
    with at("collections"):
        for n, pair in enumerate(items(req(m, "collections"), CACHE_LIMIT)):
            with at(n):
                icid, rd = exactly(pair, 2)
                key = uint(icid, 16, "[0]")
                if key >= typer.collections or key in collections:
                    raise FieldError("[0]", f"ICID {key} is beyond GITS_TYPER's collections, or is there twice")
                collections[key] = uint(rd, 16, "[1]")
                if collections[key] >= num_redistributors:
                    raise FieldError("[1]", f"redistributor {collections[key]} does not exist")
    unsynced = distinct(m.get("unsynced", []), 0, num_redistributors, num_redistributors, "unsynced")
    errors: list[list[Any]] = []
    with at("errors"):
        for n, e in enumerate(items(m.get("errors", []), ERROR_HISTORY)):
            with at(n):
                offset, code, message, command = exactly(e, 4)
                errors.append([uint(offset, 20, "[0]"), uint(code, 32, "[1]"), text(message, 4096, "[2]"),
                               text(command, 4096, "[3]")])  # fmt: skip
    return {
        "regs": regs,
        "enabled": enabled,
        "stalled": stalled,
        "queue_invalid": queue_invalid,
        "creadr": creadr,
        "cwriter": cwriter,
        "hcc_collections": sorted(hcc.items()),
        "devices": devices,
        "collections": sorted(collections.items()),
        "unsynced": sorted(unsynced),
        "errors": errors,
    }


# == the GIC's state ======================================================================


@dataclass(frozen=True)
class GicState:
    """The saved state of a whole GIC: each block's own state type, one redistributor,
    SGI frame and CPU interface per CPU, one state per ITS."""

    distributor: DistributorState
    redistributors: tuple[RedistributorState, ...]
    sgi_frames: tuple[SgiFrameState, ...]
    cpus: tuple[CpuInterfaceState, ...]
    its: tuple[ItsStateSeam, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (format 2: each redistributor's object holds its SGI frame as "sgi")."""
        return {
            "distributor": self.distributor.to_dict(),
            "redistributors": [
                {**rd.to_dict(), "sgi": sgi.to_dict()}
                for rd, sgi in zip(self.redistributors, self.sgi_frames, strict=True)
            ],
            "cpus": [cpu.to_dict() for cpu in self.cpus],
            "its": [_its_state_to_dict(its) for its in self.its],
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
                    its.append(_its_state_from_dict(s, config.its[i], n))
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
            cpu = CpuInterface(i, sources, self.log, lock=rd.lock, pri_bits=config.pri_bits,  # type: ignore[arg-type]
                               id_bits=config.redistributor.lpi_id_bits)  # fmt: skip
            cpu.on_sgi = self.send_sgi
            rd.on_change = cpu.update
            self.redistributors.append(rd)
            self.sgi_frames.append(sgi)
            self.cpus.append(cpu)
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

    def save_state(self) -> GicState:
        return GicState(
            self.distributor.save_state(),
            tuple(rd.save_state() for rd in self.redistributors),
            tuple(sgi.save_state() for sgi in self.sgi_frames),
            tuple(cpu.save_state() for cpu in self.cpus),
            tuple(its.save_state() for its in self.its),  # SEAM: ItsState once vgic.its has it
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
            its.load_state(s)  # SEAM: an ItsState once vgic.its has it
        self._update_all()

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
