"""The noise-day reader: extracts exactly the named day from a wheel, caches it, refuses every other member."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.base.errors import QuakemonError
from quakemon.data import noise_days


def _fake_wheel(tmp_path: Path) -> Path:
    """A small wheel with the msnoise layout: 60 s of UV05 (with a gap) and a UV06 member that must stay unread."""
    rng = np.random.default_rng(0)
    t0 = UTCDateTime("2010-09-01T00:00:00")
    parts = Stream([Trace(rng.integers(-500, 500, 3000).astype(np.int32),
                          {"network": "YA", "station": "UV05", "location": "00", "channel": "HHZ",
                           "sampling_rate": 100.0, "starttime": t0 + off}) for off in (0.0, 40.0)])
    mseed = tmp_path / "uv05.mseed"
    parts.write(str(mseed), format="MSEED", reclen=512, encoding="STEIM2")
    wheel = tmp_path / noise_days.MSNOISE_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(mseed, noise_days.NOISE_DAYS["UV05"])
        zf.writestr("msnoise/test/data/2010/UV06/HHZ.D/YA.UV06.00.HHZ.D.2010.244", b"not to be read")
    return wheel


def test_day_is_extracted_once_into_the_cache_and_read_with_its_gap(tmp_path):
    wheel = _fake_wheel(tmp_path)
    cache = tmp_path / "cache"
    st = noise_days.load_day("UV05", cache=cache, wheel=wheel)
    assert [tr.id for tr in st] == ["YA.UV05.00.HHZ", "YA.UV05.00.HHZ"]  # 0-30 s and 40-70 s: the gap stays a gap
    assert st[0].stats.npts == 3000 and st[1].stats.starttime - st[0].stats.starttime == pytest.approx(40.0)
    path = noise_days.day_path("UV05", cache=cache, wheel=tmp_path / "absent.whl")  # cached: the wheel is not opened
    assert path.parent == cache / "noise_days"
    assert sorted(p.name for p in path.parent.iterdir()) == ["YA.UV05.00.HHZ.D.2010.244"]


def test_only_uv05_and_uv10_may_be_used(tmp_path):
    wheel = _fake_wheel(tmp_path)
    for name in ("UV06", "RESIF", "uv05", "../UV06"):
        with pytest.raises(QuakemonError, match="only"):
            noise_days.day_path(name, cache=tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "noise_days").exists()
    assert noise_days.other_day("UV05") == "UV10" and noise_days.other_day("UV10") == "UV05"
    with pytest.raises(QuakemonError):
        noise_days.other_day("UV06")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QUAKEMON_CACHE", str(tmp_path / "q"))
    assert noise_days.cache_dir() == tmp_path / "q"
    monkeypatch.delenv("QUAKEMON_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert noise_days.cache_dir() == tmp_path / "x" / "quakemon"


def test_station_coordinates_come_from_the_wheels_station_list(tmp_path):
    wheel = tmp_path / noise_days.MSNOISE_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(noise_days.STATIONS_CSV,
                    "YA.UV05,366571,7649794,2523\nYA.UV06,1,2,3\nYA.UV10,367732,7645916,1806\n")
    assert noise_days.station_coordinates("UV05", wheel=wheel) == (366571.0, 7649794.0, 2523.0)
    assert noise_days.station_coordinates("UV10", wheel=wheel) == (367732.0, 7645916.0, 1806.0)
    with pytest.raises(QuakemonError, match="only"):
        noise_days.station_coordinates("UV06", wheel=wheel)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(noise_days.STATIONS_CSV, "YA.UV05,366571,7649794\n")
    with pytest.raises(QuakemonError, match="expected NET.STA,X,Y,altitude"):
        noise_days.station_coordinates("UV05", wheel=wheel)
    with pytest.raises(QuakemonError, match="no row for YA.UV10"):
        noise_days.station_coordinates("UV10", wheel=wheel)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "")
    with pytest.raises(QuakemonError, match="has no msnoise/test/extra/stations.csv"):
        noise_days.station_coordinates("UV05", wheel=wheel)
