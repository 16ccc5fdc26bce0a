"""The teleseismic catalogue: records matched to events by their predicted P (TauP, iasp91), edge rules, the
wheel extraction; all on MiniSEED, QuakeML and StationXML written here (no network)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime
from obspy.core.event import Catalog, Event, Magnitude, Origin
from obspy.core.inventory import Channel, Inventory, Network, Station
from obspy.taup import TauPyModel

from quakemon.base.errors import QuakemonError
from quakemon.data import teleseisms

STA = (-21.0, -69.5)  # station latitude, longitude
T1 = UTCDateTime("2011-03-01T00:53:45")  # shallow event 40 degrees north
T2 = UTCDateTime("2011-03-02T10:00:00")  # deep event whose P falls 10 s after its record starts
T3 = UTCDateTime("2011-03-03T12:00:00")  # event without a record
T4 = UTCDateTime("2011-03-04T06:00:00")  # 102 degrees: the first P is Pdiff


def _event(t: UTCDateTime, lat: float, lon: float, depth_m: float | None, mag: float = 6.2) -> Event:
    return Event(origins=[Origin(time=t, latitude=lat, longitude=lon, depth=depth_m)],
                 magnitudes=[Magnitude(mag=mag, magnitude_type="Mw")])


def _catalog() -> Catalog:
    return Catalog([_event(T1, 19.0, -69.5, 10_000.0), _event(T2, 9.0, -69.5, 300_000.0),
                    _event(T3, 0.0, 0.0, 20_000.0), _event(T4, 81.0, -69.5, 15_000.0)])


def _inventory() -> Inventory:
    chans = [Channel(f"BH{c}", "", STA[0], STA[1], 900.0, 0.0, sample_rate=5.0) for c in "ZNE"]
    return Inventory([Network("CX", stations=[Station("PB01", STA[0], STA[1], 900.0, channels=chans)])],
                     source="test")


def _record(start: UTCDateTime, seconds: float = 540.0, seed: int = 0) -> Stream:
    rng = np.random.default_rng(seed)
    return Stream([Trace(rng.integers(-300, 300, int(seconds * 5) + 1).astype(np.int32),
                         {"network": "CX", "station": "PB01", "location": "", "channel": f"BH{c}",
                          "sampling_rate": 5.0, "starttime": start}) for c in "ZNE"])


def _p(distance: float, depth_km: float, phases=("P",)) -> float:
    return TauPyModel("iasp91").get_travel_times(depth_km, distance, list(phases))[0].time


def _write(tmp_path: Path) -> dict[str, Path]:
    """The three example files, laid out as in the rf package: 540 s records at 5 Hz, 5 min after the origin
    (event 4: 500 s after, so that its Pdiff lies inside)."""
    tt2 = _p(30.0, 300.0)  # event 2's record starts 10 s before its P
    st = _record(T1 + 300.0) + _record(T2 + tt2 - 10.0, seed=1) + _record(T4 + 500.0, seed=2)
    paths = {"data": tmp_path / "d.mseed", "events": tmp_path / "e.xml", "inventory": tmp_path / "i.xml"}
    st.write(str(paths["data"]), format="MSEED", reclen=512)
    _catalog().write(str(paths["events"]), format="QUAKEML")
    _inventory().write(str(paths["inventory"]), format="STATIONXML")
    return paths


def test_p_arrival_from_taup_and_records_too_near_the_edge_left_out(tmp_path):
    from obspy import read, read_events, read_inventory

    paths = _write(tmp_path)
    cat = teleseisms.build_catalogue(read(str(paths["data"])), read_events(str(paths["events"])),
                                     read_inventory(str(paths["inventory"])))
    assert [r.name for r in cat.records] == ["CX.PB01 2011-03-01T00:58:45", "CX.PB01 2011-03-04T06:08:20"]
    (a,), (d,) = (r.arrivals for r in cat.records)
    assert a.distance_deg == pytest.approx(40.0, abs=0.01) and a.depth_km == 10.0 and a.phase == "P"
    assert a.p_time - T1 == pytest.approx(_p(a.distance_deg, 10.0), abs=1e-6)
    assert a.magnitude == 6.2 and a.magnitude_type == "Mw"
    assert cat.records[0].p_times == [a.p_time.timestamp]
    names = [n for n, _ in a.later]
    assert names == ["pP", "sP", "PP", "PcP", "S"]  # SS (999 s after the origin) lies beyond the record's end
    assert all(a.p_time < t <= T1 + 840.0 for _, t in a.later)
    assert d.distance_deg == pytest.approx(102.0, abs=0.01) and d.phase == "Pdiff"
    assert d.p_time - T4 == pytest.approx(_p(d.distance_deg, 15.0, ("Pdiff",)), abs=1e-6)
    reasons = dict(cat.dropped)
    start2 = str(T2 + _p(30.0, 300.0) - 10.0)[:19]
    assert "10 s after the record's start" in reasons[f"CX.PB01 {start2} / event 2011-03-02T10:00:00"]
    assert reasons["event 2011-03-03T12:00:00"] == "its P lies in no record"
    assert len(cat.dropped) == 2


def test_the_example_files_come_out_of_the_wheel_once(tmp_path):
    paths = _write(tmp_path)
    wheel = tmp_path / teleseisms.RF_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        for role, member in teleseisms.MEMBERS.items():
            zf.write(paths[role], member)
        zf.writestr("rf/example/minimal_example.tar.gz", b"not read")
    cache = tmp_path / "cache"
    cat = teleseisms.load_catalogue(cache=cache, wheel=wheel)
    assert len(cat.records) == 2 and len(cat.dropped) == 2
    assert sorted(p.name for p in (cache / "teleseisms").iterdir()) == sorted(
        Path(m).name for m in teleseisms.MEMBERS.values())
    again = teleseisms.load_catalogue(cache=cache, wheel=tmp_path / "absent.whl")  # cached: wheel not opened
    assert [r.p_times for r in again.records] == [r.p_times for r in cat.records]


def test_a_wheel_without_the_examples_and_an_origin_without_depth_are_errors(tmp_path):
    wheel = tmp_path / teleseisms.RF_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("rf/__init__.py", b"")
    with pytest.raises(QuakemonError, match="has no rf/example/example_data.mseed"):
        teleseisms.example_paths(cache=tmp_path / "cache", wheel=wheel)
    with pytest.raises(QuakemonError, match="no depth"):
        teleseisms.event_arrival(_event(T1, 19.0, -69.5, None), *STA)


def test_a_station_missing_from_the_inventory_is_an_error():
    st = _record(T1 + 300.0)
    for tr in st:
        tr.stats.station = "PB99"
    with pytest.raises(QuakemonError, match="CX.PB99..BHZ: no coordinates"):
        teleseisms.build_catalogue(st, _catalog(), _inventory())
