"""DetectionStage picks the window that opens a detection (with the context of the station's earlier windows):
every detection carries a P pick, whatever the batching; the id derives from the pick."""

from __future__ import annotations

import numpy as np
import pytest
from support.engines import SpectraAreProbabilities

from quakemon.pipeline.detect import DetectionStage, PickContext, WindowMeta
from quakemon.wire.schema import parse_iso_utc, validate_detection

FS = 100.0
N = 2000
T0_NS = 1_251_072_000 * 1_000_000_000


def trace(p_at_s: list[float], seconds: float = 120.0, seed: int = 0) -> np.ndarray:
    """Three components of noise with impulsive P arrivals (a 10x burst on the vertical) at p_at_s; DC 5000."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, (3, int(seconds * FS)))
    for p in p_at_s:
        k = int(round(p * FS))
        x[0, k : k + 400] += rng.normal(0, 10.0, 400) * np.exp(-np.arange(400) / 150)
    return x + 5000.0


def windows(x: np.ndarray, p_at_s: list[float], stride_s: float = 1.0, station: str = "XX.STA.00"):
    """(metas, data float32 [B, 3, N] centred per row as stack_windows does, probabilities [B, 1])."""
    metas, rows, probs = [], [], []
    step = int(stride_s * FS)
    for k in range(0, x.shape[1] - N + 1, step):
        w = x[:, k : k + N]
        rows.append((w - w.mean(axis=1, keepdims=True)).astype(np.float32))
        start = T0_NS + k * 10_000_000
        metas.append(WindowMeta(station, start, start + N * 10_000_000))
        t0, t1 = k / FS, (k + N) / FS
        probs.append([0.95 if any(t0 <= p <= t1 - 3.0 for p in p_at_s) else 0.05])
    return metas, np.stack(rows), np.asarray(probs, np.float32)


def run(metas, data, probs, batch: int, **kw) -> list[dict]:
    stage = DetectionStage(SpectraAreProbabilities(), 0.7, 0.5, 2.0, "earthquake", **kw)
    out = []
    for i in range(0, len(metas), batch):
        out += [b for b, _ in stage.process(probs[i : i + batch], metas[i : i + batch], data[i : i + batch])
                .detections]
    return out + [b for b, _ in stage.flush()]


def test_every_detection_gets_the_p_pick_whatever_the_batches():
    p_at = [30.0, 80.0]
    metas, data, probs = windows(trace(p_at), p_at)
    one = run(metas, data, probs, batch=1)
    big = run(metas, data, probs, batch=64)
    assert one == big
    new = [b for b in one if b["state"] == "new"]
    assert len(new) == 2
    for body, p in zip(new, p_at, strict=True):
        validate_detection(body, stamped=False)
        assert body["pick"]["method"] == "aic" and body["pick"]["phase"] == "P"
        assert abs(parse_iso_utc(body["onset"]) - (T0_NS / 1e9 + p)) <= 0.05
        assert body["pick"]["uncertainty_s"] < 0.2 and body["pick"]["snr"] > 5
        # the first window over on is kept as window_start: the P lies in its last seconds
        assert 3.0 <= parse_iso_utc(body["onset"]) - parse_iso_utc(body["window_start"]) <= 20.0
    closed = [b for b in one if b["state"] == "closed"]
    assert [b["id"] for b in closed] == [b["id"] for b in new]


def test_the_context_before_the_window_catches_a_p_at_its_very_start():
    """A window opened with the P 0.2 s after its start: alone it has no noise before the P to pick against;
    with the station's earlier windows (5 s) it is picked."""
    p_at = [40.2]
    metas, data, probs = windows(trace(p_at), p_at)
    probs[:] = 0.05
    first = next(i for i, m in enumerate(metas) if m.start_ns == T0_NS + 40 * 1_000_000_000)
    probs[first : first + 5] = 0.95
    body = next(b for b in run(metas, data, probs, batch=16) if b["state"] == "new")
    assert abs(parse_iso_utc(body["onset"]) - (T0_NS / 1e9 + 40.2)) <= 0.05
    assert body["window_start"].startswith("2009-08-24T00:00:40.000")


def test_noise_detection_gets_a_low_snr_pick_with_a_large_uncertainty():
    x = trace([])
    metas, data, probs = windows(x, [])
    probs[10:20] = 0.95  # the model fires on noise
    body = next(b for b in run(metas, data, probs, batch=8) if b["state"] == "new")
    assert body["pick"]["method"] == "aic_low_snr" and body["pick"]["uncertainty_s"] >= 2.0


def test_s_wave_retrigger_extends_and_a_new_event_inside_the_hold_opens_a_detection():
    """P at 30 s, a re-trigger 8 s later (the S: a new pick too close to the first) extends the detection; a
    second event 25 s after the first P, inside the hold, opens its own detection."""
    p_at = [30.0, 55.0]
    x = trace(p_at)
    metas, data, probs = windows(x, p_at)
    starts = np.array([(m.start_ns - T0_NS) / 1e9 for m in metas])
    probs[:, 0] = 0.05
    probs[(starts >= 12) & (starts <= 16), 0] = 0.95  # the P
    probs[(starts >= 20) & (starts <= 22), 0] = 0.95  # an S re-trigger (its window starts 20 s in)
    probs[(starts >= 37) & (starts <= 41), 0] = 0.95  # the second event
    bodies = run(metas, data, probs, batch=128, retrigger_hold_s=30.0)
    assert bodies == run(metas, data, probs, batch=1, retrigger_hold_s=30.0)  # one batch or one window at a time
    new = [b for b in bodies if b["state"] == "new"]
    assert [round(parse_iso_utc(b["onset"]) - T0_NS / 1e9, 1) for b in new] == [30.0, 55.0]
    assert [b["state"] for b in bodies] == ["new", "closed", "new", "closed"]


def test_context_rows_shift_to_the_windows_level_and_skip_a_dead_vertical():
    ctx = PickContext(FS, lead_s=5.0)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (3, N + 500)).astype(np.float32)
    x[0] = 0.0  # a dead vertical: the first horizontal is picked
    early, late = x[:, :N] - 3.0, x[:, 500:]
    ctx.add("S", T0_NS, early)
    start, span = ctx.span("S", T0_NS + 5_000_000_000, late)
    assert start == T0_NS and span.shape == (N + 500,)
    assert span == pytest.approx(x[1], abs=1e-5)
    assert PickContext.component(late) == 1


def test_components_of_a_batch_are_those_of_each_window():
    rng = np.random.default_rng(2)
    batch = rng.normal(0, 1, (8, 3, 300)).astype(np.float32)
    batch[1, 0] = 0.0  # dead vertical: N
    batch[2, 0] = 5.0  # flat vertical (not zero)
    batch[2, 1] = np.nan  # ... and a NaN horizontal: E
    batch[3, 0, 7] = np.nan  # NaN in the vertical
    batch[4, 0, 9] = np.inf  # inf in the vertical
    batch[5] = 0.0  # nothing usable: 0
    batch[6, 0, 3] = -np.inf
    batch[6, 1] = np.inf
    got = PickContext.components(batch)
    assert got == [PickContext.component(w) for w in batch] == [0, 1, 2, 1, 1, 0, 2, 0]
    assert PickContext.components(batch[:0]) == []
    with pytest.raises(ValueError, match=r"\[B, C, N\]"):
        PickContext.components(batch[0])
