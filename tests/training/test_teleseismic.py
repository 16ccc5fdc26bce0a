"""Scoring of the teleseismic records: what explains each detection, the STA/LTA in both bands on a 5 Hz channel,
and the model's report through the runner at the record's own rate and resampled first."""

from __future__ import annotations

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime, read

from quakemon.data.teleseisms import Arrival, TeleseismicRecord
from quakemon.training import teleseismic as tele

T0 = UTCDateTime("2011-03-01T00:58:45")


def test_detections_are_sorted_by_what_explains_them():
    p, pp = 1000.0, 1090.0
    out = tele.classify([p - 15.0, p + 5.0, p + 40.0, pp - 3.0, p + 300.0, p - 60.0], [p], [pp], window_s=20.0)
    assert out == tele.Outcome(events=1, detected=1, late=1, at_phase=1, other=2)
    assert tele.classify([], [p], [pp], 20.0) == tele.Outcome(1, 0, 0, 0, 0)
    # a later phase 10-60 s after P (pP of a deep event) counts as late, once
    assert tele.classify([p + 30.0], [p], [p + 28.0], 20.0) == tele.Outcome(1, 0, 1, 0, 0)


def _record(tmp_path, seconds: float = 120.0, p_s: float = 60.0, amp: float = 3000.0) -> TeleseismicRecord:
    """A 5 Hz three-component record (written to MiniSEED and read back) with a 1 Hz P wave train at `p_s`."""
    rng = np.random.default_rng(0)
    n = int(seconds * 5)
    t = np.arange(n) / 5.0
    burst = np.where(t >= p_s, amp * np.sin(2 * np.pi * 1.0 * (t - p_s)) * np.exp(-(t - p_s) / 8.0), 0.0)
    st = Stream([Trace((rng.normal(0, 100, n) + (burst if c == "Z" else 0.3 * burst)).astype(np.int32),
                       {"network": "CX", "station": "PB01", "location": "", "channel": f"BH{c}",
                        "sampling_rate": 5.0, "starttime": T0}) for c in "ZNE"])
    path = tmp_path / "rec.mseed"
    st.write(str(path), format="MSEED", reclen=512)
    arr = Arrival("2011-03-01T00:53:45", 6.1, "Mw", 39.3, 3.8, "P", T0 + p_s, (("PP", T0 + p_s + 90.0),))
    return TeleseismicRecord("CX.PB01 test", read(str(path)), [arr])


def test_sta_lta_in_both_bands_finds_a_clear_p_on_a_5_hz_channel(tmp_path):
    rec = tele.event_records([_record(tmp_path)])
    assert rec[0].kind == "real:teleseismic" and rec[0].info["arrivals"][0]["later"][0][0] == "PP"
    rows = tele.sta_lta_rows(rec, 20.0)
    assert set(rows) == {"standard", "0.5-2 Hz"} and rows["0.5-2 Hz"]["settings"]["band_hz"] == [0.5, 2.0]
    for name in rows:
        assert rows[name]["records"][0]["detected"] == 1, name
        assert rows[name]["records"][0]["onsets_after_p_s"][0] == pytest.approx(0.0, abs=2.0), name
    assert tele.p_snr(rec[0].stream, rec[0].p_times[0]) > 5.0


def test_upsampling_keeps_times_and_reaches_the_models_rate(tmp_path):
    rec = tele.event_records([_record(tmp_path)])[0]
    up = tele.upsampled(rec, 100.0)
    assert {tr.stats.sampling_rate for tr in up.stream} == {100.0} and up.stream[0].stats.npts == 20 * 600
    assert up.stream[0].stats.starttime == rec.stream[0].stats.starttime and up.p_times == rec.p_times
    assert rec.stream[0].stats.sampling_rate == 5.0  # the original is untouched


def test_report_has_the_model_both_ways_and_the_sta_lta(tmp_path):
    from quakemon.models.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint

    ckpt = load_checkpoint(BUNDLED_CHECKPOINT)
    recs = tele.event_records([_record(tmp_path, seconds=60.0, p_s=30.0)])
    report = tele.evaluate(ckpt, recs)
    for how in ("native", "upsampled"):
        row = report["model_outcome"][how]["records"][0]
        assert row["events"] == 1 and 0.0 <= row["max_p_at_p"] <= row["max_p"] <= 1.0
        assert set(report["model_outcome"][how]["sweep"]) >= {"0.5", "0.7", "0.99"}
    assert report["records"][0]["rate"] == 5.0
    text = tele.markdown(report)
    assert "| 2011-03-01T00:53:45 | 6.1 | 39.3° | 4 km | P |" in text
    assert "STA/LTA 0.5-2 Hz | 1/1 |" in text and "resampled to 100 Hz first" in text
    assert "resampled first" not in tele.markdown({**report, "model_outcome": {
        "native": report["model_outcome"]["native"]}})


