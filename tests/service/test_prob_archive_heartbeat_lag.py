"""The inference stage's heartbeat `lag_s`: processing lag from the windows' arrival times, never from the data's
time stamps. The stage object is built without starting it (no model, no sockets bound): `processing_lag_s`
and `inferred` are exercised directly, with real WindowMeta and Batch objects."""

from __future__ import annotations

import time

import numpy as np
import pytest

from quakemon.base.signals import StopFlag
from quakemon.pipeline.detect import WindowMeta
from quakemon.service.config import Config
from quakemon.service.stages.inference import InferenceStage
from quakemon.service.stages.messages import SPECTRA, Batch

NS = 1_000_000_000
OLD_END_NS = 1_251_072_020 * NS  # 2009: archive data


@pytest.fixture
def stage():
    st = InferenceStage(Config(), StopFlag(), None, "unused.safetensors")
    yield st
    st.ctx.term()


def metas(arrivals: list[float]) -> list[WindowMeta]:
    return [WindowMeta("BW.RJOB.", OLD_END_NS - 20 * NS + k * NS, OLD_END_NS + k * NS, arrival=a)
            for k, a in enumerate(arrivals)]


def test_no_lag_before_any_window(stage: InferenceStage):
    assert stage.processing_lag_s(time.time()) is None


def test_lag_is_arrival_to_inference_of_the_oldest_window_of_the_newest_batch(stage: InferenceStage):
    now = time.time()
    stage.inferred(metas([now - 2.0, now - 0.5]), np.full((2, 2), 0.5, np.float32))
    lag = stage.processing_lag_s(time.time())
    assert 2.0 <= lag < 10.0  # not the data's age: that is 17 years
    assert stage.newest_end_ns == OLD_END_NS + NS


def test_windows_waiting_in_the_queue_raise_the_lag_as_they_wait(stage: InferenceStage):
    now = time.time()
    stage.inferred(metas([now - 0.1]), np.full((1, 2), 0.5, np.float32))
    waiting = metas([now - 30.0, now - 29.0])
    stage.queue.put(Batch(SPECTRA, tuple(waiting), {"spectra": np.zeros((2, 1), np.float32)}))
    assert 30.0 <= stage.processing_lag_s(now + 1.0) < 32.0  # falling behind shows at once, before inference
    stage.queue.popleft()
    assert stage.processing_lag_s(now + 1.0) < 10.0
