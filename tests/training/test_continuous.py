"""Continuous evaluation: Poisson intervals, the offline trigger, the STA/LTA reference, matching, the report."""

from __future__ import annotations

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.pipeline.settings import TRIGGER
from quakemon.training import continuous as cont

T0 = UTCDateTime("2010-09-01T00:00:00")


def test_poisson_interval_is_the_exact_chi_square_one():
    rate, lo, hi = cont.poisson_interval(0, 2.0)
    assert rate == 0 and lo == 0 and hi == pytest.approx(3.689 / 2.0, abs=1e-3)
    rate, lo, hi = cont.poisson_interval(6, 1.0)
    assert rate == 6 and lo == pytest.approx(2.202, abs=1e-3) and hi == pytest.approx(13.060, abs=1e-3)


def test_offline_trigger_is_the_daemon_trigger_including_the_flush_rule():
    start = T0.timestamp + np.arange(12.0)
    p = np.array([0.1, 0.9, 0.9, 0.9, 0.9, 0.2, 0.1, 0.6, 0.95, 0.1, 0.1, 0.99])
    s = cont.Series(start, start + 20.0, p)
    held = {"retrigger_hold_s": 0.0}  # closed at the first window below off
    assert cont.trigger_onsets(s, 0.7, **held) == [start[1], start[11]]  # 8: one window; 11: ends while pending
    assert cont.trigger_onsets(s, 0.5, **held) == [start[1], start[11]]  # 7-8 lasts 1 s, under min_duration
    assert cont.trigger_onsets(s, 0.5, min_duration_s=1.0, **held) == [start[1], start[7], start[11]]
    assert cont.trigger_onsets(s, 0.96, **held) == [start[11]]
    # the daemon's default: one detection per event, re-triggers inside the hold extend the first detection
    assert TRIGGER.retrigger_hold_s > 10.0
    assert cont.trigger_onsets(s, 0.7) == [start[1]]
    assert cont.trigger_onsets(s, 0.5, min_duration_s=1.0) == [start[1]]
    assert cont.trigger_onsets(s, 0.96) == [start[11]]
    n = int(TRIGGER.retrigger_hold_s) + 20
    late = T0.timestamp + np.arange(float(n))
    q = np.full(n, 0.1)
    q[1:5] = q[n - 5:n - 1] = 0.9  # a second event once the hold is over: a detection of its own
    assert cont.trigger_onsets(cont.Series(late, late + 20.0, q), 0.7) == [late[1], late[n - 5]]


def _noise_trace(seconds: float, rate: float = 100.0, seed: int = 0, station: str = "AAA") -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(rng.normal(0, 100, int(seconds * rate)).astype(np.float32),
                 {"network": "XX", "station": station, "location": "", "channel": "HHZ", "sampling_rate": rate,
                  "starttime": T0})


def test_sta_lta_fires_on_a_burst_and_not_on_stationary_noise():
    tr = _noise_trace(120.0)
    assert cont.sta_lta_onsets(Stream([tr])) == []
    burst = tr.copy()
    t = np.arange(300) / 100.0
    burst.data[6000:6300] += (2000 * np.sin(2 * np.pi * 8 * t) * np.exp(-t)).astype(np.float32)
    onsets = cont.sta_lta_onsets(Stream([burst]))
    assert len(onsets) == 1 and abs(onsets[0] - (T0.timestamp + 60.0)) < 0.5
    assert cont.sta_lta_onsets(Stream([burst]), on=1e6) == []


def test_match_counts_detected_late_and_false():
    p = 1000.0
    m = cont.match([p - 5.0, p + 30.0, p + 200.0], [p, p + 500.0], window_s=20.0)
    assert m == {"events": 2, "detected": 1, "late": 1, "false": 1}


