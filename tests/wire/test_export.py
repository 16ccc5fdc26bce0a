"""Export to QuakeML, SeisComP XML and CSV from JSON Lines and from a journal, read back with ObsPy and lxml."""

from __future__ import annotations

import io
import json

import obspy
import pytest
import zmq
from lxml import etree
from obspy.io.quakeml.core import _validate as validate_quakeml
from obspy.io.seiscomp.event import validate_scml
from support.detections import T0, bodies, detection, event, expected_picks

from quakemon.base.errors import QuakemonError
from quakemon.wire.export import CSV_COLUMNS, UNASSOCIATED, catalog_from, export, read_csv
from quakemon.wire.journal import Journal
from quakemon.wire.publisher import Publisher
from quakemon.wire.schema import iso_utc


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies()) + "\n")
    return path


def picks_of(catalog) -> dict[str, tuple]:
    picks = {}
    for ev in catalog:
        for p in ev.picks:
            w = p.waveform_id
            picks[str(p.resource_id).rsplit("/", 1)[1]] = (p.time, w.network_code, w.station_code,
                                                           w.location_code or "")
    return picks


def check_catalog(catalog) -> None:
    assert picks_of(catalog) == expected_picks()
    by_id = {str(ev.resource_id): ev for ev in catalog}
    e1, e2 = event([0, 1, 2], "closed"), event([4], missing="feedfacefeed")
    assert set(by_id) == {f"smi:quakemon/event/{e1['id']}", f"smi:quakemon/event/{e2['id']}", UNASSOCIATED}
    first = by_id[f"smi:quakemon/event/{e1['id']}"]
    assert [str(p.resource_id).rsplit("/", 1)[1] for p in first.picks] == [detection(k)["id"] for k in range(3)]
    assert first.event_type == "earthquake" and "state=closed" in first.comments[0].text
    loose = by_id[UNASSOCIATED]
    assert loose.event_type == "not existing"
    assert sorted(str(p.resource_id).rsplit("/", 1)[1] for p in loose.picks) == sorted(
        [detection(3)["id"], detection(5)["id"]])
    refined = next(p for ev in catalog for p in ev.picks if str(p.resource_id).endswith(detection(4)["id"]))
    assert refined.phase_hint == "P" and refined.time_errors.uncertainty == pytest.approx(0.2)
    assert str(refined.method_id) == "smi:quakemon/method/quakemon-picker"
    assert refined.evaluation_mode == "automatic"


def test_quakeml_round_trip_and_schema(tmp_path, jsonl):
    out = tmp_path / "cat.xml"
    assert export(jsonl, "quakeml", out) == 7
    assert validate_quakeml(str(out))
    check_catalog(obspy.read_events(str(out)))
    check_catalog(catalog_from(jsonl))


def test_sc3ml_validates_and_holds_every_pick(tmp_path, jsonl):
    out = tmp_path / "cat.scml"
    export(jsonl, "SC3ML", out)
    assert validate_scml(str(out), version="0.12")
    doc = etree.parse(str(out))
    ns = {"s": "http://geofon.gfz-potsdam.de/ns/seiscomp3-schema/0.12"}
    picks = {}
    for p in doc.findall(".//s:pick", ns):
        w = p.find("s:waveformID", ns)
        picks[p.get("publicID").rsplit("/", 1)[1]] = (
            obspy.UTCDateTime(p.findtext("s:time/s:value", namespaces=ns)), w.get("networkCode"),
            w.get("stationCode"), w.get("locationCode") or "")
    assert picks == expected_picks()
    events = {e.get("publicID") for e in doc.findall(".//s:event", ns)}
    assert events == {f"smi:quakemon/event/{event([0], 'new')['id']}",
                      f"smi:quakemon/event/{event([4], missing='x')['id']}"}
    comment = doc.find(f".//s:pick[@publicID='smi:quakemon/pick/{detection(1)['id']}']/s:comment/s:text", ns)
    assert comment.text.endswith(f"event={event([0])['id']}")
    # ObsPy reads the SCML back (it keeps the events; picks no origin references are dropped by its reader).
    assert len(obspy.read_events(str(out))) == 2


def test_csv_has_the_documented_header_and_one_row_per_detection(tmp_path, jsonl):
    out = tmp_path / "cat.csv"
    assert export(jsonl, "csv", out) == 6
    text = out.read_text()
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = {r["pick_id"]: r for r in read_csv(text)}
    assert len(rows) == 6
    first = rows[detection(0)["id"]]
    assert (first["network"], first["station"], first["location"]) == ("BW", "RJOB", "")
    assert first["state"] == "closed" and first["end"] == iso_utc(T0 + 30)
    assert first["event_id"] == event([0])["id"] and rows[detection(3)["id"]]["event_id"] == ""
    refined = rows[detection(4)["id"]]
    assert refined["time"] == iso_utc(T0 + 41.25) and refined["phase"] == "P" and float(refined["uncertainty_s"]) == 0.2
    buf = io.StringIO()
    export(jsonl, "csv", buf)
    assert buf.getvalue() == text


def test_a_journal_exports_like_its_json_lines(tmp_path, jsonl):
    ctx = zmq.Context()
    try:
        with Journal(tmp_path / "j.db", synchronous="normal") as journal:
            pub = Publisher("tcp://127.0.0.1:0", context=ctx, journal=journal)
            for body in bodies():
                pub.publish_heartbeat({})
                (pub.publish_event if body["schema"] == "quakemon.event/1" else pub.publish_detection)(body)
            pub.close(linger_ms=0)
    finally:
        ctx.term()
    out = tmp_path / "from-journal.xml"
    assert export(tmp_path / "j.db", "quakeml", out) == 7
    check_catalog(obspy.read_events(str(out)))
    rows = read_csv(_csv(tmp_path / "j.db"))
    # Heartbeats took the odd seqs; detection 0 is its "closed" message (seq 16), the last one wins.
    assert [r["seq"] for r in rows] == ["16", "4", "6", "8", "10", "12"]
    assert {r["pick_id"] for r in rows} == {r["pick_id"] for r in read_csv(_csv(jsonl))}


def _csv(path) -> str:
    buf = io.StringIO()
    export(path, "csv", buf)
    return buf.getvalue()


def test_bad_input_and_format_are_refused(tmp_path, jsonl):
    with pytest.raises(QuakemonError, match="format must be one of"):
        export(jsonl, "kml", tmp_path / "x")
    with pytest.raises(QuakemonError, match="missing.jsonl"):
        export(tmp_path / "missing.jsonl", "csv", tmp_path / "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(detection(0)) + "\n{oops\n")
    with pytest.raises(QuakemonError, match="bad.jsonl.*line 2"):
        export(bad, "quakeml", tmp_path / "x")
