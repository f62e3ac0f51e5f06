"""Checks for values read back from outside: snapshots, JSON configurations.

Every state or configuration a model restores goes through these, so a corrupt or hostile
file is refused with a ValueError naming the value, never accepted half-way or turned into
some other Python exception deep in a model.
"""

from __future__ import annotations


def uint(v: object, bits: int, what: str = "value") -> int:
    """``v`` if it is a JSON integer (not a bool) in [0, 2^bits), else ValueError."""
    if type(v) is not int or not 0 <= v < 1 << bits:
        raise ValueError(f"{what} {v!r:.40} is not a {bits}-bit unsigned integer")
    return v


def boolean(v: object, what: str = "value") -> bool:
    """``v`` if it is a JSON true/false, else ValueError."""
    if type(v) is not bool:
        raise ValueError(f"{what} {v!r:.40} is not true or false")
    return v


def text(v: object, limit: int = 4096, what: str = "value") -> str:
    """``v`` if it is a string of at most ``limit`` characters, else ValueError."""
    if type(v) is not str or len(v) > limit:
        raise ValueError(f"{what} {v!r:.40} is not a string of at most {limit} characters")
    return v


def items(v: object, limit: int, what: str = "value") -> list[object]:
    """``v`` if it is a JSON list of at most ``limit`` items, else ValueError."""
    if type(v) is not list or len(v) > limit:
        raise ValueError(f"{what} is not a list of at most {limit} items")
    return v


def mapping(v: object, what: str = "value") -> dict[str, object]:
    """``v`` if it is a JSON object, else ValueError."""
    if type(v) is not dict:
        raise ValueError(f"{what} is not an object")
    return v
