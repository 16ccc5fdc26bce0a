"""Per-station trigger calibration (quakemon.pipeline.calibration) and its use by the TriggerBank."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from quakemon.base.errors import ConfigError
from quakemon.pipeline.calibration import GRID, Calibration, StationCalibration, calibrated_thresholds
from quakemon.pipeline.settings import CalibrationSettings
from quakemon.pipeline.trigger import StationTrigger, TriggerBank

HOUR = 3600.0
T0 = 1_699_999_200.0  # a multiple of every slot length used here (an hour)


def spiky(hours: float, spike_every_s: int = 100, spike_p: float = 0.95, big_every_s: int = 3600,
          big_p: float = 0.999, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1 s windows of 20 s: low noise with one-window spikes to spike_p every spike_every_s and to big_p every
    big_every_s (at second 50 of each big period, never on a small spike)."""
    n = int(hours * HOUR)
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.001, 0.05, n)
    i = np.arange(n)
    p[i % spike_every_s == 0] = spike_p
    p[i % big_every_s == 50] = big_p
    starts = T0 + i.astype(np.float64)
    return starts, starts + 20.0, p


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


CFG = CalibrationSettings(mode="rate", rate_per_day=30.0, history_s=HOUR, slots=4)


def test_warm_up_keeps_on_until_the_history_is_full() -> None:
    starts, ends, p = spiky(3)
    thr = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    assert np.all(thr[starts < T0 + HOUR] == 0.7)
    assert np.all(thr[starts >= T0 + HOUR] > 0.95)


@pytest.mark.parametrize(("rate", "low", "high"), [
    (1000.0, 0.7, 0.7),  # 864 + 24 crossings a day at 0.7: within the target, on stays
    (30.0, 0.95, sigmoid(2.95) + 1e-12),  # above the 864/day spikes, at or below the 24/day ones
    (10.0, 0.999, sigmoid(6.95) + 1e-12),  # above every spike: the first grid step over 0.999
])
def test_threshold_is_the_lowest_that_holds_the_rate(rate: float, low: float, high: float) -> None:
    starts, ends, p = spiky(3)
    cfg = dataclasses.replace(CFG, rate_per_day=rate)
    thr = calibrated_thresholds(starts, ends, p, 0.7, cfg)[starts >= T0 + HOUR]
    assert np.all(thr >= low) and np.all(thr <= high)
    if low > 0.7:
        assert np.all(thr > low)


def test_crossing_rate_is_measured() -> None:
    starts, ends, p = spiky(2)
    cal = StationCalibration(0.7, dataclasses.replace(CFG, rate_per_day=30.0))
    cal.update(starts, ends, p)
    assert cal.rate_at_threshold == pytest.approx(24.0, rel=0.05)  # the 0.999 spikes, once an hour


def test_noise_at_the_top_of_the_scale_mutes_the_station() -> None:
    starts, ends, p = spiky(2, spike_every_s=10, spike_p=1.0)
    thr = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    assert thr[-1] == pytest.approx(sigmoid(GRID[-1]))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_result_does_not_depend_on_how_windows_are_batched(chunk: int) -> None:
    starts, ends, p = spiky(1.5, seed=3)
    whole = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    cal = StationCalibration(0.7, CFG)
    parts = np.concatenate([cal.update(starts[i : i + chunk], ends[i : i + chunk], p[i : i + chunk])
                            for i in range(0, len(p), chunk)])
    np.testing.assert_array_equal(parts, whole)


def test_threshold_is_causal_and_constant_within_a_slot() -> None:
    starts, ends, p = spiky(2)
    thr = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    p2 = p.copy()
    p2[starts >= T0 + 1.5 * HOUR] = 0.9999  # the future changes ...
    thr2 = calibrated_thresholds(starts, ends, p2, 0.7, CFG)
    early = starts < T0 + 1.5 * HOUR + CFG.history_s / CFG.slots  # ... nothing before the next slot starts
    np.testing.assert_array_equal(thr[early], thr2[early])
    slot = np.floor((starts - T0) / (CFG.history_s / CFG.slots))
    for k in np.unique(slot):
        assert np.unique(thr[slot == k]).size == 1


