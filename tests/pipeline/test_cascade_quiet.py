"""The cascade's windows not forwarded are fed to the triggers a run per station (`quakemon.pipeline.cascade.
QuietRuns`, `TriggerBank.update_quiet`): the same detections, probabilities, trigger state and pick context as
feeding them one window at a time, on a real recording (the bundled model, a `support.screens` screen)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.screens import FILL_LOGIT, FIRST, VOLATILE, full_stride_scores, peakedness_net, two_stations

from quakemon.models.screen_net import Screen as ScreenModel
from quakemon.models.screen_net import save_screen
from quakemon.pipeline.cascade import CascadeScreen, QuietRuns
from quakemon.pipeline.runner import DetectionRunner
from quakemon.pipeline.screen import ScreenItem
from quakemon.pipeline.trigger import TriggerBank


def replay(ckpt, stream, one_by_one: bool = False, **kw):
    """Bodies, rows {(station, start_ns): probabilities}, stats, trigger states and pick context of one replay on
    the calling thread (no forward pool: the same forwards in the same batches every time). one_by_one: every
    window the screen does not forward through `_feed`, one at a time (the quiet runs refused)."""
    calls = []
    with DetectionRunner(ckpt, device="cpu", precision="fp32", overlap=False, keep_series=True, batch_size=64,
                         screen_every=1, **kw) as runner:
        stage = runner.stage
        update_quiet = stage.triggers.update_quiet

        def counted(*a):
            calls.append(a[0])
            return update_quiet(*a)

        stage.triggers.update_quiet = counted
        if one_by_one:
            stage._feed_quiet = lambda *a: False
        bodies = [{k: v for k, v in b.items() if k not in VOLATILE} for b in
                  [*runner.add_stream(stream.copy(), chunk_s=5.0), *runner.finish()]]
        rows = {(name, s): p for name, series in runner.series.items()
                for s, p in zip(series.start_ns, np.asarray(series.probabilities, np.float32), strict=True)}
        triggers = {key: (t.state, t._last, dict(t.stats)) for key, t in stage.triggers._triggers.items()}
        context = {k: [(s, c, r.tobytes()) for s, c, r in v] for k, v in stage.context.rows.items()}
        return bodies, rows, dict(runner.stats), triggers, context, len(calls)


@pytest.fixture(scope="module")
def scored(ckpt):
    """The stream, its full-stride replay and the peakedness score of each window."""
    stream = two_stations()
    return (stream, *full_stride_scores(ckpt, stream, peakedness_net(ckpt.contract, **FIRST)))


def test_quiet_runs_decide_as_one_window_at_a_time(ckpt, scored, tmp_path):
    stream, full, scores = scored
    # the screen passes the peakiest 40 % (the event's windows among them), the rest are quiet
    threshold = float(np.quantile(scores, 0.6))
    net = peakedness_net(ckpt.contract, FILL_LOGIT - threshold, **FIRST)
    screen = str(save_screen(tmp_path / "peak.safetensors", net, FILL_LOGIT, ckpt.sha256, ckpt.contract))
    runs = replay(ckpt, stream, screen_net=screen)
    each = replay(ckpt, stream, one_by_one=True, screen_net=screen)
    bodies, rows, stats, triggers, context, calls = runs
    assert any(b["state"] == "new" for b in full) and any(b["state"] == "new" for b in bodies)
    assert bodies == each[0]
    assert rows.keys() == each[1].keys() and all(np.array_equal(rows[k], each[1][k]) for k in rows)
    assert stats == each[2] and stats["screened_out"] >= stats["inferred"] // 3
    assert triggers == each[3] and context == each[4]
    assert each[5] == 0 and calls > 0  # (the runs were used, as many as the decisions and the stations ask)
    assert calls < stats["screened_out"] // 2, (calls, stats)


def cascade(labels=("noise", "earthquake"), columns=(1,), threshold: float = FILL_LOGIT) -> CascadeScreen:
    net = peakedness_net(type("C", (), {"n_channels": 3, "spectrogram_shape": (33, 64)})(), **FIRST)
    return CascadeScreen(ScreenModel(net, threshold, {}), list(labels), list(columns))


@pytest.mark.parametrize(("labels", "columns"), [(("noise", "earthquake"), (1,)), (("noise", "p", "s"), (1, 2)),
                                                 (("p", "s"), (0, 1))])
def test_fill_rows_are_the_fill_of_each_window(labels, columns):
    screen = cascade(labels, columns)
    scores = [-math.inf, -1e300, -745.2, -40.0, -7.0, -2.5000001, FILL_LOGIT, -1.0, 3.0, 50.0, 1e300]
    scores += np.random.default_rng(0).normal(-4.0, 3.0, 200).tolist()
    rows = screen.fill_rows(scores)
    assert rows.dtype == np.float32
    assert np.array_equal(rows, np.stack([screen.fill(s) for s in scores]))


def test_update_quiet_is_each_update_or_refuses():
    labels = ["noise", "earthquake"]
    a = TriggerBank(0.7, 0.5, 2.0, labels, max_gap_s=5.0)
    b = TriggerBank(0.7, 0.5, 2.0, labels, max_gap_s=5.0)
    windows = [(10.0 + k, 40.0 + k, 0.01 * (k % 7)) for k in range(20)]  # a gap closes nothing of an idle trigger
    windows += [(60.0 + k, 90.0 + k, 0.3) for k in range(5)]
    for start, end, p in windows:
        assert a.update("XX.A.", start, end, [1 - p, p]) == []
    last = windows[-1]
    probs = {"noise": 1 - last[2], "earthquake": last[2]}
    assert b.update_quiet("XX.A.", windows[0][0], (last[0], last[1], probs), {"earthquake": (0.0, 0.3)})
    (ta,), (tb,) = a._triggers.values(), b._triggers.values()
    assert (ta.state, ta._last, ta.stats) == (tb.state, tb._last, tb.stats)
    # refused, nothing changed: a value at `on`, a non-finite one, a run not after the last window, a busy trigger
    for first, bounds in ((100.0, {"earthquake": (0.0, 0.7)}), (100.0, {"earthquake": (-math.inf, 0.1)}),
                          (64.0, {"earthquake": (0.0, 0.1)}), (100.0, {"earthquake": (0.0, math.nan)})):
        assert not b.update_quiet("XX.A.", first, (101.0, 131.0, probs), bounds)
        assert tb._last == ta._last and tb.state == "idle"
    assert b.stays_quiet("XX.A.", 0.69) and not b.stays_quiet("XX.A.", 0.7)
    b.update("XX.A.", 100.0, 130.0, [0.1, 0.9])
    assert tb.state == "pending" and not b.stays_quiet("XX.A.", 0.1)
    assert not b.update_quiet("XX.A.", 101.0, (101.0, 131.0, probs), {"earthquake": (0.0, 0.1)})
    assert tb._last[0] == 100.0


def test_a_station_not_eligible_is_fed_one_window_at_a_time_after_its_run():
    screen = cascade()
    fed: list[tuple[list[str], np.ndarray]] = []
    ok = {"A": True, "B": True}
    runs = QuietRuns(screen, lambda items, rows: fed.append(([i.meta.station + str(i.meta.start_ns) for i in items],
                                                              rows)), lambda station: ok[station])
    meta = type("M", (), {"valid": True})

    def item(station, start):
        m = meta()
        m.station, m.start_ns = station, start
        return ScreenItem(m)

    runs.add(item("A", 1), -5.0)
    runs.add(item("B", 1), -6.0)
    runs.add(item("A", 2), -7.0)
    assert fed == []
    ok["A"] = False
    runs.add(item("A", 3), -8.0)  # (eligibility is asked again once the station's run was handed on)
    assert fed == []
    runs.flush("A")
    ok["A"] = False
    runs.add(item("A", 4), -9.0)
    runs.add(item("A", 5), -4.0)
    runs.flush()
    names = [n for n, _ in fed]
    assert names == [["A1", "A2", "A3"], ["A4"], ["A5"], ["B1"]]
    assert np.array_equal(fed[0][1], screen.fill_rows([-5.0, -7.0, -8.0]))


def test_batch_components_are_those_of_the_batch():
    from quakemon.pipeline.pick_context import BatchComponents, PickContext

    w = np.random.default_rng(2).standard_normal((9, 3, 500)).astype(np.float32)
    w[1, 0] = 5.0  # constant vertical: the first usable horizontal
    w[2, 0, 7] = np.nan
    w[3, :2] = 0.0
    w[4] = np.inf
    whole = PickContext.components(w)
    assert whole[:5] == [0, 1, 1, 2, 0]
    comps = BatchComponents(w)
    assert comps.of([4, 1, 8]) == [whole[4], whole[1], whole[8]] and comps[2] == whole[2]
    assert comps.of(list(range(9))) == whole


def test_release_held_decides_queued_windows_with_the_cascade(ckpt, inference, tmp_path):
    """Windows left in the cascade's queue (a decision cut short) are decided by `release_held`: a quiet one
    with its fill row, one with no score forwarded."""
    from quakemon.pipeline.detect import DetectionStage, WindowMeta

    net = peakedness_net(ckpt.contract, **FIRST)
    screen = save_screen(tmp_path / "s.safetensors", net, FILL_LOGIT, ckpt.sha256, ckpt.contract)
    stage = DetectionStage(inference.engine, 0.7, 0.5, 2.0, "earthquake", screen_net=str(screen))
    f, t = ckpt.contract.spectrogram_shape
    spectra = np.abs(np.random.default_rng(3).standard_normal((2, ckpt.contract.n_channels, f, t))).astype(np.float32)
    ns = 1_000_000_000
    metas = [WindowMeta("XX.A.", k * ns, (k + 30) * ns, valid=True) for k in range(2)]
    stage.screen._scores[("XX.A.", 0)] = -10.0  # (as `wanted` keeps it: quiet)
    for i, meta in enumerate(metas):
        assert stage.screen.offer(ScreenItem(meta, (spectra, i, None, None)), 0.0)
    result = stage.release_held(final=True)
    assert [m.start_ns for m in result.metas] == [0, ns] and result.forwarded.tolist() == [False, True]
    assert np.array_equal(result.probabilities[0], stage.screen.fill(-10.0))
    assert np.array_equal(result.probabilities[1], inference.engine.predict(spectra[1:])[0])
    assert stage.screen.held() == 0 and stage.stats["screened_out"] == 1 and stage.stats["forwarded"] == 1
