"""The inference stage's status shows the per-station thresholds in effect when [trigger] calibration is on."""

from __future__ import annotations

import numpy as np
from support.engines import AlwaysEarthquake

from quakemon.base.signals import StopFlag
from quakemon.pipeline.detect import DetectionStage, WindowMeta
from quakemon.pipeline.settings import CalibrationSettings
from quakemon.service.config import load_config
from quakemon.service.stages.inference import InferenceStage

T0 = 1_700_000_000.0


def test_status_carries_calibrated_on_only_with_calibration() -> None:
    inf = InferenceStage(load_config(None), StopFlag(), None, "unused.safetensors")
    cal = CalibrationSettings(mode="rate", history_s=600.0)
    inf.stage = DetectionStage(AlwaysEarthquake(), 0.8, 0.5, 2.0, "earthquake", overrides={"XX.B": {"on": 0.85}},
                               calibration=cal)
    metas = [WindowMeta(f"XX.{s}.", round((T0 + k) * 1e9), round((T0 + k + 20) * 1e9)) for s in "AB" for k in (0, 1)]
    inf.stage.process(np.zeros((len(metas), 1)), metas)
    assert inf.calibrated_on() == {"calibrated_on": {"XX.A./earthquake": 0.8, "XX.B./earthquake": 0.85}}  # warm-up
    inf.stage = DetectionStage(AlwaysEarthquake(), 0.8, 0.5, 2.0, "earthquake")
    assert inf.calibrated_on() == {}
