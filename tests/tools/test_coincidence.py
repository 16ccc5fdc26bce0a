"""benchmarks/coincidence.py: the two-station coincidence rule, the time-shift chance estimate and the signal
description, on made-up inputs with known answers and on a real two-station record (Unterhaching UH1/UH3)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.training import continuous as cont

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import coincidence as co  # noqa: E402


def test_delay_bound_is_distance_over_the_slowest_velocity() -> None:
    assert co.delay_bound_s((0.0, 0.0, 0.0), (3000.0, 4000.0, 0.0)) == pytest.approx(5000.0 / 1500.0)
    assert co.delay_bound_s((0.0, 0.0, 100.0), (0.0, 0.0, 2100.0), velocity_km_s=2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="velocity must be positive"):
        co.delay_bound_s((0, 0, 0), (1, 1, 1), velocity_km_s=0.0)


def test_detection_intervals_and_ratio_runs() -> None:
    np.testing.assert_allclose(co.model_intervals([100.0, 200.0], 20.0), [[100, 120], [200, 220]])
    np.testing.assert_allclose(co.sta_lta_intervals([50.0], 1.0), [[48, 50]])
    assert co.model_intervals([], 20.0).shape == (0, 2)
    ratio = np.array([3.0, 1.0, 2.0, 2.5, 1.9, 0.0, 2.0])  # runs: sample 0, samples 2-3, sample 6 (at the end)
    np.testing.assert_allclose(co.ratio_runs(1000.0, 10.0, ratio, 2.0, 1.0),
                               [[998.0, 1000.0], [998.2, 1000.3], [998.6, 1000.6]])
    assert co.ratio_runs(0.0, 10.0, np.ones(5), 2.0, 1.0).shape == (0, 2)


def test_coincidence_is_overlap_after_widening_by_the_delay() -> None:
    a = np.array([[100.0, 120.0]])
    assert not co.coincident(a, np.array([[123.0, 124.0]]), 2.74)[0]  # 3 s after the end: beyond 2.74 s
    assert co.coincident(a, np.array([[123.0, 124.0]]), 3.0)[0]  # touching counts
    assert co.coincident(a, np.array([[90.0, 97.5]]), 2.74)[0]  # ends 2.5 s before the start
    assert not co.coincident(a, np.array([[90.0, 97.0]]), 2.74)[0]
    assert co.coincident(a, np.array([[50.0, 500.0]]), 0.0)[0]  # a long run around the whole detection
    assert co.coincident(a, np.zeros((0, 2)), 10.0).tolist() == [False]
    assert co.coincident(np.zeros((0, 2)), a, 10.0).shape == (0,)
    # against a plain double loop, on random intervals of mixed lengths
    rng = np.random.default_rng(3)
    for _ in range(20):
        x0, y0 = rng.uniform(0, 1000, 40), rng.uniform(0, 1000, 60)
        x = np.stack([x0, x0 + rng.uniform(0, 25, 40)], axis=1)
        y = np.stack([y0, y0 + rng.uniform(0, 25, 60)], axis=1)
        d = rng.uniform(0, 5)
        naive = [any(b0 <= a1 + d and b1 >= a0 - d for b0, b1 in y) for a0, a1 in x]
        assert co.coincident(x, y, d).tolist() == naive


def test_bad_intervals_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        co.coincident(np.array([1.0, 2.0, 3.0]), np.array([[1.0, 2.0]]), 1.0)
    with pytest.raises(ValueError, match="ends before it starts"):
        co.coincident(np.array([[5.0, 1.0]]), np.array([[1.0, 2.0]]), 1.0)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        co.coincident(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]), -1.0)
    with pytest.raises(ValueError, match="span must be positive"):
        co.shifted(np.array([[1.0, 2.0]]), 10.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no shifted counts"):
        co.chance_summary(np.array([]), 1)


def test_shifts_wrap_around_the_day() -> None:
    moved = co.shifted(np.array([[990.0, 999.0]]), 5.0, 0.0, 1000.0)  # crosses the end: at both ends
    np.testing.assert_allclose(moved, [[995.0, 1004.0], [-5.0, 4.0]])
    assert co.coincident(np.array([[0.0, 1.0]]), moved, 0.0)[0]
    np.testing.assert_allclose(co.shifted(np.array([[10.0, 12.0]]), -20.0, 0.0, 1000.0)[0], [990.0, 992.0])


def test_chance_counts_on_known_patterns() -> None:
    # evidence at 0, 100, ..., 900 s of a 1000 s span, one point detection at 50 s: a shift hits only when it is
    # 50 s modulo 100 s
    b = np.array([[t, t] for t in range(0, 1000, 100)], dtype=np.float64)
    a = np.array([[50.0, 50.0]])
    offsets = [float(s) for s in range(10, 1000, 10)]
    counts = co.chance_counts(a, b, 0.0, 0.0, 1000.0, offsets)
    assert counts.sum() == 10 and all(c == (o % 100 == 50) for c, o in zip(counts, offsets, strict=True))
    s = co.chance_summary(counts, 1)
    assert s["mean"] == pytest.approx(10 / 99, abs=1e-3) and s["share_ge_observed"] == pytest.approx(10 / 99, abs=1e-4)
    assert s["p5"] == 0 and s["p95"] == 1 and s["shifts"] == 99
    # evidence every 60 s: every shift of the default grid (multiples of 60 s) maps it onto itself
    day = 86400.0
    b60 = np.array([[t, t + 1.0] for t in np.arange(0.0, day, 60.0)])  # 1 s evidence: some detections miss it
    a60 = co.model_intervals(np.arange(5.0, day, 997.0), 20.0)
    observed = int(co.coincident(a60, b60, 2.0).sum())
    counts = co.chance_counts(a60, b60, 2.0, 0.0, day)
    assert len(counts) == 120 and set(counts.tolist()) == {observed} and 0 < observed < len(a60)
    assert co.chance_summary(counts, observed)["std"] == 0.0
    b40 = b60 + np.array([0.0, 39.0])  # 40 s of every 60 s: every 20 s detection meets it
    assert set(co.chance_counts(a60, b40, 2.0, 0.0, day).tolist()) == {len(a60)}


def test_chance_estimate_matches_poisson_theory() -> None:
    # independent Poisson detections and evidence: P(coincident) = 1 - exp(-rate_b * (len_a + len_b + 2 delay))
    rng = np.random.default_rng(11)
    day = 86400.0
    a = co.model_intervals(np.sort(rng.uniform(0, day, 300)), 20.0)
    t = np.sort(rng.uniform(0, day, 400))
    b = np.stack([t, t + 2.0], axis=1)
    expected = 300 * (1.0 - np.exp(-400 / day * (20.0 + 2.0 + 2 * 2.74)))
    counts = co.chance_counts(a, b, 2.74, 0.0, day)
    assert counts.mean() == pytest.approx(expected, rel=0.1)
    assert co.chance_summary(counts, int(co.coincident(a, b, 2.74).sum()))["share_ge_observed"] > 0.05


def test_check_counts_both_directions_and_what_confirms_what() -> None:
    det = {"X": {"m": co.model_intervals([100.0, 5000.0], 20.0), "sta_lta": co.sta_lta_intervals([800.0], 1.0)},
           "Y": {"m": co.model_intervals([40000.0], 20.0), "sta_lta": co.sta_lta_intervals([121.0], 1.0)}}
    runs = {"X": np.array([[39990.0, 39998.0]]), "Y": np.array([[801.0, 803.0], [122.0, 125.0]])}
    r = co.check(det, runs, 2.74, 0.0, 86400.0, offsets_s=(3600.0, -3600.0))
    x_m, x_s = r["X->Y"]["m"], r["X->Y"]["sta_lta"]
    assert (x_m["detections"], x_m["a"], x_m["b"], x_m["either"], x_m["unconfirmed"]) == (2, 1, 1, 1, 1)
    assert x_m["a_by"] == {"m": 0, "sta_lta": 1} and x_m["flags"] == {"a": [True, False], "b": [True, False]}
    assert (x_s["a"], x_s["b"], x_s["unconfirmed"]) == (0, 1, 0)
    y_m = r["Y->X"]["m"]  # the run ends 2.0 s before the onset, within the 2.74 s delay
    assert (y_m["a"], y_m["b"], y_m["unconfirmed"]) == (0, 1, 0)
    assert r["Y->X"]["sta_lta"]["a"] == 1 and r["Y->X"]["sta_lta"]["a_by"] == {"m": 1, "sta_lta": 0}
    assert x_m["chance_a"]["mean"] == 0.0 and x_m["chance_either"]["share_ge_observed"] == 0.0
    runs["X"] = np.array([[39990.0, 39997.0]])  # 3 s before: beyond the delay
    assert co.check(det, runs, 2.74, 0.0, 86400.0, offsets_s=(60.0,))["Y->X"]["m"]["unconfirmed"] == 1
    with pytest.raises(ValueError, match="two stations"):
        co.check({"X": det["X"]}, {"X": runs["X"]}, 2.74, 0.0, 86400.0)


T0 = UTCDateTime("2010-09-01T00:00:00")


def _trace(station: str, burst_at: float | None, seconds: float = 600.0, rate: float = 100.0,
           seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 100, int(seconds * rate))
    if burst_at is not None:  # an 8 Hz burst decaying over about 2 s
        t = np.arange(int(10 * rate)) / rate
        i = int(burst_at * rate)
        data[i:i + len(t)] += 3000 * np.sin(2 * np.pi * 8.0 * t) * np.exp(-t / 2.0)
    return Trace(data.astype(np.float32), {"network": "XX", "station": station, "channel": "HHZ",
                                           "sampling_rate": rate, "starttime": T0})


def test_description_finds_the_burst_its_frequency_duration_and_delay() -> None:
    sta = cont.StaLta()
    out = {}
    for name, at, seed in (("X", 300.0, 1), ("Y", 301.5, 2)):
        tr = _trace(name, at, seed=seed)
        t0, fs, ratio = cont.sta_lta_ratio(tr, sta)
        assert t0 == T0.timestamp and fs == 100.0
        out[name] = co.describe(cont.band_passed(tr, sta.band_hz), tr.data, ratio, t0, fs,
                                T0.timestamp + 285.0, T0.timestamp + 312.0)
    x, y = out["X"], out["Y"]
    assert 300.0 <= x["t_peak"] - T0.timestamp <= 302.0 and y["t_peak"] - x["t_peak"] == pytest.approx(1.5, abs=0.2)
    assert x["f_dom_hz"] == pytest.approx(8.0, abs=0.3) and y["f_dom_hz"] == pytest.approx(8.0, abs=0.3)
    assert x["ratio"] > 5 and x["snr"] > 10 and 2.0 <= x["duration_s"] <= 10.0
    tr = _trace("Z", None, seed=3)  # noise alone: a small ratio, SNR of a Gaussian's largest sample, no duration
    t0, fs, ratio = cont.sta_lta_ratio(tr, sta)
    quiet = co.describe(cont.band_passed(tr, sta.band_hz), tr.data, ratio, t0, fs, t0 + 285.0, t0 + 312.0)
    assert quiet["ratio"] < 2.0 and quiet["snr"] < 6.0 and quiet["duration_s"] < 2.0
    assert co.quartiles([1.0, None, 3.0, 2.0]) == [1.5, 2.0, 2.5] and co.quartiles([None]) is None
    t = np.arange(1000) / 100.0
    two = np.sin(2 * np.pi * 0.2 * t) * 50 + np.sin(2 * np.pi * 6.0 * t)  # a large 0.2 Hz swell under 6 Hz
    assert co.dominant_frequency(two, 100.0, (1.0, 20.0)) == pytest.approx(6.0, abs=0.11)
    assert co.dominant_frequency(two, 100.0, (0.1, 20.0)) == pytest.approx(0.2, abs=0.11)
    assert co.dominant_frequency(two[:1], 100.0, (1.0, 20.0)) is None
    noise = co.baseline(cont.band_passed(tr, sta.band_hz), tr.data, ratio, t0, fs, 22.0, 30, seed=1)
    assert noise["n"] == 30 and noise["ratio"][2] < 2.0 and set(noise) == {"n", *co.MEASURES}


def test_ratio_helper_is_the_sta_lta_detectors_characteristic_function() -> None:
    tr = _trace("X", 300.0, seed=1)
    t0, fs, ratio = cont.sta_lta_ratio(tr, cont.StaLta())
    assert np.all(ratio[:1000] == 0.0) and ratio.max() > 3.5  # the first LTA length is not used
    (onset,) = cont.sta_lta_onsets(Stream([tr]))
    assert onset == t0 + np.flatnonzero(ratio >= 3.5)[0] / fs
    assert cont.sta_lta_ratio(_trace("X", None, seconds=5.0), cont.StaLta()) is None


def test_real_two_station_record_unterhaching() -> None:
    """UH1 and UH3 recorded the same small local events (P picks 0.2 s apart): their STA/LTA triggers on those
    events coincide under the rule, and the time-shift estimate expects almost none by chance."""
    from quakemon.data.realdata import load, recording_by_name

    sta = cont.StaLta()
    det, runs = {}, {}
    for name in ("UH1", "UH3"):
        st = load(recording_by_name(f"uh_{name.lower()}_2010-05-27")).select(component="Z")
        det[name] = {"sta_lta": co.sta_lta_intervals(cont.sta_lta_onsets(st), sta.sta_s)}
        t0, fs, ratio = cont.sta_lta_ratio(st[0], sta)
        runs[name] = co.ratio_runs(t0, fs, ratio, co.EVIDENCE_RATIO, sta.sta_s)
        span = st[0].stats.endtime - st[0].stats.starttime
        start = st[0].stats.starttime.timestamp
    offsets = [float(s) for k in range(20, 101, 10) for s in (k, -k)]
    r = co.check(det, runs, 1.0, start, span, offsets)
    uh3 = r["UH3->UH1"]["sta_lta"]
    assert (uh3["detections"], uh3["a"]) == (2, 2)  # both UH3 triggers (16:24:33, 16:27:30) are at UH1 too
    assert r["UH1->UH3"]["sta_lta"]["a"] == 2  # UH1's third trigger, 10 s into the record, is not
    assert uh3["chance_a"]["mean"] < 0.5 and uh3["chance_a"]["share_ge_observed"] == 0.0
