"""Property-based model check: the real GIC against tests/reference_model.py.

A hypothesis state machine drives a 1..4 CPU GIC through its public interfaces only: ITS
commands written into the ring by :class:`vgic.driver.ItsDriver` (valid and invalid
arguments, under both error policies), device MSIs (``Its.translate``), GICR_* MMIO (EnableLPIs,
SETLPIR/CLRLPIR/INVLPIR/INVALLR), LPI configuration table writes, and ICC_* system
registers (acknowledge, EOI). After every step the redistributors' pending LPIs and cached
configurations, HPPIR1, RPR and the IRQ line must equal the reference model's; every
acknowledge must return exactly the LPI the reference predicts; every command must report
an error exactly when the reference says one applies. At the end every CPU is drained and
must yield exactly the reference's pending set.

``VGIC_HYPOTHESIS_EXAMPLES`` raises the number of examples (default 150) and
``VGIC_HYPOTHESIS_STEPS`` the steps per example (default 80).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import stalling
from reference_model import LPI_BASE, SPURIOUS, RefGic
from vgic.driver import GICR_CTLR, GICR_INVALLR, GICR_INVLPIR, Allocator, ItsDriver
from vgic.events import EventLog, Kind
from vgic.gic import Gic, GicConfig
from vgic.gicv3.redistributor import RedistributorConfig
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy
from vgic.memory import GuestMemory

GICR_SETLPIR, GICR_CLRLPIR = 0x40, 0x48
RAM, RAM_SIZE = 0x4000_0000, 64 << 20
ITT_SLOT = 128 << 10  # room for 2^14 events of 8 bytes (MAPD Size=13)
PRIORITIES = (0x00, 0x20, 0x40, 0x44, 0x80, 0xA0, 0xA4, 0xE8, 0xF0, 0xF8)

# Mostly valid arguments (repeated values weigh the draw), a few invalid ones.
devices = st.sampled_from([0, 0, 1, 1, 2, 2, 3, 600])  # 600: beyond the 512-entry device table
events = st.sampled_from([0, 1, 2, 3] * 3 + [5, 7, 40, 8192, 8193, 8200])  # 8192+: only with Size=13
sizes = st.sampled_from([3, 3, 3, 0, 1, 13, 13, 16])  # 16: more EventID bits than GITS_TYPER.ID_bits
icids = st.sampled_from([0, 1, 2, 3] * 2 + [700])  # 700: beyond the collection table
rdbases = st.sampled_from([0, 1, 2, 3] * 2 + [4])  # >= ncpus: no such redistributor
cpus = st.integers(0, 3)
lpis = st.sampled_from([*range(LPI_BASE, LPI_BASE + 8)] * 2 + [8200, 100, 70000])  # 100, 70000: not valid LPIs
POOL = [*range(LPI_BASE, LPI_BASE + 8), 8200]


class GicMachine(RuleBasedStateMachine):
    @initialize(ncpus=st.integers(1, 4), stall=st.booleans(),
                priorities=st.lists(st.sampled_from(PRIORITIES[:8]), min_size=len(POOL), max_size=len(POOL)))  # fmt: skip
    def setup(self, ncpus: int, stall: bool, priorities: list[int]) -> None:
        self.n = ncpus
        self.stall = stall
        mem = GuestMemory()
        mem.add_ram(RAM, RAM_SIZE)
        policy = ErrorPolicy.STALL if stall else ErrorPolicy.CONTINUE
        self.log = EventLog(keep=frozenset({Kind.COMMAND_ERROR}))
        self.gic = Gic(
            mem,
            GicConfig(
                num_cpus=ncpus, its=(stalling(error_policy=policy),), redistributor=RedistributorConfig(direct_lpi=True)
            ),
            log=self.log,
        )
        self.drv = ItsDriver(self.gic, Allocator(RAM, RAM_SIZE))
        self.drv.setup_lpis(id_bits=16, priority=0xA0, enable=True)
        self.drv.setup_its(queue_pages=1, table_pages=1)
        self.itt = {(d, s): self.drv.heap.alloc(ITT_SLOT, 256) for d in range(4) for s in range(2)}
        self.itt[(600, 0)] = self.itt[(600, 1)] = self.drv.heap.alloc(256, 256)
        self.ref = RefGic(ncpus)
        for c in range(ncpus):
            self.ref.set_enable(c, True)
        for intid, priority in zip(POOL, priorities, strict=True):
            self.write_config(intid, priority, True)
        self.irq = [cpu.irq_level for cpu in self.gic.cpus]
        for c, cpu in enumerate(self.gic.cpus):
            cpu.on_irq = self._irq_callback(c)
        # A driver's usual starting point: a collection per CPU, three devices, a few events.
        for c in range(ncpus):
            self.mapc(c, c, True)
        for d in range(3):
            self.mapd(d, 0, 3, True)
            for e in range(4):
                self.mapti(d, e, LPI_BASE + (4 * d + e) % 9, (d + e) % ncpus)

    def _irq_callback(self, c: int):  # type: ignore[no-untyped-def]
        def on_irq(level: bool) -> None:
            assert level != self.irq[c], f"CPU {c}: IRQ line 'changed' to the level it had"
            self.irq[c] = level

        return on_irq

    def cpu(self, c: int) -> int:
        return c % self.n

    # -- ITS commands ------------------------------------------------------------------
    def command(self, cmd: C.Command, expected: set[int]) -> None:
        before = self.log.counts[Kind.COMMAND_ERROR]
        self.drv.send(cmd)
        errors = self.log.counts[Kind.COMMAND_ERROR] - before
        event(f"{cmd.name} {'error' if expected else 'ok'}")
        if not expected:
            assert errors == 0, f"{C.format_command(cmd)}: unexpected {self.log.errors[-1]}"
            return
        assert errors == 1, f"{C.format_command(cmd)}: expected one of {sorted(map(hex, expected))}, got none"
        code = self.log.errors[-1].code
        assert code in expected, f"{C.format_command(cmd)}: {code:#08x} not in {sorted(map(hex, expected))}"
        creadr = self.drv.creadr
        if self.stall:
            # recovery as GIC-600's TRM describes it: overwrite with SYNC, then Retry
            assert creadr & 1, "the queue should have stalled"
            offset = creadr & 0xFFFE0
            self.drv.mem.write_bytes(self.drv.queue_base + offset, C.encode(C.Sync(0)))
            self.drv.its_write64(0x88, self.drv.cwriter | 1)
        assert self.drv.creadr == self.drv.cwriter

    @rule(dev=devices, slot=st.integers(0, 1), size=sizes, valid=st.booleans())
    def mapd(self, dev: int, slot: int, size: int, valid: bool) -> None:
        itt = self.itt[(dev, slot)]
        self.command(C.Mapd(dev, size, itt, valid), self.ref.apply_mapd(dev, size, itt, valid))

    @rule(icid=icids, rdbase=rdbases, valid=st.booleans())
    def mapc(self, icid: int, rdbase: int, valid: bool) -> None:
        self.command(C.Mapc(icid, rdbase, valid), self.ref.apply_mapc(icid, rdbase, valid))

    @rule(dev=devices, event=events, pintid=lpis, icid=icids)
    def mapti(self, dev: int, event: int, pintid: int, icid: int) -> None:
        self.command(C.Mapti(dev, event, pintid, icid), self.ref.apply_mapti(dev, event, pintid, icid))

    @rule(dev=devices, event=events, icid=icids)
    def mapi(self, dev: int, event: int, icid: int) -> None:
        self.command(C.Mapi(dev, event, icid), self.ref.apply_mapti(dev, event, event, icid, mapi=True))

    @rule(dev=devices, event=events, icid=icids)
    def movi(self, dev: int, event: int, icid: int) -> None:
        self.command(C.Movi(dev, event, icid), self.ref.apply_movi(dev, event, icid))

    @rule(rd1=rdbases, rd2=rdbases)
    def movall(self, rd1: int, rd2: int) -> None:
        self.command(C.Movall(rd1, rd2), self.ref.apply_movall(rd1, rd2))

    @rule(dev=devices, event=events)
    def discard(self, dev: int, event: int) -> None:
        self.command(C.Discard(dev, event), self.ref.apply_discard(dev, event))

    @rule(dev=devices, event=events)
    def int_(self, dev: int, event: int) -> None:
        self.command(C.Int(dev, event), self.ref.apply_int(dev, event))

    @rule(dev=devices, event=events)
    def clear(self, dev: int, event: int) -> None:
        self.command(C.Clear(dev, event), self.ref.apply_clear(dev, event))

    @rule(dev=devices, event=events)
    def inv(self, dev: int, event: int) -> None:
        self.command(C.Inv(dev, event), self.ref.apply_inv(dev, event))

    @rule(icid=icids)
    def invall(self, icid: int) -> None:
        self.command(C.Invall(icid), self.ref.apply_invall(icid))

    @rule(rdbase=rdbases)
    def sync(self, rdbase: int) -> None:
        self.command(C.Sync(rdbase), self.ref.apply_sync(rdbase))

    # -- devices, memory, redistributors ----------------------------------------------
    @rule(dev=devices, event=events)
    def msi(self, dev: int, event: int) -> None:
        expected = self.ref.msi(dev, event)
        assert self.gic.its[0].translate(dev, event) == expected

    @rule(intid=st.sampled_from(POOL), priority=st.sampled_from(PRIORITIES), enabled=st.booleans())
    def write_config(self, intid: int, priority: int, enabled: bool) -> None:
        """A configuration table write: takes effect for pending LPIs only after an invalidation."""
        byte = priority | 2 | int(enabled)
        self.drv.mem.write8(self.drv.prop_table + intid - LPI_BASE, byte)
        self.ref.prop[intid] = byte

    @rule(c=cpus, index=st.integers(0, 7), priority=st.sampled_from(PRIORITIES), enabled=st.booleans(),
          how=st.sampled_from(["none", "INV", "INVALL", "GICR_INVLPIR", "GICR_INVALLR"]))  # fmt: skip
    def reconfigure_pending(self, c: int, index: int, priority: int, enabled: bool, how: str) -> None:
        """Change the configuration of a pending LPI, then invalidate it (or not) some way."""
        c = self.cpu(c)
        pending = sorted(self.ref.cpus[c].pending)
        if not pending:
            return
        intid = pending[index % len(pending)]
        self.write_config(intid, priority, enabled)
        event(f"reconfigure pending LPI, {how}")
        if how == "GICR_INVLPIR":
            self.gicr_lpi(c, "inv", intid)
        elif how == "GICR_INVALLR":
            self.invallr(c)
        elif how == "INVALL":
            icid = next((i for i, cpu in sorted(self.ref.collections.items()) if cpu == c), None)
            if icid is not None:
                self.invall(icid)
        elif how == "INV":
            for dev, (itt, size) in sorted(self.ref.devices.items()):
                for ev, (pintid, icid) in sorted(self.ref.itts.get(itt, {}).items()):
                    if pintid == intid and self.ref.collections.get(icid) == c and ev < 1 << (size + 1):
                        self.inv(dev, ev)
                        return

    @rule(c=cpus, enable=st.booleans())
    def enable_lpis(self, c: int, enable: bool) -> None:
        c = self.cpu(c)
        self.drv.gicr_write(c, GICR_CTLR, int(enable))
        self.ref.set_enable(c, enable)

    @rule(c=cpus, op=st.sampled_from(["set", "clear", "inv"]), intid=lpis)
    def gicr_lpi(self, c: int, op: str, intid: int) -> None:
        c = self.cpu(c)
        if op == "set":
            self.drv.gicr_write(c, GICR_SETLPIR, intid, 8)
            self.ref.set_pending(c, intid)
        elif op == "clear":
            self.drv.gicr_write(c, GICR_CLRLPIR, intid, 8)
            self.ref.clear_pending(c, intid)
        else:
            self.drv.gicr_write(c, GICR_INVLPIR, intid, 8)
            self.ref.reload(c, intid)

    @rule(c=cpus)
    def invallr(self, c: int) -> None:
        c = self.cpu(c)
        self.drv.gicr_write(c, GICR_INVALLR, 0, 8)
        self.ref.reload_all(c)

    # -- CPU interfaces -----------------------------------------------------------------
    def _ack(self, c: int) -> int:
        expected = self.ref.expected_ack(c)
        got = self.gic.cpus[c].read_sysreg("ICC_IAR1_EL1")
        assert got == expected, f"CPU {c} acknowledged {got}, reference says {expected}"
        if got != SPURIOUS:
            event("LPI acknowledged")
            assert got in self.ref.cpus[c].pending
            self.ref.acknowledge(c, got)
        return got

    @rule(c=cpus, pmr=st.sampled_from([0x00, 0x40, 0x44, 0x80, 0xA0, 0xA8, 0xF0, 0xF8, 0xFF]))
    def write_pmr(self, c: int, pmr: int) -> None:
        c = self.cpu(c)
        self.gic.cpus[c].write_sysreg("ICC_PMR_EL1", pmr)
        self.ref.cpus[c].pmr = pmr & 0xF8
        assert self.gic.cpus[c].read_sysreg("ICC_PMR_EL1") == pmr & 0xF8

    @rule(c=cpus)
    def ack(self, c: int) -> None:
        self._ack(self.cpu(c))

    @rule(c=cpus)
    def eoi(self, c: int) -> None:
        c = self.cpu(c)
        self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)  # LPIs have no active state
        self.ref.eoi(c)

    @rule(c=cpus)
    def ack_eoi(self, c: int) -> None:
        c = self.cpu(c)
        if self._ack(c) != SPURIOUS:
            self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)
            self.ref.eoi(c)

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def matches_reference(self) -> None:
        if not hasattr(self, "ref"):
            return
        for c in range(self.n):
            rd, cpu, ref = self.gic.redistributors[c], self.gic.cpus[c], self.ref.cpus[c]
            assert rd.enable_lpis == ref.enabled, f"CPU {c} EnableLPIs"
            assert rd.pending_lpis == set(ref.pending), f"CPU {c} pending"
            for intid, cfg in ref.pending.items():
                assert rd.lpi_config(intid) == cfg, f"CPU {c} LPI {intid} cached configuration"
            assert cpu.read_sysreg("ICC_HPPIR1_EL1") == self.ref.highest_pending(c), f"CPU {c} HPPIR1"
            assert cpu.read_sysreg("ICC_RPR_EL1") == self.ref.running_priority(c), f"CPU {c} RPR"
            want = bool(self.ref.deliverable(c))
            assert cpu.irq_level == want and self.irq[c] == want, f"CPU {c} IRQ line"
        creadr = self.drv.creadr
        assert not creadr & 1 and creadr == self.drv.cwriter

    def teardown(self) -> None:
        if not hasattr(self, "ref"):
            return
        # Nothing lost: make everything deliverable, then drain every CPU.
        for c in range(self.n):
            while self.ref.cpus[c].active:
                self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)
                self.ref.eoi(c)
            self.drv.gicr_write(c, GICR_CTLR, 1)
            self.ref.set_enable(c, True)
            self.gic.cpus[c].write_sysreg("ICC_PMR_EL1", 0xF0)
            self.ref.cpus[c].pmr = 0xF0
        for intid in POOL:
            self.drv.mem.write8(self.drv.prop_table + intid - LPI_BASE, 0xA3)
            self.ref.prop[intid] = 0xA3
        for c in range(self.n):
            self.drv.gicr_write(c, GICR_INVALLR, 0, 8)
            self.ref.reload_all(c)
        for c in range(self.n):
            expected = sorted(self.ref.cpus[c].pending)
            got = self.drv.drain(c, limit=1000)
            event(f"drained {min(len(got), 3)}+ LPIs" if len(got) >= 3 else f"drained {len(got)} LPIs")
            assert got == expected, f"CPU {c} drained {got}, reference has {expected}"
            assert self.gic.redistributors[c].pending_lpis == frozenset()


_EXAMPLES = int(os.environ.get("VGIC_HYPOTHESIS_EXAMPLES", "150"))
_STEPS = int(os.environ.get("VGIC_HYPOTHESIS_STEPS", "80"))

TestGicModel = GicMachine.TestCase
TestGicModel.settings = settings(
    max_examples=_EXAMPLES,
    stateful_step_count=_STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
