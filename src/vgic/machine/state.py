"""The saved state of a virt machine, block by block, checked before anything is built.

:class:`MachineState` is what :meth:`VirtMachine.save_state` returns and
:meth:`VirtMachine.load_state` takes: the configuration a machine is rebuilt from, the
system counter, the GIC (:class:`~vgic.gic.GicState`), the UART
(:class:`~vgic.machine.pl011.Pl011State`) and each CPU (:class:`VcpuState`, with its
:class:`~vgic.machine.timer.GenericTimerState`). ``from_dict`` checks every field's JSON
type and range, and raises :class:`~vgic.checks.FieldError` naming the field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from vgic.checks import (
    FieldError,
    at,
    boolean,
    bounded,
    exactly,
    items,
    mapping,
    only,
    ram_size,
    req,
    text,
    uint,
)
from vgic.gic import VIRT_GICD_BASE, GicConfig, GicState
from vgic.machine.fdt import PL011_BASE, PL011_SPI
from vgic.machine.pl011 import Pl011State
from vgic.machine.timer import GenericTimerState

MAX_SMP = 64  # CPUs a virt machine may have (VirtMachine)
MAX_SLICE = 1 << 32  # instructions per CPU per scheduling slice: at least 1 (0 is "unbounded" to Unicorn)
MAX_REPLAY = 64  # MMIO accesses of one instruction still to replay (an LDP of Q registers makes 4)
POWER_STATES = ("off", "running", "wfi")  # vgic.machine.cpu.CpuState values
# PSTATE.M[4:0] a saved CPU may be in (AArch64 only, EL0 or EL1: Arm ARM, SPSR_EL1.M)
PSTATE_MODES = (0b00000, 0b00100, 0b00101)  # EL0t, EL1t, EL1h
PSCI_CONDUITS = ("hvc", "smc")


@dataclass(frozen=True)
class VcpuState:
    """One CPU: general, FP/SIMD and EL1 system registers by name, the PC, the power
    state, the timers, the MMIO accesses of a stopped instruction still to replay, and the
    instruction budget handed to the engine so far."""

    regs: Mapping[str, int]
    pc: int
    power: str
    timer: GenericTimerState
    replay: tuple[tuple[int, int], ...]
    instructions: int

    def to_dict(self) -> dict[str, object]:
        return {
            "regs": dict(self.regs),
            "pc": self.pc,
            "state": self.power,
            "timer": self.timer.to_dict(),
            "replay": [list(x) for x in self.replay],
            "instructions": self.instructions,
        }

    @classmethod
    def from_dict(cls, d: object, registers: Collection[str]) -> VcpuState:
        """Exactly the ``registers`` the CPU saves, Q<n> 128 bits and the rest 64 bits,
        PSTATE in AArch64 at EL0 or EL1; a 64-bit PC; a known power state."""
        m = mapping(d)
        only(m, ("regs", "pc", "state", "timer", "replay", "instructions"))
        regs: dict[str, int] = {}
        with at("regs"):
            saved = mapping(req(m, "regs"))
            only(saved, frozenset(registers))
            for name in registers:
                regs[name] = uint(req(saved, name), 128 if name.startswith("Q") else 64, name)
            if "PSTATE" in regs and regs["PSTATE"] & 0x1F not in PSTATE_MODES:
                raise FieldError("PSTATE", f"M[4:0]={regs['PSTATE'] & 0x1F:#07b} is not AArch64 EL0t, EL1t or EL1h")
        power = text(req(m, "state"), 16, "state")
        if power not in POWER_STATES:
            raise FieldError("state", f"{power!r} is not one of {', '.join(POWER_STATES)}")
        with at("timer"):
            timer = GenericTimerState.from_dict(req(m, "timer"))
        replay: list[tuple[int, int]] = []
        with at("replay"):
            for n, access in enumerate(items(req(m, "replay"), MAX_REPLAY)):
                with at(n):
                    address, value = exactly(access, 2)
                    replay.append((uint(address, 64, "[0]"), uint(value, 64, "[1]")))
        return cls(
            regs=MappingProxyType(regs),
            pc=uint(req(m, "pc"), 64, "pc"),
            power=power,
            timer=timer,
            replay=tuple(replay),
            instructions=uint(req(m, "instructions"), 64, "instructions"),
        )


@dataclass(frozen=True)
class MachineStateConfig:
    """What a machine is rebuilt from: RAM size, CPUs, the whole GIC configuration, boot
    arguments, PSCI conduit, scheduling slice and whether the flash is present."""

    memory: int
    smp: int
    gic: GicConfig
    bootargs: str
    psci_conduit: str
    slice: int
    flash: bool
    deterministic: bool = True  # counted slices (a snapshot of the timed mode goes on timed)
    time_slice_us: int = 2_000

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory,
            "smp": self.smp,
            "gic": self.gic.to_dict(),
            "bootargs": self.bootargs,
            "psci_conduit": self.psci_conduit,
            "slice": self.slice,
            "flash": self.flash,
            "deterministic": self.deterministic,
            "time_slice_us": self.time_slice_us,
        }

    @classmethod
    def from_dict(cls, d: object) -> MachineStateConfig:
        """RAM a positive multiple of the page size within the host's limit, 1 to
        :data:`MAX_SMP` CPUs and a GIC with as many, a PSCI conduit, a slice of at least
        one instruction (Unicorn takes a count of 0 as no bound at all)."""
        m = mapping(d)
        only(m, ("memory", "smp", "gic", "bootargs", "psci_conduit", "slice", "flash", "deterministic",
                 "time_slice_us"))  # fmt: skip
        smp = bounded(req(m, "smp"), 1, MAX_SMP + 1, "smp")
        with at("gic"):
            gic = GicConfig.from_dict(req(m, "gic"), max_cpus=MAX_SMP)
            if gic.num_cpus != smp:
                raise FieldError("num_cpus", f"{gic.num_cpus} is not the machine's smp ({smp})")
            for name, base, size in gic.frames():  # the virt machine's GIC space: above the flash, below the UART
                if base < VIRT_GICD_BASE or base + size > PL011_BASE:
                    raise FieldError(name, f"{base:#x} + {size:#x} is outside the virt machine's GIC space "
                                           f"[{VIRT_GICD_BASE:#x}, {PL011_BASE:#x})")  # fmt: skip
        conduit = text(req(m, "psci_conduit"), 8, "psci_conduit")
        if conduit not in PSCI_CONDUITS:
            raise FieldError("psci_conduit", f"{conduit!r} is not hvc or smc")
        return cls(
            memory=ram_size(req(m, "memory"), "memory"),
            smp=smp,
            gic=gic,
            bootargs=text(req(m, "bootargs"), 1 << 16, "bootargs"),
            psci_conduit=conduit,
            slice=bounded(req(m, "slice"), 1, MAX_SLICE, "slice"),
            flash=boolean(req(m, "flash"), "flash"),
            deterministic=boolean(m.get("deterministic", True), "deterministic"),
            time_slice_us=bounded(m.get("time_slice_us", 2_000), 1, 1_000_001, "time_slice_us"),
        )


@dataclass(frozen=True)
class MachineState:
    """A whole virt machine between two scheduling slices (RAM is saved beside it)."""

    config: MachineStateConfig
    counter: int
    dtb_address: int
    gic: GicState
    uart: Pl011State
    cpus: tuple[VcpuState, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "counter": self.counter,
            "dtb_address": self.dtb_address,
            "gic": self.gic.to_dict(),
            "uart": self.uart.to_dict(),
            "cpus": [c.to_dict() for c in self.cpus],
        }

    @classmethod
    def from_dict(cls, d: object, registers: Collection[str]) -> MachineState:
        """Every block checked against the configuration; ``registers`` are the names a
        CPU saves (vgic.machine.cpu.SAVED_REGISTER_NAMES). The UART's output level and the
        SPI line it drives in the distributor agree."""
        m = mapping(d)
        only(m, ("config", "counter", "dtb_address", "gic", "uart", "cpus"))
        with at("config"):
            config = MachineStateConfig.from_dict(req(m, "config"))
        with at("gic"):
            gic = GicState.from_dict(req(m, "gic"), config.gic)
        with at("uart"):
            uart = Pl011State.from_dict(req(m, "uart"))
        spi = 32 + PL011_SPI
        if bool(gic.distributor.spis.level >> spi & 1) != uart.level and spi < 32 + config.gic.num_spis:
            raise FieldError("uart.level", f"{uart.level} is not the level of its SPI {spi} in the distributor")
        cpus: list[VcpuState] = []
        with at("cpus"):
            for n, c in enumerate(exactly(req(m, "cpus"), config.smp)):
                with at(n):
                    cpus.append(VcpuState.from_dict(c, registers))
        return cls(
            config=config,
            counter=uint(req(m, "counter"), 64, "counter"),
            dtb_address=uint(req(m, "dtb_address"), 64, "dtb_address"),
            gic=gic,
            uart=uart,
            cpus=tuple(cpus),
        )
