"""systemd notification (sd_notify) without extra dependencies, and a watchdog that pings only on progress.

`Notifier` sends READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 datagrams to $NOTIFY_SOCKET (a path or an
"@abstract" name) and does nothing when the variable is unset, so the same code runs in a terminal.

`Watchdog` is the liveness policy for a hung pipeline: WATCHDOG=1 is sent only if the pipeline
called `progress()` since the previous ping. A hung loop thus stops the pings and systemd (WatchdogSec=)
kills and restarts the service, instead of a healthy-looking timer thread keeping a dead pipeline alive. Its
`watchdog_no_progress` log line carries what `detail_fn` says (the supervisor: which stages stopped).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def _socket_address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET -> a sockaddr for AF_UNIX: '@name' is the abstract namespace (leading NUL)."""
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between pings (WATCHDOG_USEC / 2), or None when systemd asked for no watchdog for this process.

    WATCHDOG_PID, when set, must be our pid (a child inheriting the variables must not ping).
    """
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """sd_notify client; a no-op when $NOTIFY_SOCKET is unset. Send errors are logged, never raised."""

    def __init__(self, address: str | None = None) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one raw message ("KEY=value" lines); True when sent."""
        if self._sock is None or not self.address:
            return False
        try:
            with self._lock:
                self._sock.sendto(message.encode(), _socket_address(self.address))
        except OSError as exc:
            log.warning("sd_notify_failed", address=self.address, error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str = "") -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (CLOCK_MONOTONIC, as systemd's Type=notify-reload requires); READY=1
        ends the reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


class Watchdog:
    """Pings systemd only while the pipeline makes progress.

    The pipeline calls `progress()` whenever it does work (a record read, a window inferred, a heartbeat
    published). `tick()` sends WATCHDOG=1 if progress happened since the last ping, and STATUS= from
    `status_fn` (e.g. "3 stations, lag 1.2 s"); a missed ping is logged with the fields `detail_fn` returns (e.g.
    the stages that stopped). `start()` runs `tick()` on a daemon thread every
    `interval` s (default: `watchdog_interval()`; without a watchdog, status is still refreshed).
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float | None = None,
        status_fn: Callable[[], str] | None = None,
        status_interval: float = 5.0,
        detail_fn: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval = watchdog_interval() if interval is None else interval
        self.status_fn = status_fn
        self.detail_fn = detail_fn
        self._status_interval = status_interval
        self._progress = 0
        self._pinged_at = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.pings = 0
        self.missed = 0

    def progress(self, n: int = 1) -> None:
        """Record that the pipeline did work (cheap; call it from any thread)."""
        with self._lock:
            self._progress += n

    def tick(self) -> bool:
        """Ping if progress happened since the last ping; returns whether it pinged."""
        with self._lock:
            current = self._progress
        advanced = current != self._pinged_at
        if advanced:
            self._pinged_at = current
            self.pings += 1
            self.notifier.watchdog()
        else:
            self.missed += 1
            if self.missed == 1 or self.missed % 10 == 0:
                log.warning("watchdog_no_progress", missed_ticks=self.missed, **self._details())
        if advanced and self.missed:
            log.info("watchdog_progress_resumed", missed_ticks=self.missed)
            self.missed = 0
        return advanced

    def _details(self) -> dict[str, Any]:
        if self.detail_fn is None:
            return {}
        try:
            return dict(self.detail_fn())
        except Exception as exc:  # a detail callback must never kill the watchdog thread
            return {"detail_error": repr(exc)}

    def _status(self) -> None:
        if self.status_fn is None:
            return
        try:
            self.notifier.status(self.status_fn())
        except Exception as exc:  # a status callback must never kill the watchdog thread
            log.warning("watchdog_status_failed", error=repr(exc))

    def _run(self) -> None:
        period = self.interval if self.interval else self._status_interval
        next_status = 0.0
        elapsed = 0.0
        while not self._stop.wait(period):
            elapsed += period
            if self.interval:
                self.tick()
            if elapsed >= next_status:
                self._status()
                next_status = elapsed + self._status_interval

    def start(self) -> None:
        """Start the ticking thread (idempotent)."""
        if self._thread is None and (self.interval or self.status_fn):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="quakemon-watchdog", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; waits at most `timeout` s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
