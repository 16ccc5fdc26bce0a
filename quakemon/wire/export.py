"""Export detections and events to the formats observatories run on: QuakeML, SeisComP XML (SCML) and CSV.

Input is a journal file (:mod:`quakemon.wire.journal`) or a JSON Lines file of detection/event bodies (what
``quakemon replay`` writes). Each detection id becomes one pick and each event id one event; when a detection or
event appears more than once ("new", then "updated"/"closed"), the last message wins.

Catalog layout (the same for QuakeML and SCML, read back by ObsPy and accepted by SeisComP's scdispatch):

* Pick ``smi:quakemon/pick/<detection id>``: ``time`` is the detection's ``pick.time`` when present, else its
  ``onset``; ``time_errors.uncertainty`` from ``pick.uncertainty_s``; ``phase_hint`` from ``pick.phase``;
  ``waveform_id`` NET.STA.LOC from ``station`` (channel from ``pick.channel`` if given, else left out);
  ``method_id`` ``smi:quakemon/method/<pick.method or model name>``; evaluation mode "automatic", status
  "preliminary"; a comment with label, probability and peak probability.
* Event ``smi:quakemon/event/<event id>`` per association event: its picks are the detections it names
  (``stations[].detection_id``; a pick is built from the station row when the detection itself is not in the
  input); ``event_type`` "earthquake" or "explosion" when that is the label, else "other event";
  ``event_type_certainty`` "suspected"; no origin (detections are not locations). A detection named by several
  events belongs to the first.
* Detections that no event names are picks of one extra event ``smi:quakemon/event/unassociated`` of type
  "not existing" (QuakeML keeps picks inside events; this event only carries them). Skip it when importing.
* SCML (SeisComP XML 0.12) keeps picks in ``EventParameters``, outside events, and links events to picks only
  through origins, which quakemon does not make: there the carrier event is left out, and each pick's comment
  ends with ``event=<event id>`` (empty when unassociated). ObsPy's SCML reader drops picks that no origin
  references; SeisComP's scdispatch imports them.

CSV (one row per pick, header :data:`CSV_COLUMNS`): ``pick_id`` (detection id), ``event_id`` (empty when
unassociated), ``network``, ``station``, ``location``, ``channel``, ``time`` (ISO UTC), ``uncertainty_s``,
``phase``, ``label``, ``probability``, ``peak_probability``, ``end``, ``state``, ``model``, ``seq``, ``epoch``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import structlog
from lxml import etree
from obspy import UTCDateTime
from obspy.core.event import (
    Catalog,
    Comment,
    CreationInfo,
    Event,
    Pick,
    QuantityError,
    ResourceIdentifier,
    WaveformStreamID,
)
from obspy.io.seiscomp.event import validate_scml

from quakemon.base.errors import QuakemonError
from quakemon.wire.journal import SQLITE_MAGIC, JournalReader
from quakemon.wire.schema import DETECTION_SCHEMA, EVENT_SCHEMA

log = structlog.get_logger(__name__)

FORMATS = ("quakeml", "sc3ml", "csv")
PREFIX = "smi:quakemon"
UNASSOCIATED = f"{PREFIX}/event/unassociated"
EVENT_TYPES = {"earthquake": "earthquake", "explosion": "explosion"}
CSV_COLUMNS = ("pick_id", "event_id", "network", "station", "location", "channel", "time", "uncertainty_s",
               "phase", "label", "probability", "peak_probability", "end", "state", "model", "seq", "epoch")


def read_bodies(path: str | Path) -> Iterator[dict[str, Any]]:
    """Detection and event bodies from a journal or a JSON Lines file, in file (seq) order; others skipped."""
    path = Path(path)
    if not path.is_file():
        raise QuakemonError(f"export input {str(path)!r} does not exist or is not a file")
    with open(path, "rb") as fh:
        magic = fh.read(len(SQLITE_MAGIC))
    if magic == SQLITE_MAGIC:
        with JournalReader(path) as reader:
            after = 0
            while page := reader.after(after, limit=1000):
                for rec in page:
                    body = json.loads(rec.body)
                    if body.get("schema") in (DETECTION_SCHEMA, EVENT_SCHEMA):
                        yield body
                after = page[-1].seq
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuakemonError(f"export input {str(path)!r} line {lineno}: not JSON ({exc}); expected a "
                                    "journal or JSON Lines of detection/event bodies") from None
            if isinstance(body, dict) and body.get("schema") in (DETECTION_SCHEMA, EVENT_SCHEMA):
                yield body


def _latest(bodies: Iterable[dict[str, Any]]) -> tuple[dict[str, dict], dict[str, dict]]:
    detections: dict[str, dict] = {}
    events: dict[str, dict] = {}
    for body in bodies:
        (detections if body["schema"] == DETECTION_SCHEMA else events)[body["id"]] = body
    return detections, events


def _pick_fields(det: dict[str, Any]) -> tuple[str, float | None, str | None, str | None, str | None]:
    """(time, uncertainty_s, phase, method, channel) of a detection: its ``pick`` when present, else its onset."""
    pick = det.get("pick") if isinstance(det.get("pick"), dict) else {}
    time = pick.get("time") or det["onset"]
    unc = pick.get("uncertainty_s")
    return (time, None if unc is None else float(unc), pick.get("phase"), pick.get("method"), pick.get("channel"))


def _station(code: str) -> tuple[str, str, str]:
    parts = code.split(".")
    if len(parts) != 3:
        raise QuakemonError(f"station must be 'NET.STA.LOC', got {code!r}")
    return parts[0], parts[1], parts[2]


def _make_pick(det: dict[str, Any], event_id: str | None = None) -> Pick:
    net, sta, loc = _station(det["station"])
    time, unc, phase, method, channel = _pick_fields(det)
    model = det.get("model") or {}
    method_name = method or model.get("name") or "quakemon"
    pick = Pick(
        resource_id=ResourceIdentifier(f"{PREFIX}/pick/{det['id']}"),
        time=UTCDateTime(time),
        waveform_id=WaveformStreamID(network_code=net, station_code=sta, location_code=loc,
                                     channel_code=channel or None),
        method_id=ResourceIdentifier(f"{PREFIX}/method/{method_name}"),
        evaluation_mode="automatic",
        evaluation_status="preliminary",
        creation_info=CreationInfo(author="quakemon"),
    )
    if unc is not None:
        pick.time_errors = QuantityError(uncertainty=unc)
    if phase:
        pick.phase_hint = str(phase)
    if "probability" in det:
        pick.comments.append(Comment(
            text=f"label={det.get('label')} probability={det.get('probability')} "
                 f"peak_probability={det.get('peak_probability', det.get('probability'))} event={event_id or ''}",
            resource_id=ResourceIdentifier(f"{PREFIX}/pick/{det['id']}/comment")))
    return pick


def _stub_detection(row: dict[str, Any], label: str) -> dict[str, Any]:
    """A detection body from an event's station row, for a detection the input does not hold."""
    return {"id": row["detection_id"], "station": row["station"], "onset": row["onset"], "label": label,
            "probability": row.get("probability"), "peak_probability": row.get("peak_probability")}


