"""Files written whole or not at all: a reader (another worker, a resumed run) never sees a
half-written one, and a crash mid-write leaves the previous version in place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write` fills a temporary file in `path`'s own folder, which then replaces `path`.

    The same folder, whatever TMPDIR is: a rename is atomic only within one file system
    (across two, it is a copy that a crash can cut short). The data is fsynced before the
    rename, and the folder after it, so neither a power loss nor a crash leaves an empty or
    partial file under the final name.
    """
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Makes the rename itself durable (POSIX; elsewhere a folder cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
