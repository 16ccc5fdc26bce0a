"""One daemon per runtime directory: its stages' sockets live there, so a second daemon would cross-feed them."""

from __future__ import annotations

import fcntl
import os

from quakemon.base.errors import ConfigError

LOCK_NAME = "daemon.lock"


class RuntimeLock:
    """An exclusive `flock` on ``<runtime_dir>/daemon.lock`` held for the daemon's life; the file names the holder.

    The kernel drops the lock when the holder dies, however it dies, so a stale file never blocks a start.
    Stage processes do not inherit the descriptor (subprocesses close inherited descriptors).
    """

    def __init__(self, runtime_dir: str) -> None:
        self._fd: int | None = None
        self.path = os.path.join(runtime_dir, LOCK_NAME)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"pipeline.runtime_dir {runtime_dir!r} is in use by another quakemon daemon (pid "
                              f"{holder}); give each daemon its own runtime_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
