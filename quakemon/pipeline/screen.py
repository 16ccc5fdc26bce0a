"""Screen and refine: forward one window in `every` of a quiet station, every window of a station with signal.

The model runs on every window of the 1 s grid by default. With screening on (`every` K > 1), a station is
either *sparse* or *dense*:

* Sparse: only its *screen windows* (grid index start / stride divisible by K: the same windows in replay and
  live, whatever the batching) are forwarded. The K - 1 windows between two screen windows are *held* until the
  later screen window's probability is known. Its score (the highest probability over the trigger labels, what
  the trigger looks at) below `threshold` s: the held windows are not forwarded, and the trigger and the
  probability archive get, for each of them, the probabilities of that screen window (all below s, so below the
  trigger's ``off``: a trigger that is idle, as it always is in sparse mode, does nothing with them). A score at
  or above s: the held windows are forwarded, the station turns dense, and every window goes to the trigger with
  its own probabilities, in time order.
* Dense: every window is forwarded. The station turns sparse again once its triggers are all idle and its
  forwarded windows have stayed below s for at least one window length (the first of them and the latest start
  a window length or more apart). A station whose trigger is not idle (a detection resumed after a restart) is
  dense, and so is a station whose trigger ``off`` is at or below s (its override, or the global value): a
  window the screen lets pass must never be able to move a trigger, so such a station is never screened.
* A held window whose screen window never comes as expected (a gap skipped it, it was not inferable, the data
  ended: `release` with ``final``, or the station went silent) is forwarded, as a window with no screen to vouch
  for it.

So the trigger sees exactly the full-stride probabilities while a station is dense, and the detections are those
of the full stride except when an event's whole excursion to s or above falls between two screen windows that
stay below s. The price is latency: a station's windows are decided when its next screen window arrives, up to
(K - 1) strides later than at full stride.

The decisions depend only on the windows' probabilities, never on how the windows were batched: a window
forwarded ahead of need (`Screen.wanted`: a station dense when its batch was submitted) is used only where the
rules above forward it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_NS = 1_000_000_000


def check_screen(every: int, threshold: float, key: str = "screen") -> None:
    """Raise ValueError saying what is expected: `every` an integer >= 1, threshold in (0, 1)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{key}_every must be an integer >= 1 (1: off), got {every!r}")
    if not (isinstance(threshold, int | float) and 0.0 < threshold < 1.0):
        raise ValueError(f"{key}_threshold must be in (0, 1), got {threshold!r}")


@dataclass(eq=False)
class ScreenItem:
    """One window waiting in the screen: its meta (`WindowMeta` or anything with station, start_ns, end_ns,
    valid), its payload (spectrum row, samples row, arrival: whatever the caller needs to forward and feed it),
    and its probabilities once forwarded (None before). A window that is not inferable (valid False) is never
    forwarded: the caller gives it its NaN row when offering it."""

    meta: Any
    payload: Any = None
    probs: np.ndarray | None = None

    @property
    def valid(self) -> bool:
        return self.meta.valid is not False


@dataclass
class StationScreen:
    """The screen state of one station (see the module docstring)."""

    dense: bool = False
    quiet_from_ns: int | None = None  # dense: start of the first of the trailing windows below the threshold
    queue: deque[ScreenItem] = field(default_factory=deque)  # offered, not yet fed, in time order
    newest_ns: int = -1  # start of the newest window offered
    offered_at: float = 0.0  # monotonic time of the newest offer
    final: bool = False  # held windows without their screen window are forwarded (data ended, silence)


#: feed(item, probabilities row, forwarded): give one window to the trigger, in time order per station.
Feed = Callable[[ScreenItem, np.ndarray, bool], None]


