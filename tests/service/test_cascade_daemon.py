"""The cascade screen in the daemon: `quakemon run` with `[model] screen_net` on a looping `quakemon serve`
publishes the detections an in-process replay with the same screen publishes, and its probability archive holds
the same values for every window (the fill values of the windows not forwarded included), so the same windows
were forwarded. (The stage is `DetectionStage` in both, which holds no window for the cascade: nothing is lost or
delayed beyond what a killed stage loses without a screen, so the kill tests of the K-screen have no analogue.)

The checkpoint is the random tiny model with a rescaled head, the trigger thresholds are calibrated on a replay
of the same archive, and the screen (`support.screens.peakedness_net`) gets the threshold that passes every
window at or above the calibrated off.
"""

from __future__ import annotations

import numpy as np
from obspy import read
from support.pipeline import (
    calibrate,
    comparable,
    craft_checkpoint,
    daemon_first_pass,
    replay_series,
    write_archive,
)
from support.screens import FILL_LOGIT, clear_threshold, peakedness_net

from quakemon.models.checkpoint import load_checkpoint
from quakemon.models.screen_net import save_screen
from quakemon.training.screen_distill import score, series_features

SPEED = 20.0  # the 240 s archive streams in 12 s per pass (looped, each pass shifted in time)
START_TIMEOUT = 120.0


def test_the_daemon_runs_the_cascade_as_the_replay_does(tmp_path, tiny_checkpoint):
    archive, start, span = write_archive(tmp_path / "rjob.mseed", blocks=8, event_every=4, seed=1)
    ckpt = craft_checkpoint(tiny_checkpoint, tmp_path / "crafted.safetensors", archive)
    end_ns = round((start + span) * 1e9)
    cal = calibrate(ckpt, archive, end_ns)
    loaded = load_checkpoint(ckpt)
    _, full = replay_series(ckpt, [archive], screen_every=1)
    (full_series,) = full.values()
    p_full = np.asarray(full_series.probabilities, np.float64)[:, 1]
    net = peakedness_net(loaded.contract)
    ((starts, feats),) = series_features(loaded, [read(str(archive))], net).values()
    assert np.array_equal(np.round(starts * 1e9).astype(np.int64), np.asarray(full_series.start_ns))
    sc = score(net, feats)
    threshold = clear_threshold(sc, p_full, cal.off)
    screen = save_screen(tmp_path / "screen.safetensors", peakedness_net(loaded.contract, FILL_LOGIT - threshold),
                         FILL_LOGIT, loaded.sha256, loaded.contract)
    model = {"screen_net": str(screen), "screen_every": 1}
    dets, series = replay_series(ckpt, [archive], on=cal.on, off=cal.off, min_duration_s=0.0, **model)
    (st,) = series.values()
    p = np.asarray(st.probabilities, np.float64)[:, 1]
    assert (np.abs(p - p_full) > 1e-6).sum() >= 10  # the replay did not forward some windows (their fill values)
    assert {d["state"] for d in dets} == {"new", "closed"}

    live, archived = daemon_first_pass(tmp_path, archive, ckpt, cal, model, len(p), SPEED, START_TIMEOUT)
    assert comparable(live, end_ns) == comparable(dets, end_ns)
    assert comparable(live, end_ns)
    check = [(e, v) for e, v in zip(st.end_ns, p, strict=True) if e <= end_ns]
    assert len(check) > 200
    assert all(abs(archived[e] - v) <= 1e-4 for e, v in check), [(e, archived.get(e), v) for e, v in check
                                                                 if abs(archived.get(e, -1) - v) > 1e-4][:5]
