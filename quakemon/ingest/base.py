"""The source interface: anything that yields ObsPy Traces for the station buffers."""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from obspy import Trace, UTCDateTime


class Samples(NamedTuple):
    """A contiguous run of one channel's samples: what the station windower takes from a Trace, without ObsPy's
    header objects (a Trace's Stats and UTCDateTime are costly to build, and a replay cuts thousands of pieces)."""

    seed_id: str  # NET.STA.LOC.CHA
    sampling_rate: float
    start_ns: int  # first sample, integer ns since the epoch
    data: np.ndarray

    @property
    def end_ns(self) -> int:
        """The last sample's time (ns), as Trace.stats.endtime."""
        return self.start_ns + round(max(len(self.data) - 1, 0) * 1e9 / self.sampling_rate)

    @classmethod
    def from_trace(cls, trace: Trace) -> Samples:
        data = trace.data
        if isinstance(data, np.ma.MaskedArray):  # e.g. a merged Stream: masked samples are missing
            data = data.astype(np.float64).filled(np.nan)
        return cls(trace.id, float(trace.stats.sampling_rate), int(trace.stats.starttime.ns), data)

    def to_trace(self) -> Trace:
        net, sta, loc, cha = self.seed_id.split(".")
        return Trace(data=self.data, header={"network": net, "station": sta, "location": loc, "channel": cha,
                                             "sampling_rate": self.sampling_rate,
                                             "starttime": UTCDateTime(ns=self.start_ns)})


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
