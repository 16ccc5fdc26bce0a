"""The multi-site noise reader: recordings read out of a wheel, resampled to the model's rate, split by site,
windows cut only where the noise is usable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.base.errors import QuakemonError
from quakemon.data import sprit_noise

T0 = UTCDateTime("2023-05-04T11:49:33")


def _survey(seconds: float, fs: float, station: str = "GOL05", channels: str = "?HZ ?HN ?HE") -> Stream:
    """A 3-component recording: Z a 2 Hz sine, N a 5 Hz sine, E noise; E starts 1 s late (unequal spans)."""
    rng = np.random.default_rng(0)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    rows = {"Z": 1000 * np.sin(2 * np.pi * 2 * t), "N": 1000 * np.sin(2 * np.pi * 5 * t), "E": rng.normal(0, 10, n)}
    traces = []
    for ch in channels.split():
        comp = ch[-1]
        start = T0 + (1.0 if comp == "E" else 0.0)
        traces.append(Trace(rows[comp].astype(np.float64), {"network": "TR", "station": station, "location": "07",
                                                             "channel": ch, "sampling_rate": fs, "starttime": start}))
    return Stream(traces)


def _wheel(tmp_path: Path, members: dict[str, Stream]) -> Path:
    wheel = tmp_path / sprit_noise.SPRIT_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        for i, (member, st) in enumerate(members.items()):
            path = tmp_path / f"rec{i}.mseed"
            st.write(str(path), format="MSEED", reclen=512, encoding="FLOAT64")
            zf.write(path, member)
    return wheel


def test_a_128_hz_recording_is_read_from_the_wheel_in_zne_order_at_the_model_rate(tmp_path):
    rec = sprit_noise.recording("Site07")
    wheel = _wheel(tmp_path, {rec.member: _survey(60.0, 128.0)})
    data = sprit_noise.load(rec, 100.0, wheel)
    assert data.shape[0] == 3
    assert data.shape[1] == pytest.approx(59 * 100, abs=2)  # the common span (E starts 1 s late), at 100 Hz
    freqs = np.fft.rfftfreq(data.shape[1], 1 / 100.0)
    peak = [freqs[np.argmax(np.abs(np.fft.rfft(row)))] for row in data]
    assert peak[0] == pytest.approx(2.0, abs=0.05) and peak[1] == pytest.approx(5.0, abs=0.05)
    assert np.abs(data[2]).max() < 100  # E: the weak noise trace, not a sine
    assert np.allclose(data.mean(axis=1), 0.0, atol=1.0)
    with pytest.raises(QuakemonError, match="has no"):
        sprit_noise.load(sprit_noise.recording("Site01"), 100.0, wheel)


def test_a_recording_without_three_components_is_refused(tmp_path):
    rec = sprit_noise.recording("Site07")
    wheel = _wheel(tmp_path, {rec.member: _survey(30.0, 128.0, channels="?HZ ?HN")})
    with pytest.raises(QuakemonError, match="expected Z, N and E"):
        sprit_noise.load(rec, 100.0, wheel)
    with pytest.raises(QuakemonError, match="rational"):
        sprit_noise.resample(np.zeros((1, 100)), 100.0, 100.0 / 1009)


def test_sites_are_split_into_disjoint_training_and_validation_groups():
    train, val = sprit_noise.recordings("train"), sprit_noise.recordings("validation")
    sites = [r.site for r in sprit_noise.RECORDINGS]
    assert len(sites) == len(set(sites)) and len({r.member for r in sprit_noise.RECORDINGS}) == len(sites)
    assert len(val) >= 2 and not {r.site for r in train} & {r.site for r in val}
    assert {r.station.split(".")[0] for r in val} == {"AM", "TR"}  # one site of each sensor kind held out
    assert "Site13" not in sites  # byte-identical to Site12
    assert len(train) + len(val) == len(sprit_noise.recordings())
    with pytest.raises(QuakemonError):
        sprit_noise.recordings("test")
    with pytest.raises(QuakemonError, match="known sites"):
        sprit_noise.recording("Site13")


def test_windows_lie_wholly_in_the_usable_noise():
    fs, n = 100.0, 2000
    z = np.zeros(int(600 * fs))
    usable = sprit_noise.usable_mask(z, fs, [300.0])
    assert not usable[: int(60 * fs)].any() and not usable[-int(60 * fs) :].any()  # set-up and pick-up
    assert not usable[int(290 * fs) : int(330 * fs)].any() and usable[int(330 * fs)]
    starts = sprit_noise.window_starts(usable, n, 100_000, np.random.default_rng(0))
    assert len(starts) == sprit_noise.valid_starts(usable, n).size > 0 and len(set(starts.tolist())) == len(starts)
    for s in starts:
        assert usable[s : s + n].all()
    data = np.arange(3 * z.size, dtype=np.float64).reshape(3, -1)
    w = sprit_noise.cut(data, starts[:5], n)
    assert w.shape == (5, 3, n) and w.dtype == np.float32
    assert np.array_equal(w[:, 1, 0], data[1, starts[:5]])
    with pytest.raises(QuakemonError, match="outside"):
        sprit_noise.cut(data, np.array([z.size - 10]), n)
    assert sprit_noise.window_starts(np.ones(100, bool), n, 5, np.random.default_rng(0)).size == 0


def test_windows_are_shared_among_sites_in_proportion_to_their_usable_length():
    out = sprit_noise.allocate({"a": 100, "b": 300, "c": 0}, 41)
    assert sum(out.values()) == 41 and out["c"] == 0 and out["b"] in (30, 31)
    assert sprit_noise.allocate({"a": 0}, 5) == {"a": 0}
