"""Per-station noise calibration of the trigger threshold: hold a target false-alarm rate on every station.

A detector's false alarms follow each station's noise: a noisy station's windows sit at high probabilities far
more often than a quiet one's, so one ``trigger.on`` for all stations gives some stations dozens of false
detections a day and others none. With calibration (``CalibrationSettings.mode = "rate"``) each station (and
trigger label) gets its own threshold, learnt from its own recent probabilities:

    on_station = the smallest threshold >= on at which the station's recent probabilities crossed upwards at
                 most ``rate_per_day`` times per day (over the last ``history_s`` of data).

An upward crossing of a threshold (a window at or above it after one below it, or after a gap) is where the
trigger would open; the trigger's minimum duration and its hysteresis (it stays open down to ``off``) can only
merge or drop such openings, so the crossing rate is an upper bound on the trigger's rate at that threshold.

Contract and bounded memory:

* The history is cut into ``slots`` time slots of ``history_s / slots`` seconds (on the window-start grid, in
  data time). Each slot keeps a histogram of upward crossings over a fixed grid of thresholds (``GRID``: logit
  steps of 0.05 from p = 0.5 to p = 1 - 6e-6, plus ``on``) and the seconds of data it saw: memory per station
  and label is ``slots x len(GRID)`` counters, whatever the window rate.
* The threshold in effect for a window is computed from complete slots only, when a new slot starts: it is
  constant within a slot and never depends on the window it is applied to or on later ones (causal).
* Warm-up: until the history holds ``warmup_s`` seconds of data (default ``history_s``; within half a slot, so
  the first window, which has no predecessor to measure its share of time from, does not delay it by a whole
  slot), the threshold is ``on``. A station whose data stop for longer than ``history_s`` warms up again.
* A station whose noise crosses even the top of the grid more often than the target gets the top of the grid
  (p = 1 - 6e-6): it is effectively muted until its noise calms down. That is the honest limit of a threshold:
  it cannot make a model separate noise from earthquakes where its probabilities do not.

What it does not do: real events crossing the threshold count as crossings too, so an active sequence raises
its station's threshold for a while (by design: the rate is a rate of detections); and a short record with no
history (a triggered recording, a replay of one event) is triggered at ``on``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quakemon.base.errors import ConfigError
from quakemon.pipeline.settings import CALIBRATION, CalibrationSettings

#: Threshold grid in logit units: p = 0.5 ... 1 - 6e-6 in steps of 0.05 (a 5 % change of 1 - p near 1).
GRID = np.round(np.arange(0.0, 12.0 + 1e-9, 0.05), 6)
_DAY_S = 86400.0


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)), +-inf at 1 and 0, NaN stays NaN."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p) - np.log1p(-p)


def check_calibration(cfg: CalibrationSettings) -> None:
    """Raise ConfigError naming the trigger.calibration key that is out of range."""
    if cfg.mode not in ("off", "rate"):
        raise ConfigError(f"trigger.calibration must be 'off' or 'rate', got {cfg.mode!r}")
    if not (math.isfinite(cfg.rate_per_day) and cfg.rate_per_day >= 0.0):
        raise ConfigError(f"trigger.calibration_rate must be >= 0 per day, got {cfg.rate_per_day!r}")
    if not (math.isfinite(cfg.history_s) and cfg.history_s > 0.0):
        raise ConfigError(f"trigger.calibration_history must be > 0 seconds, got {cfg.history_s!r}")
    if not (isinstance(cfg.slots, int) and cfg.slots >= 1):
        raise ConfigError(f"trigger.calibration_slots must be an integer >= 1, got {cfg.slots!r}")
    if cfg.warmup_s is not None and not (math.isfinite(cfg.warmup_s) and 0.0 <= cfg.warmup_s <= cfg.history_s):
        raise ConfigError(f"trigger.calibration_warmup must be in [0, history = {cfg.history_s!r}] seconds, "
                          f"got {cfg.warmup_s!r}")


class StationCalibration:
    """The calibrated threshold of one station and label (see the module docstring)."""

    def __init__(self, on: float, cfg: CalibrationSettings = CALIBRATION) -> None:
        check_calibration(cfg)
        if not 0.0 < on <= 1.0:
            raise ConfigError(f"trigger.on must be in (0, 1], got {on!r}")
        self.on, self.cfg = float(on), cfg
        self.slot_s = cfg.history_s / cfg.slots
        self.warmup_s = cfg.history_s if cfg.warmup_s is None else cfg.warmup_s
        lo = float(logit(on))
        self.edges = np.unique(np.concatenate([GRID, [lo]])) if math.isfinite(lo) else GRID.copy()
        self._first = int(np.searchsorted(self.edges, lo, "left"))  # first edge >= logit(on)
        n = len(self.edges)
        self._counts = np.zeros((cfg.slots, n), dtype=np.int32)  # ring of complete slots: crossings per edge
        self._exposure = np.zeros(cfg.slots, dtype=np.float64)  # seconds of data per ring slot
        self._ids = np.full(cfg.slots, -1, dtype=np.int64)  # absolute slot number each ring row holds
        self._diff = np.zeros(n + 1, dtype=np.int64)  # the current slot's crossings (difference array)
        self._cur_exposure = 0.0
        self._slot: int | None = None
        self._last: tuple[float, float, int] | None = None  # start, length, grid bin of the last window
        self.threshold = self.on
        self.rate_at_threshold: float | None = None  # crossings per day at `threshold` (None: warming up)

    def update(self, starts: np.ndarray, ends: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Feed windows in time order (start, end in POSIX seconds; p of the label); returns the threshold in effect
        for each. Windows that do not start after the previous one, and non-finite p, are skipped (their
        threshold is the current one)."""
        starts, ends = np.asarray(starts, np.float64).ravel(), np.asarray(ends, np.float64).ravel()
        p = np.asarray(p, np.float64).ravel()
        if not starts.size == ends.size == p.size:
            raise ValueError(f"starts, ends and p differ in length: {starts.size}, {ends.size}, {p.size}")
        out = np.empty(starts.size, dtype=np.float64)
        keep = self._in_order(starts) & np.isfinite(p)
        slots = np.floor(starts / self.slot_s).astype(np.int64)
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(slots)) + 1, [starts.size]])
        for i, j in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):  # runs of one slot
            sel = keep[i:j]
            if sel.any() and int(slots[i]) != self._slot:
                self._next_slot(int(slots[i]))
            out[i:j] = self.threshold
            self._accumulate(starts[i:j][sel], ends[i:j][sel], p[i:j][sel])
        return out

    def _in_order(self, starts: np.ndarray) -> np.ndarray:
        prev = -np.inf if self._last is None else self._last[0]
        run = np.maximum.accumulate(np.concatenate([[prev], starts]))
        return starts > run[:-1]

    def _accumulate(self, starts: np.ndarray, ends: np.ndarray, p: np.ndarray) -> None:
        if not starts.size:
            return
        bins = np.searchsorted(self.edges, logit(p), "right")  # edges at or below each window's logit
        if self._last is None:
            prev_start, prev_len, prev_bin = starts[0], 0.0, 0
        else:
            prev_start, prev_len, prev_bin = self._last
        ps = np.concatenate([[prev_start], starts[:-1]])
        plen = np.concatenate([[prev_len], (ends - starts)[:-1]])
        pb = np.concatenate([[prev_bin], bins[:-1]])
        step = starts - ps
        gap = step > plen + 1e-9  # the windows no longer overlap: a new segment starts below every threshold
        pb = np.where(gap, 0, pb)
        self._cur_exposure += float(np.minimum(step, np.maximum(plen, 0.0)).sum())
        up = bins > pb
        np.add.at(self._diff, pb[up], 1)
        np.add.at(self._diff, bins[up], -1)
        self._last = (float(starts[-1]), float(ends[-1] - starts[-1]), int(bins[-1]))

    def _next_slot(self, k: int) -> None:
        """Close the current slot into the ring and recompute the threshold for slot `k`."""
        if self._slot is not None:
            row = self._slot % self.cfg.slots
            self._counts[row] = np.cumsum(self._diff)[:-1]
            self._exposure[row] = self._cur_exposure
            self._ids[row] = self._slot
            self._diff[:] = 0
            self._cur_exposure = 0.0
        self._slot = k
        live = (self._ids >= k - self.cfg.slots) & (self._ids < k)
        exposure = float(self._exposure[live].sum())
        if exposure <= 0.0 or exposure < self.warmup_s - self.slot_s / 2:  # (half a slot of slack: see above)
            self.threshold, self.rate_at_threshold = self.on, None
            return
        per_day = self._counts[live].sum(axis=0) * (_DAY_S / exposure)
        ok = np.flatnonzero(per_day[self._first :] <= self.cfg.rate_per_day)
        j = self._first + int(ok[0]) if ok.size else len(self.edges) - 1
        self.threshold = max(self.on, float(1.0 / (1.0 + np.exp(-self.edges[j]))))
        self.rate_at_threshold = float(per_day[j])