def test_a_long_gap_warms_up_again_and_memory_stays_bounded() -> None:
    s1, e1, p1 = spiky(2)
    cal = StationCalibration(0.7, CFG)
    assert cal.update(s1, e1, p1)[-1] > 0.95
    shapes = (cal._counts.shape, cal._diff.shape)
    later = 3 * HOUR + s1
    thr = cal.update(later, later + 20.0, p1)
    assert thr[0] == 0.7  # the history is older than history_s: warm-up again
    assert (cal._counts.shape, cal._diff.shape) == shapes


def test_out_of_order_and_non_finite_windows_are_skipped() -> None:
    starts, ends, p = spiky(2)
    ref = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    bad_s = np.insert(starts, [10, 20], [starts[3], starts[19]])  # a repeat of an older and of the same start
    bad_e = np.insert(ends, [10, 20], [ends[3], ends[19]])
    bad_p = np.insert(p, [10, 20], [0.9999, 0.9999])
    bad_p[100] = np.nan  # (index 100 of bad_p is window 98)
    ref_p = p.copy()
    ref_p[98] = np.nan
    got = np.delete(calibrated_thresholds(bad_s, bad_e, bad_p, 0.7, CFG), [10, 21])
    np.testing.assert_array_equal(got, calibrated_thresholds(starts, ends, ref_p, 0.7, CFG))
    assert got[-1] == ref[-1]  # one missing low window changes nothing here


