"""The cascade screen (`[model] screen_net`, `quakemon.pipeline.cascade`) in the replay, with the plain-contract
detector (`support.screens.PLAIN_DETECTOR`) on real recordings of the P catalogue written as MiniSEED.

The screens are built from `ScreenNet` with fixed weights (no screen checkpoint ships with the repository):
`support.screens.peakedness_net`, whose score is the peakedness of the window's log spectrogram (its highest
smoothed value less its mean), saved with `save_screen` for that detector. Its threshold is chosen on the
record itself with the distillation's rule (`choose_threshold`: the lowest score of a window the detector scores
>= p_min), lowered until no score lies within 1e-4 of it (`clear_threshold`), which tests the pipeline's rule
and plumbing, not how well a screen generalises (docs/performance.md measures that)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client
from support.screens import FILL_LOGIT, FIRST, PLAIN_DETECTOR, POOLED, clear_threshold, peakedness_net, plain_teacher

from quakemon.data import realdata
from quakemon.models.screen_net import save_screen
from quakemon.pipeline.runner import DetectionRunner, replay

VOLATILE = ("seq", "topic_seq", "epoch", "latency_s")

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The cascade tests' teacher (`support.screens.PLAIN_DETECTOR`), not the bundled model."""
    return plain_teacher(tmp_path_factory.mktemp("model"))


def mseed(tmp_path, name: str):
    (rec,) = [r for r in realdata.local_events() if r.name == name]
    stream = realdata.load(rec)
    path = tmp_path / f"{name}.mseed"
    for tr in stream:
        tr.data = tr.data.astype(np.float32)
    stream.write(str(path), format="MSEED", encoding="FLOAT32")
    return stream, path


def run(ckpt, inference, stream, batch_size: int = 256, **kw):
    """(bodies without volatile fields, stats, {start_ns: probabilities row}, {start_ns: score of `scorer`})."""
    scorer = kw.pop("scorer", None)
    with DetectionRunner(ckpt, inference=inference, screen_every=1, keep_series=True, batch_size=batch_size,
                         **kw) as runner:
        scores: dict[int, float] = {}
        if scorer is not None:
            infer = runner.stage.infer

            def hooked(spectra, metas):
                with torch.inference_mode():
                    s = scorer(torch.as_tensor(np.asarray(spectra))).numpy()
                scores.update((m.start_ns, float(v)) for m, v in zip(metas, s, strict=True))
                return infer(spectra, metas)

            runner.stage.infer = hooked
        out = [*runner.add_stream(stream, chunk_s=5.0), *runner.finish()]
        (series,) = runner.series.values()
        rows = dict(zip(series.start_ns, np.asarray(series.probabilities, np.float32), strict=True))
        return [{k: v for k, v in b.items() if k not in VOLATILE} for b in out], dict(runner.stats), rows, scores


@pytest.mark.parametrize("arch", [FIRST, POOLED], ids=["first architecture", "pooled"])
def test_a_screen_passing_every_window_gives_the_full_stride_replay(ckpt, tmp_path, arch):
    """Replay of real MiniSEED with a screen whose threshold every window reaches: the same detections, the same
    probabilities in the series and in the probability archive, bit for bit (both architectures)."""
    stream, path = mseed(tmp_path, "manz_regional")
    screen = save_screen(tmp_path / "all.safetensors", peakedness_net(ckpt.contract, **arch), -1e6, ckpt.sha256,
                         ckpt.contract)
    runs = {}
    for name, kw in (("full", {}), ("cascade", {"screen_net": str(screen)})):
        out = tmp_path / f"prob_{name}"
        result = replay([str(path)], ckpt, device="cpu", precision="fp32", progress=False, keep_series=True,
                        probabilities=str(out), screen_every=1, **kw)
        st = Client(str(out)).get_waveforms("*", "*", "*", "LX1", UTCDateTime(1970, 1, 1), UTCDateTime(2100, 1, 1))
        (series,) = result.series.values()
        dets = [{k: v for k, v in b.items() if k not in VOLATILE} for b in result.detections]
        runs[name] = (dets, np.asarray(series.probabilities, np.float32), np.concatenate([tr.data for tr in st]))
    (d_full, p_full, a_full), (d_cas, p_cas, a_cas) = runs["full"], runs["cascade"]
    assert any(d["state"] == "new" for d in d_full)
    assert d_cas == d_full
    assert np.array_equal(p_cas, p_full) and np.array_equal(a_cas, a_full) and len(a_full) == len(p_full)


@pytest.fixture(scope="module")
def manz_full(ckpt, inference, tmp_path_factory):
    """manz_regional and its replay without a screen (scored by the unshifted peakedness net), once for the
    parametrized cases below, which only read it."""
    stream, _ = mseed(tmp_path_factory.mktemp("manz"), "manz_regional")
    return stream, run(ckpt, inference, stream.copy(), scorer=peakedness_net(ckpt.contract, **FIRST))


