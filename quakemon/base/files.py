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


def path_problem(path: str, kind: str, *, create: bool) -> str | None:
    """Why `path` cannot be written as a `kind` ("file", "replaced" or "dir": a file opened and written in place, one
    written beside it and renamed over it, or a directory), or None.

    The directory (a file's parent, or the "dir" itself) must be a directory in which a file can be created: a
    probe file is made and removed, which also catches a read-only filesystem and holds for root. `create`: make
    the missing directories (mode 0700) as the daemon would; else (check-config) the nearest existing one must be
    writable. An existing "file" must open for writing.
    """
    target = Path(path)
    try:
        if kind != "dir" and target.is_dir():
            return "it is a directory, expected a file"
        if kind == "dir" and target.exists() and not target.is_dir():
            return "it is not a directory"
        problem = _directory_problem(target if kind == "dir" else target.parent, create=create)
        if problem is None and kind == "file" and target.exists():
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
            except OSError as exc:
                return f"the file is not writable ({exc.strerror})"
    except OSError as exc:  # no search permission on a directory on the way
        return f"{str(exc.filename or path)!r} is not accessible ({exc.strerror})"
    return problem


def _directory_problem(directory: Path, *, create: bool) -> str | None:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} is not a directory, so {str(directory)!r} cannot be created"
    if create and existing != directory:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return f"directory {str(directory)!r} cannot be created ({exc.strerror})"
        existing = directory
    try:
        fd, probe = tempfile.mkstemp(prefix=".quakemon-write-check.", dir=existing)
    except OSError as exc:
        missing = "" if existing == directory else f" (to create {str(directory)!r} in)"
        return f"directory {str(existing)!r}{missing} is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None
