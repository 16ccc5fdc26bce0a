"""One daemon per runtime directory: its stages' sockets live there, so a second daemon would cross-feed them; the
control sockets that daemons no longer running left there are removed at start-up."""

from __future__ import annotations

import fcntl
import os

import structlog

from quakemon.base.errors import ConfigError

log = structlog.get_logger(__name__)

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


def remove_stale_control_sockets(runtime_dir: str) -> list[str]:
    """Remove `control-<pid>` sockets whose daemon is gone (no such process, or one that is not quakemon: the pid
    was reused); returns the removed paths. A running daemon's socket in a shared directory is left alone."""
    removed = []
    try:
        names = os.listdir(runtime_dir)
    except OSError:
        return removed
    for name in names:
        pid = name[len("control-"):]
        if not name.startswith("control-") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if _quakemon_running(int(pid)):
            continue
        path = os.path.join(runtime_dir, name)
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("stale_control_socket_not_removed", path=path, error=str(exc))
            continue
        removed.append(path)
        log.info("stale_control_socket_removed", path=path, pid=int(pid))
    return removed


def _quakemon_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        return not cmdline or b"quakemon" in cmdline  # empty: exiting, or between fork and exec; keep it
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (or not ours to read): the process exists if signal 0 reaches it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
