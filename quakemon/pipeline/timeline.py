"""Per-stream time policies of the station windower: clock excursions held for agreement, and station silence.

`TimelineCandidate` holds the records of one station instrument that do not continue its timeline (far ahead of
its newest data, or far behind its ring) until the data decides between the two explanations:

- a clock fault of those records (a short excursion): records of a component that left the timeline continue
  the old timeline again, and the held records are rejected and counted (`clock_glitch` ahead, `late_records`
  behind); so are held records that grow to a memory cap without every component agreeing;
- a permanent step of the station's clock (or the station's return after an outage): the new timeline
  continues on every component the station delivers, over `min(offset, glitch_s)` of data and at least
  `confirm` records; the station is then reset and the held records go in, so nothing of it is lost.

The decision depends on the data alone (never on arrival times), so a live stream and a replay of the same
records decide alike. `docs/reliability.md` describes the policy for operators.

`SilenceMonitor` is the one wall-clock policy: a station with no record for `silence_s` is reported silent
(WARNING log, once per silence) until its data returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import structlog

log = structlog.get_logger(__name__)


class TimelineCandidate:
    """Records of one station instrument held since they left its timeline (grid sample indices).

    `offset` is how far the first held record starts from the old timeline's newest data (negative: behind).
    """

    def __init__(self, offset: int, components: Iterable[int]) -> None:
        self.offset = int(offset)
        self.components = frozenset(components)  # what the station delivered: each must agree
        self.records: list[tuple[int, int, np.ndarray]] = []  # (component, start, values) in arrival order
        self.lo: int | None = None
        self.hi: int | None = None
        self._spans: dict[int, tuple[int, int]] = {}
        self.samples = 0

    def add(self, component: int, start: int, values: np.ndarray) -> None:
        end = start + len(values)
        self.records.append((component, start, np.array(values, copy=True)))
        self.samples += len(values)
        self.lo = start if self.lo is None else min(self.lo, start)
        self.hi = end if self.hi is None else max(self.hi, end)
        lo, hi = self._spans.get(component, (start, end))
        self._spans[component] = (min(lo, start), max(hi, end))

    def member(self, start: int, end: int, slack: int) -> bool:
        """Does [start, end) continue the held timeline (overlap or a gap under `slack` samples)?"""
        return self.lo is not None and self.hi is not None and start < self.hi + slack and end > self.lo - slack

    @property
    def span(self) -> int:
        """Samples covered by the held records (the longest component)."""
        return max((hi - lo for lo, hi in self._spans.values()), default=0)

    def has(self, component: int) -> bool:
        """Did this component leave the timeline (does a held record belong to it)?"""
        return component in self._spans

    def agreed(self, need: int, confirm: int) -> bool:
        """True once every expected component covers `need` samples and `confirm` records agree."""
        if len(self.records) < confirm:
            return False
        comps = self.components or frozenset(self._spans)
        return all(c in self._spans and self._spans[c][1] - self._spans[c][0] >= need for c in comps)


class SilenceMonitor:
    """Stations with no record for `silence_s` seconds (wall clock), reported once per silence.

    `note(station)` on every record (cheap); `check()` now and then returns the stations that became silent
    since the previous call, logging `station_silent` for each (and `station_data_resumed` when one comes
    back). `silent` is the current set; `silences` counts every silence since the start. A `silence_s` of 0
    or less turns the check off.
    """

    def __init__(self, silence_s: float = 60.0, clock=time.monotonic) -> None:
        self.silence_s = float(silence_s)
        self.clock = clock
        self.last: dict[str, float] = {}
        self.silent: set[str] = set()
        self.silences = 0

    def note(self, station: str) -> None:
        self.last[station] = self.clock()
        if station in self.silent:
            self.silent.discard(station)
            log.info("station_data_resumed", station=station)

    def check(self) -> list[str]:
        if self.silence_s <= 0:
            return []
        now = self.clock()
        new = [st for st, t in self.last.items() if st not in self.silent and now - t >= self.silence_s]
        for st in new:
            self.silent.add(st)
            self.silences += 1
            log.warning("station_silent", station=st, silent_s=round(now - self.last[st], 1),
                        threshold_s=self.silence_s)
        return new

    def state(self) -> dict[str, float]:
        """Per station, seconds since its newest record (what a heartbeat or a gauge reports)."""
        now = self.clock()
        return {st: round(now - t, 3) for st, t in self.last.items()}