def test_long_lead_recall_counts_only_p_arrivals_with_30_s_of_data_before_them():
    t0 = T0.timestamp
    early = cont.EventRecord("early", Stream([_noise_trace(60.0)]), [t0 + 10.0, t0 + 40.0], "real:local")
    late = cont.EventRecord("late", Stream([_noise_trace(90.0)]), [t0 + 30.0], "synthetic:regional")
    rows = [(early, [t0 + 5.0, t0 + 38.0]), (late, [t0 + 75.0])]  # the second record's P is missed
    out = cont.recall_with_lead(rows, window_s=20.0)
    assert out == {"real:local": {"events": 1, "detected": 1, "recall": 1.0},
                   "synthetic:regional": {"events": 1, "detected": 0, "recall": 0.0},
                   "all": {"events": 2, "detected": 1, "recall": 0.5}}  # the P at 10 s is left out
    assert cont.recall_with_lead(rows, window_s=20.0, lead_s=45.0) == {}
    assert cont.LONG_LEAD_S == 30.0


def test_near_count_counts_onsets_within_a_window_of_another():
    assert cont.near_count([100.0, 150.0, 300.0], [120.0, 281.0], 20.0) == 2
    assert cont.near_count([100.0], [], 20.0) == 0


def test_report_puts_model_and_sta_lta_side_by_side():
    from quakemon.data.distant import add_distant_event
    from quakemon.models.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint

    ckpt = load_checkpoint(BUNDLED_CHECKPOINT)
    noise = Stream([_noise_trace(90.0, seed=1)])
    ev = _noise_trace(90.0, seed=2, station="EVT")
    y, _ = add_distant_event(ev.data[None].astype(np.float64), "regional", 4500.0, 100.0, 30.0,
                             np.random.default_rng(3))
    ev.data = y[0].astype(np.float32)
    rec = cont.EventRecord("evt", Stream([ev]), [T0.timestamp + 45.0], "synthetic:regional")
    report = cont.evaluate_continuous(ckpt, {"X": noise}, [rec])
    day = report["noise"]["X"]
    assert day["windows"] == 71 and day["station_days"] == pytest.approx(90.0 / 86400)
    assert set(day["model"]) == set(day["sta_lta"]) == {"false", "station_days", "per_station_day", "ci95"}
    assert set(day["sweep_model"]) >= {"0.5", "0.7", "0.99"} and "3.5" in day["sweep_sta_lta"]
    assert report["events"]["sta_lta"]["synthetic:regional"]["detected"] == 1  # SNR 30: STA/LTA must see it
    assert report["events"]["model"]["all"]["events"] == 1
    lead = report["events"]["long_lead"]  # the P lies 45 s into its record
    assert lead["lead_s"] == 30.0 and lead["sta_lta"]["all"] == {"events": 1, "detected": 1, "recall": 1.0}
    assert lead["model"]["all"]["events"] == 1
    text = cont.markdown(report)
    assert "| X |" in text and "synthetic:regional" in text and "30 s or more of data before it" in text
    assert "series" not in cont.summary(report)


def test_records_of_one_station_are_told_apart():
    st = Stream([_noise_trace(30.0, station="RJOB")])
    a, b = cont._relabel(st, 0), cont._relabel(st, 37)
    assert a[0].id == "XX.RJOB.00.HHZ" and b[0].id == "XX.RJOB.11.HHZ" and st[0].stats.location == ""


def test_real_records_at_their_own_rate_or_resampled():
    """None keeps each catalogued record's own rate (the runner resamples it as the daemon does); a rate resamples
    them in `realdata.load` (FFT). The UH records are 50 Hz."""
    own = {r.name: r for r in cont.real_event_records(None)}
    fft = {r.name: r for r in cont.real_event_records(100.0)}
    assert own.keys() == fft.keys() and "rjob_2005-10-06" not in own  # shorter than a window either way
    assert own["uh_uh1_2010-05-27"].stream[0].stats.sampling_rate == 50.0
    assert {tr.stats.sampling_rate for r in fft.values() for tr in r.stream} == {100.0}
    assert own["uh_uh1_2010-05-27"].p_times == fft["uh_uh1_2010-05-27"].p_times
