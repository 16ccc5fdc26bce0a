"""The wire schema, in one place: array frames between stages, and detection/heartbeat bodies on the PUB socket.

Two kinds of messages travel over ZeroMQ:

* Array frames (PUSH/PULL between pipeline stages): ``[JSON header, raw buffer, raw buffer, ...]``, in
  `quakemon.wire.arrays` (re-exported here).
* Published bodies (PUB to subscribers): ``[topic, JSON body]`` with topics ``detection.<NET>.<STA>`` and
  ``heartbeat``. Every body carries ``schema``, ``seq`` (+1 per message from this publisher), ``topic_seq`` (+1
  per message on this topic, so a subscriber filtering by prefix still sees its gaps) and ``epoch`` (id of the
  publisher run, new on every restart). Detections carry ``station`` "NET.STA.LOC".

docs/wire-protocol.md describes every field of the bodies and what changed from ``quakemon.detection/1``. Times
are ISO 8601 UTC with microseconds and a ``Z``; ``latency_s`` and ``data_age_s`` are computed in one place.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from quakemon.wire.arrays import ALLOWED_DTYPES, ARRAYS_SCHEMA, MAX_NDIM, pack_arrays, unpack_arrays  # noqa: F401
from quakemon.wire.codec import MessageError, json_bytes  # noqa: F401  (re-exported: the wire's public names)

DETECTION_SCHEMA = "quakemon.detection/2"
#: Earlier detection schemas, which `parse_body` names in its error (docs/wire-protocol.md says what changed).
OLD_DETECTION_SCHEMAS = ("quakemon.detection/1",)
HEARTBEAT_SCHEMA = "quakemon.heartbeat/1"
EVENT_SCHEMA = "quakemon.event/1"

DETECTION_TOPIC_PREFIX = "detection"
HEARTBEAT_TOPIC = "heartbeat"
EVENT_TOPIC = "event"

DETECTION_STATES = ("new", "closed")
CLOSE_REASONS = ("off", "gap", "flush", "shutdown")
EVENT_STATES = ("new", "updated", "closed")
EVENT_CLOSE_REASONS = ("window", "flush")

# --------------------------------------------------------------------------------------------------------------
# Times, ids, topics
# --------------------------------------------------------------------------------------------------------------

_EPOCH0 = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def to_timestamp(t: Any) -> float:
    """POSIX seconds from a float/int, an ObsPy UTCDateTime (``.timestamp``) or an aware datetime."""
    if type(t) is float and math.isfinite(t):  # the common case (triggers get every window's times), first
        return t
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise MessageError(f"naive datetime {t!r}: times must be UTC-aware")
        return t.timestamp()
    ts = getattr(t, "timestamp", t)
    if callable(ts):
        ts = ts()
    try:
        value = float(ts)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"not a time: {t!r}") from exc
    if not math.isfinite(value):
        raise MessageError(f"not a finite time: {t!r}")
    return value


def iso_utc(t: Any) -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2009-08-24T00:20:03.000000Z``; the same input gives the same text."""
    micros = round(to_timestamp(t) * 1_000_000)
    return (_EPOCH0 + _dt.timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_utc_ns(time_ns: int) -> str:
    """:func:`iso_utc` of integer ns since the epoch, exact (no float rounding on the way)."""
    micros = (int(time_ns) + 500) // 1000
    return (_EPOCH0 + _dt.timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_utc(text: str) -> float:
    """POSIX seconds from :func:`iso_utc` text (or any ISO 8601 string with a UTC offset or ``Z``)."""
    try:
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError) as exc:
        raise MessageError(f"not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        raise MessageError(f"ISO time {text!r} has no UTC offset")
    return value.timestamp()


def latency_s(last_sample_arrival: float, now: float | None = None) -> float:
    """Seconds from the arrival of a window's last sample (host ``time.time()``) to now (publication); negative
    values (host clock stepped backwards) are clamped to 0."""
    now = time.time() if now is None else now
    return max(0.0, round(float(now) - float(last_sample_arrival), 6))


def data_age_s(window_end: Any, now: float | None = None) -> float:
    """Seconds from a window's end (float, UTCDateTime or ISO text) to now; negative: host clock behind the data."""
    end = parse_iso_utc(window_end) if isinstance(window_end, str) else to_timestamp(window_end)
    return round((time.time() if now is None else now) - end, 6)


def new_epoch(now: float | None = None) -> str:
    """Id of one publisher run: start time (UTC, seconds) plus 64 random bits, e.g. ``20261128T113114Z-9f..``."""
    start = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.UTC)
    return f"{start:%Y%m%dT%H%M%SZ}-{secrets.token_hex(8)}"


def detection_id(station: str, onset: str, model_sha256: str) -> str:
    """Stable id of a detection: the same station, pick time (ISO text) and model give the same id, live or
    replay."""
    return hashlib.sha1(f"{station}|{onset}|{model_sha256}".encode()).hexdigest()[:20]


def _station_parts(station: str) -> list[str]:
    parts = station.split(".") if isinstance(station, str) else []
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise MessageError(f"station must be 'NET.STA.LOC' (LOC may be empty), got {station!r}")
    return parts


def detection_topic(station: str) -> str:
    """Topic of a station's detections: ``detection.NET.STA`` for station ``NET.STA.LOC``."""
    net, sta, _ = _station_parts(station)
    return f"{DETECTION_TOPIC_PREFIX}.{net}.{sta}"


def event_id(label: str, station: str, onset: str) -> str:
    """Stable id of an event: label, first station and its onset (ISO text); the same in replay and live."""
    return hashlib.sha1(f"{label}|{station}|{onset}".encode()).hexdigest()[:20]


def event_topic(event_id: str) -> str:
    """Topic of an event's messages: ``event.<id>`` (subscribe to ``event`` for all events)."""
    if not isinstance(event_id, str) or not event_id or "." in event_id:
        raise MessageError(f"event id must be a non-empty string without dots, got {event_id!r}")
    return f"{EVENT_TOPIC}.{event_id}"


def parse_body(data: bytes | memoryview) -> dict[str, Any]:
    """Decode and validate a published body (detection, event or heartbeat); raises :class:`MessageError`."""
    try:
        body = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MessageError(f"body must be a JSON object, got {type(body).__name__}")
    schema = body.get("schema")
    if schema == DETECTION_SCHEMA:
        return validate_detection(body)
    if schema in OLD_DETECTION_SCHEMAS:
        raise MessageError(f"schema {schema!r} is no longer published (this reader speaks {DETECTION_SCHEMA!r}; "
                           "see docs/wire-protocol.md)")
    if schema == HEARTBEAT_SCHEMA:
        return validate_heartbeat(body)
    if schema == EVENT_SCHEMA:
        return validate_event(body)
    raise MessageError(f"unknown schema {schema!r}; expected {DETECTION_SCHEMA!r}, {EVENT_SCHEMA!r} "
                       f"or {HEARTBEAT_SCHEMA!r}")


# --------------------------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------------------------


class Sequencer:
    """Stamps ``seq``, ``topic_seq`` and ``epoch`` on bodies from one publisher run (or one replay output)."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.seq_last = 0
        self._topic_seq: dict[str, int] = {}

    def stamp(self, topic: str, body: dict[str, Any]) -> dict[str, Any]:
        """Add the next seq (global and per topic) and the epoch to `body` (in place) and return it."""
        self.seq_last += 1
        topic_seq = self._topic_seq.get(topic, 0) + 1
        self._topic_seq[topic] = topic_seq
        body["seq"] = self.seq_last
        body["topic_seq"] = topic_seq
        body["epoch"] = self.epoch
        return body


def _prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise MessageError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def pick_body(time_ns: int, uncertainty_s: float, method: str, snr: float | None, phase: str = "P") -> dict[str, Any]:
    """The ``pick`` object of a detection body: time (ISO, from ns since the epoch), uncertainty_s, phase,
    method, snr (null when undefined)."""
    snr = math.nan if snr is None else float(snr)
    return {"time": iso_utc_ns(time_ns), "uncertainty_s": round(float(uncertainty_s), 4), "phase": phase,
            "method": str(method), "snr": round(snr, 3) if math.isfinite(snr) else None}


def detection_body(
    *,
    station: str,
    state: str,
    label: str,
    probability: float,
    probabilities: Mapping[str, float],
    window_start: Any,
    window_end: Any,
    peak_probability: float,
    model: Mapping[str, str],
    onset: Any = None,
    pick_time_ns: int | None = None,
    pick_uncertainty_s: float = 0.0,
    pick_method: str = "manual",
    pick_snr: float | None = None,
    last_window_start: Any = None,
    last_window_end: Any = None,
    latency_s: float | None = None,
    data_age_s: float | None = None,
    end: Any = None,
    close_reason: str | None = None,
) -> dict[str, Any]:
    """A detection body (without seq/epoch, which the publisher stamps); times may be floats or UTCDateTime.

    The pick time is `pick_time_ns` (integer ns since the epoch, exact; what the trigger gives) or `onset`;
    it becomes ``onset`` and ``pick.time``, and ``id`` is :func:`detection_id` of station, pick time and model
    sha256. The pick's quality defaults suit a hand-made body (method "manual"). `last_window_start` /
    `last_window_end` (the window that caused the message) default to the first window. ``end`` and
    ``close_reason`` are set on "closed" only. ``latency_s`` and ``data_age_s`` are null in replays and filled
    at publication (`quakemon.wire.publisher.Publisher.publish_detection`).
    """
    if pick_time_ns is None:
        if onset is None:
            raise MessageError("detection body: needs a pick time (pick_time_ns or onset)")
        pick_time_ns = round(to_timestamp(onset) * 1e6) * 1000
    pick = pick_body(pick_time_ns, pick_uncertainty_s, pick_method, pick_snr)
    last_window_start = window_start if last_window_start is None else last_window_start
    last_window_end = window_end if last_window_end is None else last_window_end
    body: dict[str, Any] = {
        "schema": DETECTION_SCHEMA,
        "station": station,
        "id": detection_id(station, pick["time"], str(model.get("sha256", ""))),
        "state": state,
        "label": label,
        "probability": round(float(probability), 6),
        "probabilities": {str(k): round(float(v), 6) for k, v in probabilities.items()},
        "onset": pick["time"],
        "pick": pick,
        "window_start": iso_utc(window_start),
        "window_end": iso_utc(window_end),
        "last_window_start": iso_utc(last_window_start),
        "last_window_end": iso_utc(last_window_end),
        "end": None if end is None else iso_utc(end),
        "peak_probability": round(float(peak_probability), 6),
        "model": {"name": str(model.get("name", "")), "sha256": str(model.get("sha256", ""))},
        "latency_s": None if latency_s is None else float(latency_s),
        "data_age_s": None if data_age_s is None else float(data_age_s),
    }
    if close_reason is not None:
        body["close_reason"] = close_reason
    return validate_detection(body, stamped=False)


def _require(body: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in body:
        raise MessageError(f"{what} body: missing field {key!r}")
    value = body[key]
    bool_for_number = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if bool_for_number or not isinstance(value, types):
        raise MessageError(f"{what} body: field {key!r} must be {types}, got {value!r}")
    return value


def _check_header(body: Mapping[str, Any], schema: str, what: str, stamped: bool) -> None:
    """The schema every body must name, and (once published) its seq, topic_seq and epoch."""
    if body.get("schema") != schema:
        raise MessageError(f"{what} body: schema expected {schema!r}, got {body.get('schema')!r}")
    for key in ("seq", "topic_seq") if stamped else ():
        if _require(body, key, int, what) < 1:
            raise MessageError(f"{what} body: {key} must be >= 1, got {body[key]!r}")
    if stamped and not _require(body, "epoch", str, what):
        raise MessageError(f"{what} body: epoch must be a non-empty string")


def validate_detection(body: dict[str, Any], stamped: bool = True) -> dict[str, Any]:
    """Check a detection body against ``quakemon.detection/2``; returns it unchanged or raises MessageError."""
    what = "detection"
    _check_header(body, DETECTION_SCHEMA, what, stamped)
    _station_parts(_require(body, "station", str, what))
    _require(body, "id", str, what)
    _require({"backfill": body.get("backfill", False)}, "backfill", bool, what)  # optional: true = backfilled
    state = _require(body, "state", str, what)
    if state not in DETECTION_STATES:
        raise MessageError(f"{what} body: state must be one of {DETECTION_STATES}, got {state!r}")
    _require(body, "label", str, what)
    _prob("probability", _require(body, "probability", (int, float), what))
    _prob("peak_probability", _require(body, "peak_probability", (int, float), what))
    for label, p in _require(body, "probabilities", dict, what).items():
        _prob(f"probabilities[{label!r}]", p)
    for key in ("onset", "window_start", "window_end", "last_window_start", "last_window_end"):
        parse_iso_utc(_require(body, key, str, what))
    _check_pick(_require(body, "pick", dict, what), what)
    if body["pick"]["time"] != body["onset"]:
        raise MessageError(f"{what} body: onset {body['onset']!r} must be the pick time {body['pick']['time']!r}")
    end = body.get("end")
    if state == "closed":
        parse_iso_utc(_require(body, "end", str, what))
        if body.get("close_reason") not in CLOSE_REASONS:
            raise MessageError(f"{what} body: close_reason must be one of {CLOSE_REASONS}, "
                               f"got {body.get('close_reason')!r}")
    elif end is not None:
        raise MessageError(f"{what} body: 'end' must be null while state is 'new', got {end!r}")
    model = _require(body, "model", dict, what)
    if not isinstance(model.get("name"), str) or not isinstance(model.get("sha256"), str):
        raise MessageError(f"{what} body: model must be {{name: str, sha256: str}}, got {model!r}")
    _check_seconds(body, what, "latency_s", non_negative=True)
    _check_seconds(body, what, "data_age_s")  # (absent from older producers)
    return body


def _check_seconds(body: Mapping[str, Any], what: str, key: str, non_negative: bool = False) -> None:
    """An optional number of seconds (>= 0 when `non_negative`): a number, null or absent."""
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or (non_negative and value < 0)):
        raise MessageError(f"{what} body: {key} must be a number{' >= 0' * non_negative} or null, got {value!r}")


def _check_pick(pick: Mapping[str, Any], what: str) -> None:
    """A ``pick`` object: time (ISO), uncertainty_s >= 0, phase, method (strings), snr (number, null or absent)."""
    parse_iso_utc(_require(pick, "time", str, f"{what} pick"))
    unc = _require(pick, "uncertainty_s", (int, float), f"{what} pick")
    if not (math.isfinite(unc) and unc >= 0):
        raise MessageError(f"{what} pick: uncertainty_s must be a number >= 0, got {unc!r}")
    _require(pick, "phase", str, f"{what} pick")
    _require(pick, "method", str, f"{what} pick")
    snr = pick.get("snr")
    if snr is not None and (isinstance(snr, bool) or not isinstance(snr, int | float)):
        raise MessageError(f"{what} pick: snr must be a number or null, got {snr!r}")


def event_body(
    *,
    state: str,
    label: str,
    stations: Sequence[Mapping[str, Any]],
    coincidence_sum: float,
    threshold: float,
    window_s: float,
    close_reason: str | None = None,
) -> dict[str, Any]:
    """An event body (without seq/epoch, which the publisher stamps).

    `stations`: one mapping per station with station, onset (float or UTCDateTime or ISO text), probability,
    peak_probability, end (or None), weight, detection_id, pick (the detection's ``pick`` object, or None).
    They are sorted by onset, then station; the id, first and last onset and the event end follow from them.
    """
    rows = []
    for st in stations:
        onset = st["onset"]
        end = st.get("end")
        rows.append({
            "station": str(st["station"]),
            "onset": onset if isinstance(onset, str) else iso_utc(onset),
            "probability": round(float(st["probability"]), 6),
            "peak_probability": round(float(st.get("peak_probability", st["probability"])), 6),
            "end": None if end is None else end if isinstance(end, str) else iso_utc(end),
            "weight": float(st.get("weight", 1.0)),
            "detection_id": str(st.get("detection_id", "")),
            "pick": dict(st["pick"]) if st.get("pick") is not None else None,
        })
    if not rows:
        raise MessageError("event body: needs at least one station")
    rows.sort(key=lambda r: (parse_iso_utc(r["onset"]), r["station"]))
    ends = [r["end"] for r in rows if r["end"] is not None]
    body: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "id": event_id(label, rows[0]["station"], rows[0]["onset"]),
        "state": state,
        "label": str(label),
        "first_onset": rows[0]["onset"],
        "last_onset": rows[-1]["onset"],
        "stations": rows,
        "n_stations": len(rows),
        "coincidence_sum": round(float(coincidence_sum), 6),
        "threshold": float(threshold),
        "window_s": float(window_s),
        "end": max(ends, key=parse_iso_utc) if ends else None,
    }
    if close_reason is not None:
        body["close_reason"] = close_reason
    return validate_event(body, stamped=False)


def validate_event(body: dict[str, Any], stamped: bool = True) -> dict[str, Any]:
    """Check an event body against ``quakemon.event/1``; returns it unchanged or raises MessageError."""
    what = "event"
    _check_header(body, EVENT_SCHEMA, what, stamped)
    event_topic(_require(body, "id", str, what))
    state = _require(body, "state", str, what)
    if state not in EVENT_STATES:
        raise MessageError(f"{what} body: state must be one of {EVENT_STATES}, got {state!r}")
    _require(body, "label", str, what)
    for key in ("first_onset", "last_onset"):
        parse_iso_utc(_require(body, key, str, what))
    stations = _require(body, "stations", list, what)
    if not stations:
        raise MessageError(f"{what} body: stations must not be empty")
    for i, st in enumerate(stations):
        if not isinstance(st, dict):
            raise MessageError(f"{what} body: stations[{i}] must be an object, got {st!r}")
        _station_parts(_require(st, "station", str, f"{what} stations[{i}]"))
        parse_iso_utc(_require(st, "onset", str, f"{what} stations[{i}]"))
        _prob(f"stations[{i}].probability", _require(st, "probability", (int, float), f"{what} stations[{i}]"))
        if st.get("end") is not None:
            parse_iso_utc(_require(st, "end", str, f"{what} stations[{i}]"))
        if st.get("pick") is not None:
            _check_pick(_require(st, "pick", dict, f"{what} stations[{i}]"), f"{what} stations[{i}]")
        _require(st, "weight", (int, float), f"{what} stations[{i}]")
    if len({st["station"] for st in stations}) != len(stations):
        raise MessageError(f"{what} body: a station appears twice in {[st['station'] for st in stations]}")
    if _require(body, "n_stations", int, what) != len(stations):
        raise MessageError(f"{what} body: n_stations {body['n_stations']} != {len(stations)} stations listed")
    for key in ("coincidence_sum", "threshold", "window_s"):
        _require(body, key, (int, float), what)
    if body.get("end") is not None:
        parse_iso_utc(_require(body, "end", str, what))
    if state == "closed" and body.get("close_reason") not in EVENT_CLOSE_REASONS:
        raise MessageError(f"{what} body: close_reason must be one of {EVENT_CLOSE_REASONS}, "
                           f"got {body.get('close_reason')!r}")
    return body


def heartbeat_body(stats: Mapping[str, Any], *, uptime_s: float, seq_last: int, now: float | None = None,
                   catchup: str | None = None) -> dict:
    """A heartbeat body (without seq/epoch): liveness plus pipeline counters from `stats`.

    Known `stats` keys (defaults 0 / {} / null): stations (int), windows_in, windows_out, dropped (int),
    queue_depths ({stage: int}), lag_s (float or null; the daemon also sends data_age_s, data_lag_s); others
    pass through unchanged. ``seq_last`` is the seq of the last message this publisher sent before the
    heartbeat. ``catchup``, when given, is the catch-up server's endpoint (the field is left out otherwise).
    """
    body: dict[str, Any] = {"stations": 0, "windows_in": 0, "windows_out": 0, "dropped": 0, "queue_depths": {},
                            "lag_s": None, **stats}
    body.update({"schema": HEARTBEAT_SCHEMA, "time": iso_utc(time.time() if now is None else now),
                 "uptime_s": round(float(uptime_s), 3), "seq_last": int(seq_last)})
    if catchup is not None:
        body["catchup"] = catchup
    return validate_heartbeat(body, stamped=False)


def validate_heartbeat(body: dict[str, Any], stamped: bool = True) -> dict[str, Any]:
    """Check a heartbeat body against ``quakemon.heartbeat/1``; returns it unchanged or raises MessageError."""
    what = "heartbeat"
    _check_header(body, HEARTBEAT_SCHEMA, what, stamped)
    parse_iso_utc(_require(body, "time", str, what))
    _require(body, "uptime_s", (int, float), what)
    for key in ("stations", "windows_in", "windows_out", "dropped", "seq_last"):
        if _require(body, key, int, what) < 0:
            raise MessageError(f"{what} body: {key} must be >= 0, got {body[key]!r}")
    depths = _require(body, "queue_depths", dict, what)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in depths.values()):
        raise MessageError(f"{what} body: queue_depths must map stage names to ints, got {depths!r}")
    for key in ("lag_s", "data_age_s", "data_lag_s"):  # (data_age_s, data_lag_s: absent from older producers)
        _check_seconds(body, what, key)
    catchup = body.get("catchup")
    if catchup is not None and (not isinstance(catchup, str) or not catchup):
        raise MessageError(f"{what} body: catchup must be a non-empty endpoint string or absent, got {catchup!r}")
    return body
