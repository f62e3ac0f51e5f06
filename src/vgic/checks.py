"""Checks for values read back from outside: snapshots, JSON configurations.

Every state or configuration a model restores goes through these, so a corrupt or hostile
file is refused with a :class:`FieldError` (a ValueError) naming the field, never accepted
half-way or turned into some other Python exception deep in a model. Parsers nest
:func:`at` blocks, so a refusal names the whole path to the value:
``gic.redistributors[1].pending[0]: 5 is not an integer in [8192, 16384)``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

PAGE = 4096  # the granule RAM sizes and snapshot memory records are counted in
RAM_WINDOW = 255 << 30  # QEMU virt's RAM window (1 GiB to 256 GiB): the most `-m` gives


class FieldError(ValueError):
    """A value that does not fit. ``path`` names the field, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def _join(name: str | int, path: str) -> str:
    head = f"[{name}]" if isinstance(name, int) else name
    if not path:
        return head
    return head + path if path.startswith("[") else f"{head}.{path}"


@contextmanager
def at(name: str | int) -> Iterator[None]:
    """Name the field being parsed: a refusal raised inside gets ``name`` (a key, or an
    int for a list index) in front of its path. A missing key (KeyError), a value of the
    wrong JSON type met by code that expected another (TypeError) and a plain ValueError
    become FieldErrors too, so nothing but FieldError leaves a parser."""
    try:
        yield
    except FieldError as e:
        raise FieldError(_join(name, e.path), e.reason) from None
    except KeyError as e:
        raise FieldError(_join(name, str(e.args[0]) if e.args else ""), "missing") from None
    except (TypeError, ValueError) as e:
        raise FieldError(_join(name, ""), str(e) or type(e).__name__) from None


def req(d: Mapping[str, object], key: str) -> object:
    """``d[key]``, or a FieldError naming the missing field."""
    if key not in d:
        raise FieldError(key, "missing")
    return d[key]


def only(d: Mapping[str, object], known: tuple[str, ...] | frozenset[str]) -> None:
    """Refuse fields that are not ``known`` (a misspelt or foreign field is not ignored)."""
    for key in d:
        if key not in known:
            raise FieldError(str(key)[:40], "is not a field of this state")


def uint(v: object, bits: int, what: str = "") -> int:
    """``v`` if it is a JSON integer (not a bool) in [0, 2^bits), else FieldError."""
    if type(v) is not int or not 0 <= v < 1 << bits:
        raise FieldError(what, f"{v!r:.40} is not a {bits}-bit unsigned integer")
    return v


def bounded(v: object, lo: int, hi: int, what: str = "") -> int:
    """``v`` if it is a JSON integer in [lo, hi), else FieldError."""
    if type(v) is not int or not lo <= v < hi:
        raise FieldError(what, f"{v!r:.40} is not an integer in [{lo}, {hi})")
    return v


def boolean(v: object, what: str = "") -> bool:
    """``v`` if it is a JSON true/false, else FieldError."""
    if type(v) is not bool:
        raise FieldError(what, f"{v!r:.40} is not true or false")
    return v


def flag(v: object, what: str = "") -> bool:
    """A one-bit field saved as true/false or as the integer 0 or 1."""
    if type(v) is bool:
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    raise FieldError(what, f"{v!r:.40} is not 0, 1, true or false")


def text(v: object, limit: int = 4096, what: str = "") -> str:
    """``v`` if it is a string of at most ``limit`` characters, else FieldError."""
    if type(v) is not str or len(v) > limit:
        raise FieldError(what, f"{v!r:.40} is not a string of at most {limit} characters")
    return v


def hexbytes(v: object, limit: int, what: str = "") -> bytes:
    """The bytes of a hex string of at most ``limit`` bytes, else FieldError."""
    s = text(v, 2 * limit, what)
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise FieldError(what, f"{s!r:.40} is not a string of hex digit pairs") from None


def items(v: object, limit: int, what: str = "") -> list[object]:
    """``v`` if it is a JSON list of at most ``limit`` items, else FieldError."""
    if type(v) is not list or len(v) > limit:
        raise FieldError(what, f"is not a list of at most {limit} items")
    return v


def exactly(v: object, n: int, what: str = "") -> list[object]:
    """``v`` if it is a JSON list of exactly ``n`` items, else FieldError."""
    if type(v) is not list or len(v) != n:
        raise FieldError(what, f"is not a list of {n} items")
    return v


def mapping(v: object, what: str = "") -> dict[str, object]:
    """``v`` if it is a JSON object, else FieldError."""
    if type(v) is not dict:
        raise FieldError(what, "is not an object")
    return v


def distinct(v: object, lo: int, hi: int, limit: int, what: str = "") -> frozenset[int]:
    """A JSON list of at most ``limit`` distinct integers in [lo, hi), as a set."""
    out: set[int] = set()
    values = items(v, limit, what)
    for i, x in enumerate(values):
        with at(what):
            out.add(bounded(x, lo, hi, f"[{i}]"))
    if len(out) != len(values):
        raise FieldError(what, "lists an integer twice")
    return frozenset(out)


def ram_limit() -> int:
    """The most RAM a snapshot may ask of this host (and what ``vgic run -m`` can give):
    QEMU virt's 255 GiB RAM window, and no more than the host's physical memory, since an
    anonymous mapping larger than that is refused by the kernel's overcommit heuristic."""
    try:
        host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        host = RAM_WINDOW
    granule = max(PAGE, mmap.PAGESIZE)
    return min(RAM_WINDOW, host) // granule * granule


def ram_size(v: object, what: str = "memory") -> int:
    """A RAM size: a positive multiple of the page size, at most :func:`ram_limit`."""
    size = uint(v, 64, what)
    granule = max(PAGE, mmap.PAGESIZE)
    if size == 0 or size % granule:
        raise FieldError(what, f"{size:#x} is not a positive multiple of the {granule}-byte page")
    if size > ram_limit():
        raise FieldError(what, f"{size:#x} bytes is more RAM than this host can give ({ram_limit():#x})")
    return size
