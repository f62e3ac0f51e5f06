"""vgic inside a Unicorn AArch64 engine: the GIC's MMIO, the ICC_* registers, IRQ entry.

For a rehosting tool that runs firmware on its own Unicorn (or Qiling, whose ``ql.uc`` is
one), a few lines give the guest a GICv3 with its ITS (docs/embedding.md)::

    gic = Gic(memory, GicConfig(num_cpus=1))
    att = attach(uc, gic, 0)        # GICD, GICR and ITS frames mapped, ICC_* hooked
    while ...:
        uc.emu_start(pc, end, count=10_000)
        att.take_interrupt()        # an unmasked pending IRQ/FIQ: enter VBAR_EL1 + offset
        pc = att.regs.read(PC)

It also holds the pieces the virt machine's CPUs are built from (vgic.machine.cpu):

* :class:`RegFile`, :func:`map_mmio`: direct calls into Unicorn's C API for register
  access and MMIO callbacks, without the binding's per-call layers.
* :class:`Sysregs`: MRS/MSR/SYS dispatch by encoding. With the native helper
  (vgic.ucnative) only the registers given a handler cross into Python; without it one
  Python hook sees every system-register instruction.
* :func:`prepare_el1`: the security and register-width state under which Unicorn's own
  MMU (``UC_TLB_CPU``) walks EL1's AArch64 tables.
* :func:`enter_exception`: AArch64.TakeException to EL1, which Unicorn never performs.
* :class:`ExceptionInfo`: the syndrome and fault address of the exception Unicorn raised.

Every hook that answers a register steps the PC itself: Unicorn skips the instruction
when a hook returns 1 but leaves the PC on it (platform behaviour of Unicorn 2.1).
This module relies on internals of the pinned unicorn 2.1.4 binding (``_uch``,
``_hook_exception``, ``_callbacks``, ``_mmio_callbacks``).
"""

from __future__ import annotations

import ctypes
import functools
import struct
import weakref
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN, UC_HOOK_INTR
from unicorn import UcError as _UcError  # type: ignore[attr-defined]
from unicorn import arm64_const as A
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.arch.arm64 import HOOK_INSN_SYS_CFUNC, UcRegCP64

from vgic import ucnative
from vgic.gic import Gic
from vgic.gicv3.cpu_interface import SYSREG_ENCODINGS

# The binding is only partly annotated: its engine and error types are used as Any here.
Uc = Any
UcError: Any = _UcError
uclib: Any = _binding.uclib
uc_hook_h: Any = _binding.uc_hook_h  # type: ignore[attr-defined]
MMIO_READ_CFUNC: Any = _binding.MMIO_READ_CFUNC
MMIO_WRITE_CFUNC: Any = _binding.MMIO_WRITE_CFUNC
HOOK_CODE_CFUNC: Any = _binding.HOOK_CODE_CFUNC

Enc = tuple[int, int, int, int, int]  # (op0, op1, CRn, CRm, op2) of a system register
CpEnc = tuple[int, int, int, int, int]  # (CRn, CRm, op0, op1, op2): Unicorn's CP_REG order

PC, PSTATE = A.UC_ARM64_REG_PC, A.UC_ARM64_REG_PSTATE
PSTATE_F, PSTATE_I, PSTATE_DAIF = 1 << 6, 1 << 7, 0xF << 6
EL1H = 0b0101
VECTOR_SYNC, VECTOR_IRQ, VECTOR_FIQ = 0x000, 0x080, 0x100

SCTLR_EL1: CpEnc = (1, 0, 3, 0, 0)
SPSR_EL1: CpEnc = (4, 0, 3, 0, 0)
SCR_EL3: CpEnc = (1, 1, 3, 6, 0)
HCR_EL2: CpEnc = (1, 1, 3, 4, 0)
SCR_NS_RW_HCE = 0x531  # NS, RES1 bits 5:4, HCE, RW (Arm ARM D19.2.117)
HCR_RW = 1 << 31  # EL1 is AArch64 (D19.2.48)


