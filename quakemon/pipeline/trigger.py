"""Trigger logic: turns per-window class probabilities into "new"/"closed" detections, per station and label.

Policy (the same in replay and live, so the same windows give the same detections, ids and onsets):

* Hysteresis. A trigger opens when a window's probability reaches ``on`` (``p >= on``) and stays open while
  windows stay at or above ``off`` (``off <= on``); the first window below ``off`` closes it.
* Minimum duration, with a fast "new". The trigger is *pending* from the first window over ``on`` until it has
  lasted ``min_duration_s``, measured between window start times (first window over ``on`` to the current
  window still at or above ``off``). Then "new" is sent at once. A pending trigger that falls below ``off``
  earlier is dropped silently (counted in ``stats["suppressed"]``): short blips never reach subscribers, and
  with ``min_duration_s = 0`` "new" goes out on the very first window over ``on``. The delay a real event pays
  is ``min_duration_s`` rounded up to the window stride.
* ``onset`` is the start time of the first window whose probability reached ``on`` (a grid time, so stable
  between replay and live). The signal lies between ``onset`` and that window's end. ``end`` (on "closed") is
  the end time of the last window at or above ``off``.
* Gaps. Windows arrive in time order per station but may skip (dropped windows, data gaps). When the next
  window starts more than ``max_gap_s`` after the previous one (default: the window length, i.e. the two
  windows no longer overlap), an open trigger is closed first (``close_reason = "gap"``) and a pending one is
  dropped. Windows that do not advance in time (duplicates,
  out of order) and windows with non-finite probabilities are ignored and counted.
* ``flush()`` closes open triggers at the end of a replay (``close_reason = "flush"``); ``expire(data_time)``
  closes triggers of stations whose windows stopped arriving (live): a trigger whose last window started more
  than the maximum gap before ``data_time`` is closed with ``close_reason = "gap"``, as the next window would
  have closed it.
* The end of a record is not noise: a trigger still *pending* at ``flush()`` whose every window so far reached
  ``on`` is reported ("new", then "closed" with ``close_reason = "flush"``): the record ended before
  ``min_duration_s`` could pass, the signal did not. A pending trigger that had a window below ``on`` is dropped.
* Each trigger label (by default every class except ``noise``) has its own independent trigger.
* Optional per-station calibration (`TriggerBank` with ``calibration`` mode "rate"): each station's ``on`` is
  raised, before each window, to the threshold that holds a target false-alarm rate on that station's own recent
  probabilities (`quakemon.pipeline.calibration`); ``off`` stays.
* One detection per event per station (``retrigger_hold_s``, default
  `quakemon.pipeline.settings.TriggerSettings.retrigger_hold_s`). When an active trigger falls below ``off`` it
  is *held* rather than closed: a window that reaches ``on`` and starts less than ``retrigger_hold_s`` after the
  first window below ``off`` re-activates the same detection (same id, same pick, no new "new"; counted in
  ``stats["extended"]``), so the S wave, the coda and re-triggers of the event stay in it. Its "closed" goes out
  with the first window that starts ``retrigger_hold_s`` or more after it fell below ``off`` (``close_reason``
  "off", ``end`` the end of its last window at or above ``off``), and that same window may open the next
  detection. The one exception is a clearly new P: when the caller's ``new_phase`` check says the re-triggering
  window holds one (`quakemon.pipeline.detect`: a fresh pick above the SNR gate, ``new_pick_after_s`` or more
  after the held detection's pick), the held detection closes there and the window opens a new one. A gap,
  ``expire`` past the hold's end close a held detection too (still "off": it had ended); ``flush`` (the data
  ended inside the hold) closes it with "flush".
  ``retrigger_hold_s = 0`` closes at the first window below ``off``. With ``split_on_new_p`` (off by default) the
  same check is asked for every window that reaches ``on`` while a detection is active (``stats
  ["new_inside_active"]``): a clearly new P closes it there and opens a new one, as inside the hold.
* Each detection carries a `DetectionRef`: the first window over ``on`` and, once the caller has picked it
  (`TriggerBank.take_opened`, then `DetectionRef.pick`; `quakemon.pipeline.detect` does this for every batch),
  its P pick, from which the body's ``onset`` and ``id`` derive (`TriggerEvent.to_body`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from quakemon.base.errors import ConfigError
from quakemon.pipeline.calibration import Calibration
from quakemon.pipeline.picker import METHOD_WINDOW, Pick
from quakemon.pipeline.settings import CalibrationSettings, station_thresholds
from quakemon.wire.schema import detection_body, to_timestamp

log = structlog.get_logger(__name__)

_EPS = 1e-9
_NS = 1_000_000_000


@dataclass
class DetectionRef:
    """What every message of one detection shares: its first window over ``on`` and its P pick.

    The pick is set by the caller once the window's samples have been picked (`TriggerBank.take_opened`); a
    detection without one (a trigger fed probabilities only) gets `window_pick`."""

    station: str
    window_start: float
    window_end: float
    pick: Pick | None = None

    def pick_or_window(self) -> Pick:
        return self.pick if self.pick is not None else window_pick(self.window_start, self.window_end)


def window_pick(window_start: float, window_end: float) -> Pick:
    """The pick of a detection whose samples could not be picked: the window's middle, its spread (length /
    sqrt(12), a uniform position) as uncertainty, method "window", NaN SNR."""
    return Pick(int(round((window_start + window_end) / 2 * _NS)), (window_end - window_start) / math.sqrt(12.0),
                METHOD_WINDOW, math.nan)


@dataclass(frozen=True)
class TriggerEvent:
    """A trigger transition, the content of a detection body before it is stamped and published."""

    station: str
    state: str  # "new" | "closed"
    label: str
    probability: float
    probabilities: dict[str, float]
    onset: float
    window_start: float
    window_end: float
    peak_probability: float
    end: float | None = None
    close_reason: str | None = None  # "off" | "gap" | "flush" | "shutdown" on "closed"
    detection: DetectionRef | None = None

    def to_body(self, model: Mapping[str, str], latency_s: float | None = None) -> dict[str, Any]:
        """The detection body (schema ``quakemon.detection/2``) for this transition, without seq/epoch: ``onset``
        is the detection's pick time, ``window_start``/``window_end`` its first window over ``on``, and
        ``last_window_start``/``last_window_end`` the window that caused this message."""
        ref = self.detection or DetectionRef(self.station, self.onset, self.onset + self.window_end
                                             - self.window_start)
        pick = ref.pick_or_window()
        return detection_body(
            station=self.station, state=self.state, label=self.label, probability=self.probability,
            probabilities=self.probabilities, pick_time_ns=pick.time_ns, pick_uncertainty_s=pick.uncertainty_s,
            pick_method=pick.method, pick_snr=pick.snr, window_start=ref.window_start, window_end=ref.window_end,
            last_window_start=self.window_start, last_window_end=self.window_end,
            peak_probability=self.peak_probability, model=model, latency_s=latency_s, end=self.end,
            close_reason=self.close_reason,
        )


def check_thresholds(on: float, off: float, min_duration_s: float, max_gap_s: float | None,
                     retrigger_hold_s: float = 0.0) -> None:
    """Raise ConfigError naming the [trigger] key when thresholds are inconsistent."""
    if not (math.isfinite(retrigger_hold_s) and retrigger_hold_s >= 0.0):
        raise ConfigError(f"trigger.retrigger_hold must be >= 0 seconds, got {retrigger_hold_s!r}")
    if not 0.0 < on <= 1.0:
        raise ConfigError(f"trigger.on must be in (0, 1], got {on!r}")
    if not 0.0 < off <= on:
        raise ConfigError(f"trigger.off must be in (0, trigger.on={on!r}], got {off!r}")
    if not min_duration_s >= 0.0:
        raise ConfigError(f"trigger.min_duration must be >= 0 seconds, got {min_duration_s!r}")
    if max_gap_s is not None and not max_gap_s > 0.0:
        raise ConfigError(f"trigger max_gap_s must be > 0 seconds, got {max_gap_s!r}")


def check_bank_thresholds(on: float, off: float, min_duration_s: float, max_gap_s: float | None,
                          retrigger_hold_s: float, overrides: Mapping[str, Mapping[str, float]]) -> None:
    """`check_thresholds` for the global values and for every network and station in `overrides` (merged with
    the global values as `station_thresholds` does); the ConfigError names the override that is inconsistent."""
    check_thresholds(on, off, min_duration_s, max_gap_s, retrigger_hold_s)
    for target in overrides:
        try:
            check_thresholds(*station_thresholds(target, on, off, min_duration_s, overrides), max_gap_s)
        except ConfigError as exc:
            raise ConfigError(f"trigger.overrides.{target}: {exc}") from None


@dataclass
class StationTrigger:
    """On/off trigger with hysteresis and a minimum duration for one station and one label."""

    on: float
    off: float
    min_duration_s: float
    label: str
    station: str = "XX.XXX."
    max_gap_s: float | None = None  # None: the window length
    retrigger_hold_s: float = 0.0
    split_on_new_p: bool = False  # ask new_phase for windows over `on` of an active detection too
    state: str = "idle"  # "idle" | "pending" | "active" | "held"
    stats: dict[str, int] = field(default_factory=lambda: {"suppressed": 0, "ignored": 0, "new": 0, "closed": 0,
                                                           "extended": 0, "new_inside_hold": 0,
                                                           "new_inside_active": 0})
    opened: DetectionRef | None = None  # set when a window opens a detection, until the caller takes it
    _ref: DetectionRef | None = None
    _hold_until: float = 0.0
    _onset: float = 0.0
    _peak: float = 0.0
    _last_above_end: float = 0.0
    _all_on: bool = False  # every window of the current trigger so far reached `on`
    _last: tuple[float, float, float, dict[str, float]] | None = None  # start, end, p, probabilities

    def __post_init__(self) -> None:
        check_thresholds(self.on, self.off, self.min_duration_s, self.max_gap_s, self.retrigger_hold_s)

    def update(self, window_start: Any, window_end: Any, probabilities: Mapping[str, float]) -> list[TriggerEvent]:
        """Feed one window (in time order); returns the transitions it caused (zero, one or two events)."""
        return self._update(to_timestamp(window_start), to_timestamp(window_end),
                            {str(k): float(v) for k, v in probabilities.items()})

    def _update(self, start: float, end: float, probs: dict[str, float],
                new_phase: Callable[[DetectionRef], bool] | None = None) -> list[TriggerEvent]:
        """`update` with POSIX times and a {label: float} dict that the trigger may keep (not copied).

        new_phase(detection): asked when this window re-triggers a held detection, and with `split_on_new_p`
        when it reaches `on` while a detection is active; True (a clearly new P, see `quakemon.pipeline.detect`)
        closes that detection and opens a new one with this window."""
        if self.label not in probs:
            raise ConfigError(f"trigger label {self.label!r} not among the model's labels {sorted(probs)}")
        p = probs[self.label]
        if (self._last is not None and start <= self._last[0]) or not math.isfinite(p):
            self.stats["ignored"] += 1
            log.debug("trigger_window_ignored", station=self.station, window_start=start, probability=p)
            return []
        events: list[TriggerEvent] = []
        if self._last is not None and start - self._last[0] > self._max_gap() + _EPS:
            events.extend(self._close("gap"))
        self._last = (start, end, p, probs)
        if self.state == "held" and start >= self._hold_until - _EPS:
            events.extend(self._close("off"))
        if self.state == "idle":
            if p >= self.on:
                self.state, self._onset, self._peak, self._last_above_end = "pending", start, p, end
                self._all_on = True
                self._ref = self.opened = DetectionRef(self.station, start, end)
                events.extend(self._confirm())
        elif self.state == "held":
            if p >= self.on and new_phase is not None and self._ref is not None and new_phase(self._ref):
                events.extend(self._reopen("new_inside_hold", start, end, p))
            elif p >= self.on:  # a re-trigger inside the hold: the same detection goes on
                self.state, self._peak, self._last_above_end = "active", max(self._peak, p), end
                self.stats["extended"] += 1
        elif (self.split_on_new_p and self.state == "active" and p >= self.on and new_phase is not None
              and self._ref is not None and new_phase(self._ref)):
            events.extend(self._reopen("new_inside_active", start, end, p))
        elif p >= self.off:
            self._peak, self._last_above_end = max(self._peak, p), end
            self._all_on = self._all_on and p >= self.on
            events.extend(self._confirm())
        elif self.state == "active" and self.retrigger_hold_s > 0:
            self.state, self._hold_until = "held", start + self.retrigger_hold_s
        else:
            events.extend(self._close("off"))
        return events

    def _reopen(self, counter: str, start: float, end: float, p: float) -> list[TriggerEvent]:
        """A new event at this station: the open (held or active) detection closes ("off": it ends where the new
        one begins) and this window opens a new one."""
        events = self._close("off")
        self.stats[counter] += 1
        self.state, self._onset, self._peak, self._last_above_end = "pending", start, p, end
        self._all_on = True
        self._ref = self.opened = DetectionRef(self.station, start, end)
        return events + self._confirm()

    def flush(self) -> list[TriggerEvent]:
        """Close an open trigger (end of replay). A pending one is reported ("new" + "closed") when every window
        so far reached `on`, else dropped."""
        if self.state == "pending" and self._all_on:
            self.state = "active"
            self.stats["new"] += 1
            return [self._event("new"), *self._close("flush")]
        return self._close("flush")

    def shutdown(self) -> list[TriggerEvent]:
        """Close an open (active or held) detection with close_reason "shutdown" (the service stops); a pending
        trigger, never published, is dropped."""
        if self.state == "held":
            self.state = "active"
        return self._close("shutdown")

    def expire(self, data_time: float) -> list[TriggerEvent]:
        """Close the trigger if its last window started more than max_gap_s before `data_time` (data time), or a
        held detection once `data_time` reaches the end of its hold."""
        if self._last is None or self.state == "idle":
            return []
        if self.state == "held" and data_time >= self._hold_until - _EPS:
            return self._close("off")
        if data_time - self._last[0] > self._max_gap() + _EPS:
            return self._close("gap")
        return []

    def _max_gap(self) -> float:
        assert self._last is not None
        return self.max_gap_s if self.max_gap_s is not None else self._last[1] - self._last[0]

    def _event(self, state: str, end: float | None = None, reason: str | None = None) -> TriggerEvent:
        assert self._last is not None
        start, wend, p, probs = self._last
        return TriggerEvent(
            station=self.station, state=state, label=self.label, probability=p, probabilities=probs,
            onset=self._onset, window_start=start, window_end=wend, peak_probability=self._peak,
            end=end, close_reason=reason, detection=self._ref,
        )

    def _confirm(self) -> list[TriggerEvent]:
        assert self._last is not None
        if self.state == "pending" and self._last[0] - self._onset >= self.min_duration_s - _EPS:
            self.state = "active"
            self.stats["new"] += 1
            return [self._event("new")]
        return []

    def _close(self, reason: str) -> list[TriggerEvent]:
        state, self.state = self.state, "idle"
        if state == "held":  # it had ended below `off`; only the hold was still open (cut short by the end
            state, reason = "active", reason if reason in ("flush", "shutdown") else "off"  # of the data: flush)
        if state == "pending":
            self.stats["suppressed"] += 1
            log.debug("trigger_suppressed", station=self.station, label=self.label, reason=reason)
        if state != "active":
            return []
        self.stats["closed"] += 1
        return [self._event("closed", end=self._last_above_end, reason=reason)]


class TriggerBank:
    """Triggers for every station and trigger label; probabilities come as {label: p} or an array in label order.

    `overrides` ({"NET" or "NET.STA": {"on"|"off"|"min_duration": value}}, [trigger.overrides]) give a network or
    a station thresholds of its own (`quakemon.pipeline.settings.station_thresholds`); `reconfigure` changes the
    thresholds of a running bank.
    """

    def __init__(
        self,
        on: float,
        off: float,
        min_duration_s: float,
        labels: Sequence[str],
        trigger_labels: Sequence[str] | None = None,
        max_gap_s: float | None = None,
        retrigger_hold_s: float = 0.0,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        calibration: CalibrationSettings | None = None,
        split_on_new_p: bool = False,
    ) -> None:
        check_bank_thresholds(on, off, min_duration_s, max_gap_s, retrigger_hold_s, overrides or {})
        self.retrigger_hold_s = float(retrigger_hold_s)
        self.split_on_new_p = bool(split_on_new_p)
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        #: per-station thresholds (`quakemon.pipeline.calibration`), None when calibration is off
        self.calibration = Calibration(on, calibration) if calibration and calibration.mode != "off" else None
        self.labels = tuple(str(label) for label in labels)
        if trigger_labels is None:
            trigger_labels = [label for label in self.labels if label.lower() != "noise"]
        unknown = [label for label in trigger_labels if label not in self.labels]
        if unknown or not trigger_labels:
            raise ConfigError(f"trigger labels {list(trigger_labels)} must be a non-empty subset of the model's "
                              f"labels {list(self.labels)}")
        self.trigger_labels = tuple(trigger_labels)
        self.on, self.off, self.min_duration_s, self.max_gap_s = on, off, min_duration_s, max_gap_s
        self._triggers: dict[tuple[str, str], StationTrigger] = {}

    def _as_dict(self, probabilities: Mapping[str, float] | np.ndarray | Sequence[float],
                 labels: Sequence[str] | None) -> dict[str, float]:
        if isinstance(probabilities, Mapping):
            return {str(k): float(v) for k, v in probabilities.items()}
        names = tuple(labels) if labels is not None else self.labels
        if type(probabilities) is list and len(probabilities) == len(names):  # e.g. a row of ndarray.tolist()
            return dict(zip(names, map(float, probabilities), strict=True))
        values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if values.size != len(names):
            raise ConfigError(f"got {values.size} probabilities for {len(names)} labels {list(names)}")
        return dict(zip(names, values.tolist(), strict=True))

    def trigger(self, station: str, label: str) -> StationTrigger:
        """The trigger of one station and label (created on first use)."""
        key = (station, label)
        if key not in self._triggers:
            self._triggers[key] = StationTrigger(*self.thresholds(station), label, station, self.max_gap_s,
                                                 self.retrigger_hold_s, self.split_on_new_p)
        return self._triggers[key]

    def thresholds(self, station: str) -> tuple[float, float, float]:
        """(on, off, min_duration_s) of `station`: the bank's values with its network's and its own overrides."""
        return station_thresholds(station, self.on, self.off, self.min_duration_s, self.overrides)

    def reconfigure(self, on: float, off: float, min_duration_s: float, retrigger_hold_s: float,
                    overrides: Mapping[str, Mapping[str, float]]) -> list[str]:
        """New thresholds for every station, existing triggers included (checked first: ConfigError changes
        nothing); returns the stations whose (on, off, min_duration_s) changed.

        A trigger keeps its state (pending, active, held) and its detection: the new values decide from the next
        window on, so an open detection closes at its first window below the new `off`, and a pending one is
        confirmed against the new `min_duration_s`."""
        check_bank_thresholds(on, off, min_duration_s, self.max_gap_s, retrigger_hold_s, overrides)
        before = {station: self.thresholds(station) for station, _ in self._triggers}
        self.on, self.off, self.min_duration_s = on, off, min_duration_s
        self.retrigger_hold_s = float(retrigger_hold_s)
        self.overrides = {k: dict(v) for k, v in overrides.items()}
        if self.calibration is not None:
            self.calibration.on = on  # a station whose on changed warms up again (Calibration.station)
        for (station, _), trig in self._triggers.items():
            trig.on, trig.off, trig.min_duration_s = self.thresholds(station)
            trig.retrigger_hold_s = self.retrigger_hold_s
        return sorted(station for station, old in before.items() if self.thresholds(station) != old)

    def take_opened(self, station: str) -> list[DetectionRef]:
        """The detections the station's last window opened (one per trigger label at most), each once: the
        caller picks that window and sets their `pick` before building their bodies."""
        out = []
        for label in self.trigger_labels:
            trig = self._triggers.get((station, label))
            if trig is not None and trig.opened is not None:
                out.append(trig.opened)
                trig.opened = None
        return out

    def update(
        self,
        station: str,
        window_start: Any,
        window_end: Any,
        probabilities: Mapping[str, float] | np.ndarray | Sequence[float],
        labels: Sequence[str] | None = None,
        new_phase: Callable[[DetectionRef], bool] | None = None,
    ) -> list[TriggerEvent]:
        """Feed one station's window; returns its transitions for every trigger label, in label order.
        new_phase: see `StationTrigger._update` (None: a re-trigger inside the hold always extends)."""
        probs = self._as_dict(probabilities, labels)
        start, end = to_timestamp(window_start), to_timestamp(window_end)
        events: list[TriggerEvent] = []
        for label in self.trigger_labels:  # (each trigger keeps `probs`: a dict of its own, never changed)
            trig = self.trigger(station, label)
            if self.calibration is not None and label in probs:
                floor = self.thresholds(station)[0]  # the station's own on (an override) is its floor
                trig.on = self.calibration.threshold(station, label, start, end, probs[label], floor)
            events.extend(trig._update(start, end, probs, new_phase))
        return events

    def stays_quiet(self, station: str, high: float) -> bool:
        """Whether windows whose trigger-label probabilities are finite and at most `high` leave every trigger of
        the station idle and change nothing but the window each remembers (`update_quiet`): no calibration, every
        trigger idle with no detection waiting in `take_opened`, and `high` below each one's ``on``."""
        return self.calibration is None and all(
            _idle_below(self.trigger(station, label), high) for label in self.trigger_labels)

    def update_quiet(self, station: str, first_start: float, last: tuple[float, float, dict[str, float]],
                     bounds: Mapping[str, tuple[float, float]]) -> bool:
        """Feed a run of the station's windows, in time order from one starting at `first_start` to `last` =
        (start, end, {label: p}), that leaves every trigger idle, in one step: what `update` of each window in
        turn does then (each trigger remembers the last window; nothing else changes, no event). bounds: each
        trigger label's (lowest, highest) probability over the run.

        Returns False, having changed nothing, unless that holds: no calibration (it learns from every window),
        every trigger of the station idle with no detection waiting in `take_opened`, the run starting after
        each trigger's last window, and every probability finite and below the trigger's ``on``."""
        if self.calibration is not None:
            return False
        trigs = [self.trigger(station, label) for label in self.trigger_labels]
        for trig in trigs:
            low, high = bounds.get(trig.label, (math.nan, math.nan))
            if not (math.isfinite(low) and _idle_below(trig, high)) or (
                    trig._last is not None and first_start <= trig._last[0]):
                return False
        start, end, probs = last
        for trig in trigs:
            trig._last = (start, end, probs[trig.label], probs)
        return True

    def flush(self) -> list[TriggerEvent]:
        """Close all open triggers (end of replay), in station then label order."""
        return [ev for key in sorted(self._triggers) for ev in self._triggers[key].flush()]

    def resume(self, label: str, ref: DetectionRef, last: tuple[float, float, float, dict[str, float]],
               peak: float) -> None:
        """Continue a detection that a previous run published ("new") and never closed: the trigger of
        `ref.station` and `label` becomes active with `ref` (so the same id and pick), as right after its window
        `last` = (start, end, p, probabilities). Windows that do not start after `last` are ignored; later ones
        go on with it (extended, held, closed by off, gap, expiry or shutdown), and no second "new" is made."""
        trig = self.trigger(ref.station, label)
        trig.state, trig._ref, trig.opened, trig._all_on = "active", ref, None, False
        trig._onset, trig._peak, trig._last_above_end, trig._last = ref.window_start, peak, last[1], last

    def shutdown(self) -> list[TriggerEvent]:
        """Close every open detection with close_reason "shutdown" (the service stops), in station then label
        order, so no "new" is left without its "closed"."""
        return [ev for key in sorted(self._triggers) for ev in self._triggers[key].shutdown()]

    def expire(self, data_time: Any, station: str | None = None) -> list[TriggerEvent]:
        """Close triggers whose last window started more than their max gap before `data_time` (close_reason
        "gap"), of every station or of `station` only, in station then label order.

        `data_time` is a data time: what "now" is for the stations concerned. The live service estimates it per
        station from the wall clock (see `quakemon.pipeline.detect.DetectionStage.expire_silent`).
        """
        t = to_timestamp(data_time)
        if station is not None:
            keys = [(station, label) for label in self.trigger_labels if (station, label) in self._triggers]
        else:
            keys = sorted(self._triggers)
        return [ev for key in keys for ev in self._triggers[key].expire(t)]

    @property
    def stats(self) -> dict[str, int]:
        """Counters summed over all triggers: new, closed, suppressed (shorter than min_duration), ignored,
        extended (re-triggers inside a hold)."""
        total = {"new": 0, "closed": 0, "suppressed": 0, "ignored": 0, "extended": 0, "new_inside_hold": 0,
                 "new_inside_active": 0}
        for trig in self._triggers.values():
            for key, value in trig.stats.items():
                total[key] += value
        total["open"] = sum(t.state in ("active", "held") for t in self._triggers.values())
        return total


def _idle_below(trig: StationTrigger, high: float) -> bool:
    """The trigger is idle with no detection waiting in `take_opened`, and `high` is below its ``on`` (False for
    NaN): windows up to `high` leave it idle."""
    return trig.state == "idle" and trig.opened is None and high < trig.on