class Calibration:
    """Calibrated thresholds for every (station, label), created on first use."""

    def __init__(self, on: float, cfg: CalibrationSettings = CALIBRATION) -> None:
        check_calibration(cfg)
        self.on, self.cfg = on, cfg
        self._stations: dict[tuple[str, str], StationCalibration] = {}

    def station(self, station: str, label: str, on: float | None = None) -> StationCalibration:
        """The calibration of (station, label) with floor `on` (default: the global one). A station whose floor
        changes (a per-station override, a reload) starts a new history: it warms up again."""
        on = self.on if on is None else float(on)
        key = (station, label)
        cal = self._stations.get(key)
        if cal is None or cal.on != on:
            cal = self._stations[key] = StationCalibration(on, self.cfg)
        return cal

    def threshold(self, station: str, label: str, start: float, end: float, p: float,
                  on: float | None = None) -> float:
        """The threshold for this window of `station`, at or above `on` (the station's own; default the global
        one); then the window joins its history."""
        return float(self.station(station, label, on).update(np.array([start]), np.array([end]), np.array([p]))[0])

    def snapshot(self) -> dict[str, Any]:
        """{station/label: {threshold, rate_per_day}} for logs and stats (rate None while warming up)."""
        return {f"{s}/{lab}": {"threshold": c.threshold, "rate_per_day": c.rate_at_threshold}
                for (s, lab), c in sorted(self._stations.items())}


def calibrated_thresholds(starts: Sequence[float] | np.ndarray, ends: Sequence[float] | np.ndarray,
                          p: Sequence[float] | np.ndarray, on: float,
                          cfg: CalibrationSettings) -> np.ndarray:
    """The threshold in effect for each window of one station's series (a fresh calibration fed in one go)."""
    return StationCalibration(on, cfg).update(np.asarray(starts), np.asarray(ends), np.asarray(p))
