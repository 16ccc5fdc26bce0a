"""Network association: station detections in, events out (coincidence of several stations' triggers).

Like ObsPy's ``coincidence_trigger`` (obspy.signal.trigger), an event is declared when the weighted number of
stations that triggered together reaches a threshold; each station counts with its weight (default 1) and only
once per event. What "together" means differs, because quakemon triggers come from sliding windows, not from a
characteristic function: a trigger lasts as long as some window holds the signal (20 s and more), so ObsPy's
rule (trigger intervals that overlap, chained A-B-C) would merge events that follow each other within a window
length. Here stations are together when their detection *onsets*, which are P picks (``quakemon.detection/2``,
docs/picks.md: median error about 0.05 s), lie within ``window_s`` (default 5 s) of the event's first onset, and,
when station coordinates are given (StationXML), when every pair of picks differs by at most the travel time
between the two stations (``distance / velocity_kms + tolerance_s``, default 3.5 km/s, a slow P, and 1 s of
slack for the picks' errors), so picks of neighbouring stations too far apart in time for one source are not
paired by chance. Event messages list each station's pick (``stations[].pick``).

Policy (the same in replay, in the daemon and in the standalone ``quakemon associate``):

* Input: detection bodies (``quakemon.detection/2``). A "new" body is a station *pick* (its onset, the P pick);
  a "closed" body only updates that pick's end and peak probability. Every body also advances the clock of its
  *source* (the publisher run, ``epoch``, or the endpoint in ``quakemon associate``) to its
  ``last_window_start`` (the window that caused it).
* Watermark. Picks are processed in onset order, once the watermark (the slowest source's clock; ``advance``
  and heartbeats with ``data_time`` move it too) is ``hold_s`` past their onset. ``hold_s`` must cover how much
  later a station's "new" can arrive than another station's with the same onset: the trigger's min_duration
  plus the stations' data skew plus the pick's lead (a pick may lie up to 5 s before its detection's first
  window, `quakemon.pipeline.detect.PICK_LEAD_S`). So the events depend on the picks only, not on how messages
  from several publishers interleave. The daemon's inference stage and the replay (`quakemon.pipeline.runner`) drive it
  alike: a batch's detection bodies in order, then ``advance`` to the newest window start of the batch.
* Clustering, per label: the earliest pick not yet used seeds a cluster; later picks join in onset order when
  within ``window_s`` of the seed, from a station not yet in it, and travel-time compatible with every member.
  Once the coincidence sum reaches ``threshold`` the event is published ("new"), each further station is an
  "updated", and when the watermark passes seed + ``window_s`` + ``hold_s`` the event is "closed" and its picks
  (and re-triggers of its stations inside the window) are used up. A cluster that stays below the threshold
  drops only its seed; the next pick seeds the next try, so no group of ``threshold`` stations inside a window
  is missed.
* Re-triggers. A station's trigger can close and re-open while the same signal crosses the window (a window
  model's onset only says the phase lies in [onset, onset + window]). A pick of a station within ``retrigger_s``
  (default 20 s, the bundled model's window length) after that station's onset in an event belongs to that event:
  it neither counts again nor seeds a new event (``stats["retriggers"]``). Like ObsPy's rule that a coincidence
  trigger which is a subset of the previous one is skipped.
* Picks that arrive after the watermark passed them (a source lagging more than ``hold_s``) still join an open
  event they fit; otherwise they are clustered late (counted in ``stats["late_picks"]``).
* ``flush()`` (end of a replay, shutdown) decides everything and closes open events (``close_reason`` "flush").

The class is pure (no sockets, no clock): the caller feeds bodies and publishes what comes back.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from quakemon.base.errors import ConfigError
from quakemon.pipeline.settings import ASSOCIATION
from quakemon.wire.schema import DETECTION_SCHEMA, event_body, parse_iso_utc

log = structlog.get_logger(__name__)

_EPS = 1e-6


@dataclass
class Pick:
    """One station trigger ("new" detection) waiting for, or taking part in, an event."""

    station: str
    label: str
    onset: float
    onset_iso: str
    probability: float
    detection_id: str
    weight: float
    peak_probability: float = 0.0
    end: str | None = None
    pick: dict[str, Any] | None = None  # the detection's ``pick`` object

    @property
    def key(self) -> tuple[float, str, str]:
        return self.onset, self.station, self.detection_id

    def row(self) -> dict[str, Any]:
        return {"station": self.station, "onset": self.onset_iso, "probability": self.probability,
                "peak_probability": max(self.peak_probability, self.probability), "end": self.end,
                "weight": self.weight, "detection_id": self.detection_id, "pick": self.pick}


@dataclass
class _Event:
    seed: Pick
    members: list[Pick] = field(default_factory=list)
    published: int = 0  # members in the last published message (0: not published yet)


def check_association(threshold: float, window_s: float, hold_s: float, velocity_kms: float,
                      tolerance_s: float) -> None:
    """Raise ConfigError naming the [associate] key when a parameter is out of range."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"associate.threshold must be > 0 (a weighted station count), got {threshold!r}")
    if not (math.isfinite(window_s) and window_s >= 0):
        raise ConfigError(f"associate.window_s must be >= 0 seconds, got {window_s!r}")
    if not (math.isfinite(hold_s) and hold_s >= 0):
        raise ConfigError(f"associate.hold_s must be >= 0 seconds, got {hold_s!r}")
    if not velocity_kms > 0:
        raise ConfigError(f"associate.velocity_kms must be > 0, got {velocity_kms!r}")
    if not tolerance_s >= 0:
        raise ConfigError(f"associate.tolerance_s must be >= 0 seconds, got {tolerance_s!r}")


