"""One AArch64 CPU on the Unicorn engine, wired to its machine's devices and GIC.

Unicorn runs guest code, walks the guest's page tables (its own MMU, ``UC_TLB_CPU``),
and performs TLBI, AT, DC and the system registers it implements. This module supplies
what Unicorn lacks, through the pieces of :mod:`vgic.unicorn`:

* **System registers.** ICC_* go to the GIC's CPU interface, the EL1 timers (CNTP_*,
  CNTV_*) and CNTPCT_EL0 to the generic-timer model; nothing else crosses into Python
  when the native helper (vgic.ucnative) is there. CNTVCT_EL0 is Unicorn's, offset with
  CNTVOFF_EL2 to the machine's count; MPIDR_EL1 is Unicorn's, set through VMPIDR_EL2.
* **Broadcast maintenance.** Each CPU is its own engine, so TLBI ... IS and IC
  instructions, which the architecture broadcasts to the Inner Shareable domain, are
  passed to the machine, which applies them to the other CPUs before they next run.
* **Exceptions.** Unicorn never enters the guest's vectors: IRQs, FIQs and synchronous
  exceptions are taken here (:func:`vgic.unicorn.enter_exception`), with the ESR and FAR
  Unicorn computed (:class:`vgic.unicorn.ExceptionInfo`). HVC/SMC carry PSCI.
* **Running.** Two modes (docs/machine.md, "CPU engine"). *Timed* (the default): a run
  lasts until a deadline, and the native block hook ends it early when a pending
  interrupt becomes unmasked or the machine asks (another CPU's interrupt). *Counted*
  (``deterministic``): a run lasts a fixed number of instructions, which makes the
  machine's interleaving reproducible; a device access that raises this CPU's unmasked
  IRQ stops it at once and the access is replayed (see :meth:`Cpu._request_stop`).
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from typing import Any, Protocol

from unicorn import (  # type: ignore[attr-defined]  # unicorn's stubs lag its API
    UC_ARCH_ARM64,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_ARM,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    Uc,
    UcError,
)
from unicorn import arm64_const as A

from vgic import ucnative
from vgic.gic import Gic
from vgic.machine.state import VcpuState
from vgic.machine.timer import CNTPCT_EL0, TIMER_SYSREGS, GenericTimer
from vgic.memory import GuestMemory
from vgic.unicorn import (
    PC,
    PSTATE,
    PSTATE_DAIF,
    PSTATE_F,
    PSTATE_I,
    SCTLR_EL1,
    SPSR_EL1,
    VECTOR_FIQ,
    VECTOR_IRQ,
    VECTOR_SYNC,
    CpEnc,
    ExceptionInfo,
    GicAttachment,
    enter_exception,
    map_mmio,
    prepare_el1,
    read_code,
    translate,
)

EL1H = 0b0101
TCR_EL1: CpEnc = (2, 0, 3, 0, 2)
PAR_EL1: CpEnc = (7, 4, 3, 0, 0)
VMPIDR_EL2: CpEnc = (0, 0, 3, 4, 5)  # what MPIDR_EL1 reads at Non-secure EL1 (Arm ARM D19.2.170)
CNTVOFF_EL2: CpEnc = (14, 0, 3, 4, 3)  # CNTVCT_EL0 = physical count - CNTVOFF_EL2
TLBI_VMALLE1: CpEnc = (8, 7, 1, 0, 0)

INSN_WFI = 0xD503207F

# Exception classes (ESR_ELx.EC) and fault status codes (ISS DFSC/IFSC)
EC_UNKNOWN, EC_IABT_LOW, EC_IABT_CUR, EC_DABT_LOW, EC_DABT_CUR = 0x00, 0x20, 0x21, 0x24, 0x25
EC_WITH_FAR = frozenset({0x20, 0x21, 0x22, 0x24, 0x25, 0x34, 0x35})  # aborts, PC alignment, watchpoints
FSC_EXTERNAL = 0x10
ISS_WNR, ISS_FNV = 1 << 6, 1 << 10
IL = 1 << 25

# Unicorn's interrupt numbers (QEMU's EXCP_*)
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT = 1, 2, 3, 4, 7
EXCP_HVC, EXCP_HYP_TRAP, EXCP_SMC = 11, 12, 13
EXCP_SYNC = frozenset({EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT, EXCP_HYP_TRAP})

WAKE_STEPS = 64  # counted mode: instructions stepped after a masked WFI wakes, looking for the unmask
MASKED_SLICE = 256  # counted mode: the slice while an interrupt waits behind PSTATE
TLBI_QUEUE = 64  # broadcast TLBIs kept for a CPU before they become one whole flush
CODE_QUEUE = 64  # IC IVAU lines kept for a CPU before they become one whole flush of translations
ICACHE_LINE = 64  # CTR_EL0.IminLine of the Cortex-A57: 16 words
ZVA_FAST_AFTER = 4096  # DC ZVAs (256 KB zeroed) before the helper takes them over

# TLBI <op>IS at EL1 (op0=1, op1=0, CRn=8, CRm=3): VMALLE1IS, VAE1IS, ASIDE1IS, VAAE1IS,
# VALE1IS, VAALE1IS. The other CPUs replay the local form (CRm=7, same op2).
TLBI_IS_OP2 = (0, 1, 2, 3, 5, 7)
# Instruction-cache maintenance: IC IALLUIS (every CPU), IC IALLU (this CPU), IC IVAU (one
# line by VA, every CPU).
IC_IALLUIS, IC_IALLU, IC_IVAU = (1, 0, 7, 1, 0), (1, 0, 7, 5, 0), (1, 3, 7, 5, 1)

_SAVED_REGS: list[tuple[str, int]] = [
    *((f"X{i}", getattr(A, f"UC_ARM64_REG_X{i}")) for i in range(29)),
    ("X29", A.UC_ARM64_REG_X29),
    ("X30", A.UC_ARM64_REG_X30),
    ("PSTATE", A.UC_ARM64_REG_PSTATE),
    ("SP_EL0", A.UC_ARM64_REG_SP_EL0),
    ("SP_EL1", A.UC_ARM64_REG_SP_EL1),
    ("SP", A.UC_ARM64_REG_SP),
    ("ELR_EL1", A.UC_ARM64_REG_ELR_EL1),
    ("ESR_EL1", A.UC_ARM64_REG_ESR_EL1),
    ("FAR_EL1", A.UC_ARM64_REG_FAR_EL1),
    ("VBAR_EL1", A.UC_ARM64_REG_VBAR_EL1),
    ("TPIDR_EL0", A.UC_ARM64_REG_TPIDR_EL0),
    ("TPIDR_EL1", A.UC_ARM64_REG_TPIDR_EL1),
    ("TPIDRRO_EL0", A.UC_ARM64_REG_TPIDRRO_EL0),
    ("CPACR_EL1", A.UC_ARM64_REG_CPACR_EL1),
    ("MAIR_EL1", A.UC_ARM64_REG_MAIR_EL1),
    ("TTBR0_EL1", A.UC_ARM64_REG_TTBR0_EL1),
    ("TTBR1_EL1", A.UC_ARM64_REG_TTBR1_EL1),
    ("FPCR", A.UC_ARM64_REG_FPCR),
    ("FPSR", A.UC_ARM64_REG_FPSR),
]
_Q_REGS = [(f"Q{i}", getattr(A, f"UC_ARM64_REG_Q{i}")) for i in range(32)]
_SAVED_CP_REGS: list[tuple[str, CpEnc]] = [
    ("SCTLR_EL1", SCTLR_EL1),
    ("TCR_EL1", TCR_EL1),
    ("SPSR_EL1", SPSR_EL1),
    ("PAR_EL1", PAR_EL1),
    ("CONTEXTIDR_EL1", (13, 0, 3, 0, 1)),
    ("CNTKCTL_EL1", (14, 1, 3, 0, 0)),
    ("AMAIR_EL1", (10, 3, 3, 0, 0)),
]
SAVED_REGISTER_NAMES = (tuple(name for name, _ in _SAVED_REGS) + tuple(name for name, _ in _Q_REGS)
                        + tuple(name for name, _ in _SAVED_CP_REGS))  # fmt: skip

MmioRegion = tuple[int, int, Callable[[int, int], int], Callable[[int, int, int], None]]


class CpuState(enum.Enum):
    OFF = "off"
    RUNNING = "running"
    WFI = "wfi"


class GuestCrash(Exception):
    """The guest cannot go on (an exception it cannot take): the machine stops."""


class CpuHost(Protocol):
    """What a CPU needs from its machine (vgic.machine.virt.VirtMachine is one)."""

    @property
    def memory(self) -> GuestMemory: ...
    @property
    def gic(self) -> Gic: ...
    @property
    def mmio(self) -> list[MmioRegion]: ...
    @property
    def psci_conduit(self) -> str: ...
    @property
    def pause_requested(self) -> bool: ...
    @property
    def halted(self) -> bool: ...
    @property
    def current_cpu(self) -> int | None: ...
    def clock(self) -> int: ...
    def psci_call(self, cpu: int, fn: int, a1: int, a2: int, a3: int) -> int | None: ...
    def note_exception(self, cpu: int, kind: int, elr: int, esr: int | None) -> None: ...
    def note_abort(self, cpu: int, address: int, pc: int) -> None: ...
    def broadcast_tlbi(self, source: int, op2: int, value: int) -> None: ...
    def broadcast_code_change(self, source: int, address: int | None) -> None: ...
    def interrupt_raised(self, target: int) -> None: ...


class Cpu:
    """One vCPU: a Unicorn instance over the machine's shared RAM and devices."""

    def __init__(self, host: CpuHost, index: int, deterministic: bool = False) -> None:
        self.host = host
        self.index = index
        self.deterministic = deterministic
        gic = host.gic
        self.mpidr = gic.config.mpidr(index)
        self.gicc = gic.cpus[index]
        self.gicc.on_irq = self._line_changed
        self.gicc.on_fiq = self._line_changed
        self.timer = GenericTimer(host.clock, lambda intid, level: gic.set_ppi(index, intid, level))
        self.state = CpuState.OFF
        self.pc = 0
        self.instructions = 0  # counted mode: the instruction budget handed to Unicorn so far
        self._irq_rose = False
        self._stop_requested = False
        self._replay: list[tuple[int, int]] = []  # (address, value) of accesses to re-serve
        self._recording = False
        self._event: tuple[str, Any] | None = None
        self._fault: tuple[int, int] | None = None  # (address, access) of the last unmapped access
        self._tlbi: list[tuple[int, int]] | None = []  # broadcast TLBIs to replay; None: flush all
        self._code_lines: list[int] | None = []  # other CPUs' IC IVAU lines to drop; None: drop all

        uc: Any = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        self.uc = uc
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A57)
        uc.ctl_exits_enabled(True)  # runs end by stop, WFI or count: no "until" address to translate
        for region in host.memory.regions:
            uc.mem_map_ptr(region.base, region.size, UC_PROT_ALL, region.address)
        gicc_attachment = GicAttachment(uc, gic, index, map_regions=False, stop_on_interrupt=False)
        self.regs = gicc_attachment.regs
        self.sysregs = sysregs = gicc_attachment.sysregs
        prepare_el1(uc, self.regs)
        self.regs.write_cp(VMPIDR_EL2, 0x8000_0000 | self.mpidr)
        timer = self.timer
        for enc in TIMER_SYSREGS:
            if enc != CNTPCT_EL0:  # CNTFRQ and CNTVCT: Unicorn's (reads); writes are ignored
                sysregs.on_write(enc, functools.partial(timer.write, enc))
            if enc[2:4] != (14, 0) or enc == CNTPCT_EL0:  # the EL1 timers and CNTPCT
                sysregs.on_read(enc, functools.partial(timer.read, enc))
        for op2 in TLBI_IS_OP2:
            sysregs.on_sys((1, 0, 8, 3, op2), functools.partial(self._on_tlbi_is, op2))
        sysregs.on_sys(IC_IALLUIS, self._on_ic_ialluis)
        sysregs.on_sys(IC_IALLU, self._on_ic_iallu)
        sysregs.on_sys(IC_IVAU, self._on_ic_ivau)
        sysregs.after = self._after_sysreg
        for base, size, read, write in host.mmio:
            map_mmio(uc, base, size, self._mmio_reader(base, read), self._mmio_writer(base, write))
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED, self._on_unmapped
        )
        self.exception_info = ExceptionInfo(uc)
        self.ctl: ucnative.CpuBlock | None = None if deterministic else sysregs.watch_blocks()

    # == registers ======================================================================
    def reg(self, r: int) -> int:
        """A 64-bit register (X<n>, SP, PC, PSTATE, *_EL1 ids; not CP_REG or vectors)."""
        return self.regs.read(r)

    def set_reg(self, r: int, value: int) -> None:
        self.regs.write(r, value)

    def cp_reg(self, enc: CpEnc) -> int:
        return self.regs.read_cp(enc)

    def set_cp_reg(self, enc: CpEnc, value: int) -> None:
        self.regs.write_cp(enc, value)

    def set_counter_offset(self, ticks: int) -> None:
        """CNTVCT_EL0 reads the machine's count: host time at 62.5 MHz minus ``ticks``."""
        self.regs.write_cp(CNTVOFF_EL2, ticks)

    def flush_tlb(self) -> None:
        """Drop every cached translation of this CPU (TLBI VMALLE1)."""
        self.regs.write_cp(TLBI_VMALLE1, 0)
        self.sysregs.mappings_changed()

    # == save/restore ====================================================================
    def save_state(self) -> VcpuState:
        """Architectural state: general, FP/SIMD and EL1 system registers, power state."""
        regs: dict[str, int] = {name: self.reg(r) for name, r in _SAVED_REGS}
        regs.update({name: int(self.uc.reg_read(r)) for name, r in _Q_REGS})
        regs.update({name: self.cp_reg(enc) for name, enc in _SAVED_CP_REGS})
        return VcpuState(regs, self.pc, self.state.value, self.timer.save_state(), tuple(self._replay),
                         self.instructions)  # fmt: skip

    def load_state(self, state: VcpuState) -> None:
        regs = state.regs
        self.set_reg(PSTATE, regs["PSTATE"])
        for name, r in _SAVED_REGS:
            if name not in ("PSTATE", "SP"):
                self.set_reg(r, regs[name])
        for name, r in _Q_REGS:
            self.uc.reg_write(r, regs[name])
        self.set_reg(A.UC_ARM64_REG_SP, regs["SP"])  # the active bank, last
        for name, enc in _SAVED_CP_REGS:  # coprocessor writes last: they rebuild the EL state
            self.set_cp_reg(enc, regs[name])
        self.flush_tlb()
        self.pc = state.pc
        self.state = CpuState(state.power)
        self.timer.load_state(state.timer)
        self._replay = list(state.replay)
        self.instructions = state.instructions

    @property
    def busy(self) -> bool:
        """In the middle of an instruction (counted mode: a stopped MMIO access to replay)."""
        return bool(self._replay)

    # == power =========================================================================
    def power_on(self, entry: int, context: int = 0, dtb: int | None = None) -> None:
        """Start at ``entry`` in EL1h, MMU off, interrupts masked (PSCI CPU_ON, boot)."""
        self.set_reg(PSTATE, PSTATE_DAIF | EL1H)
        self.set_cp_reg(SCTLR_EL1, self.cp_reg(SCTLR_EL1) & ~0x1005)  # M, C, I off
        self.flush_tlb()
        self.set_reg(A.UC_ARM64_REG_X0, context if dtb is None else dtb)
        for r in (A.UC_ARM64_REG_X1, A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3):
            self.set_reg(r, 0)
        self.pc = entry
        self.state = CpuState.RUNNING
        self._replay.clear()

    # == broadcast maintenance from the other CPUs =========================================
    def queue_tlbi(self, op2: int, value: int) -> None:
        """Another CPU's TLBI <op>IS: replayed here (local form) before this CPU next runs."""
        if self._tlbi is not None:
            if len(self._tlbi) < TLBI_QUEUE:
                self._tlbi.append((op2, value))
            else:
                self._tlbi = None  # too many: one whole flush does for all

    def invalidate_code(self, address: int | None) -> None:
        """Another CPU's IC IVAU (``address``) or IC IALLU[IS] (None). Its stores to code
        are not seen by this engine's own write tracking, so translations of the line
        (or of everything) are dropped before this CPU next runs."""
        lines = self._code_lines
        if lines is not None:
            if address is None or len(lines) >= CODE_QUEUE:
                self._code_lines = None
            else:
                lines.append(address & ~(ICACHE_LINE - 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def _apply_maintenance(self) -> None:
        if self._tlbi is None:
            self.flush_tlb()
        else:
            for op2, value in self._tlbi:
                self.regs.write_cp((8, 7, 1, 0, op2), value)
            self.sysregs.mappings_changed()
        self._tlbi = []
        lines, self._code_lines = self._code_lines, []
        if lines is None:
            self.uc.ctl_flush_tb()
            return
        for line in lines:
            # Unicorn finds the translations of a VA through this CPU's MMU, and would
            # fault outside emulation on an unmapped one: probe first. A line this CPU
            # cannot map now may still have translations from an old mapping: drop all.
            if translate(self.uc, line, UC_PROT_EXEC) is None:
                self.uc.ctl_flush_tb()
                return
            self.uc.ctl_remove_cache(line, line + ICACHE_LINE)

    def _on_tlbi_is(self, op2: int, value: int) -> bool:
        self.host.broadcast_tlbi(self.index, op2, value)
        return False  # Unicorn performs it on this CPU

    def _on_ic_ialluis(self, value: int) -> bool:
        self.host.broadcast_code_change(self.index, None)
        self.invalidate_code(None)
        return False

    def _on_ic_iallu(self, value: int) -> bool:
        self.invalidate_code(None)  # from the next run: code other CPUs wrote
        return False

    def _on_ic_ivau(self, value: int) -> bool:
        self.host.broadcast_code_change(self.index, value)
        return False

    # == running =======================================================================
    def _wake(self) -> bool:
        """Ready to run: on, and not waiting for an interrupt that has not come."""
        if self.state is CpuState.OFF:
            return False
        if self.state is CpuState.WFI:
            if not (self.gicc.irq_level or self.gicc.fiq_level):
                return False
            self.state = CpuState.RUNNING
        if self._tlbi or self._tlbi is None or self._code_lines or self._code_lines is None:
            self._apply_maintenance()
        return True

    @property
    def runnable(self) -> bool:
        return self.state is CpuState.RUNNING or (
            self.state is CpuState.WFI and (self.gicc.irq_level or self.gicc.fiq_level)
        )

    def run_until(self, deadline_ns: int, others_runnable: bool = False) -> None:
        """Timed mode: run until CLOCK_MONOTONIC ``deadline_ns``, a WFI, power-off or a
        stop the machine asks for (:meth:`yield_now`), taking interrupts and exceptions.

        With ``others_runnable`` (or once :meth:`others_can_run` says so) the run also
        ends after a WFE or YIELD: the guest is waiting, most likely for another CPU
        (a lock holder, an IPI's answer), which only runs once this one stops. Unicorn
        treats both as no-ops, so the guest would otherwise spin out its whole slice."""
        ctl = self.ctl
        assert ctl is not None, "timed runs need the native block hook"
        if not self._wake():
            return
        host = self.host
        if ctl.zva_count >= ZVA_FAST_AFTER and not ctl.ram_count:
            # A guest that zeroes memory with DC ZVA (Linux zeroes every page it hands
            # out): from now on the helper does it, and records the pages code runs from,
            # which costs about 1 ns per block. It must know every page with translated
            # code, so translations start afresh.
            self.uc.ctl_flush_tb()
            self.sysregs.zero_blocks_in([(r.base, r.size) for r in host.memory.regions])
        ctl.deadline_ns = deadline_ns
        ctl.stop_now = ctl.waiting = 0  # requests that came after the last run ended are stale
        ctl.yield_on_wait = 1 if others_runnable else 0
        while True:
            self._take_interrupt_if_unmasked()
            ctl.wake_mask = self._wake_mask()
            ctl.countdown = 1  # look at the clock at the first block
            ctl.stop_reason = ucnative.STOP_NONE
            self._emulate(0)
            reason = ctl.stop_reason
            self._after_stop(timed=True)
            if self.state is not CpuState.RUNNING or host.halted or host.pause_requested:
                return
            if reason in (ucnative.STOP_DEADLINE, ucnative.STOP_REQUESTED) or time.monotonic_ns() >= deadline_ns:
                return
            if reason == ucnative.STOP_WAITING:  # after WFE/YIELD: what it waits for needs another CPU
                return

    def others_can_run(self) -> None:
        """Timed mode: another CPU became runnable during this run (see run_until)."""
        if self.ctl is not None:
            self.ctl.yield_on_wait = 1

    def yield_now(self) -> None:
        """Timed mode: end the current run at the next block (another CPU has work)."""
        if self.ctl is not None:
            self.ctl.stop_now = 1

    def run(self, budget: int) -> None:
        """Counted mode: run up to ``budget`` instructions, then take what happened."""
        woke = self.state is CpuState.WFI
        if not self._wake():
            return
        if self._replay:
            self._emulate(1)  # finish the instruction whose access asked to stop
            self._replay.clear()
            self._after_stop(timed=False)
            if self.state is not CpuState.RUNNING or self.host.pause_requested:
                return
        self._take_interrupt_if_unmasked()
        # With an interrupt waiting behind PSTATE.I, run in short slices so an unmask
        # (msr daifclr, which raises no hook) is seen quickly. A CPU woken from a WFI it
        # entered with interrupts masked (Linux's idle loop: mask, WFI, unmask for a few
        # instructions, mask again) is stepped one instruction at a time until the unmask,
        # which a slice boundary would almost never hit.
        if self.gicc.irq_level or self.gicc.fiq_level:
            budget = min(budget, MASKED_SLICE)
            if woke and self._interrupt_masked():
                for _ in range(WAKE_STEPS):
                    self._emulate(1)
                    self._after_stop(timed=False)
                    if self.state is not CpuState.RUNNING or self._replay or self.host.pause_requested:
                        return
                    if not self._interrupt_masked():
                        self._take_interrupt_if_unmasked()
                        break
        self._emulate(budget)
        self._after_stop(timed=False)

    def _emulate(self, count: int) -> None:
        self._stop_requested = False
        self._irq_rose = False
        self._event = None
        self.instructions += count
        try:
            self.uc.emu_start(self.pc, 0, count=count)
        except UcError as e:
            if self._event is None:
                self._event = ("memfault", e)
        except Exception as e:  # a device model failed inside a hook: stop cleanly
            raise GuestCrash(f"CPU{self.index}: internal error at PC {self.pc:#x}: {e!r}") from e
        self._recording = False  # what was recorded is replayed when the access re-runs
        self.pc = self.regs.read(PC)

    def _after_stop(self, timed: bool) -> None:
        event, self._event = self._event, None
        if event is None:
            if timed:
                stopped = self._stop_requested or self.ctl is None or self.ctl.stop_reason != ucnative.STOP_NONE
            else:
                stopped = bool(self._replay)
            # A pending interrupt ends WFI whatever PSTATE.I/F say (Arm ARM, "Wait for
            # Interrupt"): the timed mode goes on at once, the counted mode wakes at the
            # next slice and steps towards the unmask.
            pending = timed and (self.gicc.irq_level or self.gicc.fiq_level)
            if not stopped and not pending and read_code(self.uc, self.pc - 4) == INSN_WFI:
                self.state = CpuState.WFI
            return
        kind, arg = event
        if kind == "intr":
            self._exception(arg)
        else:
            self._unmapped_abort(arg)

    # == interrupts =======================================================================
    def _line_changed(self, level: bool) -> None:
        """The GIC raised or lowered this CPU's IRQ or FIQ line."""
        if self.ctl is not None:
            self.ctl.wake_mask = self._wake_mask()
            if level and self.host.current_cpu not in (None, self.index):
                self.host.interrupt_raised(self.index)
        elif level:
            self._irq_rose = True

    def _wake_mask(self) -> int:
        """The PSTATE bits that keep a pending interrupt from being taken (0: none pending)."""
        return (PSTATE_I if self.gicc.irq_level else 0) | (PSTATE_F if self.gicc.fiq_level else 0)

    def _interrupt_masked(self) -> bool:
        """No pending interrupt can be taken now (PSTATE.I/F mask every one that is)."""
        pstate = self.reg(PSTATE)
        return not ((self.gicc.irq_level and not pstate & PSTATE_I) or (self.gicc.fiq_level and not pstate & PSTATE_F))

    def _take_interrupt_if_unmasked(self) -> None:
        if not (self.gicc.irq_level or self.gicc.fiq_level):
            return
        pstate = self.reg(PSTATE)
        if self.gicc.fiq_level and not pstate & PSTATE_F:
            self.take_exception(VECTOR_FIQ, self.pc)
        elif self.gicc.irq_level and not pstate & PSTATE_I:
            self.take_exception(VECTOR_IRQ, self.pc)

    def _wants_stop(self) -> bool:
        """Counted mode, after a device access: did it raise our own IRQ while unmasked?"""
        if not self._irq_rose or self._stop_requested:
            return False
        self._irq_rose = False
        return not self.reg(PSTATE) & PSTATE_I

    def _after_sysreg(self) -> None:
        """After an ICC/timer register access (the PC is already past it)."""
        if self.ctl is None and self._irq_rose and self._wants_stop():
            self._stop_requested = True
            self.uc.emu_stop()

    def _mmio_reader(self, base: int, read: Callable[[int, int], int]) -> Callable[[int, int], int]:
        def cb(offset: int, size: int) -> int:
            addr = base + offset
            if self._replay and not self._recording:
                if self._replay[0][0] == addr:
                    return self._replay.pop(0)[1]
                self._replay.clear()
            value = read(offset, size)
            if self._recording:
                self._replay.append((addr, value))
            elif self.ctl is not None:
                if self.host.pause_requested:
                    self.ctl.stop_now = 1
            elif self.host.pause_requested or self._wants_stop():
                self._request_stop(addr, value)
            return value

        return cb

    def _mmio_writer(self, base: int, write: Callable[[int, int, int], None]) -> Callable[[int, int, int], None]:
        def cb(offset: int, size: int, value: int) -> None:
            addr = base + offset
            if self._replay and not self._recording:
                if self._replay[0][0] == addr:
                    self._replay.pop(0)
                    return
                self._replay.clear()
            write(offset, size, value)
            if self._recording:
                self._replay.append((addr, 0))
            elif self.ctl is not None:
                if self.host.pause_requested:
                    self.ctl.stop_now = 1
            elif self.host.pause_requested or self._wants_stop():
                self._request_stop(addr, 0)

        return cb

    def _request_stop(self, addr: int, value: int) -> None:
        """Counted mode: stop inside an MMIO access. Unicorn leaves the PC on the
        instruction, so its accesses are recorded and answered from the record when it
        runs again (one instruction) on resume: no side effect happens twice."""
        self._stop_requested = True
        self._recording = True
        self._replay = [(addr, value)]
        self.uc.emu_stop()

    # == synchronous exceptions =======================================================
    def _on_intr(self, uc: Uc, intno: int, _: object) -> None:
        self._event = ("intr", intno)
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _: object) -> bool:
        self._fault = (address, access)
        return False

    def _exception(self, intno: int) -> None:
        """A synchronous exception Unicorn raised, with the syndrome it computed.

        Unicorn leaves the PC on the preferred return address (the instruction for an
        abort, UNDEF or BRK; the next one for SVC, HVC and SMC), so ELR_EL1 is the PC."""
        syndrome, vaddress, target_el = self.exception_info.read()
        if intno in (EXCP_HVC, EXCP_SMC):
            self._hypercall(smc=intno == EXCP_SMC)
            return
        if intno not in EXCP_SYNC:
            raise GuestCrash(f"CPU{self.index}: unexpected exception {intno} at PC {self.pc:#x}")
        if target_el != 1:  # a trap to EL2/EL3, which this machine does not have
            self.take_exception(VECTOR_SYNC, self.pc, esr=EC_UNKNOWN << 26 | IL)
            return
        # A translation or permission fault is the guest OS's business (demand paging, a
        # user pointer checked by the kernel): counted as an exception, not a diagnostic.
        far = vaddress if syndrome >> 26 in EC_WITH_FAR else None
        self.take_exception(VECTOR_SYNC, self.pc, esr=syndrome, far=far)

    def _hypercall(self, smc: bool) -> None:
        """HVC/SMC (the PC is past it): PSCI when the function ID is one, else UNDEFINED."""
        args = [self.reg(r) for r in (A.UC_ARM64_REG_X0, A.UC_ARM64_REG_X1, A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3)]
        if (self.host.psci_conduit == "smc") == smc:
            result = self.host.psci_call(self.index, *args)
            if result is not None:
                if self.state is not CpuState.OFF:  # CPU_SUSPEND returns SUCCESS on wake-up
                    self.set_reg(A.UC_ARM64_REG_X0, result & 0xFFFF_FFFF_FFFF_FFFF)
                return
        # Not a PSCI call: with no EL2 or EL3 behind it, HVC and SMC are UNDEFINED at EL1
        # (Arm ARM C6.2.113, C6.2.247), as on QEMU's virt machine: an Unknown-reason
        # exception whose ELR is the instruction itself.
        self.take_exception(VECTOR_SYNC, self.pc - 4, esr=EC_UNKNOWN << 26 | IL)

    def _unmapped_abort(self, error: UcError) -> None:
        """An access to a physical address with neither RAM nor a device behind it: a
        synchronous external abort (DFSC/IFSC 0b010000). Unicorn reports the physical
        address; it is the virtual one when the MMU is off or for a fetch (the PC), and
        otherwise FAR_EL1 is marked not valid (ISS.FnV, Arm ARM D17.2.40)."""
        if self._fault is None or error.errno not in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED,
                                                      UC_ERR_FETCH_UNMAPPED):  # fmt: skip
            raise GuestCrash(f"CPU{self.index}: {error} at PC {self.pc:#x}")
        address, access = self._fault
        self._fault = None
        low = (self.reg(PSTATE) >> 2 & 3) == 0
        far: int | None = 0
        if access == UC_MEM_FETCH_UNMAPPED:
            ec, iss, far = (EC_IABT_LOW if low else EC_IABT_CUR), FSC_EXTERNAL, self.pc
        else:
            ec = EC_DABT_LOW if low else EC_DABT_CUR
            iss = FSC_EXTERNAL | (ISS_WNR if access == UC_MEM_WRITE_UNMAPPED else 0)
            if self.cp_reg(SCTLR_EL1) & 1:
                iss |= ISS_FNV
            else:
                far = address
        self.host.note_abort(self.index, address, self.pc)
        self.take_exception(VECTOR_SYNC, self.pc, esr=ec << 26 | IL | iss, far=far)

    def take_exception(self, kind: int, elr: int, esr: int | None = None, far: int | None = None) -> None:
        """Enter EL1h at VBAR_EL1 + offset (Arm ARM AArch64.TakeException)."""
        if kind == VECTOR_SYNC:
            pstate = self.reg(PSTATE)
            base = 0x400 if pstate >> 2 & 3 == 0 else (0x200 if pstate & 1 else 0)
            target = self.reg(A.UC_ARM64_REG_VBAR_EL1) + base
            if self.pc == target:
                raise GuestCrash(f"CPU{self.index}: exception loop at the vector {target:#x} (ESR {esr or 0:#x})")
        self.pc = enter_exception(self.regs, kind, elr, esr, far)
        self.state = CpuState.RUNNING
        self.host.note_exception(self.index, kind, elr, esr)
