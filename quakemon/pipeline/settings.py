"""The default detection settings, in one place.

The Python API (`quakemon.api.Detector`), the replay (`DetectionRunner`, `replay`), the associator and the
daemon's configuration (`quakemon.service.config`) all take their defaults from the instances below, so a
notebook, a replay and a daemon started without settings detect alike. This module imports nothing heavy
(no torch), so that the configuration can read it cheaply.
"""

from __future__ import annotations

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
    """

    on: float = 0.7
    off: float = 0.5
    min_duration_s: float = 2.0
    label: str = "earthquake"
    retrigger_hold_s: float = 30.0
    new_pick_after_s: float = 20.0


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
ASSOCIATION = AssociationSettings()

#: Windows a replay (and the Python API) takes from the windower per pipeline batch; the model sees them in
#: forward-sized chunks (`quakemon.pipeline.engine.CPU_FORWARD_BATCH` on the CPU).
REPLAY_BATCH_SIZE = 256

__all__ = [
    "ASSOCIATION",
    "CALIBRATION",
    "INFERENCE",
    "REPLAY_BATCH_SIZE",
    "TRIGGER",
    "WINDOW",
    "AssociationSettings",
    "CalibrationSettings",
    "InferenceSettings",
    "TriggerSettings",
    "WindowSettings",
]