def to_catalog(bodies: Iterable[dict[str, Any]]) -> Catalog:
    """The ObsPy Catalog for detection and event bodies (see the module docstring for the layout)."""
    detections, events = _latest(bodies)
    catalog = Catalog(resource_id=ResourceIdentifier(f"{PREFIX}/catalog"),
                      creation_info=CreationInfo(author="quakemon"))
    taken: set[str] = set()
    for ev in events.values():
        event = Event(resource_id=ResourceIdentifier(f"{PREFIX}/event/{ev['id']}"),
                      event_type=EVENT_TYPES.get(ev.get("label", ""), "other event"),
                      event_type_certainty="suspected", creation_info=CreationInfo(author="quakemon"))
        event.comments.append(Comment(
            text=f"quakemon association: state={ev.get('state')} stations={ev.get('n_stations')} "
                 f"coincidence_sum={ev.get('coincidence_sum')} first_onset={ev.get('first_onset')}",
            resource_id=ResourceIdentifier(f"{PREFIX}/event/{ev['id']}/comment")))
        for row in ev.get("stations", []):
            det_id = row.get("detection_id")
            if not det_id or det_id in taken:
                continue
            taken.add(det_id)
            det = detections.get(det_id) or _stub_detection(row, ev.get("label", ""))
            event.picks.append(_make_pick(det, ev["id"]))
        catalog.events.append(event)
    loose = [det for det_id, det in detections.items() if det_id not in taken]
    if loose:
        event = Event(resource_id=ResourceIdentifier(UNASSOCIATED), event_type="not existing",
                      creation_info=CreationInfo(author="quakemon"))
        event.comments.append(Comment(text="quakemon: detections not associated with any event",
                                      resource_id=ResourceIdentifier(f"{UNASSOCIATED}/comment")))
        event.picks.extend(_make_pick(det) for det in loose)
        catalog.events.append(event)
    return catalog


