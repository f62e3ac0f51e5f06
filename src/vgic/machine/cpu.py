"""One AArch64 CPU on the Unicorn engine, wired to the machine's devices and GIC.

Unicorn runs guest code; this module supplies what Unicorn lacks (platform-notes.md):

* **System registers.** MRS/MSR of ICC_* go to the CPU interface model, CNT* to the
  generic timer model, MPIDR_EL1 to this CPU's affinity; the rest stay Unicorn's.
* **Exceptions.** Unicorn never enters the guest's vectors itself. IRQs, FIQs and
  synchronous exceptions (UNDEF, SVC, HVC/SMC that are not PSCI, BRK, aborts) are taken
  here: ELR_EL1, SPSR_EL1, ESR_EL1, FAR_EL1, PSTATE and the stack pointer bank are set
  as the Arm ARM's AArch64.TakeException does, and the PC goes to VBAR_EL1 + offset.
* **Prompt interrupts.** An MMIO access cannot stop Unicorn without being re-executed,
  so when a device access raises this CPU's own unmasked IRQ the access is recorded,
  Unicorn is stopped, and the instruction is re-run for one instruction with the
  recorded accesses replayed (no side effect twice); the IRQ is then taken.
* **MMU.** Unicorn's TLB is filled from a stage-1 walk of the guest's own page tables
  (4K/16K/64K granules), in Unicorn's virtual TLB mode.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unicorn import (  # type: ignore[attr-defined]  # unicorn's stubs lag its API
    UC_ARCH_ARM64,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ,
    UC_MEM_WRITE,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_ARM,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import arm64_const as A

from vgic.gicv3.cpu_interface import SYSREG_ENCODINGS
from vgic.machine import ucfast
from vgic.machine.state import VcpuState
from vgic.machine.timer import TIMER_SYSREGS, GenericTimer

if TYPE_CHECKING:
    from vgic.machine.virt import VirtMachine

PSTATE_I = 1 << 7
PSTATE_F = 1 << 6
PSTATE_DAIF = 0xF << 6
EL1H = 0b0101
MPIDR_EL1 = (3, 0, 0, 0, 5)
MMU_REGS = {(3, 0, 1, 0, 0), (3, 0, 2, 0, 0), (3, 0, 2, 0, 1), (3, 0, 2, 0, 2)}  # SCTLR, TTBR0/1, TCR (EL1)
SCTLR_EL1 = (1, 0, 3, 0, 0)  # (CRn, CRm, op0, op1, op2) as Unicorn's CP_REG takes it
TCR_EL1 = (2, 0, 3, 0, 2)
SPSR_EL1 = (4, 0, 3, 0, 0)
PAR_EL1 = (7, 4, 3, 0, 0)
MAIR_EL1 = (10, 2, 3, 0, 0)

INSN_WFI = 0xD503207F
HVC_MASK, HVC_BITS, SMC_BITS = 0xFFE0001F, 0xD4000002, 0xD4000003

# Exception classes (ESR_ELx.EC)
EC_UNKNOWN, EC_SVC, EC_HVC, EC_SMC = 0x00, 0x15, 0x16, 0x17
EC_IABT_LOW, EC_IABT_CUR, EC_DABT_LOW, EC_DABT_CUR, EC_BRK = 0x20, 0x21, 0x24, 0x25, 0x3C

# Fault status codes (ESR_ELx.ISS DFSC/IFSC), OR-ed with the level where it applies
FSC_TRANSLATION, FSC_ACCESS_FLAG, FSC_PERMISSION, FSC_EXTERNAL, FSC_EXTERNAL_WALK = 0x04, 0x08, 0x0C, 0x10, 0x14

# Unicorn's interrupt numbers (QEMU's EXCP_*)
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT, EXCP_HVC, EXCP_SMC = 1, 2, 3, 4, 7, 11, 13

VECTOR_SYNC, VECTOR_IRQ, VECTOR_FIQ = 0x000, 0x080, 0x100
WAKE_STEPS = 64  # instructions stepped after a masked WFI wakes, looking for the unmask
NEVER = 0xFFFF_FFFF_FFFF_FFFC  # an "until" address no guest reaches (0 would stop a PC of 0)


_SAVED_REGS: list[tuple[str, int]] = [
    *((f"X{i}", getattr(A, f"UC_ARM64_REG_X{i}")) for i in range(29)),
    ("X29", A.UC_ARM64_REG_X29),
    ("X30", A.UC_ARM64_REG_X30),
    *((f"Q{i}", getattr(A, f"UC_ARM64_REG_Q{i}")) for i in range(32)),
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
_SAVED_CP_REGS: list[tuple[str, tuple[int, int, int, int, int]]] = [
    ("SCTLR_EL1", SCTLR_EL1),
    ("TCR_EL1", TCR_EL1),
    ("SPSR_EL1", SPSR_EL1),
    ("PAR_EL1", PAR_EL1),
    ("CONTEXTIDR_EL1", (13, 0, 3, 0, 1)),
    ("CNTKCTL_EL1", (14, 1, 3, 0, 0)),
    ("AMAIR_EL1", (10, 3, 3, 0, 0)),
]
SAVED_REGISTER_NAMES = tuple(name for name, _ in _SAVED_REGS) + tuple(name for name, _ in _SAVED_CP_REGS)


class CpuState(enum.Enum):
    OFF = "off"
    RUNNING = "running"
    WFI = "wfi"


class GuestCrash(Exception):
    """The guest cannot go on (an exception it cannot take): the machine stops."""


class Cpu:
    """One vCPU: a Unicorn instance over the machine's shared RAM and devices."""

    def __init__(self, machine: VirtMachine, index: int) -> None:
        self.machine = machine
        self.index = index
        self.mpidr = machine.gic.config.mpidr(index)
        self.gicc = machine.gic.cpus[index]
        self.gicc.on_irq = self._irq_changed
        self.timer = GenericTimer(machine.clock, lambda intid, level: machine.gic.set_ppi(index, intid, level))
        self.state = CpuState.OFF
        self.pc = 0
        self.instructions = 0  # budget handed to Unicorn so far (upper bound on retired)
        self._irq_rose = False
        self._stop_requested = False
        self._replay: list[tuple[int, int]] = []  # (address, value) of accesses to re-serve
        self._recording = False
        self._event: tuple[str, Any] | None = None
        self._fault: tuple[int, int] | None = None  # (address, access) of the last bad access
        self._walk_level = -1  # level of the last table walk's last descriptor
        self._mmu: tuple[int, int, int, int] | None = None  # SCTLR, TCR, TTBR0, TTBR1 (EL1)
        self._walk_desc = 0  # its final descriptor
        self.fault_status = 0  # FSC of the last failed translation
        self._fault_status = FSC_EXTERNAL  # FSC of the access that faulted (for the abort)
        self.tlb_stale = False  # another CPU broadcast a TLBI: flush before running again
        uc = self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A57)
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)  # type: ignore[attr-defined]
        for region in machine.memory.regions:
            uc.mem_map_ptr(region.base, region.size, UC_PROT_ALL, region.address)
        # The hot crossings (MMIO, MRS/MSR, plain register access) call Unicorn's C API
        # directly (vgic.machine.ucfast); the rest goes through the binding.
        self.regs = ucfast.RegFile(uc)
        # MRS/MSR dispatch by (op0, op1, CRn, CRm, op2), built once
        gicc, timer = self.gicc, self.timer
        self._mrs: dict[tuple[int, int, int, int, int], Callable[[], int]] = {
            **{enc: functools.partial(gicc.read_sysreg, name) for enc, name in SYSREG_ENCODINGS.items()},
            **{enc: functools.partial(timer.read, enc) for enc in TIMER_SYSREGS},
            MPIDR_EL1: lambda: 0x8000_0000 | self.mpidr,
        }
        self._msr: dict[tuple[int, int, int, int, int], Callable[[int], None]] = {
            **{enc: functools.partial(gicc.write_sysreg, name) for enc, name in SYSREG_ENCODINGS.items()},
            **{enc: functools.partial(timer.write, enc) for enc in TIMER_SYSREGS},
        }
        for base, size, read, write in machine.mmio:
            ucfast.mmio_map(uc, base, size, self._mmio_reader(base, read), self._mmio_writer(base, write))
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        ucfast.hook_sysreg(uc, A.UC_ARM64_INS_MRS, self._on_mrs)
        ucfast.hook_sysreg(uc, A.UC_ARM64_INS_MSR, self._on_msr)
        uc.hook_add(UC_HOOK_INSN, self._on_sys, None, 1, 0, A.UC_ARM64_INS_SYS)
        uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED, self._on_unmapped
        )
        uc.hook_add(UC_HOOK_TLB_FILL, self._on_tlb_fill)

    # == registers ======================================================================
    def reg(self, r: int) -> int:
        """A 64-bit register (X<n>, SP, PC, PSTATE, *_EL1 ids; not CP_REG or vectors)."""
        return self.regs.read(r)

    def set_reg(self, r: int, value: int) -> None:
        self.regs.write(r, value)

    def cp_reg(self, enc: tuple[int, int, int, int, int]) -> int:
        return int(self.uc.reg_read(A.UC_ARM64_REG_CP_REG, enc))

    def set_cp_reg(self, enc: tuple[int, int, int, int, int], value: int) -> None:
        self.uc.reg_write(A.UC_ARM64_REG_CP_REG, (*enc, value))
        self._mmu = None

    def _mmu_regs(self) -> tuple[int, int, int, int]:
        """SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1, read once and kept until an MSR to
        one of them (``_on_msr``) or a write from here: every TLB fill walks with them."""
        if self._mmu is None:
            self._mmu = (self.cp_reg(SCTLR_EL1), self.cp_reg(TCR_EL1), self.reg(A.UC_ARM64_REG_TTBR0_EL1),
                         self.reg(A.UC_ARM64_REG_TTBR1_EL1))  # fmt: skip
        return self._mmu

    # == save/restore ====================================================================
    def save_state(self) -> VcpuState:
        """Architectural state: general, FP/SIMD and EL1 system registers, power state."""
        regs = {name: self.reg(r) for name, r in _SAVED_REGS}
        regs.update({name: self.cp_reg(enc) for name, enc in _SAVED_CP_REGS})
        return VcpuState(regs, self.pc, self.state.value, self.timer.save_state(), tuple(self._replay),
                         self.instructions)  # fmt: skip

    def load_state(self, state: VcpuState) -> None:
        regs = state.regs
        for name, enc in _SAVED_CP_REGS:
            self.set_cp_reg(enc, regs[name])
        self.set_reg(A.UC_ARM64_REG_PSTATE, regs["PSTATE"])
        for name, r in _SAVED_REGS:
            if name not in ("PSTATE", "SP"):
                self.set_reg(r, regs[name])
        self.set_reg(A.UC_ARM64_REG_SP, regs["SP"])  # the active bank, last
        self.pc = state.pc
        self.state = CpuState(state.power)
        self.timer.load_state(state.timer)
        self._replay = list(state.replay)
        self.instructions = state.instructions
        self._mmu = None

    @property
    def busy(self) -> bool:
        """In the middle of an instruction (a stopped MMIO access still to replay)."""
        return bool(self._replay)

    # == power =========================================================================
    def power_on(self, entry: int, context: int = 0, dtb: int | None = None) -> None:
        """Start at ``entry`` in EL1h, MMU off, interrupts masked (PSCI CPU_ON, boot)."""
        self.set_cp_reg(SCTLR_EL1, self.cp_reg(SCTLR_EL1) & ~0x1005)  # M, C, I off
        self.set_reg(A.UC_ARM64_REG_PSTATE, PSTATE_DAIF | EL1H)
        self.set_reg(A.UC_ARM64_REG_X0, context if dtb is None else dtb)
        for r in (A.UC_ARM64_REG_X1, A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3):
            self.set_reg(r, 0)
        self.pc = entry
        self.state = CpuState.RUNNING
        self._replay.clear()

    # == running =======================================================================
    def run(self, budget: int) -> None:
        """Run up to ``budget`` instructions, then take what happened (IRQ, exception, WFI)."""
        if self.state is CpuState.OFF:
            return
        woke = False
        if self.state is CpuState.WFI:
            if not (self.gicc.irq_level or self.gicc.fiq_level):
                return
            self.state = CpuState.RUNNING
            woke = True
        if self.tlb_stale:
            self.flush_tlb()
        if self._replay:
            self._emulate(1)  # finish the instruction whose access asked to stop
            self._replay.clear()
            self._after_stop()
            if self.state is not CpuState.RUNNING or self.machine.pause_requested:
                return
        self._take_interrupt_if_unmasked()
        # With an interrupt waiting behind PSTATE.I, run in short slices so an unmask
        # (msr daifclr, which raises no hook) is seen quickly. A CPU woken from a WFI it
        # entered with interrupts masked (Linux's idle loop: mask, WFI, unmask for a few
        # instructions, mask again) is stepped one instruction at a time until the unmask,
        # which a slice boundary would almost never hit.
        if self.gicc.irq_level or self.gicc.fiq_level:
            budget = min(budget, 256)
            if woke and self._interrupt_masked():
                for _ in range(WAKE_STEPS):
                    self._emulate(1)
                    self._after_stop()
                    if self.state is not CpuState.RUNNING or self._replay or self.machine.pause_requested:
                        return
                    if not self._interrupt_masked():
                        self._take_interrupt_if_unmasked()
                        break
        self._emulate(budget)
        self._after_stop()

    def _emulate(self, count: int) -> None:
        self._stop_requested = False
        self._irq_rose = False
        self._event = None
        self.instructions += count
        try:
            self.uc.emu_start(self.pc, NEVER, count=count)
        except UcError as e:
            if self._event is None:
                self._event = ("memfault", e)
        self._recording = False  # what was recorded is replayed when the access re-runs
        self.pc = self.reg(A.UC_ARM64_REG_PC)

    def _after_stop(self) -> None:
        event, self._event = self._event, None
        if event is None:
            if not self._replay and self._read_insn(self.pc - 4) == INSN_WFI:
                self.state = CpuState.WFI
            return
        kind, arg = event
        if kind == "intr":
            self._exception(arg)
        elif kind == "memfault":
            self._abort()

    def _read_insn(self, vaddr: int) -> int | None:
        pa = self.translate(vaddr, UC_MEM_FETCH)
        if pa is None:
            return None
        try:
            return self.machine.memory.read32(pa)
        except Exception:
            return None

    # == interrupts =======================================================================
    def _irq_changed(self, level: bool) -> None:
        if level:
            self._irq_rose = True

    def _interrupt_masked(self) -> bool:
        """No pending interrupt can be taken now (PSTATE.I/F mask every one that is)."""
        pstate = self.reg(A.UC_ARM64_REG_PSTATE)
        return not ((self.gicc.irq_level and not pstate & PSTATE_I) or (self.gicc.fiq_level and not pstate & PSTATE_F))

    def _take_interrupt_if_unmasked(self) -> None:
        if not (self.gicc.irq_level or self.gicc.fiq_level):
            return
        pstate = self.reg(A.UC_ARM64_REG_PSTATE)
        if self.gicc.fiq_level and not pstate & PSTATE_F:
            self.take_exception(VECTOR_FIQ, self.pc)
        elif self.gicc.irq_level and not pstate & PSTATE_I:
            self.take_exception(VECTOR_IRQ, self.pc)

    def _wants_stop(self) -> bool:
        """After a device access: did it raise our own IRQ while IRQs are unmasked?"""
        if not self._irq_rose or self._stop_requested:
            return False
        self._irq_rose = False
        return not self.reg(A.UC_ARM64_REG_PSTATE) & PSTATE_I

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
            elif self.machine.pause_requested or self._wants_stop():
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
            elif self.machine.pause_requested or self._wants_stop():
                self._request_stop(addr, 0)

        return cb

    def _request_stop(self, addr: int, value: int) -> None:
        self._stop_requested = True
        self._recording = True
        self._replay = [(addr, value)]
        self.uc.emu_stop()

    # == system registers =============================================================
    def _on_mrs(self, reg: int, cp: Any) -> int:
        """MRS (ucfast.hook_sysreg): answer ours and step over it; 0 leaves it to Unicorn."""
        handler = self._mrs.get((cp.op0, cp.op1, cp.crn, cp.crm, cp.op2))
        if handler is None:
            return 0
        regs = self.regs
        regs.write(reg, handler())
        regs.write(A.UC_ARM64_REG_PC, regs.read(A.UC_ARM64_REG_PC) + 4)
        if self._irq_rose and self._wants_stop():
            self._stop_requested = True
            self.uc.emu_stop()
        return 1

    def _on_msr(self, reg: int, cp: Any) -> int:
        enc = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)
        handler = self._msr.get(enc)
        if handler is None:
            if enc in MMU_REGS:
                self._mmu = None  # Unicorn writes it after this hook returns
            return 0
        handler(cp.val)
        regs = self.regs
        regs.write(A.UC_ARM64_REG_PC, regs.read(A.UC_ARM64_REG_PC) + 4)
        if self._irq_rose and self._wants_stop():
            self._stop_requested = True
            self.uc.emu_stop()
        return 1

    def flush_tlb(self) -> None:
        """Drop every cached translation of this CPU's Unicorn TLB."""
        self.tlb_stale = False
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def _on_sys(self, uc: Uc, reg: int, cp: Any, _: object) -> int:
        """AT S1E1R/W, S1E0R/W (SYS #0, C7, C8, #0..3): a stage-1 walk into PAR_EL1.

        TLBI (SYS #op1, C8, Cm, #op2): Unicorn's own by-address invalidation misses
        entries filled through the virtual-TLB hook (a Linux fixmap remap read the old
        page), so every TLBI flushes this CPU's whole TLB, and the broadcast forms
        (Inner/Outer Shareable, CRm 1, 2, 3, 5) mark the other CPUs' TLBs stale.
        """
        if cp.op0 == 1 and cp.crn == 8:
            self.flush_tlb()
            if cp.crm in (1, 2, 3, 5):
                for other in self.machine.cpus:
                    if other is not self:
                        other.tlb_stale = True
            return 0
        if (cp.op0, cp.op1, cp.crn, cp.crm) != (1, 0, 7, 8) or cp.op2 > 3:
            return 0
        vaddr = int(uc.reg_read(reg)) if reg else 0
        access = UC_MEM_WRITE if cp.op2 & 1 else UC_MEM_READ
        pa = self.translate(vaddr, access)
        if pa is None:
            par = 1 | self.fault_status << 1 | 1 << 11  # F, FST, RES1
        else:
            desc = self._walk_desc
            attr = self.cp_reg(MAIR_EL1) >> (8 * (desc >> 2 & 7)) & 0xFF if self.cp_reg(SCTLR_EL1) & 1 else 0x44
            par = attr << 56 | pa & 0x000F_FFFF_FFFF_F000 | 1 << 11 | 1 << 9 | (desc >> 8 & 3) << 7
        self.set_cp_reg(PAR_EL1, par)
        uc.reg_write(A.UC_ARM64_REG_PC, uc.reg_read(A.UC_ARM64_REG_PC) + 4)
        return 1

    # == synchronous exceptions =======================================================
    def _on_intr(self, uc: Uc, intno: int, _: object) -> None:
        self._event = ("intr", intno)
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _: object) -> bool:
        self._fault = (address, access)
        self._fault_status = FSC_EXTERNAL  # no RAM or device at that physical address
        return False

    def _exception(self, intno: int) -> None:
        pc = self.pc
        if intno in (EXCP_UDEF, EXCP_HVC, EXCP_SMC):
            # Unicorn reports HVC/SMC (UNDEFINED at EL1 without EL2/EL3) with the PC either
            # on the instruction or after it, depending on how the block was translated.
            here = self._read_insn(pc)
            if here is not None and here & HVC_MASK in (HVC_BITS, SMC_BITS):
                self.pc = pc = pc + 4
                self._hypercall(pc, here)
                return
            prev = self._read_insn(pc - 4)
            if prev is not None and prev & HVC_MASK in (HVC_BITS, SMC_BITS):
                self._hypercall(pc, prev)
                return
            self.take_exception(VECTOR_SYNC, pc, esr=EC_UNKNOWN << 26 | 1 << 25)
        elif intno == EXCP_SWI:
            imm = (self._read_insn(pc - 4) or 0) >> 5 & 0xFFFF
            self.take_exception(VECTOR_SYNC, pc, esr=EC_SVC << 26 | 1 << 25 | imm)
        elif intno == EXCP_BKPT:
            imm = (self._read_insn(pc) or 0) >> 5 & 0xFFFF
            self.take_exception(VECTOR_SYNC, pc, esr=EC_BRK << 26 | 1 << 25 | imm)
        elif intno in (EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT):
            self._abort()
        else:
            raise GuestCrash(f"CPU{self.index}: unexpected exception {intno} at PC {pc:#x}")

    def _hypercall(self, pc: int, insn: int) -> None:
        """HVC/SMC: PSCI when the function ID is one, else the guest's own exception."""
        smc = insn & HVC_MASK == SMC_BITS
        args = [self.reg(r) for r in (A.UC_ARM64_REG_X0, A.UC_ARM64_REG_X1, A.UC_ARM64_REG_X2, A.UC_ARM64_REG_X3)]
        if (self.machine.psci_conduit == "smc") == smc:
            result = self.machine.psci_call(self.index, *args)
            if result is not None:
                if self.state is not CpuState.OFF:  # CPU_SUSPEND returns SUCCESS on wake-up
                    self.set_reg(A.UC_ARM64_REG_X0, result & 0xFFFF_FFFF_FFFF_FFFF)
                return
        # Not a PSCI call: with no EL2 or EL3 behind it, HVC and SMC are UNDEFINED at EL1
        # (Arm ARM C6.2.113, C6.2.247), as on QEMU's virt machine: an Unknown-reason
        # exception whose ELR is the instruction itself.
        self.take_exception(VECTOR_SYNC, pc - 4, esr=EC_UNKNOWN << 26 | 1 << 25)

    def _abort(self) -> None:
        address, access = self._fault or (0, 0)
        fsc, self._fault_status = self._fault_status, FSC_EXTERNAL
        self._fault = None
        pstate = self.reg(A.UC_ARM64_REG_PSTATE)
        low = (pstate >> 2 & 3) == 0
        if access in (UC_MEM_FETCH, UC_MEM_FETCH_UNMAPPED):
            ec = EC_IABT_LOW if low else EC_IABT_CUR
            iss = fsc
        else:
            ec = EC_DABT_LOW if low else EC_DABT_CUR
            iss = fsc | (1 << 6 if access in (UC_MEM_WRITE, UC_MEM_WRITE_UNMAPPED) else 0)
        self.machine.note_abort(self, address, access)
        self.take_exception(VECTOR_SYNC, self.pc, esr=ec << 26 | 1 << 25 | iss, far=address)

    def take_exception(self, kind: int, elr: int, esr: int | None = None, far: int | None = None) -> None:
        """Enter EL1h at VBAR_EL1 + offset (Arm ARM AArch64.TakeException)."""
        pstate = self.reg(A.UC_ARM64_REG_PSTATE)
        el, spsel = pstate >> 2 & 3, pstate & 1
        vbar = self.reg(A.UC_ARM64_REG_VBAR_EL1)
        base = 0x400 if el == 0 else (0x200 if spsel else 0x000)
        target = vbar + base + kind
        if self.pc == target and kind == VECTOR_SYNC:
            raise GuestCrash(f"CPU{self.index}: exception loop at the vector {target:#x} (ESR {esr or 0:#x})")
        if el == 0 or not spsel:  # leaving SP_EL0: bank it, switch to SP_EL1
            self.set_reg(A.UC_ARM64_REG_SP_EL0, self.reg(A.UC_ARM64_REG_SP))
        self.set_reg(A.UC_ARM64_REG_ELR_EL1, elr)
        self.set_cp_reg(SPSR_EL1, pstate & 0xFFFF_FFFF)
        if esr is not None:
            self.set_reg(A.UC_ARM64_REG_ESR_EL1, esr)
        if far is not None:
            self.set_reg(A.UC_ARM64_REG_FAR_EL1, far)
        self.set_reg(A.UC_ARM64_REG_PSTATE, (pstate & 0xF000_0000) | PSTATE_DAIF | EL1H)
        if el == 0:
            # Unicorn's PSTATE write does not rebuild its cached EL (hflags): without this
            # the handler would be translated as EL0 code and its first MRS be UNDEFINED.
            # A system-register write through CP_REG rebuilds them.
            self.set_cp_reg(SCTLR_EL1, self.cp_reg(SCTLR_EL1))
        if el == 0 or not spsel:
            self.set_reg(A.UC_ARM64_REG_SP, self.reg(A.UC_ARM64_REG_SP_EL1))
        self.pc = target
        self.state = CpuState.RUNNING
        self.machine.note_exception(self, kind, elr, esr)

    # == stage-1 translation ============================================================
    def _on_tlb_fill(self, uc: Uc, vaddr: int, access: int, entry: Any, _: object) -> bool:
        if vaddr & ~0xFFF == NEVER & ~0xFFF:
            entry.paddr, entry.perms = vaddr, UC_PROT_ALL  # Unicorn looks up the "until" address
            return True
        pa = self.translate(vaddr, access, entry)
        if pa is None:
            self._fault = (vaddr, access)
            self._fault_status = self.fault_status
            return False
        return True

    def translate(self, vaddr: int, access: int, entry: Any = None) -> int | None:
        """Guest virtual to physical under SCTLR_EL1/TCR_EL1/TTBRn_EL1, or None on a fault.

        On a fault, ``self.fault_status`` holds the DFSC/IFSC the abort reports (Arm ARM
        D17.2.40): translation fault (0b0001LL), access flag fault (0b0010LL) or
        permission fault (0b0011LL) at level LL, so an OS can demand-page, copy on write
        and age pages; permissions follow AP[2:1], UXN and PXN for the current EL.
        """
        vaddr &= 0xFFFF_FFFF_FFFF_FFFF
        sctlr, tcr, ttbr0, ttbr1 = self._mmu_regs()
        self._walk_level, self._walk_desc = -1, 0
        if not sctlr & 1:
            if entry is not None:
                entry.paddr, entry.perms = vaddr, UC_PROT_ALL
            return vaddr
        self.fault_status = FSC_TRANSLATION  # level 0 until the walk gets further
        upper = vaddr >> 63
        if upper:
            tsz, epd, tg = tcr >> 16 & 0x3F, tcr >> 23 & 1, {1: 14, 2: 12, 3: 16}.get(tcr >> 30 & 3, 12)
            ttbr = ttbr1
        else:
            tsz, epd, tg = tcr & 0x3F, tcr >> 7 & 1, {0: 12, 1: 16, 2: 14}.get(tcr >> 14 & 3, 12)
            ttbr = ttbr0
        ia = 64 - tsz
        top = vaddr >> ia
        if epd or top != ((1 << tsz) - 1 if upper else 0):
            return None
        stride = tg - 3
        levels = -(-(ia - tg) // stride)
        table = ttbr & 0x0000_FFFF_FFFF_FFFE
        mem = self.machine.memory
        level = 4 - levels
        while True:
            shift = tg + stride * (3 - level)
            index = (vaddr >> shift) & ((1 << (stride if level > 4 - levels else ia - shift)) - 1)
            self._walk_level = level
            self.fault_status = FSC_TRANSLATION | max(level, 0)
            try:
                desc = mem.read64(table + index * 8)
            except Exception:
                self.fault_status = FSC_EXTERNAL_WALK | max(level, 0)
                return None
            if not desc & 1:
                return None
            if level < 3 and desc & 2:  # table
                table = desc & 0x0000_FFFF_FFFF_F000 & ~((1 << tg) - 1)
                level += 1
                continue
            if level == 3 and not desc & 2:
                return None  # reserved encoding at level 3
            break
        if not desc >> 10 & 1:
            self.fault_status = FSC_ACCESS_FLAG | level
            return None
        out = desc & 0x0000_FFFF_FFFF_F000 & ~((1 << shift) - 1)
        pa = out | (vaddr & ((1 << shift) - 1))
        self._walk_desc = desc
        return self._permit(pa, desc, level, access, entry)

    def _permit(self, pa: int, desc: int, level: int, access: int, entry: Any) -> int | None:
        """Apply a final descriptor's permissions for the current EL (AP[2:1], UXN, PXN)."""
        el0 = (self.reg(A.UC_ARM64_REG_PSTATE) >> 2 & 3) == 0
        ap1, read_only = desc >> 6 & 1, desc >> 7 & 1
        if el0:
            readable, writable = bool(ap1), bool(ap1) and not read_only
            executable = not desc >> 54 & 1
        else:
            readable, writable = True, not read_only
            executable = not desc >> 53 & 1 and not (ap1 and not read_only)  # EL0-writable: PXN implied
        perms = (1 if readable else 0) | (2 if writable else 0) | (4 if executable else 0)
        if entry is not None:
            entry.paddr = pa
            entry.perms = perms
        wanted = {UC_MEM_WRITE: 2, UC_MEM_FETCH: 4}.get(access, 1)
        if not perms & wanted:
            self.fault_status = FSC_PERMISSION | level
            return None
        return pa