@pytest.mark.parametrize(("p_min", "batch_size"), [(0.1, 256), (0.1, 7), (0.7, 256)])
def test_the_cascade_gives_the_full_stride_detections_and_forwards_fewer_windows(ckpt, inference, tmp_path,
                                                                                   manz_full, p_min, batch_size):
    """p_min 0.1: the distillation's choice. 0.7 (the trigger's on): only windows that could open a detection
    pass; the rest of an event's windows are forwarded because the trigger is busy (by `infer` when the station was
    busy as their batch was submitted, else by `decide` itself). The first architecture's peakedness separates
    this record's quiet windows (`support.screens.FIRST`)."""
    source, (full, full_stats, full_rows, scores) = manz_full
    stream = source.copy()
    starts = sorted(full_rows)
    p = np.array([full_rows[s][1] for s in starts])
    sc = np.array([scores[s] for s in starts])
    threshold = clear_threshold(sc, p, p_min)  # (no score within 1e-4: two forwards' last bits)
    net = peakedness_net(ckpt.contract, FILL_LOGIT - threshold, **FIRST)  # the same scores, shifted: threshold -2.5
    screen = save_screen(tmp_path / "peak.safetensors", net, FILL_LOGIT, ckpt.sha256, ckpt.contract)

    bodies, stats, rows, _ = run(ckpt, inference, stream, batch_size=batch_size, screen_net=str(screen))
    assert any(b["state"] == "new" for b in full)
    assert bodies == full
    assert stats["windows"] == full_stats["windows"] and stats.get("late_windows", 0) == 0
    assert stats["forwarded"] + stats["screened_out"] == stats["inferred"] == full_stats["inferred"]
    assert stats["screened_out"] >= stats["inferred"] // 5  # the quiet stretches were not forwarded
    if p_min == 0.7:  # windows below the threshold were forwarded for a busy trigger (by `infer` or by `decide`:
        # which one depends on how far the pool's batches ran ahead of the decisions)
        assert stats["forwarded"] > int((sc >= threshold).sum())
    fill = 1.0 / (1.0 + math.exp(-FILL_LOGIT))
    shifted = sc + FILL_LOGIT - threshold
    quiet = shifted < FILL_LOGIT - 1e-4  # (clear of the threshold: float32 scores of two forwards)
    assert quiet.sum() >= stats["screened_out"] // 2
    for s, q, z in zip(starts, quiet, shifted, strict=True):
        row = rows[s]
        if np.allclose(row, full_rows[s], rtol=0, atol=1e-5):  # forwarded (by decide: from another forward)
            continue
        # not forwarded: the trigger (and the archive) saw the fill value, below the screen's threshold
        assert q and row[1] == pytest.approx(1.0 / (1.0 + math.exp(-z)), abs=1e-5) and row[1] < fill
        assert row[0] == pytest.approx(1.0 - row[1], abs=1e-6)
    assert sum(not np.allclose(rows[s], full_rows[s], rtol=0, atol=1e-5) for s in starts) == stats["screened_out"]


def test_the_cascade_refuses_the_k_screen_and_another_detector(ckpt, inference, tmp_path):
    from quakemon.models.screen_net import ScreenCheckpointError
    from quakemon.pipeline.detect import DetectionStage

    net = peakedness_net(ckpt.contract)
    screen = save_screen(tmp_path / "s.safetensors", net, FILL_LOGIT, ckpt.sha256, ckpt.contract)
    with pytest.raises(ValueError, match="screen_net and screen_every > 1 exclude each other"):
        DetectionStage(inference.engine, 0.7, 0.5, 2.0, "earthquake", screen_every=4, screen_net=str(screen))
    other = save_screen(tmp_path / "o.safetensors", peakedness_net(ckpt.contract), FILL_LOGIT, "cd" * 32, ckpt.contract)
    with pytest.raises(ScreenCheckpointError, match="distilled from detector cdcdcdcd"):
        DetectionStage(inference.engine, 0.7, 0.5, 2.0, "earthquake", screen_net=str(other))


def test_replay_cli_screen_net(ckpt, tmp_path, capsys):
    from quakemon.cli.app import main

    _, path = mseed(tmp_path, "uh_uh3_2010-05-27")
    model = tmp_path / "model.safetensors"
    shutil.copyfile(PLAIN_DETECTOR, model)
    screen = save_screen(tmp_path / "all.safetensors", peakedness_net(ckpt.contract), -1e6, ckpt.sha256, ckpt.contract)
    out = {}
    for name, extra in (("full", ["--screen-every", "1"]), ("cascade", ["--screen-net", str(screen)])):
        dets = tmp_path / f"{name}.jsonl"
        assert main(["replay", str(path), "--model", str(model), "--output", str(dets), "--quiet", *extra]) == 0
        out[name] = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                     for line in dets.read_text().splitlines()]
    assert out["cascade"] == out["full"] and out["full"]
    capsys.readouterr()
    assert main(["replay", str(path), "--model", str(model), "--quiet", "--screen-net", str(screen),
                 "--screen-every", "4"]) == 2
    assert "model.screen_net: expected model.screen_every = 1" in capsys.readouterr().err
    assert main(["replay", str(path), "--model", str(model), "--quiet", "--screen-net",
                 str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "model.screen_net" in err and "does not exist" in err
