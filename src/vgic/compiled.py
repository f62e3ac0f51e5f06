"""Markers for the optional mypyc build of the model (scripts/build_compiled.py).

In the pure-Python package they do nothing. Compiled, a class is closed to subclassing
from Python unless it is marked ``@mypyc_attr(allow_interpreted_subclasses=True)``: the
classes an embedder or a test extends (guest memory that tracks accesses, say) carry
that mark. ``mypyc_attr`` is mypy_extensions' (it comes with mypy), or a no-op without it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # no mypy, so nothing is compiled either

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


__all__ = ["is_compiled", "mypyc_attr"]


def is_compiled() -> bool:
    """Whether the model modules in use are the mypyc build."""
    spec = importlib.util.find_spec("vgic.gicv3.cpu_interface")  # compiled with the rest of the hot path
    return spec is not None and not (spec.origin or "").endswith(".py")
