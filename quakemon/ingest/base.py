"""The source interface: anything that yields ObsPy Traces for the station buffers."""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator

from obspy import Trace


class TraceSource(abc.ABC):
    """A source of waveform records as ObsPy Traces (one Trace per decoded record or file segment).

    `traces(stop)` yields until the source is exhausted (archive) or `stop` is set (live). A live source
    reads on its own thread and never blocks on the consumer: when the consumer falls behind, it drops the
    oldest records and counts them in `stats`.
    """

    @abc.abstractmethod
    def traces(self, stop: threading.Event) -> Iterator[Trace]:
        """Yield Traces in arrival order (live) or time order (archive) until exhausted or `stop` is set."""

    @property
    def stats(self) -> dict[str, int]:
        """Counters for metrics and heartbeats (records, corrupt, duplicates, reconnects, dropped, ...)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release sockets and threads. Idempotent."""
