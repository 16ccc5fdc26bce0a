"""The default detection settings, in one place.

The Python API (`quakemon.api.Detector`), the replay (`DetectionRunner`, `replay`), the associator and the
daemon's configuration (`quakemon.service.config`) all take their defaults from the instances below, so a
notebook, a replay and a daemon started without settings detect alike. This module imports nothing heavy
(no torch), so that the configuration can read it cheaply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """The window grid.

    stride_s:    window starts are k * stride_s since the epoch.
    max_missing: windows missing more than this fraction of their samples are skipped (not inferred).
    """

    stride_s: float = 1.0
    max_missing: float = 0.1


@dataclass(frozen=True, slots=True)
class TriggerSettings:
    """Window probabilities -> detections (hysteresis, see `quakemon.pipeline.trigger`).

    on:             probability that opens a detection.
    off:            probability below which it closes (0 < off <= on).
    min_duration_s: shortest detection that is published, between window starts.
    label:          the class label that triggers.
    retrigger_hold_s: one detection per event per station: a detection that fell below ``off`` is held this
                    long (from the start of its first window below ``off``); a window reaching ``on`` inside the
                    hold extends it (same id, same pick: the S wave, the coda, re-triggers) and its "closed" is
                    sent when the hold ends. 0 closes at once. docs/picks.md has the measurements behind the
                    defaults.
    new_pick_after_s: the exception to the hold: a re-trigger whose fresh P pick passes the picker's SNR gate
                    and lies this long or more after the held detection's pick is a new event (a new detection);
                    longer than local S-P times, so the S wave of the same event extends instead.
    split_on_new_p: the same check for a detection still above ``off``: a window reaching ``on`` whose fresh pick
                    is such a new P closes the active detection and opens a new one (one detection per event,
                    also when the probability never fell in between). docs/detection-quality.md has the numbers.
    """

    on: float = 0.7
    off: float = 0.5
    min_duration_s: float = 2.0
    label: str = "earthquake"
    retrigger_hold_s: float = 30.0
    new_pick_after_s: float = 20.0
    split_on_new_p: bool = False


#: The keys a [trigger.overrides] entry may set; each replaces the global value of the same name.
OVERRIDE_KEYS = ("on", "off", "min_duration")
_OVERRIDE_TARGET = re.compile(r"^[A-Za-z0-9]{1,2}(\.[A-Za-z0-9]{1,5})?$")


def check_trigger_overrides(table: Mapping[str, Mapping[str, object]], on: float | None = None,
                            off: float | None = None) -> dict[str, dict[str, float]]:
    """[trigger.overrides] checked: {"NET" or "NET.STA": {key: value}} with keys from OVERRIDE_KEYS, on and off
    in (0, 1], min_duration in [0, 3600] s; with the global `on` and `off`, also off <= on for every network and
    station once merged as `station_thresholds` does. Raises ValueError saying what was expected."""
    out: dict[str, dict[str, float]] = {}
    for target, values in table.items():
        if not _OVERRIDE_TARGET.match(str(target)):
            raise ValueError(f'a "NET" or "NET.STA" code as each key (not {target!r})')
        if not isinstance(values, Mapping) or not values:
            raise ValueError(f"a table of {', '.join(OVERRIDE_KEYS)} for each key (not {values!r} for {target})")
        out[str(target)] = {}
        for key, value in values.items():
            hi, lo_open = (1.0, True) if key in ("on", "off") else (3600.0, False)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if key not in OVERRIDE_KEYS or not ok or value > hi or (value <= 0 if lo_open else value < 0):
                raise ValueError(f"{', '.join(OVERRIDE_KEYS)} with on, off in (0, 1] and min_duration in [0, 3600] "
                                 f"(not {key} = {value!r} for {target})")
            out[str(target)][key] = float(value)
    for target in out if on is not None and off is not None else ():
        t_on, t_off, _ = station_thresholds(target, on, off, 0.0, out)
        if not t_off <= t_on:
            raise ValueError(f"off <= on for {target} (on {t_on:g}, off {t_off:g} with the global values)")
    return out


def station_thresholds(station: str, on: float, off: float, min_duration_s: float,
                       overrides: Mapping[str, Mapping[str, float]]) -> tuple[float, float, float]:
    """(on, off, min_duration_s) for `station` ("NET.STA" or "NET.STA.LOC"): the global values, replaced key by key
    by the override of its network ("NET"), then by that of the station itself ("NET.STA")."""
    parts = station.split(".")
    values = {"on": on, "off": off, "min_duration": min_duration_s}
    for target in (parts[0], ".".join(parts[:2])):
        values.update(overrides.get(target, {}))
    return values["on"], values["off"], values["min_duration"]


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """Per-station trigger thresholds that hold a target false-alarm rate (see `quakemon.pipeline.calibration`).

    mode:         "off" (every station triggers at ``on``) or "rate".
    rate_per_day: target upward crossings of the threshold per station-day (an upper bound on detections).
    history_s:    how much of a station's recent data the threshold is learnt from.
    slots:        the history's time slots; the threshold is recomputed when a slot starts.
    warmup_s:     data a station needs before its threshold leaves ``on`` (None: history_s).
    """

    mode: str = "off"
    rate_per_day: float = 1.0
    history_s: float = 6 * 3600.0
    slots: int = 12
    warmup_s: float | None = None


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    """Where and how the model runs (see `quakemon.pipeline.engine`).

    device:    "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N".
    precision: "auto", "fp32", "bf16" or "fp16".
    graph:     "auto" (a frozen TorchScript graph on the CPU) or "eager".
    """

    device: str = "auto"
    precision: str = "auto"
    graph: str = "auto"


@dataclass(frozen=True, slots=True)
class ScreenSettings:
    """Screen and refine (`quakemon.pipeline.screen`): a quiet station's model runs on one window in ``every``.

    every:     K; 1 forwards every window (off). A station's windows are decided up to (K - 1) strides later.
    threshold: s; a screen window scoring s or more (highest probability over the trigger labels) makes the
               station forward every window until it has stayed below s for a window length. Below the trigger's
               ``off``. docs/performance.md ("Screen and refine") has the measurements behind the defaults.
    """

    every: int = 4
    threshold: float = 0.1


@dataclass(frozen=True, slots=True)
class AssociationSettings:
    """Network coincidence of station detections into events (see `quakemon.pipeline.associate`)."""

    threshold: float = 3.0
    window_s: float = 5.0
    hold_s: float = 10.0
    retrigger_s: float = 20.0
    default_weight: float = 1.0
    velocity_kms: float = 3.5
    tolerance_s: float = 1.0


WINDOW = WindowSettings()
TRIGGER = TriggerSettings()
CALIBRATION = CalibrationSettings()
INFERENCE = InferenceSettings()
SCREEN = ScreenSettings()
ASSOCIATION = AssociationSettings()

#: Windows a replay (and the Python API) takes from the windower per pipeline batch; the model sees them in
#: forward-sized chunks (`quakemon.pipeline.engine.CPU_FORWARD_BATCH` on the CPU).
REPLAY_BATCH_SIZE = 256

__all__ = [
    "ASSOCIATION",
    "CALIBRATION",
    "INFERENCE",
    "OVERRIDE_KEYS",
    "REPLAY_BATCH_SIZE",
    "SCREEN",
    "TRIGGER",
    "WINDOW",
    "AssociationSettings",
    "CalibrationSettings",
    "InferenceSettings",
    "ScreenSettings",
    "TriggerSettings",
    "WindowSettings",
    "check_trigger_overrides",
    "station_thresholds",
]