class Associator:
    """Coincidence association of detection bodies into event bodies (``quakemon.event/1``, unstamped).

    threshold:    coincidence sum (sum of station weights) an event needs, e.g. 3 for three stations.
    window_s:     the latest onset of an event is at most this long after its first.
    weights:      per-station weight by "NET.STA.LOC", "NET.STA" or "STA" (first match); default `default_weight`.
    hold_s:       how far behind the watermark a pick must be before it is clustered (see module docstring).
    coordinates:  {"NET.STA": (latitude, longitude)} (e.g. :func:`station_coordinates`), to bound onset
                  differences by travel time; stations without coordinates are bounded by `window_s` only.
    velocity_kms, tolerance_s: the travel-time bound |t_a - t_b| <= distance_km / velocity_kms + tolerance_s.
    sources:      sources known from the start (their silence holds the watermark back); others join when
                  their first body arrives.
    retrigger_s:  a station's picks this long after its onset in an event are re-triggers of that event
                  (set it to the model's window length, `InputContract.window_seconds`).
    labels:       detection labels to associate (default: all).
    """

    def __init__(
        self,
        threshold: float = ASSOCIATION.threshold,
        window_s: float = ASSOCIATION.window_s,
        weights: Mapping[str, float] | None = None,
        *,
        default_weight: float = ASSOCIATION.default_weight,
        hold_s: float = ASSOCIATION.hold_s,
        coordinates: Mapping[str, tuple[float, float]] | None = None,
        velocity_kms: float = ASSOCIATION.velocity_kms,
        tolerance_s: float = ASSOCIATION.tolerance_s,
        sources: Iterable[str] = (),
        labels: Sequence[str] | None = None,
        retrigger_s: float = ASSOCIATION.retrigger_s,
    ) -> None:
        check_association(float(threshold), float(window_s), float(hold_s), float(velocity_kms), float(tolerance_s))
        if not (math.isfinite(retrigger_s) and retrigger_s >= 0):
            raise ConfigError(f"associate.retrigger_s must be >= 0 seconds, got {retrigger_s!r}")
        self.retrigger_s = float(retrigger_s)
        self.threshold = float(threshold)
        self.window_s = float(window_s)
        self.weights = {str(k): float(v) for k, v in (weights or {}).items()}
        bad = {k: v for k, v in self.weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ConfigError(f"associate.weights must be numbers >= 0, got {bad}")
        self.default_weight = float(default_weight)
        self.hold_s = float(hold_s)
        self.coordinates = {str(k): (float(v[0]), float(v[1])) for k, v in (coordinates or {}).items()}
        self.velocity_kms = float(velocity_kms)
        self.tolerance_s = float(tolerance_s)
        self.labels = None if labels is None else frozenset(labels)
        self.stats: Counter[str] = Counter()
        self._clocks: dict[str, float] = {s: -math.inf for s in sources}
        self._retired: set[str] = set()
        self._floor = -math.inf
        self._released_until = -math.inf
        self._pending: dict[str, list[Pick]] = {}  # per label, sorted by key; not yet clustered
        self._released: dict[str, list[Pick]] = {}  # per label, sorted by key; clustered, not yet used up
        self._events: dict[str, _Event] = {}  # per label: the event of the current seed, once over threshold
        self._by_id: dict[str, Pick] = {}
        self._absorb: dict[str, dict[str, float]] = {}  # per label: station -> re-triggers absorbed until (onset)
        self._distance_cache: dict[tuple[str, str], float | None] = {}

    def retune(self, other: Associator) -> None:
        """Take `other`'s settings (threshold, window, hold, weights, travel-time bound; a reloaded [associate]),
        keeping the picks and events in flight: the new values decide from the next pick and watermark on."""
        for name in ("threshold", "window_s", "weights", "default_weight", "hold_s", "coordinates", "velocity_kms",
                     "tolerance_s", "retrigger_s"):
            setattr(self, name, getattr(other, name))
        self._distance_cache.clear()

    # --- input -----------------------------------------------------------------------------------------

    def add(self, body: Mapping[str, Any], source: str | None = None) -> list[dict[str, Any]]:
        """Feed one detection body; returns the event bodies (unstamped) that it caused, in order."""
        if body.get("schema") != DETECTION_SCHEMA:
            return []
        src = str(body.get("epoch", "")) if source is None else source
        self._retired.discard(src)
        window_start = parse_iso_utc(body.get("last_window_start", body["window_start"]))  # the message's window
        self._clocks[src] = max(self._clocks.get(src, -math.inf), window_start)
        label = str(body["label"])
        if self.labels is not None and label not in self.labels:
            return self._step()
        out: list[dict[str, Any]] = []
        if body["state"] == "new":
            self.stats["picks"] += 1
            out += self._add_pick(self._pick(body))
        else:
            pick = self._by_id.get(str(body["id"]))
            if pick is not None:
                pick.end = body.get("end")
                pick.peak_probability = max(pick.peak_probability, float(body["peak_probability"]))
        return out + self._step()

    def advance(self, data_time: float, source: str | None = None) -> list[dict[str, Any]]:
        """Move the clock of `source` (or, with None, of every source) to `data_time` (POSIX seconds)."""
        if source is None:
            self._floor = max(self._floor, float(data_time))
        else:
            self._retired.discard(source)
            self._clocks[source] = max(self._clocks.get(source, -math.inf), float(data_time))
        return self._step()

    def retire(self, source: str) -> list[dict[str, Any]]:
        """Stop waiting for `source` (it went quiet); it counts again with its next body. With every source
        retired, everything received so far is decided."""
        if source in self._clocks:
            self._retired.add(source)
        return self._step()

    def flush(self) -> list[dict[str, Any]]:
        """Decide every pick and close every open event (end of replay, shutdown)."""
        return self._step(until=math.inf, reason="flush")

    @property
    def watermark(self) -> float:
        """The data time up to which every source has reported (POSIX seconds)."""
        active = [t for s, t in self._clocks.items() if s not in self._retired]
        if not active:
            return math.inf if self._clocks else self._floor
        return max(self._floor, min(active))

    @property
    def open_events(self) -> int:
        return sum(ev.published > 0 for ev in self._events.values())

    # --- weights and distances ---------------------------------------------------------------------------

    def weight(self, station: str) -> float:
        """The weight of "NET.STA.LOC": by full id, then NET.STA, then STA, else the default."""
        parts = station.split(".")
        for key in (station, ".".join(parts[:2]), parts[1] if len(parts) > 1 else station):
            if key in self.weights:
                return self.weights[key]
        return self.default_weight

    def distance_km(self, a: str, b: str) -> float | None:
        """Epicentral distance between two stations ("NET.STA.LOC"), or None without coordinates."""
        ka, kb = ".".join(a.split(".")[:2]), ".".join(b.split(".")[:2])
        key = (ka, kb) if ka <= kb else (kb, ka)
        if key not in self._distance_cache:
            ca, cb = self.coordinates.get(ka), self.coordinates.get(kb)
            if ca is None or cb is None:
                self._distance_cache[key] = None
            else:
                from obspy.geodetics import gps2dist_azimuth

                self._distance_cache[key] = gps2dist_azimuth(ca[0], ca[1], cb[0], cb[1])[0] / 1000.0
        return self._distance_cache[key]

    def _compatible(self, pick: Pick, members: Sequence[Pick]) -> bool:
        for m in members:
            if m.station == pick.station:
                return False
            dist = self.distance_km(m.station, pick.station)
            if dist is not None and abs(m.onset - pick.onset) > dist / self.velocity_kms + self.tolerance_s + _EPS:
                self.stats["travel_time_rejects"] += 1
                return False
        return True

    # --- clustering ---------------------------------------------------------------------------------------

    def _pick(self, body: Mapping[str, Any]) -> Pick:
        station = str(body["station"])
        pick = Pick(station=station, label=str(body["label"]), onset=parse_iso_utc(body["onset"]),
                    onset_iso=str(body["onset"]), probability=float(body["probability"]),
                    detection_id=str(body["id"]), weight=self.weight(station),
                    peak_probability=float(body["peak_probability"]),
                    pick=dict(body["pick"]) if isinstance(body.get("pick"), Mapping) else None)
        self._by_id[pick.detection_id] = pick
        return pick

    def _add_pick(self, pick: Pick) -> list[dict[str, Any]]:
        if pick.onset > self._released_until:
            bisect.insort(self._pending.setdefault(pick.label, []), pick, key=lambda p: p.key)
            return []
        self.stats["late_picks"] += 1
        log.debug("late_pick", station=pick.station, onset=pick.onset_iso, watermark=self._released_until)
        if self._absorbed(pick):
            self.stats["retriggers"] += 1
            return []
        event = self._events.get(pick.label)
        if (event is not None and abs(pick.onset - event.seed.onset) <= self.window_s + _EPS
                and self._compatible(pick, event.members)):
            event.members.append(pick)
            return self._publish(event, "updated")
        bisect.insort(self._released.setdefault(pick.label, []), pick, key=lambda p: p.key)
        return []

    def _step(self, until: float | None = None, reason: str = "window") -> list[dict[str, Any]]:
        limit = self.watermark - self.hold_s if until is None else until
        if limit == math.inf:  # nothing more is coming: decide what is there, but keep later picks on time
            onsets = [p.onset for lists in (self._pending, self._released) for ps in lists.values() for p in ps]
            limit = max(onsets) + self.window_s if onsets else self._released_until
        self._released_until = max(self._released_until, limit)
        out: list[dict[str, Any]] = []
        for label in sorted(set(self._pending) | set(self._released)):
            pending = self._pending.get(label, [])
            n = bisect.bisect_right(pending, self._released_until, key=lambda p: p.onset)
            released = self._released.setdefault(label, [])
            for pick in pending[:n]:
                bisect.insort(released, pick, key=lambda p: p.key)
            del pending[:n]
            out += self._cluster(label, released, reason)
        return out

    def _absorbed(self, pick: Pick) -> bool:
        until = self._absorb.get(pick.label, {}).get(pick.station)
        return until is not None and pick.onset <= until + _EPS

    def _purge_retriggers(self, label: str, released: list[Pick]) -> None:
        absorb = self._absorb.get(label)
        if not absorb:
            return
        keep = [p for p in released if not self._absorbed(p)]
        self.stats["retriggers"] += len(released) - len(keep)
        for p in released:
            if self._absorbed(p):
                self._by_id.pop(p.detection_id, None)
        released[:] = keep
        for station, until in list(absorb.items()):  # forget what no released pick can reach any more
            if until + self.window_s < self._released_until and not math.isinf(self._released_until):
                del absorb[station]

    def _cluster(self, label: str, released: list[Pick], reason: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self._purge_retriggers(label, released)
        while released:
            event = self._events.get(label)  # a published event keeps its seed, even if a late pick came before it
            if event is None:
                event = _Event(released[0], [released[0]])
            seed = event.seed
            horizon = seed.onset + self.window_s
            member_ids = {id(m) for m in event.members}
            for pick in released:
                if pick.onset > horizon + _EPS:
                    break
                if pick.key < seed.key or id(pick) in member_ids:
                    continue
                if self._compatible(pick, event.members):
                    event.members.append(pick)
                    member_ids.add(id(pick))
            if sum(m.weight for m in event.members) >= self.threshold - _EPS:
                self._events[label] = event
                if event.published < len(event.members):
                    out += self._publish(event, "new" if event.published == 0 else "updated")
            if self._released_until < horizon - _EPS:
                break  # picks inside this window may still come
            if event.published:
                stations = {m.station for m in event.members}
                used = [p for p in released if id(p) in member_ids
                        or (p.station in stations and seed.key <= p.key and p.onset <= horizon + _EPS)]
                self.stats["retriggers"] += len(used) - len(event.members)
                out += self._publish(event, "closed", reason)
                del self._events[label]
                used_ids = {id(p) for p in used}
                released[:] = [p for p in released if id(p) not in used_ids]
                for p in used:
                    self._by_id.pop(p.detection_id, None)
                absorb = self._absorb.setdefault(label, {})
                for mem in event.members:
                    absorb[mem.station] = max(absorb.get(mem.station, -math.inf), mem.onset + self.retrigger_s)
                self._purge_retriggers(label, released)
            else:
                self.stats["below_threshold"] += 1
                released.pop(0)
                self._by_id.pop(seed.detection_id, None)
        return out

    def _publish(self, event: _Event, state: str, reason: str | None = None) -> list[dict[str, Any]]:
        if state == "closed":
            self.stats["events"] += 1
        event.published = len(event.members)
        body = event_body(
            state=state, label=event.seed.label, stations=[m.row() for m in event.members],
            coincidence_sum=sum(m.weight for m in event.members), threshold=self.threshold,
            window_s=self.window_s, close_reason=reason if state == "closed" else None,
        )
        log.info("event", id=body["id"], state=state, stations=body["n_stations"], first_onset=body["first_onset"],
                 coincidence_sum=body["coincidence_sum"])
        return [body]


def station_coordinates(inventory: Any) -> dict[str, tuple[float, float]]:
    """{"NET.STA": (latitude, longitude)} from an ObsPy Inventory or a StationXML file path."""
    from obspy import read_inventory

    inv = read_inventory(str(inventory)) if isinstance(inventory, str | bytes) or hasattr(inventory, "__fspath__") \
        else inventory
    out: dict[str, tuple[float, float]] = {}
    for net in inv:
        for sta in net:
            out.setdefault(f"{net.code}.{sta.code}", (float(sta.latitude), float(sta.longitude)))
    return out


def associator_from_config(section: Any) -> Associator | None:
    """An Associator from the ``[associate]`` config section, or None when ``enabled`` is false.

    Keys (attribute names; missing ones take the defaults of `quakemon.pipeline.settings.ASSOCIATION`): enabled
    (false), threshold, window_s, hold_s, retrigger_s, weights ({station: weight}), default_weight, inventory
    (StationXML path, optional), velocity_kms, tolerance_s.
    """
    if section is None or not getattr(section, "enabled", False):
        return None
    inventory = getattr(section, "inventory", None)
    coordinates = None
    if inventory:
        try:
            coordinates = station_coordinates(inventory)
        except Exception as exc:  # noqa: BLE001 - ObsPy raises many kinds for unreadable files
            raise ConfigError(f"associate.inventory {str(inventory)!r}: cannot read StationXML: {exc}") from exc
    a = ASSOCIATION
    return Associator(
        float(getattr(section, "threshold", a.threshold)), float(getattr(section, "window_s", a.window_s)),
        dict(getattr(section, "weights", None) or {}),
        default_weight=float(getattr(section, "default_weight", a.default_weight)),
        hold_s=float(getattr(section, "hold_s", a.hold_s)), coordinates=coordinates,
        velocity_kms=float(getattr(section, "velocity_kms", a.velocity_kms)),
        tolerance_s=float(getattr(section, "tolerance_s", a.tolerance_s)),
        retrigger_s=float(getattr(section, "retrigger_s", a.retrigger_s)),
    )


__all__ = ["Associator", "Pick", "associator_from_config", "check_association", "station_coordinates"]
