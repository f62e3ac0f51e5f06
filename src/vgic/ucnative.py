"""vgic's native helper for Unicorn: built on first use with the system C compiler.

``ucnative.c`` holds the hooks that run for every system-register instruction and at the
start of every translated block (see its header). Here it is compiled once into a shared
library in the user's cache directory (``$VGIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/vgic``,
else ``~/.cache/vgic``), named after a hash of the source and the platform, and loaded
with ctypes. It has no build-time dependency: no Python headers, no Unicorn headers; the
Unicorn functions it calls are handed over as pointers from the loaded binding.

:func:`load` returns None when there is no compiler, the build fails, or
``VGIC_NATIVE=0`` is set; callers then use their pure-Python paths, so ``pip install
vgic`` works without a compiler. Measured here (bench/run.py and docs/machine.md): an
MRS of a register vgic does not own costs about 8 ns through the filter against 1.8 us
through a Python hook; the block hook costs about 2 ns per block, nearly all of it
Unicorn's call of it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

MRS, MSR, SYS = 0, 1, 2
STOP_NONE, STOP_DEADLINE, STOP_UNMASKED, STOP_REQUESTED, STOP_WAITING = 0, 1, 2, 3, 4
HINT_CACHE = 256
RAM_REGIONS = 8
CODE_CACHE = 512

READ_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64))
WRITE_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64)


class CpuBlock(ctypes.Structure):
    """``struct vgic_cpu``: the helper's per-engine state, shared with Python."""

    _fields_ = (
        ("waiting", ctypes.c_uint32),
        ("yield_on_wait", ctypes.c_uint32),
        ("stop_now", ctypes.c_uint32),
        ("wake_mask", ctypes.c_uint32),
        ("countdown", ctypes.c_uint32),
        ("check_every", ctypes.c_uint32),
        ("stop_reason", ctypes.c_uint32),
        ("ram_count", ctypes.c_uint32),
        ("zva_count", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("code_generation", ctypes.c_uint64),
        ("last_vpage", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("deadline_ns", ctypes.c_int64),
        ("reg_pc", ctypes.c_int32),
        ("reg_pstate", ctypes.c_int32),
        ("on_mrs", READ_CB),
        ("on_msr", WRITE_CB),
        ("on_sys", WRITE_CB),
        ("reg_read", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
        ("vmem_read", ctypes.c_void_p),
        ("vmem_translate", ctypes.c_void_p),
        ("mem_write", ctypes.c_void_p),
        ("code_cache", ctypes.c_uint64 * CODE_CACHE),
        ("hint_key", ctypes.c_uint64 * HINT_CACHE),
        ("hint_wait", ctypes.c_uint8 * HINT_CACHE),
        ("ram_base", ctypes.c_uint64 * RAM_REGIONS),
        ("ram_size", ctypes.c_uint64 * RAM_REGIONS),
        ("code_map", ctypes.c_void_p * RAM_REGIONS),
        ("owned", (ctypes.c_uint8 * 8192) * 3),
    )


def encoding(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The 16-bit key ``op0:op1:CRn:CRm:op2`` the helper's bitmaps use."""
    return (op0 & 3) << 14 | (op1 & 7) << 11 | (crn & 15) << 7 | (crm & 15) << 3 | (op2 & 7)


def _cache_dir() -> Path:
    if d := os.environ.get("VGIC_CACHE_DIR"):
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vgic"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc):
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _build(source: bytes, target: Path) -> bool:
    cc = _compiler()
    if cc is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "ucnative.c"
        out = Path(tmp) / target.name
        src.write_bytes(source)
        try:
            p = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)],
                               capture_output=True, timeout=120)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return False
        if p.returncode != 0 or not out.exists():
            return False
        os.replace(out, target)  # atomic: concurrent builders each install a whole file
    return True


_lib: ctypes.CDLL | None = None
_tried = False


def load() -> ctypes.CDLL | None:
    """The helper library, built if needed; None when it cannot be had (see module doc)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("VGIC_NATIVE", "1") == "0":
        return None
    try:
        source = resources.files("vgic").joinpath("ucnative.c").read_bytes()
        key = hashlib.sha256(source + platform.machine().encode() + platform.system().encode()).hexdigest()[:16]
        target = _cache_dir() / f"ucnative-{key}.so"
        if not target.exists() and not _build(source, target):
            return None
        lib = ctypes.CDLL(str(target))
        for fn in (lib.vgic_cpu_size, lib.vgic_cpu_offset_of_owned, lib.vgic_cpu_offset_of_mem_write):
            fn.restype = ctypes.c_size_t
        if (lib.vgic_cpu_size(), lib.vgic_cpu_offset_of_owned(), lib.vgic_cpu_offset_of_mem_write()) != (
            ctypes.sizeof(CpuBlock), CpuBlock.owned.offset, CpuBlock.mem_write.offset,
        ):  # fmt: skip
            return None  # the C and Python layouts disagree: never share the structure
        _lib = lib
    except (OSError, AttributeError):
        return None
    return _lib


def available() -> bool:
    return load() is not None
