"""Screen and refine in the replay, with the plain-contract detector (`support.screens.PLAIN_DETECTOR`) on real
recordings of the P catalogue: the screened replay publishes exactly the full-stride detection bodies (ids, onsets,
picks, closes) whatever the batching, the probability archive holds every window once (a window the screen let
pass: the values of its screen window, below the threshold), and windows held for a screen window that never
comes are decided by `release_held`."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client
from support.screens import PLAIN_DETECTOR, plain_teacher

from quakemon.data import realdata
from quakemon.pipeline.runner import DetectionRunner, replay

RECORDS = ("uh_uh3_2010-05-27", "manz_regional")  # 3.8 min, 3 components, 4 P; 10 min, vertical, a regional P
THRESHOLD = 0.1
VOLATILE = ("seq", "topic_seq", "epoch", "latency_s")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The cascade tests' teacher (`support.screens.PLAIN_DETECTOR`), not the bundled model."""
    return plain_teacher(tmp_path_factory.mktemp("model"))


def record(name: str):
    (rec,) = [r for r in realdata.local_events() if r.name == name]
    return realdata.load(rec)


def bodies(ckpt, inference, stream, every: int, batch_size: int) -> tuple[list[dict], dict]:
    with DetectionRunner(ckpt, inference=inference, screen_every=every, screen_threshold=THRESHOLD,
                         batch_size=batch_size) as runner:
        out = [*runner.add_stream(stream, chunk_s=5.0), *runner.finish()]
        return [{k: v for k, v in b.items() if k not in VOLATILE} for b in out], runner.stats


@pytest.mark.parametrize("name", RECORDS)
def test_the_screened_replay_publishes_the_full_stride_detections(ckpt, inference, name):
    stream = record(name)
    full, full_stats = bodies(ckpt, inference, stream, 1, 256)
    assert any(b["state"] == "new" for b in full) and "forwarded" not in full_stats
    for every, batch in ((4, 256), (4, 16), (8, 40)):
        screened, stats = bodies(ckpt, inference, stream, every, batch)
        assert screened == full, (every, batch)
        assert stats["windows"] == full_stats["windows"] and stats.get("late_windows", 0) == 0
        assert stats["forwarded"] + stats["screened_out"] == stats["inferred"] == full_stats["inferred"]
        assert stats["screened_out"] > 0  # the quiet stretches were screened


def test_the_probability_archive_holds_every_window_once(ckpt, tmp_path):
    stream = record("manz_regional")
    path = tmp_path / "manz.mseed"
    for tr in stream:
        tr.data = tr.data.astype(np.float32)
    stream.write(str(path), format="MSEED", encoding="FLOAT32")
    runs = {}
    for every in (1, 4):
        out = tmp_path / f"prob{every}"
        result = replay([str(path)], ckpt, device="cpu", precision="fp32", progress=False, keep_series=True,
                        probabilities=str(out), screen_every=every, screen_threshold=THRESHOLD)
        (series,) = result.series.values()
        st = Client(str(out)).get_waveforms("*", "*", "*", "LX1", UTCDateTime(1970, 1, 1), UTCDateTime(2100, 1, 1))
        archived = np.concatenate([tr.data for tr in st])
        times = np.concatenate([[round(t.ns) for t in tr.times("utcdatetime")] for tr in st])
        p = np.asarray(series.probabilities, np.float32)[:, 1]
        assert times.tolist() == list(series.end_ns) and len(st) == 1  # every window once, no gap
        assert np.array_equal(archived, p)  # what the replay decided, bit for bit
        runs[every] = p
    full, screened = runs[1], runs[4]
    same = np.isclose(screened, full, rtol=0, atol=1e-5)
    assert same.mean() > 0.2 and (~same).sum() > 50
    assert (screened[~same] < THRESHOLD).all() and (full[~same] < 0.7).all()  # let pass: below s, no trigger


def test_held_windows_of_a_silent_station_are_forwarded_and_decided(ckpt, inference):
    stream = record("manz_regional")
    stream = stream.slice(None, stream[0].stats.starttime + 62.5)  # noise before the P; last window 42 s: held
    with DetectionRunner(ckpt, inference=inference, screen_every=4, screen_threshold=THRESHOLD) as runner:
        list(runner.add_stream(stream))
        runner._pending += runner.windower.flush()
        list(runner._run_batch())
        list(runner._drain())
        held = runner.stage.screen.held()
        assert held > 0
        assert len(runner.stage.release_held(time.monotonic()).metas) == 0  # not silent yet
        result = runner.stage.release_held(time.monotonic() + 25.0)  # more than a window length of silence
        assert len(result.metas) == held and result.forwarded.all() and runner.stage.screen.held() == 0
        assert np.isfinite(result.probabilities).all()
        assert len(runner.stage.release_held(final=True).metas) == 0


def test_decide_without_spectra_is_refused_when_screening(ckpt, inference):
    from quakemon.pipeline.detect import DetectionStage, WindowMeta

    stage = DetectionStage(inference.engine, 0.7, 0.5, 2.0, "earthquake", screen_every=4)
    meta = WindowMeta("XX.STA.", 0, 20 * 10**9, valid=True)
    with pytest.raises(ValueError, match="spectra"):
        stage.decide([meta], np.full((1, 2), np.nan, np.float32))


def test_replay_cli_screen_options(ckpt, tmp_path, capsys):
    from quakemon.cli.app import main

    stream = record("uh_uh3_2010-05-27")
    path = tmp_path / "uh3.mseed"
    for tr in stream:
        tr.data = tr.data.astype(np.float32)
    stream.write(str(path), format="MSEED", encoding="FLOAT32")
    model = tmp_path / "model.safetensors"
    shutil.copyfile(PLAIN_DETECTOR, model)
    out = {}
    for every in ("1", "4"):
        dets = tmp_path / f"d{every}.jsonl"
        assert main(["replay", str(path), "--model", str(model), "--output", str(dets), "--quiet",
                     "--screen-every", every, "--screen-threshold", "0.1"]) == 0
        out[every] = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                      for line in dets.read_text().splitlines()]
    assert out["4"] == out["1"] and out["1"]
    capsys.readouterr()
    assert main(["replay", str(path), "--model", str(model), "--quiet", "--screen-every", "0"]) == 2
    assert "model.screen_every" in capsys.readouterr().err
    assert main(["replay", str(path), "--model", str(model), "--quiet", "--screen-threshold", "1"]) == 2
    assert "model.screen_threshold" in capsys.readouterr().err