class Screen:
    """Screen-and-refine state of every station.

    Args:
        every: K, forward one window in K of a sparse station (1: every window, the screen is off).
        threshold: s, the screen score at or above which a station turns dense; must be below the trigger's off.
        stride_s: the window grid's stride.
        window_s: the window length (how long a dense station must stay below s to turn sparse).
        columns: the probability columns of the trigger labels (the score is their maximum).
        busy: busy(station) tells whether the station must be dense: its triggers are not all idle, or its trigger
            could move on a value below the threshold.
    """

    def __init__(self, every: int, threshold: float, stride_s: float, window_s: float, columns: Sequence[int],
                 busy: Callable[[str], bool] = lambda station: False) -> None:
        check_screen(every, threshold)
        self.every = int(every)
        self.threshold = float(threshold)
        self.stride_ns = int(round(stride_s * _NS))
        self.window_ns = int(round(window_s * _NS))
        self.columns = list(columns)
        self.busy = busy
        self.stations: dict[str, StationScreen] = {}
        self.dense_hint: frozenset[str] = frozenset()  # stations dense after the last `advance` (read by workers)
        self._queued: set[str] = set()  # stations with windows in their queue

    @property
    def on(self) -> bool:
        return self.every > 1

    def index(self, start_ns: int) -> int:
        """The window's index on the grid (start / stride)."""
        return int(round(start_ns / self.stride_ns))

    def is_screen(self, start_ns: int) -> bool:
        return self.index(start_ns) % self.every == 0

    def score(self, probs: np.ndarray) -> float:
        """Highest probability over the trigger labels (NaN for a window not inferred)."""
        return float(np.max(probs[self.columns]))

    def wanted(self, metas: Sequence[Any], spectra: Any = None) -> np.ndarray:
        """Which valid windows of a batch to forward before their turn: the screen windows, and every window of
        the stations dense at the last `advance` (a guess: `advance` forwards what it still needs). (spectra: the
        batch's, unused here; the cascade screen scores them.)"""
        hint = self.dense_hint
        return np.array([m.valid is not False and (m.station in hint or self.is_screen(m.start_ns)) for m in metas],
                        dtype=bool)

    def offer(self, item: ScreenItem, now: float) -> bool:
        """Queue a window (windows of a station in time order); False (not queued) when it does not start after
        the station's newest window offered (a duplicate or reordered window)."""
        st = self.stations.get(item.meta.station)
        if st is None:
            st = self.stations[item.meta.station] = StationScreen()
        if item.meta.start_ns <= st.newest_ns:
            return False
        if not item.valid and item.probs is None:
            raise ValueError("a window that is not inferable is offered with its (NaN) probabilities")
        st.newest_ns, st.offered_at, st.final = item.meta.start_ns, now, False
        st.queue.append(item)
        self._queued.add(item.meta.station)
        return True

    def advance(self, feed: Feed) -> list[ScreenItem]:
        """Feed every station's queued windows as far as their probabilities are known; returns the windows whose
        probabilities are needed to go further (forward them, set `probs`, and call again until it returns [])."""
        need: list[ScreenItem] = []
        touched = sorted(self._queued)
        for station in touched:
            st = self.stations[station]
            need += self._advance(station, st, feed)
            if not st.queue:
                self._queued.discard(station)
        dense = {name for name in touched if self.stations[name].dense}
        if dense != self.dense_hint & set(touched):
            self.dense_hint = frozenset((self.dense_hint - set(touched)) | dense)  # (replaced whole: workers read it)
        return need

    def release(self, feed: Feed, *, older_than: float | None = None, now: float = 0.0) -> list[ScreenItem]:
        """Mark held windows to be forwarded without their screen window, then `advance`: every station's
        (final, the data ended) or those of stations with no window offered since `now - older_than` (silent)."""
        for name in self._queued:
            st = self.stations[name]
            if older_than is None or now - st.offered_at > older_than:
                st.final = True
        return self.advance(feed)

    def held(self) -> int:
        """Windows offered and not yet fed, over all stations."""
        return sum(len(self.stations[name].queue) for name in self._queued)

    def _advance(self, station: str, st: StationScreen, feed: Feed) -> list[ScreenItem]:
        q = st.queue
        while q:
            if not st.dense and self.busy(station):
                st.dense, st.quiet_from_ns = True, None
            if st.dense:
                item = q[0]
                if item.valid and item.probs is None:
                    return [it for it in q if it.valid and it.probs is None]  # the rest of the queue, at once
                q.popleft()
                self._feed_dense(station, st, item, feed)
                continue
            target = -(-self.index(q[0].meta.start_ns) // self.every) * self.every  # the head's screen window
            j = next((k for k, it in enumerate(q) if self.index(it.meta.start_ns) >= target), None)
            screen = q[j] if j is not None else None
            if screen is None or self.index(screen.meta.start_ns) != target or not screen.valid:
                if screen is None and not st.final:
                    return []  # held until the screen window comes
                # no screen window to vouch for the held ones: forward them (the screen window itself too)
                upto = len(q) if j is None else j + (1 if screen is not None and not screen.valid else 0)
                unknown = [it for it in list(q)[:upto] if it.valid and it.probs is None]
                if unknown:
                    return unknown
                for _ in range(upto):
                    item = q.popleft()
                    self._feed_forwarded(st, item, feed)
                    if st.dense:
                        break  # the rest goes on in dense mode
                continue
            if screen.probs is None:
                return [screen]
            if self.score(screen.probs) >= self.threshold:
                unknown = [it for it in list(q)[:j] if it.valid and it.probs is None]
                if unknown:
                    return unknown
                st.dense, st.quiet_from_ns = True, None  # the held windows and the screen window go in dense mode
                continue
            for _ in range(j):
                item = q.popleft()
                feed(item, screen.probs if item.valid else _nan_like(screen.probs), False)
            feed(q.popleft(), screen.probs, True)
        return []

    def _feed_forwarded(self, st: StationScreen, item: ScreenItem, feed: Feed) -> None:
        """A sparse station's window forwarded without a screen: fed with its own probabilities; at or above the
        threshold it turns the station dense."""
        probs = item.probs
        assert probs is not None
        feed(item, probs, item.valid)
        if item.valid and self.score(probs) >= self.threshold:
            st.dense, st.quiet_from_ns = True, None

    def _feed_dense(self, station: str, st: StationScreen, item: ScreenItem, feed: Feed) -> None:
        probs = item.probs
        assert probs is not None
        feed(item, probs, item.valid)
        if not item.valid:
            return
        start = item.meta.start_ns
        if self.score(probs) >= self.threshold:
            st.quiet_from_ns = None
            return
        if st.quiet_from_ns is None:
            st.quiet_from_ns = start
        if start - st.quiet_from_ns >= self.window_ns and not self.busy(station):
            st.dense, st.quiet_from_ns = False, None


def _nan_like(probs: np.ndarray) -> np.ndarray:
    return np.full_like(probs, np.nan)


def stack_rows(rows: Iterable[Any]) -> Any:
    """Stack spectrum rows (numpy arrays or torch tensors, as the batch they came from) into one batch."""
    rows = list(rows)
    if isinstance(rows[0], np.ndarray):
        return np.stack(rows)
    import torch

    return torch.stack(rows)


def copy_row(batch: Any, i: int) -> Any:
    """Row i of a batch (numpy or torch), copied, so that a held window does not keep its whole batch alive."""
    row = batch[i]
    return row.copy() if isinstance(row, np.ndarray) else row.clone()
