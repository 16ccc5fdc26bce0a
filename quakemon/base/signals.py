"""Signal handling in one place: SIGINT/SIGTERM only record a stop request, loops poll the flag and stop cleanly.

Handlers never do work (no logging, no I/O, no exceptions): they set an Event, as gunicorn's arbiter and
uvicorn's server do, and the owning loop notices the flag within its poll interval. Handlers can be
installed from the main thread only (Python's rule); elsewhere the install functions do nothing.
"""

from __future__ import annotations

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


def set_on_signals(event: threading.Event, signums: Sequence[int] = STOP_SIGNALS) -> dict[int, _Handler]:
    """Make each of `signums` only set `event`; returns the handlers it replaced (empty off the main thread)."""
    previous: dict[int, _Handler] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum in signums:
        previous[signum] = signal.signal(signum, lambda *_: event.set())
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
