"""Reading the files a user names, with a bound: an image, an initrd, a device tree, a
command queue dump. A path may name a device or a pipe that never ends (``/dev/zero``,
``/dev/full``); vgic reads at most ``limit`` bytes and refuses the rest, so no input can
make the host allocate without end.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = ["read_bounded", "read_limited", "require_regular"]


def _too_large(limit: int) -> OSError:
    return OSError(errno.EFBIG, f"larger than the {limit:,} bytes vgic reads from it")


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The contents of ``path``, at most ``limit`` bytes; ``OSError`` (EFBIG) if there are more.

    A regular file's size is checked before reading; anything else (a pipe, a character
    device) is read until ``limit`` + 1 bytes arrive, then refused.
    """
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise _too_large(limit)
        return read_limited(f, limit)


def read_limited(stream: BinaryIO, limit: int) -> bytes:
    """At most ``limit`` bytes from an open stream (standard input, say); ``OSError``
    (EFBIG) if it has more."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit)
    return data


def require_regular(path: str | os.PathLike[str]) -> None:
    """``OSError`` unless ``path`` is a regular file (an archive is read by seeking in it)."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
