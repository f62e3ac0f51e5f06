"""Direct calls into Unicorn's C API for the CPU's hottest crossings.

Every MMIO access and every ICC_* system-register access crosses from Unicorn into
Python. The Python binding puts generic layers on that path that cost more than the work
itself: ``reg_read``/``reg_write`` choose a register class on each call, and every hook
runs through a decorator, plus for MRS/MSR a ``ctypes.cast`` and a named tuple per call.
Measured on this machine (bench/run.py, guests/src/bench_msi.c), an MRS answered through
the binding took about 16 us in a tight loop and about 4 us through these functions.

Errors behave as the binding's: an exception in a callback stops emulation and
``Uc.emu_start`` re-raises it. This module relies on the binding's internals of the
pinned unicorn 2.1.4 (pyproject.toml): ``_uch``, ``uclib``, ``_hook_exception``,
``_callbacks``, ``_mmio_callbacks``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_INSN
from unicorn import UcError as _UcError  # type: ignore[attr-defined]
from unicorn.unicorn_py3 import unicorn as _binding
from unicorn.unicorn_py3.arch.arm64 import HOOK_INSN_SYS_CFUNC, UcRegCP64

# The binding is only partly annotated: its engine and error types are used as Any here.
Uc = Any
UcError: Any = _UcError
uclib: Any = _binding.uclib
uc_hook_h: Any = _binding.uc_hook_h  # type: ignore[attr-defined]
MMIO_READ_CFUNC: Any = _binding.MMIO_READ_CFUNC
MMIO_WRITE_CFUNC: Any = _binding.MMIO_WRITE_CFUNC

SysregHook = Callable[[int, Any], int]  # (destination/source register id, UcRegCP64) -> 1 handled, 0 not


def _fail(uc: Uc, exc: BaseException) -> None:
    """What the binding's callback wrapper does: keep the first error, stop emulation."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()


class RegFile:
    """64-bit register reads and writes of one engine (general, PC, PSTATE, *_EL1 ids).

    Not for CP_REG or vector registers, which take other value types. Not thread-safe:
    one instance per engine, used by the thread that runs it.
    """

    def __init__(self, uc: Uc) -> None:
        self._uch = uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        self._read = uclib.uc_reg_read
        self._write = uclib.uc_reg_write

    def read(self, reg: int) -> int:
        status = self._read(self._uch, reg, self._ref)
        if status:
            raise UcError(status, reg)
        return int(self._value.value)

    def write(self, reg: int, value: int) -> None:
        self._value.value = value  # wraps to 64 bits, as the binding's c_uint64(value)
        status = self._write(self._uch, reg, self._ref)
        if status:
            raise UcError(status, reg)


def hook_sysreg(uc: Uc, insn: int, callback: SysregHook) -> int:
    """UC_HOOK_INSN for ``insn`` (UC_ARM64_INS_MRS/MSR/SYS): ``callback(reg, cp)``."""
    from_address = UcRegCP64.from_address

    def cb(handle: int, reg: int, pcp: int, user: int) -> int:
        try:
            return callback(reg, from_address(pcp))
        except BaseException as e:
            _fail(uc, e)
            return 1

    fptr = HOOK_INSN_SYS_CFUNC(cb)
    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, fptr, ctypes.c_void_p(0),
                               ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))  # fmt: skip
    if status:
        raise UcError(status)
    uc._callbacks[handle.value] = fptr  # keep the C callback alive with the engine
    return int(handle.value)


def mmio_map(
    uc: Uc, base: int, size: int, read: Callable[[int, int], int], write: Callable[[int, int, int], None]
) -> None:
    """``Uc.mmio_map`` without the per-access wrappers: ``read(offset, size)``,
    ``write(offset, size, value)``."""

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
