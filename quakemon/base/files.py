"""Files that appear whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Replace `path` with what `write(fh)` writes, so a crash or power loss leaves the old file or the new one.

    The content goes to a temporary file in the same folder, is fsynced and renamed over `path`; then the folder
    is fsynced so the rename itself survives power loss. The temporary file is removed when `write` fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # some filesystems cannot fsync a folder; the rename has happened either way
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def remove_partial_writes(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of `atomic_write` calls that never finished (the writer was SIGKILLed or the
    power went) from `directory`; returns them. Only for a folder that one process writes, before it writes."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
