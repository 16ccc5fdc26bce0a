"""The cascade's forwards gathered across a runner's tasks (`quakemon.pipeline.cascade.Gather`): the decisions of
the tasks whose few passed windows wait for a gathered forward are those of each task forwarding its own windows
(the rule before it), on a real recording with the plain-contract detector (`support.screens.PLAIN_DETECTOR`) and
a `support.screens` screen."""

from __future__ import annotations

import numpy as np
import pytest
from support.screens import FILL_LOGIT, FIRST, VOLATILE, full_stride_scores, peakedness_net, plain_teacher, two_stations

from quakemon.models.screen_net import save_screen
from quakemon.pipeline.cascade import Gather
from quakemon.pipeline.runner import GATHER_WINDOWS, DetectionRunner


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The cascade tests' teacher (`support.screens.PLAIN_DETECTOR`), not the bundled model."""
    return plain_teacher(tmp_path_factory.mktemp("model"))


def replay(ckpt, inference, stream, gather: bool, **kw):
    """(bodies, rows {(station, start_ns): probabilities}, stats, (windows, tasks) of each gathered forward) of a
    replay on the forward pool's workers; gather False: every task forwards its own windows (no `Gather`)."""
    sizes: list[tuple[int, int]] = []
    with DetectionRunner(ckpt, inference=inference, keep_series=True, screen_every=1, **kw) as runner:
        if not gather:
            runner._gather = None
        else:
            assert isinstance(runner._gather, Gather)
            forward = runner._gather.forward

            def counted(tasks):
                sizes.append((sum(int(m.sum()) for _, _, m in tasks), sum(bool(m.any()) for _, _, m in tasks)))
                forward(tasks)

            runner._gather.forward = counted
        bodies = [{k: v for k, v in b.items() if k not in VOLATILE} for b in
                  [*runner.add_stream(stream.copy(), chunk_s=5.0), *runner.finish()]]
        assert not runner._held
        rows = {(name, s): p for name, series in runner.series.items()
                for s, p in zip(series.start_ns, np.asarray(series.probabilities, np.float32), strict=True)}
        return bodies, rows, dict(runner.stats), sizes


@pytest.fixture(scope="module")
def scored(ckpt):
    """The stream, and the peakedness score of each of its windows."""
    stream = two_stations()
    return stream, full_stride_scores(ckpt, stream, peakedness_net(ckpt.contract, **FIRST))[1]


@pytest.mark.parametrize("batch_size", [256, 150])
def test_gathered_forwards_decide_as_each_task_forwarding_its_own(ckpt, inference, scored, tmp_path, batch_size):
    """Batches of 256 (four tasks of 64) and 150 (three, the last of 22): a gathered forward spans up to a
    batch's tasks."""
    stream, scores = scored
    threshold = float(np.quantile(scores, 0.95))  # a few windows a task pass, the event's among them
    net = peakedness_net(ckpt.contract, FILL_LOGIT - threshold, **FIRST)
    screen = str(save_screen(tmp_path / "peak.safetensors", net, FILL_LOGIT, ckpt.sha256, ckpt.contract))
    bodies, rows, stats, sizes = replay(ckpt, inference, stream, True, screen_net=screen, batch_size=batch_size)
    old = replay(ckpt, inference, stream, False, screen_net=screen, batch_size=batch_size)
    assert any(b["state"] == "new" for b in bodies)
    assert bodies == old[0]
    assert rows.keys() == old[1].keys()
    for key, row in rows.items():  # a fill row bit for bit; a forwarded one from other batches: the last bits
        assert np.array_equal(row, old[1][key]) or np.allclose(row, old[1][key], rtol=0, atol=1e-5), key
    drop = ("refined",)  # (which forwards `decide` itself runs depends on what was forwarded before it)
    assert {k: v for k, v in stats.items() if k not in drop} == {k: v for k, v in old[2].items() if k not in drop}
    assert stats["screened_out"] >= stats["inferred"] // 2
    assert max(tasks for _, tasks in sizes) >= 2  # windows of several tasks went through one forward


def test_no_gather_where_a_batch_is_one_task(ckpt, inference, tmp_path):
    screen = save_screen(tmp_path / "s.safetensors", peakedness_net(ckpt.contract), FILL_LOGIT, ckpt.sha256,
                         ckpt.contract)
    with DetectionRunner(ckpt, inference=inference, screen_every=1, screen_net=str(screen), batch_size=64) as one, \
            DetectionRunner(ckpt, inference=inference, screen_every=1, screen_net=str(screen)) as four:
        assert one._gather is None and four._gather.max_tasks == 4 and four._gather.below == GATHER_WINDOWS


class FakeStage:
    """What `Gather` uses of a `DetectionStage`: the labels, the screen's `wanted`, `_forward` and `forward_rows`
    (each row's probabilities: its first value and its negation, so a row shows where it came from)."""

    labels = ("noise", "earthquake")

    def __init__(self, wanted):
        self.screen = type("S", (), {"wanted": staticmethod(lambda metas, spectra: wanted[: len(metas)])})()
        self.calls: list[int] = []

    def rows(self, spectra):
        v = spectra.reshape(len(spectra), -1)[:, 0]
        return np.stack([v, -v], 1).astype(np.float32)

    def _forward(self, spectra, valid):
        out = np.full((len(valid), 2), np.nan, np.float32)
        out[valid] = self.rows(spectra[valid])
        return out

    def forward_rows(self, spectra):
        self.calls.append(len(spectra))
        return self.rows(spectra)


def test_gather_defers_few_windows_and_scatters_one_forward():
    meta = type("M", (), {"valid": True})
    metas = [meta() for _ in range(8)]
    wanted = np.array([0, 1, 0, 0, 1, 0, 0, 0], bool)
    stage = FakeStage(wanted)
    gather = Gather(stage, below=3, max_tasks=4)
    spectra = [np.arange(8, dtype=np.float32).reshape(8, 1, 1) + 10 * t for t in range(3)]
    tasks = []
    for s in spectra:
        probs, left = gather.infer(s, metas)
        assert np.isnan(probs).all() and left.tolist() == wanted.tolist()
        tasks.append((s, probs, left))
    assert not gather.ready([t[2] for t in tasks[:1]]) and gather.ready([t[2] for t in tasks[:2]])
    assert gather.ready([np.zeros(8, bool)] * 4)
    gather.forward(tasks)
    assert stage.calls == [6]  # the six windows of three tasks, one forward
    for s, probs, left in tasks:
        assert not left.any()
        assert np.array_equal(probs[wanted, 0], s[wanted, 0, 0]) and np.isnan(probs[~wanted]).all()
    many = FakeStage(np.ones(8, bool))
    probs, left = Gather(many, below=3, max_tasks=4).infer(spectra[0], metas)  # enough of its own: forwarded
    assert not left.any() and np.array_equal(probs[:, 0], spectra[0][:, 0, 0])
