"""Signal handling in one place: SIGINT/SIGTERM only record a stop request, loops poll the flag and stop cleanly.

Handlers never do work (no logging, no exceptions, no lock taken): they have an Event set, as gunicorn's
arbiter and uvicorn's server do, and the owning loop notices the flag within its poll interval. Handlers can be
installed from the main thread only (Python's rule); elsewhere the install functions do nothing.

A handler never calls `Event.set()` itself. Python runs a handler in the main thread between two bytecodes,
which may be while that thread holds the lock inside the same Event (in its `wait()`, `clear()` or `set()`);
`set()` would then wait for that lock for ever, and so would the process, deaf to every later signal but
SIGKILL. Handlers hand the Event to a relay thread instead (`_SignalRelay`), which sets it at once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import structlog

log = structlog.get_logger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, Any], Any] | int | None


class StopFlag(threading.Event):
    """A stop request: set by a signal handler, by code, or (with `watch_parent`) once the parent process is gone.

    An Event, so it can be handed to anything that polls one (sources, helper threads).
    """

    def __init__(self) -> None:
        super().__init__()
        self._parent: int | None = None

    def watch_parent(self, parent: int) -> None:
        """Stop once `parent` is no longer our parent process (it exited and we were re-parented)."""
        self._parent = parent

    def is_set(self) -> bool:
        if self._parent is not None and not super().is_set() and os.getppid() != self._parent:
            log.warning("supervisor_gone", parent=self._parent, action="stopping")
            self.set()
        return super().is_set()


class _SignalRelay:
    """Sets, on a thread of its own, the Events that signal handlers hand it (`post`).

    `post` takes no lock: it appends to a deque (atomic under the GIL) and writes a byte to a non-blocking pipe
    that wakes the thread. A full pipe means the thread has bytes to read, so it will drain the deque anyway.
    A child forked from this process has no relay thread: there `post` sets the Event directly (with the hazard
    above) until the child installs handlers of its own, which start its own relay.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pending: collections.deque[threading.Event] = collections.deque()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        threading.Thread(target=self._run, name="signal-relay", daemon=True).start()

    def post(self, event: threading.Event) -> None:
        if os.getpid() != self.pid:
            event.set()
            return
        self.pending.append(event)
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass

    def _run(self) -> None:
        while True:
            os.read(self.read_fd, 4096)
            while self.pending:
                self.pending.popleft().set()


_relay: _SignalRelay | None = None


def set_on_signals(event: threading.Event, signums: Sequence[int] = STOP_SIGNALS) -> dict[int, _Handler]:
    """Make each of `signums` only set `event` (through the relay thread, within milliseconds); returns the
    handlers it replaced (empty off the main thread)."""
    global _relay
    previous: dict[int, _Handler] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    if _relay is None or _relay.pid != os.getpid():  # (a forked child needs a relay thread of its own)
        _relay = _SignalRelay()
    relay = _relay
    for signum in signums:
        previous[signum] = signal.signal(signum, lambda *_: relay.post(event))
    return previous


def install_stop_handlers(stop: threading.Event) -> dict[int, _Handler]:
    """SIGINT and SIGTERM set `stop` from now on (main thread only); returns the previous handlers."""
    return set_on_signals(stop, STOP_SIGNALS)


def restore_handlers(previous: dict[int, _Handler]) -> None:
    """Put back handlers returned by `set_on_signals` / `install_stop_handlers`."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Within the block, SIGINT and SIGTERM only set `stop` (when called from the main thread)."""
    previous = install_stop_handlers(stop)
    try:
        yield stop
    finally:
        restore_handlers(previous)


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send `signum` when the parent process exits (prctl PR_SET_PDEATHSIG).

    Elsewhere nothing happens; pair it with `StopFlag.watch_parent`, which notices re-parenting on any system.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
