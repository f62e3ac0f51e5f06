"""Shared fixtures for the ITS tests: a Gic over GuestMemory with N CPUs and an ItsDriver.

Everything a test observes goes through what a guest can see (MMIO, ICC_* registers,
guest memory) or through the event log; helpers here only build the machine and spell
out the GICv3 facts the tests reason from:

* RD frames are 128 KB apart (RD_base + SGI_base, IHI 0069 12.10), so with
  GITS_TYPER.PTA=1 the RDbase of CPU n is (GICR_base + n * 0x20000) >> 16 (6.3, "RDbase").
* LPI INTIDs start at 8192 (5.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest

from vgic.driver import Allocator, ItsDriver
from vgic.events import Event, EventLog, Kind
from vgic.gic import Gic, GicConfig
from vgic.gicv3.redistributor import RedistributorConfig
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy, ItsConfig
from vgic.its.its import Its
from vgic.its.registers import ItsTyper
from vgic.memory import GuestMemory

RAM_BASE = 0x4000_0000
RAM_SIZE = 64 << 20
RD_STRIDE = 0x20000  # GICv3: RD_base frame + SGI_base frame, 64 KB each
LPI = 8192  # first LPI INTID

# GITS register offsets (IHI 0069 12.19), spelled out here rather than imported from the model
GITS_CTLR = 0x0000
GITS_IIDR = 0x0004
GITS_TYPER = 0x0008
GITS_CBASER = 0x0080
GITS_CWRITER = 0x0088
GITS_CREADR = 0x0090
GITS_BASER = 0x0100
GITS_PIDR2 = 0xFFE8
GITS_TRANSLATER = 0x10040


@dataclass
class Env:
    """One machine: memory, GIC, the ITS under test and a driver for it."""

    mem: GuestMemory
    gic: Gic
    d: ItsDriver
    heap: Allocator
    its_index: int = 0
    rdbases: list[int] = field(default_factory=list)

    @property
    def its(self) -> Its:
        return self.gic.its[self.its_index]

    @property
    def log(self) -> EventLog:
        return self.gic.log

    @property
    def ncpus(self) -> int:
        return len(self.gic.cpus)

    # -- MMIO on the ITS ---------------------------------------------------------------
    def read(self, offset: int, size: int = 4) -> int:
        return self.its.read(offset, size)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.its.write(offset, size, value)

    def read64(self, offset: int) -> int:
        """As a CPU engine does it: two 32-bit loads, low half first."""
        return self.read(offset) | self.read(offset + 4) << 32

    def write64(self, offset: int, value: int) -> None:
        """As a CPU engine does it: two 32-bit stores, low half first."""
        self.write(offset, value & 0xFFFFFFFF)
        self.write(offset + 4, value >> 32 & 0xFFFFFFFF)

    # -- RDbase as the ITS expects it (GITS_TYPER.PTA) --------------------------------------
    def rdbase(self, cpu: int) -> int:
        return self.rdbases[cpu]

    # -- event log -----------------------------------------------------------------------
    def errors(self) -> list[Event]:
        return self.log.errors

    def codes(self) -> list[int]:
        return [e.code for e in self.log.errors if e.code is not None]

    def diags(self) -> list[Event]:
        return self.log.of(Kind.DIAGNOSTIC)

    def faults(self) -> list[Event]:
        return self.log.of(Kind.TRANSLATION_FAULT)

    # -- delivery ------------------------------------------------------------------------
    def drain(self, cpu: int) -> list[int]:
        return self.d.drain(cpu)

    def drain_all(self) -> dict[int, list[int]]:
        """What every CPU acknowledges through ICC_IAR1_EL1, CPUs with nothing left out."""
        out = {cpu: self.d.drain(cpu) for cpu in range(self.ncpus)}
        return {cpu: v for cpu, v in out.items() if v}

    def pending(self, cpu: int) -> frozenset[int]:
        return self.gic.redistributors[cpu].pending_lpis

    # -- command queue -------------------------------------------------------------------
    @property
    def creadr(self) -> int:
        return self.read64(GITS_CREADR)

    @property
    def cwriter(self) -> int:
        return self.read64(GITS_CWRITER)

    def send(self, *cmds: C.Command, retry: bool = False) -> None:
        self.d.send(*cmds, retry=retry)

    # -- common flows -------------------------------------------------------------------
    def bring_up(self, *, lpis: bool = True, its: bool = True, collections: bool = True, **its_kwargs: object) -> None:
        """LPIs on every CPU, the ITS tables and queue, one collection per CPU (ICID n -> CPU n)."""
        if lpis:
            self.d.setup_lpis(id_bits=16)
        if its:
            self.d.setup_its(**its_kwargs)  # type: ignore[arg-type]
            assert self.its.enabled
        if collections:
            self.send(*(C.Mapc(cpu, self.rdbase(cpu), True) for cpu in range(self.ncpus)))
            assert not self.errors()

    def map_events(self, device_id: int, event_bits: int, mapping: dict[int, tuple[int, int]]) -> int:
        """MAPD the device, then MAPTI event -> (pINTID, ICID)."""
        itt = self.d.map_device(device_id, event_bits)
        self.send(*(C.Mapti(device_id, ev, p, icid) for ev, (p, icid) in mapping.items()))
        return itt


def build(
    its: ItsConfig | tuple[ItsConfig, ...] | None = None,
    num_cpus: int = 4,
    its_bases: tuple[int, ...] | None = None,
    its_index: int = 0,
) -> Env:
    mem = GuestMemory()
    mem.add_ram(RAM_BASE, RAM_SIZE)
    # An ITS that stalls on every error unless the test says otherwise: the queue freezes
    # where the error happened, which is what these tests look at. The profiles' own
    # defaults are tested in test_profiles.py.
    configs = its if isinstance(its, tuple) else (its or its_config(),)
    # DirectLPI on (QEMU's and KVM's redistributors have none): tests also drive LPIs
    # through GICR_SETLPIR/CLRLPIR/INVLPIR.
    kwargs: dict[str, object] = {
        "num_cpus": num_cpus,
        "its": configs,
        "redistributor": RedistributorConfig(direct_lpi=True),
    }
    if its_bases is not None:
        kwargs["its_bases"] = its_bases
    gic = Gic(mem, GicConfig(**kwargs))  # type: ignore[arg-type]
    heap = Allocator(RAM_BASE, RAM_SIZE)
    d = ItsDriver(gic, heap, its=its_index)
    pta = configs[its_index].typer.pta
    rdbases = [(gic.config.gicr_base + n * RD_STRIDE) >> 16 if pta else n for n in range(num_cpus)]
    return Env(mem, gic, d, heap, its_index, rdbases)


def its_config(*, pta: bool = False, policy: ErrorPolicy = ErrorPolicy.STALL, **typer: object) -> ItsConfig:
    """An ITS with ``policy`` for every error (command errors and memory faults alike)."""
    return ItsConfig(
        typer=ItsTyper(pta=pta, **typer),
        error_policy=policy,  # type: ignore[arg-type]
        memory_fault_policy=policy,
    )


@pytest.fixture
def make_env() -> Callable[..., Env]:
    """Build a machine: ``make_env(ItsConfig(...), num_cpus=4)``."""
    return build


@pytest.fixture(params=[False, True], ids=["PTA0", "PTA1"])
def pta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(params=[ErrorPolicy.STALL, ErrorPolicy.CONTINUE], ids=["stall", "continue"])
def policy(request: pytest.FixtureRequest) -> ErrorPolicy:
    return ErrorPolicy(request.param)


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A 4-CPU machine; ``@pytest.mark.parametrize("env", [ItsConfig(...)], indirect=True)``
    picks the ITS configuration."""
    config = getattr(request, "param", None)
    yield build(config)


@pytest.fixture
def ready(pta: bool) -> Env:
    """A 4-CPU machine, LPIs on, ITS enabled, ICID n mapped to CPU n, for PTA=0 and PTA=1."""
    e = build(its_config(pta=pta))
    e.bring_up()
    return e


def stalling(**fields: object) -> ItsConfig:
    """An ItsConfig with ``fields``; one error policy (STALL unless ``error_policy`` is
    given) for command errors and memory faults alike."""
    policy = fields.setdefault("error_policy", ErrorPolicy.STALL)
    fields.setdefault("memory_fault_policy", policy)
    return ItsConfig(**fields)  # type: ignore[arg-type]


def with_policy(config: ItsConfig, policy: ErrorPolicy) -> ItsConfig:
    return replace(config, error_policy=policy, memory_fault_policy=policy)
