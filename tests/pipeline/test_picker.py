"""The batched P picker: exact on synthetic onsets, batch-invariant, safe on dead data, quiet on noise, right on a
real earthquake of the catalogue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quakemon.data import realdata
from quakemon.data.synthetic import synthesize_event_trace
from quakemon.pipeline.picker import (
    METHOD,
    METHOD_LOW_SNR,
    METHOD_WINDOW,
    Pick,
    PickerConfig,
    aic_curves,
    pick_every_row,
    pick_p,
)

FS = 100.0
N = 2000
NS = 1_000_000_000


def _events(onsets: list[int], snr: float = 20.0, seed: int = 0) -> np.ndarray:
    """[len(onsets), 3, N] white noise plus one synthetic local earthquake per row, P at the given sample."""
    rows = []
    for i, onset in enumerate(onsets):
        rng = np.random.default_rng(seed + i)
        noise = rng.normal(0.0, 100.0, (3, N))
        rows.append(synthesize_event_trace(noise, onset, 2.0, 30.0, rng, snr=snr, sampling_rate=FS))
    return np.asarray(rows, np.float32)


def test_synthetic_onsets_picked_within_a_few_samples() -> None:
    onsets = [600, 1000, 1500, 1700, 1850, 1900]
    start = np.arange(len(onsets), dtype=np.int64) * 1_000 * NS
    batch = pick_p(_events(onsets), start, FS)
    assert batch.picked.all()
    err = batch.offset_s * FS - np.asarray(onsets)
    # the synthetic P's envelope rises over 0.5 s, so its first samples hide in the noise: the pick may be late by
    # a few samples, never early
    assert (err >= -1).all() and (err <= 10).all(), err
    picks = batch.picks()
    for p, s, onset in zip(picks, start, onsets, strict=True):
        assert isinstance(p, Pick) and p.method == METHOD == batch.method
        assert abs(p.time_ns - (s + onset * NS // int(FS))) <= 10 * NS // int(FS)
        assert p.snr > 10 and 0.0 < p.uncertainty_s <= 0.1


def test_aic_minimum_is_the_first_sample_of_the_louder_segment() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (1, 400))
    x[0, 250:] *= 50.0
    curve = aic_curves(x, 5)
    assert int(np.argmin(curve[0])) == 250
    assert np.isinf(curve[0, :5]).all() and np.isinf(curve[0, -4:]).all()


def test_batch_equals_one_by_one() -> None:
    data = _events([700, 1200, 1600, 1950], snr=8.0, seed=10)
    data[1, 0, 300] = np.nan  # a bad row in the batch must not change the others
    start = np.array([0, 5, 10, 15], dtype=np.int64) * NS
    batch = pick_p(data, start, FS)
    for i in range(len(data)):
        one = pick_p(data[i : i + 1], start[i : i + 1], FS)
        np.testing.assert_array_equal(one.offset_s, batch.offset_s[i : i + 1])
        np.testing.assert_array_equal(one.uncertainty_s, batch.uncertainty_s[i : i + 1])
        np.testing.assert_array_equal(one.snr, batch.snr[i : i + 1])
        np.testing.assert_array_equal(one.time_ns, batch.time_ns[i : i + 1])


def test_dead_and_nan_rows_give_no_pick_and_no_exception() -> None:
    data = _events([1500] * 5, seed=20)
    data[0, 0, 100:110] = np.nan  # NaN on the vertical
    data[1, 0, :] = 1234.0  # flat vertical (dead channel)
    data[2, :, :] = 0.0  # everything zero
    data[3, 0, :] = np.inf
    data[4, 1:, :] = np.nan  # dead horizontals: the vertical alone still picks
    batch = pick_p(data, 0, FS)
    assert not batch.picked[:4].any()
    assert np.isnan(batch.offset_s[:4]).all() and np.isnan(batch.uncertainty_s[:4]).all()
    assert np.isnan(batch.snr[:4]).all()
    assert batch.picks()[:4] == [None] * 4
    assert batch.picked[4] and abs(batch.offset_s[4] * FS - 1500) <= 10


def test_pure_noise_gives_low_quality_and_no_pick() -> None:
    rng = np.random.default_rng(1)
    batch = pick_p(rng.normal(0.0, 1.0, (200, 3, N)), 0, FS)
    assert not batch.picked.any()  # the SNR gate: no white-noise fluctuation here reaches min_snr
    assert np.isfinite(batch.snr).all()
    assert np.median(batch.snr) < 1.5 and batch.snr.max() < PickerConfig().min_snr
    events = pick_p(_events([1500] * 4, snr=10.0, seed=30), 0, FS)
    assert events.snr.min() > 3 * np.median(batch.snr)


def test_vertical_only_input() -> None:
    data = _events([900, 1400, 1800], seed=40)
    full = pick_p(data, 0, FS)
    z_only = np.zeros_like(data)
    z_only[:, 0] = data[:, 0]
    for x in (data[:, 0], data[:, :1], z_only):  # [N, S], [N, 1, S], zero-filled horizontals as the windower gives
        got = pick_p(x, 0, FS)
        np.testing.assert_array_equal(got.offset_s, full.offset_s)
        np.testing.assert_array_equal(got.uncertainty_s, full.uncertainty_s)


def test_search_span_limits_the_pick() -> None:
    data = _events([600, 600], seed=50)
    later = _events([1500, 1500], seed=60)
    data[:, :, 1400:] += later[:, :, 1400:] * 20  # a much stronger second arrival
    whole = pick_p(data, 0, FS)
    early = pick_p(data, 0, FS, search=(0.5, np.array([12.0, 12.0])))
    assert (np.abs(whole.offset_s * FS - 1500) <= 20).all()
    assert (np.abs(early.offset_s * FS - 600) <= 20).all()


def test_empty_batch_and_bad_calls() -> None:
    empty = pick_p(np.zeros((0, 3, N), np.float32), np.zeros(0, np.int64), FS)
    assert len(empty) == 0 and empty.picks() == []
    with pytest.raises(ValueError):
        pick_p(np.zeros(N), 0, FS)
    with pytest.raises(ValueError):
        pick_p(np.zeros((1, N)), 0, 20.0, config=PickerConfig(freqmin=15.0))


def test_real_event_picked_within_half_a_second_of_the_catalogued_p() -> None:
    """BW.RJOB 2005-08-01: P from ObsPy's ar_pick test; the window the detector would hand over ends 3 s after P."""
    rec = realdata.recording_by_name("rjob_2005-08-01")
    st = realdata.load(rec, FS)
    data = np.stack([tr.data for tr in st])  # Z, N, E
    t0 = st[0].stats.starttime.ns
    p_ns = rec.p_time.ns
    start = (math.ceil(p_ns / NS) + 3 - 20) * NS  # 20 s window on the 1 s grid ending 3-4 s after the P
    i = round((start - t0) * FS / NS)
    window = data[None, :, i : i + N].astype(np.float32)
    batch = pick_p(window, start, FS)
    assert batch.picked[0]
    err_s = (int(batch.time_ns[0]) - p_ns) / NS
    assert abs(err_s) <= 0.5, err_s
    assert batch.snr[0] > 10