def catalog_from(input: str | Path) -> Catalog:
    """The ObsPy Catalog of a journal or JSON Lines file (Python API)."""
    return to_catalog(read_bodies(input))


def csv_rows(bodies: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row (dict keyed by :data:`CSV_COLUMNS`) per detection, in input order."""
    detections, events = _latest(bodies)
    owner: dict[str, str] = {}
    for ev in events.values():
        for row in ev.get("stations", []):
            owner.setdefault(row.get("detection_id", ""), ev["id"])
    rows = []
    for det in detections.values():
        net, sta, loc = _station(det["station"])
        time, unc, phase, _, channel = _pick_fields(det)
        rows.append({
            "pick_id": det["id"], "event_id": owner.get(det["id"], ""), "network": net, "station": sta,
            "location": loc, "channel": channel or "", "time": time, "uncertainty_s": "" if unc is None else unc,
            "phase": phase or "", "label": det.get("label", ""), "probability": det.get("probability", ""),
            "peak_probability": det.get("peak_probability", ""), "end": det.get("end") or "",
            "state": det.get("state", ""), "model": (det.get("model") or {}).get("name", ""),
            "seq": det.get("seq", ""), "epoch": det.get("epoch", ""),
        })
    return rows


def export(input: str | Path, format: str, output: str | Path | IO[Any]) -> int:
    """Write the detections and events of `input` to `output` as quakeml, sc3ml or csv; returns the pick count.

    QuakeML is validated against the QuakeML 1.2 schema and SCML (SeisComP XML 0.12, ObsPy's "SCML" writer)
    against its schema while writing; a failure raises QuakemonError.
    """
    fmt = format.lower()
    if fmt not in FORMATS:
        raise QuakemonError(f"export format must be one of {FORMATS}, got {format!r}")
    bodies = list(read_bodies(input))
    if fmt == "csv":
        rows = csv_rows(bodies)
        if isinstance(output, str | Path):
            with open(output, "w", newline="", encoding="utf-8") as fh:
                _write_csv(fh, rows)
        else:
            _write_csv(output, rows)
        n = len(rows)
    else:
        catalog = to_catalog(bodies)
        n = sum(len(ev.picks) for ev in catalog)
        target: Any = str(output) if isinstance(output, str | Path) else output
        try:
            if fmt == "quakeml":
                catalog.write(target, format="QUAKEML", validate=True)
            else:
                _write_scml(catalog, target)
        except AssertionError as exc:  # ObsPy reports schema violations this way
            raise QuakemonError(f"export to {fmt}: the document does not validate: {exc}") from exc
    log.info("exported", input=str(input), format=fmt, picks=n)
    return n


def _write_scml(catalog: Catalog, target: Any) -> None:
    """SeisComP XML 0.12 without the "unassociated" carrier event (SCML keeps picks outside events)."""
    buf = io.BytesIO()
    catalog.write(buf, format="SCML", version="0.12", validate=True)
    doc = etree.fromstring(buf.getvalue())
    for node in doc.xpath("//*[local-name()='event'][@publicID=$rid]", rid=UNASSOCIATED):
        node.getparent().remove(node)
    data = etree.tostring(doc, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    if not validate_scml(io.BytesIO(data), version="0.12"):
        raise AssertionError("SCML 0.12 schema validation failed")
    if isinstance(target, str):
        Path(target).write_bytes(data)
    else:
        target.write(data)


def _write_csv(fh: IO[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of an exported CSV (for tests and scripts)."""
    return list(csv.DictReader(io.StringIO(text)))
