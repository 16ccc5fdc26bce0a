"""Synthetic regional and teleseismic events: causal, low-frequency where they should be, at the SNR asked for."""

from __future__ import annotations

import numpy as np
import pytest
from obspy import Trace, UTCDateTime

from quakemon.data.distant import _band_rms, add_distant_event, distant_records, distant_signal


def _centroid(x: np.ndarray, fs: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / fs)
    return float((spec * f).sum() / spec.sum())


@pytest.mark.parametrize("kind", ["regional", "teleseismic"])
def test_signal_is_zero_before_p_and_mostly_vertical(kind):
    sig, info = distant_signal(kind, 6000, 2000.0, 100.0, np.random.default_rng(1))
    assert sig.shape == (3, 6000) and info["kind"] == kind
    assert np.all(sig[:, :2000] == 0) and np.abs(sig[0, 2000:2500]).max() > 0
    assert np.abs(sig[0]).max() == pytest.approx(1.0)


def test_teleseisms_are_lower_frequency_than_regional_events():
    rng = np.random.default_rng(2)
    tele = np.median([_centroid(distant_signal("teleseismic", 4000, 500.0, 100.0, rng)[0][0], 100.0)
                      for _ in range(10)])
    reg = np.median([_centroid(distant_signal("regional", 4000, 500.0, 100.0, rng)[0][0], 100.0) for _ in range(10)])
    assert tele < 0.5 < reg and tele < reg / 3


def test_snr_is_the_band_limited_ratio_asked_for():
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((1, 6000)) * 50.0
    y, info = add_distant_event(noise, "regional", 3000.0, 100.0, 8.0, rng)
    signal = (y - noise)[0, 3000:4000]
    assert _band_rms(signal, 100.0) / _band_rms(noise[0], 100.0) == pytest.approx(8.0, rel=1e-6)
    assert info["snr"] == 8.0


def test_records_are_cut_apart_from_the_noise_and_cycle_rates():
    t0 = UTCDateTime("2010-09-01")
    noise = Trace(np.random.default_rng(4).integers(-1000, 1000, 100 * 3600).astype(np.int32),
                  {"network": "YA", "station": "UV10", "location": "00", "channel": "HHZ",
                   "sampling_rate": 100.0, "starttime": t0})
    recs = distant_records(noise, 4, seed=5)
    assert len(recs) == 8 and sorted({k for _, _, k, _ in recs}) == ["regional", "teleseismic"]
    assert {r.stats.sampling_rate for st, *_ in recs for r in st} == {100.0, 40.0, 20.0}
    spans = sorted((st[0].stats.starttime.timestamp, st[0].stats.endtime.timestamp) for st, *_ in recs)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False)), "records must not overlap"
    assert len({st[0].stats.station for st, *_ in recs}) == 8
    for st, p, _, info in recs:
        assert st[0].stats.starttime.timestamp + 40 <= p <= st[0].stats.starttime.timestamp + 70
        assert info["source"] == "YA.UV10.00.HHZ"
    with pytest.raises(ValueError, match="too short"):
        distant_records(noise, 40, seed=5)