def test_pick_every_row_falls_back_and_says_how() -> None:
    """What detections carry: the gated pick where it exists, else the ungated AIC pick with an uncertainty of at
    least fallback_uncertainty_s, else (no usable trace) the middle of the span with its spread."""
    rng = np.random.default_rng(5)
    data = np.concatenate([_events([1500], seed=40), rng.normal(0.0, 1.0, (1, 3, N)).astype(np.float32),
                           np.zeros((1, 3, N), np.float32)])
    batch = pick_every_row(data, np.array([0, NS, 2 * NS]), FS)
    assert batch.picked.all() and batch.methods == (METHOD, METHOD_LOW_SNR, METHOD_WINDOW)
    gated = pick_p(data, np.array([0, NS, 2 * NS]), FS)
    assert batch.offset_s[0] == gated.offset_s[0] and batch.uncertainty_s[0] == gated.uncertainty_s[0]
    assert batch.uncertainty_s[1] >= PickerConfig().fallback_uncertainty_s and batch.snr[1] < PickerConfig().min_snr
    edge = PickerConfig().edge_s
    assert batch.offset_s[2] == pytest.approx((edge + N / FS) / 2)
    assert batch.uncertainty_s[2] == pytest.approx((N / FS - edge) / math.sqrt(12)) and np.isnan(batch.snr[2])
    assert [p.method for p in batch.picks()] == list(batch.methods)