def test_a_gap_restarts_below_every_threshold() -> None:
    """A window at 0.99 right after a gap is a new crossing, as the trigger would open there."""
    starts = T0 + 30.0 * np.arange(int(2 * HOUR) // 30)  # windows 30 s apart, 20 s long: each follows a gap
    p = np.full(starts.size, 0.99)
    cal = StationCalibration(0.7, dataclasses.replace(CFG, rate_per_day=1.0, warmup_s=HOUR / 2))
    cal.update(starts, starts + 20.0, p)
    assert cal.threshold > 0.99  # a crossing at every window: 2,880 a day, counted over 20 s of data each
    assert cal.rate_at_threshold == 0.0


@pytest.mark.parametrize(("change", "key"), [
    ({"mode": "quantile"}, "trigger.calibration "), ({"rate_per_day": -1.0}, "calibration_rate"),
    ({"rate_per_day": float("nan")}, "calibration_rate"), ({"history_s": 0.0}, "calibration_history"),
    ({"slots": 0}, "calibration_slots"), ({"warmup_s": 2 * HOUR}, "calibration_warmup"),
])
def test_bad_settings_name_their_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Calibration(0.7, dataclasses.replace(CFG, **change))


def test_bad_on_is_refused() -> None:
    with pytest.raises(ConfigError, match="trigger.on"):
        StationCalibration(1.5, CFG)


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        StationCalibration(0.7, CFG).update(np.zeros(3), np.zeros(2), np.zeros(3))


def _bank_onsets(bank: TriggerBank, station: str, starts, ends, p) -> list[float]:
    out = []
    for s, e, q in zip(starts.tolist(), ends.tolist(), p.tolist(), strict=True):
        out += [ev.onset for ev in bank.update(station, s, e, {"noise": 1 - q, "earthquake": q}) if ev.state == "new"]
    return out + [ev.onset for ev in bank.flush() if ev.state == "new" and ev.station == station]


def test_trigger_bank_uses_per_station_thresholds() -> None:
    """A noisy station's false detections drop to the target once warmed up; a quiet one's event still passes
    (and then counts in its history: real events are crossings too)."""
    starts, ends, noisy = spiky(3, spike_every_s=600, spike_p=0.9, big_every_s=10**9)
    noisy = np.repeat(noisy, 1)
    for i in np.flatnonzero(noisy == 0.9):
        noisy[i : i + 5] = 0.9  # 5 s bursts: each one a detection at on 0.7
    quiet = np.full_like(noisy, 0.01)
    quiet[int(2.5 * HOUR) : int(2.5 * HOUR) + 10] = 0.9  # one event
    labels = ["noise", "earthquake"]
    plain = TriggerBank(0.7, 0.5, 2.0, labels)
    cal = TriggerBank(0.7, 0.5, 2.0, labels, calibration=dataclasses.replace(CFG, rate_per_day=2.0))
    n_plain = len(_bank_onsets(plain, "N", starts, ends, noisy))
    on_noisy = _bank_onsets(cal, "N", starts, ends, noisy)
    assert n_plain == 18 and len(on_noisy) == 6  # 6 bursts an hour; only the warm-up hour's remain
    assert max(on_noisy) < T0 + HOUR
    assert len(_bank_onsets(cal, "Q", starts, ends, quiet)) == 1  # the quiet station's threshold stays at on
    assert cal.calibration is not None
    snap = cal.calibration.snapshot()
    assert snap["N/earthquake"]["threshold"] > 0.9
    assert snap["Q/earthquake"]["threshold"] > 0.9 and snap["Q/earthquake"]["rate_per_day"] == 0.0


def test_bank_matches_the_vectorised_thresholds() -> None:
    """The benchmark's path (thresholds for a whole series, then a trigger with that `on` per window) is the
    daemon's path (the bank, one window at a time)."""
    starts, ends, p = spiky(2, seed=5)
    thr = calibrated_thresholds(starts, ends, p, 0.7, CFG)
    trig = StationTrigger(0.7, 0.5, 2.0, "earthquake")
    ref = []
    for s, e, q, o in zip(starts.tolist(), ends.tolist(), p.tolist(), thr.tolist(), strict=True):
        trig.on = o
        ref += [ev.onset for ev in trig._update(s, e, {"earthquake": q}) if ev.state == "new"]
    ref += [ev.onset for ev in trig.flush() if ev.state == "new"]
    bank = TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"], calibration=CFG)
    assert _bank_onsets(bank, "S", starts, ends, p) == ref


def test_mode_off_is_the_plain_trigger() -> None:
    bank = TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"], calibration=CalibrationSettings())
    assert bank.calibration is None


def test_a_station_override_is_its_calibration_floor_and_a_changed_on_warms_up_again() -> None:
    starts, ends, p = spiky(2, seed=2)
    bank = TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"], overrides={"XX.HI": {"on": 0.99}}, calibration=CFG)
    seen: dict[str, list[float]] = {"XX.HI.": [], "XX.LO.": []}
    for s, e, q in zip(starts.tolist(), ends.tolist(), p.tolist(), strict=True):
        for station, ons in seen.items():
            bank.update(station, s, e, {"noise": 1 - q, "earthquake": q})
            ons.append(bank.trigger(station, "earthquake").on)
    assert min(seen["XX.HI."]) == 0.99 and min(seen["XX.LO."]) == 0.7  # each starts at its own on
    assert seen["XX.LO."][-1] > 0.9  # warmed up: the spikes to 0.95 are above the target rate
    assert seen["XX.HI."][-1] >= max(0.99, seen["XX.LO."][-1]) - 1e-9  # never below its own on
    bank.reconfigure(0.7, 0.5, 2.0, 0.0, {"XX.HI": {"on": 0.995}})
    bank.update("XX.HI.", starts[-1] + 1, ends[-1] + 1, {"noise": 0.99, "earthquake": 0.01})
    assert bank.trigger("XX.HI.", "earthquake").on == 0.995  # its history starts again at the new on
    bank.update("XX.LO.", starts[-1] + 1, ends[-1] + 1, {"noise": 0.99, "earthquake": 0.01})
    assert bank.trigger("XX.LO.", "earthquake").on == seen["XX.LO."][-1]  # unchanged on: history kept


def test_the_detection_stage_hands_overrides_and_calibration_to_its_triggers() -> None:
    from support.engines import SpectraAreProbabilities

    from quakemon.pipeline.detect import DetectionStage

    stage = DetectionStage(SpectraAreProbabilities(), 0.7, 0.5, 2.0, "earthquake",
                           overrides={"BW": {"on": 0.8}}, calibration=CFG)
    assert stage.triggers.thresholds("BW.RJOB.") == (0.8, 0.5, 2.0)
    assert stage.triggers.calibration is not None and stage.triggers.calibration.cfg == CFG
    assert DetectionStage(SpectraAreProbabilities(), 0.7, 0.5, 2.0, "earthquake").triggers.calibration is None