def test_the_native_model_run_is_the_daemons_window_resampling(tmp_path):
    """A 5 Hz channel is accepted by the windower: windows every 1 s (5 samples) of 20 s (100 samples)."""
    from quakemon.models.contract import InputContract
    from quakemon.pipeline.windowing import WindowScheduler

    sched = WindowScheduler("CX.PB01", "BH", InputContract(), 5.0)
    assert (sched.stride, sched.window, sched.up, sched.down) == (5, 100, 20, 1)
    with pytest.raises(ValueError, match="whole samples"):
        WindowScheduler("CX.PB01", "BH", InputContract(), 2.5, stride_s=0.1)


def _fake_rf_wheel(folder, tmp_path) -> None:
    """An rf wheel in `folder` holding one 60 s 5 Hz record whose P (40 degrees, 10 km deep) lies 30 s in."""
    import zipfile

    from obspy.core.event import Catalog, Event, Magnitude, Origin
    from obspy.core.inventory import Channel, Inventory, Network, Station

    from quakemon.data import teleseisms

    origin = UTCDateTime("2011-03-01T00:53:45")
    tt = teleseisms.predicted_arrivals(40.0, 10.0, ("P",))[0][1]
    rec = _record(tmp_path, seconds=60.0, p_s=30.0)
    for tr in rec.stream:
        tr.stats.starttime = origin + tt - 30.0
    rec.stream.write(str(tmp_path / "d.mseed"), format="MSEED", reclen=512)
    Catalog([Event(origins=[Origin(time=origin, latitude=19.0, longitude=-69.5, depth=10_000.0)],
                   magnitudes=[Magnitude(mag=6.1, magnitude_type="Mw")])]).write(str(tmp_path / "e.xml"), "QUAKEML")
    chans = [Channel(f"BH{c}", "", -21.0, -69.5, 900.0, 0.0) for c in "ZNE"]
    Inventory([Network("CX", stations=[Station("PB01", -21.0, -69.5, 900.0, channels=chans)])], source="t").write(
        str(tmp_path / "i.xml"), "STATIONXML")
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / teleseisms.RF_WHEEL, "w") as zf:
        for role, name in (("data", "d.mseed"), ("events", "e.xml"), ("inventory", "i.xml")):
            zf.write(tmp_path / name, teleseisms.MEMBERS[role])


def test_evaluate_continuous_with_teleseisms_reports_their_kind(tmp_path, monkeypatch, capsys):
    """`quakemon evaluate --continuous FILE --teleseisms`: the records come from the rf wheel in the user cache
    (placed there by the test: nothing is downloaded) and are scored as their own kind and sweep column."""
    import json

    from quakemon.cli import app as cli
    from quakemon.data.teleseisms import predicted_arrivals
    from quakemon.training import continuous

    monkeypatch.setenv("QUAKEMON_CACHE", str(tmp_path / "cache"))
    _fake_rf_wheel(tmp_path / "cache" / "wheels", tmp_path)
    monkeypatch.setattr(continuous, "real_event_records", lambda rate: [])  # the catalogue is tested elsewhere
    noise = Trace(np.random.default_rng(1).normal(0, 100, 6000).astype(np.int32),
                  {"network": "XX", "station": "NOI", "channel": "HHZ", "sampling_rate": 100.0, "starttime": T0})
    Stream([noise]).write(str(tmp_path / "noise.mseed"), format="MSEED")
    assert cli.main(["evaluate", "--continuous", str(tmp_path / "noise.mseed"), "--synthetic-events", "0",
                     "--teleseisms", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["noise"]
    assert report["events"]["sta_lta"]["real:teleseismic"] == {"events": 1, "detected": 1, "late": 0, "false": 0,
                                                               "recall": 1.0}
    start = UTCDateTime("2011-03-01T00:53:45") + predicted_arrivals(40.0, 10.0, ("P",))[0][1] - 30.0
    assert report["events"]["records"][0]["name"] == f"CX.PB01 {str(start)[:19]}"
    assert "recall real teleseismic" in report["markdown"] and "| real:teleseismic | 1 |" in report["markdown"]