def _fail(uc: Uc, exc: BaseException) -> None:
    """What the binding's callback wrapper does: keep the first error, stop emulation."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()


class _CpReg(ctypes.Structure):
    _fields_ = (("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64))  # fmt: skip


class RegFile:
    """Register reads and writes of one engine through Unicorn's C API.

    ``read``/``write`` take 64-bit registers (X<n>, SP, PC, PSTATE, *_EL1 ids);
    ``read_cp``/``write_cp`` any system register by its (CRn, CRm, op0, op1, op2).
    A CP write also makes Unicorn rebuild its cached execution state (EL, MMU index),
    which a PSTATE write does not. One instance per engine, used by the thread running it.
    """

    def __init__(self, uc: Uc) -> None:
        self._uch = uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        self._cp = _CpReg()
        self._cp_ref = ctypes.byref(self._cp)
        self._read = uclib.uc_reg_read
        self._write = uclib.uc_reg_write

    def read(self, reg: int) -> int:
        self._value.value = 0  # 32-bit registers (PSTATE) fill only the low half
        status = self._read(self._uch, reg, self._ref)
        if status:
            raise UcError(status, reg)
        return int(self._value.value)

    def write(self, reg: int, value: int) -> None:
        self._value.value = value  # wraps to 64 bits, as the binding's c_uint64(value)
        status = self._write(self._uch, reg, self._ref)
        if status:
            raise UcError(status, reg)

    def _set_cp(self, enc: CpEnc) -> None:
        cp = self._cp
        cp.crn, cp.crm, cp.op0, cp.op1, cp.op2 = enc

    def read_cp(self, enc: CpEnc) -> int:
        self._set_cp(enc)
        status = self._read(self._uch, A.UC_ARM64_REG_CP_REG, self._cp_ref)
        if status:
            raise UcError(status, enc)
        return int(self._cp.val)

    def write_cp(self, enc: CpEnc, value: int) -> None:
        self._set_cp(enc)
        self._cp.val = value & 0xFFFF_FFFF_FFFF_FFFF
        status = self._write(self._uch, A.UC_ARM64_REG_CP_REG, self._cp_ref)
        if status:
            raise UcError(status, enc)


def map_mmio(
    uc: Uc, base: int, size: int, read: Callable[[int, int], int], write: Callable[[int, int, int], None]
) -> None:
    """``Uc.mmio_map`` without the per-access wrappers: ``read(offset, size)``,
    ``write(offset, size, value)``. A 64-bit access arrives as two 32-bit halves."""

    def read_cb(handle: int, offset: int, size: int, user: int) -> int:
        try:
            return read(offset, size)
        except BaseException as e:
            _fail(uc, e)
            return 0

    def write_cb(handle: int, offset: int, size: int, value: int, user: int) -> None:
        try:
            write(offset, size, value)
        except BaseException as e:
            _fail(uc, e)

    read_fptr, write_fptr = MMIO_READ_CFUNC(read_cb), MMIO_WRITE_CFUNC(write_cb)
    status = uclib.uc_mmio_map(uc._uch, base, size, read_fptr, None, write_fptr, None)
    if status:
        raise UcError(status)
    uc._mmio_callbacks[(base, base + size)] = (read_fptr, write_fptr)


def _hook_add(uc: Uc, kind: int, fptr: Any, user: Any, *extra: Any) -> int:
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.cast(fptr, ctypes.c_void_p), user,
                               ctypes.c_uint64(1), ctypes.c_uint64(0), *extra)  # fmt: skip
    if status:
        raise UcError(status)
    uc._callbacks[handle.value] = fptr  # kept alive with the engine
    return int(handle.value)


def prepare_el1(uc: Uc, regs: RegFile | None = None) -> None:
    """Put the engine's EL1 in the Non-secure, AArch64 state its MMU walks correctly.

    Unicorn's CPUs reset with SCR_EL3 = 0: Secure, and RW=0, so its own table walker
    (``UC_TLB_CPU``) takes EL1 for AArch32 and reads 32-bit descriptors. With
    SCR_EL3 = NS|RW|HCE and HCR_EL2.RW = 1, written as coprocessor registers (which also
    rebuilds Unicorn's cached EL state), EL1 walks AArch64 tables with every granule;
    HVC and SMC then arrive as such (EXCP_HVC/EXCP_SMC) with their syndromes. Neither
    register is reachable from EL1, so a guest cannot undo this.
    """
    regs = regs or RegFile(uc)
    regs.write_cp(SCR_EL3, SCR_NS_RW_HCE)
    regs.write_cp(HCR_EL2, HCR_RW)


def enter_exception(regs: RegFile, vector: int, elr: int, esr: int | None = None, far: int | None = None) -> int:
    """Take an exception to EL1 (Arm ARM J1 AArch64.TakeException); returns the new PC.

    ELR_EL1 = ``elr``, SPSR_EL1 = PSTATE, ESR_EL1/FAR_EL1 when given; PSTATE becomes EL1h
    with D, A, I, F masked (NZCV kept) and the stack pointer switches to SP_EL1; the PC
    is VBAR_EL1 + 0x000 (current EL, SP_EL0), 0x200 (current EL, SP_ELx) or 0x400 (lower
    EL), + ``vector`` (0x000 synchronous, 0x080 IRQ, 0x100 FIQ).
    """
    pstate = regs.read(PSTATE)
    el, spsel = pstate >> 2 & 3, pstate & 1
    target = regs.read(A.UC_ARM64_REG_VBAR_EL1) + (0x400 if el == 0 else (0x200 if spsel else 0)) + vector
    if el == 0 or not spsel:  # leaving SP_EL0: bank it
        regs.write(A.UC_ARM64_REG_SP_EL0, regs.read(A.UC_ARM64_REG_SP))
    regs.write(A.UC_ARM64_REG_ELR_EL1, elr)
    if esr is not None:
        regs.write(A.UC_ARM64_REG_ESR_EL1, esr)
    if far is not None:
        regs.write(A.UC_ARM64_REG_FAR_EL1, far)
    regs.write(PSTATE, (pstate & 0xF000_0000) | PSTATE_DAIF | EL1H)
    # SPSR through CP_REG last: the coprocessor write rebuilds Unicorn's cached EL and MMU
    # index, which the PSTATE write above does not (from EL0 the handler would otherwise
    # be translated as EL0 code).
    regs.write_cp(SPSR_EL1, pstate & 0xFFFF_FFFF)
    if el == 0 or not spsel:
        regs.write(A.UC_ARM64_REG_SP, regs.read(A.UC_ARM64_REG_SP_EL1))
    regs.write(PC, target)
    return target


class Sysregs:
    """MRS/MSR/SYS of one engine dispatched by encoding to Python handlers.

    ``on_read(enc, fn)``: MRS answered with ``fn()``; ``on_write(enc, fn)``: MSR handled
    by ``fn(value)``; ``on_sys(enc, fn)``: SYS given ``fn(Xt)``, which returns True when
    it performed the operation (the instruction is skipped) or False to let Unicorn run
    it. An answered MRS writes its register and steps the PC; so does a handled MSR/SYS.
    Encodings without a handler stay Unicorn's. ``after`` (if set) runs after each
    handled access. With the native helper (``native`` is not False and vgic.ucnative
    loads), unhandled encodings never leave C; otherwise a Python hook looks each up.
    """

    def __init__(self, uc: Uc, regs: RegFile | None = None, native: bool | None = None) -> None:
        self.uc = uc
        self.regs = regs or RegFile(uc)
        self._reads: dict[int, Callable[[], int]] = {}
        self._writes: dict[int, Callable[[int], None]] = {}
        self._sys: dict[int, Callable[[int], bool]] = {}
        self.after: Callable[[], None] | None = None
        self._watching = False
        self._code_maps: list[Any] = []  # the bitmaps of code pages the helper writes
        lib = ucnative.load() if native is not False else None
        self.block: ucnative.CpuBlock | None = None
        if lib is not None:
            self._install_native(lib)
        else:
            self._install_python()

    @property
    def native(self) -> bool:
        return self.block is not None

    def on_read(self, enc: Enc, fn: Callable[[], int]) -> None:
        key = ucnative.encoding(*enc)
        self._reads[key] = fn
        self._own(ucnative.MRS, key)

    def on_write(self, enc: Enc, fn: Callable[[int], None]) -> None:
        key = ucnative.encoding(*enc)
        self._writes[key] = fn
        self._own(ucnative.MSR, key)

    def on_sys(self, enc: Enc, fn: Callable[[int], bool]) -> None:
        key = ucnative.encoding(*enc)
        self._sys[key] = fn
        self._own(ucnative.SYS, key)

    def _own(self, kind: int, key: int) -> None:
        if self.block is not None:
            self.block.owned[kind][key >> 3] |= 1 << (key & 7)

    # -- the native path: C filters, Python answers --------------------------------------
    def _install_native(self, lib: ctypes.CDLL) -> None:
        uc, reads, writes, sys_ops = self.uc, self._reads, self._writes, self._sys

        def on_mrs(key: int, value: Any) -> int:
            try:
                value[0] = reads[key]() & 0xFFFF_FFFF_FFFF_FFFF
                if self.after is not None:
                    self.after()
            except BaseException as e:
                _fail(uc, e)
            return 1

        def on_msr(key: int, value: int) -> int:
            try:
                writes[key](value)
                if self.after is not None:
                    self.after()
            except BaseException as e:
                _fail(uc, e)
            return 1

        def on_sys(key: int, value: int) -> int:
            try:
                done = sys_ops[key](value)
                if self.after is not None:
                    self.after()
                return 1 if done else 0
            except BaseException as e:
                _fail(uc, e)
                return 1

        block = self.block = ucnative.CpuBlock()
        block.on_mrs, block.on_msr, block.on_sys = ucnative.READ_CB(on_mrs), ucnative.WRITE_CB(on_msr), ucnative.WRITE_CB(on_sys)  # fmt: skip
        block.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p)
        block.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p)
        block.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p)
        block.vmem_read = ctypes.cast(uclib.uc_vmem_read, ctypes.c_void_p)
        block.vmem_translate = ctypes.cast(uclib.uc_vmem_translate, ctypes.c_void_p)
        block.mem_write = ctypes.cast(uclib.uc_mem_write, ctypes.c_void_p)
        block.reg_pc, block.reg_pstate = PC, PSTATE
        block.check_every = block.countdown = 1024
        block.code_generation = 1
        block.last_vpage = 2**64 - 1
        block.deadline_ns = 2**63 - 1
        user = ctypes.byref(block)
        for insn, fn in ((A.UC_ARM64_INS_MRS, lib.vgic_mrs_hook), (A.UC_ARM64_INS_MSR, lib.vgic_msr_hook),
                         (A.UC_ARM64_INS_SYS, lib.vgic_sys_hook)):  # fmt: skip
            _hook_add(uc, UC_HOOK_INSN, fn, user, ctypes.c_int(insn))
        self._lib = lib
        uc._vgic_sysregs = self  # the block (and its callbacks) live as long as the engine

    def zero_blocks_in(self, ram: list[tuple[int, int]]) -> bool:
        """Let the native helper perform DC ZVA into these (base, size) RAM ranges itself
        where no code ran (see vgic/ucnative.c); False without the helper: Unicorn does
        them all. The helper learns where code runs from the block hook, which must be
        installed, and from now on only: call this with no translated code (at start, or
        right after a translation flush)."""
        if self.block is None:
            return False
        if not self._watching:
            raise RuntimeError("DC ZVA in the helper needs the block hook (watch_blocks) first")
        block = self.block
        block.ram_count = 0
        self._code_maps.clear()
        for base, size in ram[: ucnative.RAM_REGIONS]:
            code_map = (ctypes.c_uint8 * ((size >> 15) + 1))()
            self._code_maps.append(code_map)
            i = block.ram_count
            block.ram_base[i], block.ram_size[i] = base, size
            block.code_map[i] = ctypes.addressof(code_map)
            block.ram_count += 1
        return True

    def mappings_changed(self) -> None:
        """The caller changed translation state (TTBRn, TCR, SCTLR, a TLBI) behind the
        hooks' back: the helper's cache of code pages by virtual address is dropped."""
        block = self.block
        if block is not None:
            block.last_vpage = 2**64 - 1
            block.code_generation += 1
            if block.code_generation == 4096:  # as forget_mappings in the helper
                block.code_generation = 1
                ctypes.memset(ctypes.addressof(block.code_cache), 0, ctypes.sizeof(block.code_cache))

    def watch_blocks(self) -> ucnative.CpuBlock:
        """Install the native block hook (slice deadline, stop on unmask, stop on request)."""
        if self.block is None:
            raise RuntimeError("the block hook needs the native helper")
        _hook_add(self.uc, UC_HOOK_BLOCK, self._lib.vgic_block_hook, ctypes.byref(self.block))
        self._watching = True
        return self.block

    # -- the Python path ------------------------------------------------------------------
    def _install_python(self) -> None:
        uc, regs = self.uc, self.regs
        from_address = UcRegCP64.from_address
        reads, writes, sys_ops = self._reads, self._writes, self._sys

        def key(cp: Any) -> int:
            return ucnative.encoding(cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)

        def on_mrs(handle: int, reg: int, pcp: int, user: int) -> int:
            try:
                fn = reads.get(key(from_address(pcp)))
                if fn is None:
                    return 0
                regs.write(reg, fn())
                regs.write(PC, regs.read(PC) + 4)
                if self.after is not None:
                    self.after()
            except BaseException as e:
                _fail(uc, e)
            return 1

        def on_msr(handle: int, reg: int, pcp: int, user: int) -> int:
            try:
                cp = from_address(pcp)
                fn = writes.get(key(cp))
                if fn is None:
                    return 0
                fn(cp.val)
                regs.write(PC, regs.read(PC) + 4)
                if self.after is not None:
                    self.after()
            except BaseException as e:
                _fail(uc, e)
            return 1

        def on_sys(handle: int, reg: int, pcp: int, user: int) -> int:
            try:
                fn = sys_ops.get(key(from_address(pcp)))
                if fn is None:
                    return 0
                done = fn(regs.read(reg) if reg else 0)
                if done:
                    regs.write(PC, regs.read(PC) + 4)
                if self.after is not None:
                    self.after()
                return 1 if done else 0
            except BaseException as e:
                _fail(uc, e)
                return 1

        for insn, cb in ((A.UC_ARM64_INS_MRS, on_mrs), (A.UC_ARM64_INS_MSR, on_msr), (A.UC_ARM64_INS_SYS, on_sys)):
            _hook_add(uc, UC_HOOK_INSN, HOOK_INSN_SYS_CFUNC(cb), None, ctypes.c_int(insn))


class ExceptionInfo:
    """The syndrome and virtual address of the exception Unicorn just raised.

    Unicorn stops in UC_HOOK_INTR instead of entering the guest's vector, and ESR_ELx and
    FAR_ELx stay unwritten; what QEMU's exception entry would have written is left in the
    CPU state (``env->exception``: syndrome, fsr, vaddress, target_el), which no register
    id reads. ``uc_context_save`` copies that state; where the fields lie in the copy is
    found once per process by raising two known prefetch aborts in a scratch engine
    (:func:`_exception_offset`), so no structure layout is assumed.
    """

    def __init__(self, uc: Uc) -> None:
        self._uch = uc._uch
        self._ctx = ctypes.c_void_p()
        status = uclib.uc_context_alloc(uc._uch, ctypes.byref(self._ctx))
        if status:
            raise UcError(status)
        weakref.finalize(self, uclib.uc_context_free, self._ctx)
        self._offset = _exception_offset()

    def read(self) -> tuple[int, int, int]:
        """(syndrome, vaddress, target EL) of the last exception the engine raised."""
        status = uclib.uc_context_save(self._uch, self._ctx)
        if status:
            raise UcError(status)
        syndrome, _fsr, vaddress, target_el = struct.unpack(
            "<IIQI", ctypes.string_at(int(self._ctx.value or 0) + self._offset, 20)
        )
        return syndrome, vaddress, target_el


@functools.cache
def _exception_offset() -> int:
    """Where ``env->exception`` lies in a saved context (see :class:`ExceptionInfo`)."""
    from unicorn import UC_ARCH_ARM64, UC_MODE_ARM
    from unicorn.unicorn_py3.unicorn import Uc as _Uc

    uc: Any = _Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(A.UC_CPU_ARM64_A57)
    uc.ctl_exits_enabled(True)  # no "until" address, which Unicorn would translate too
    table = 0x4000_0000
    uc.mem_map(table, 0x1000)  # an all-invalid level-1 table
    regs = RegFile(uc)
    prepare_el1(uc, regs)
    regs.write_cp((2, 0, 3, 0, 2), 25)  # TCR_EL1: T0SZ=25 (39-bit VA), 4K granule
    regs.write(A.UC_ARM64_REG_TTBR0_EL1, table)
    regs.write_cp(SCTLR_EL1, regs.read_cp(SCTLR_EL1) | 1)
    uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: u.emu_stop())
    size = int(uclib.uc_context_size(uc._uch))
    ctx = ctypes.c_void_p()
    uclib.uc_context_alloc(uc._uch, ctypes.byref(ctx))
    found: set[int] | None = None
    try:
        for va in (0x12_3456_78A0, 0x23_4567_89B4):
            uc.emu_start(va, 0)  # the first fetch faults: a prefetch abort
            uclib.uc_context_save(uc._uch, ctx)
            data = ctypes.string_at(int(ctx.value or 0), size)
            hits = set()
            needle = struct.pack("<Q", va)
            at = data.find(needle)
            while at >= 8:
                syndrome, _fsr = struct.unpack_from("<II", data, at - 8)
                (target_el,) = struct.unpack_from("<I", data, at + 8) if at + 12 <= size else (0,)
                if syndrome >> 26 == 0x21 and target_el == 1:  # instruction abort, same EL
                    hits.add(at - 8)
                at = data.find(needle, at + 1)
            found = hits if found is None else found & hits
    finally:
        uclib.uc_context_free(ctx)
    if not found or len(found) != 1:
        raise RuntimeError("this Unicorn build does not keep the exception syndrome where vgic finds it")
    return found.pop()


def translate(uc: Uc, address: int, prot: int) -> int | None:
    """Virtual to physical through Unicorn's MMU at the current EL, for an access of kind
    ``prot`` (UC_PROT_READ/WRITE/EXEC); None when it would fault. Never raises into
    the guest: it only probes."""
    pa = ctypes.c_uint64()
    status = uclib.uc_vmem_translate(uc._uch, ctypes.c_uint64(address & 0xFFFF_FFFF_FFFF_FFFF), ctypes.c_int(prot),
                                     ctypes.byref(pa))  # fmt: skip
    return None if status else int(pa.value)


def read_code(uc: Uc, address: int) -> int | None:
    """The instruction word at virtual ``address`` through Unicorn's MMU, or None."""
    word = ctypes.c_uint32()
    status = uclib.uc_vmem_read(uc._uch, ctypes.c_uint64(address & 0xFFFF_FFFF_FFFF_FFFF), ctypes.c_int(4),
                                ctypes.byref(word), ctypes.c_size_t(4))  # fmt: skip
    return None if status else int(word.value)


class GicAttachment:
    """One CPU of a :class:`~vgic.gic.Gic` wired into a Unicorn engine.

    ``cpu`` is the GIC's CPU interface; ``irq_pending``/``fiq_pending`` its lines;
    :meth:`take_interrupt` enters the guest's IRQ or FIQ vector when a line is up and
    PSTATE does not mask it. ``sysregs`` takes more handlers (a timer, say). With
    ``stop_on_interrupt``, an ICC_* access after which an interrupt can be taken (an
    SGI to this CPU, an EOI that uncovers the next one, a PMR write) stops emulation
    right after the instruction, so the embedder's loop takes it at once.
    """

    def __init__(self, uc: Uc, gic: Gic, cpu_index: int, map_regions: bool = True, native: bool | None = None,
                 stop_on_interrupt: bool = True) -> None:  # fmt: skip
        self.uc = uc
        self.gic = gic
        self.cpu = gic.cpus[cpu_index]
        self.regs = RegFile(uc)
        self.sysregs = Sysregs(uc, self.regs, native)
        for enc, name in SYSREG_ENCODINGS.items():
            self.sysregs.on_read(enc, functools.partial(self.cpu.read_sysreg, name))
            self.sysregs.on_write(enc, functools.partial(self.cpu.write_sysreg, name))
        if stop_on_interrupt:
            self.sysregs.after = self._stop_if_interrupt
        if map_regions:
            for base, size, read, write in gic.regions:
                map_mmio(uc, base, size, read, write)

    @property
    def irq_pending(self) -> bool:
        return self.cpu.irq_level

    @property
    def fiq_pending(self) -> bool:
        return self.cpu.fiq_level

    def interrupt_vector(self) -> int | None:
        """VECTOR_FIQ or VECTOR_IRQ if one can be taken now (FIQ first), else None."""
        if not (self.cpu.irq_level or self.cpu.fiq_level):
            return None
        pstate = self.regs.read(PSTATE)
        if self.cpu.fiq_level and not pstate & PSTATE_F:
            return VECTOR_FIQ
        if self.cpu.irq_level and not pstate & PSTATE_I:
            return VECTOR_IRQ
        return None

    def _stop_if_interrupt(self) -> None:
        if self.interrupt_vector() is not None:
            self.uc.emu_stop()  # the hook has stepped the PC: nothing runs twice

    def take_interrupt(self) -> bool:
        """Enter the IRQ/FIQ vector if an interrupt can be taken; call between runs.

        ELR_EL1 is the current PC, the instruction the interrupt preempts."""
        vector = self.interrupt_vector()
        if vector is None:
            return False
        enter_exception(self.regs, vector, self.regs.read(PC))
        return True


def attach(uc: Uc, gic: Gic, cpu_index: int, map_regions: bool = True) -> GicAttachment:
    """Wire CPU ``cpu_index`` of ``gic`` into ``uc`` (an AArch64 engine at EL1).

    Maps the GIC's MMIO frames (GICD, GICR, each ITS: ``gic.regions``) unless
    ``map_regions`` is False (an SMP embedder maps them in each CPU's engine), and hooks
    the ICC_* system registers. Guest RAM that the GIC reads (ITS tables, LPI tables)
    must be the GIC's :class:`~vgic.memory.GuestMemory`: map each of its regions with
    ``uc.mem_map_ptr(region.base, region.size, UC_PROT_ALL, region.address)``, or build
    it over buffers you own (``GuestMemory.add_ram(base, size, buffer)``).
    """
    return GicAttachment(uc, gic, cpu_index, map_regions)
