"""Replacing a small file so that a power cut leaves either the old or the new content, never a mix.

The one way the gateway writes such a file (the buffer's seq marks, the last-good config): write a
temporary file beside it, fsync it, rename it over the old one, fsync the directory. Shared by
``gateway.buffer`` and ``gateway.config``, which import nothing of each other.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"  # the temporary file is <name>.tmp, in the same directory (rename is atomic there)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` with ``data``, durably: once this returns, a power cut keeps ``data``.

    ``mode`` is the new file's permission bits (less the umask), as for ``os.open``: the default
    is what ``open(path, "wb")`` gives; pass 0o600 for a file only its owner may read.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make renames and new files in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
