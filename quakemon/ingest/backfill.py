"""Backfill: the spans SeedLink could not deliver, and the archives they are read from afterwards.

A gap (`seedlink_gap`: a record that starts later than its stream's previous record ended) is data the server no
longer had. `GapPlanner` turns the per-stream gaps into per-station backfill requests: the gaps of a station's
channels that overlap are merged into one span, a span shorter than MIN_GAP_S is left to the windower's
`max_missing_fraction`, a span longer than `max_span_s` is cut to its newest `max_span_s`, and a request becomes
due `delay_s` after its gap was seen (archives such as slarchive's SDS tree or an FDSN data centre fill in after
the live feed), and no sooner than SETTLE_S (the other channels of the station report the same gap then; one
that reports it later still is not requested again).

Sources (`open_source`, from `[backfill] source`):

    "sds:///path/to/SDS"                     an SDS tree (ObsPy `obspy.clients.filesystem.sds.Client`)
    "fdsn://host[:port]"                     an FDSN web service over http (`obspy.clients.fdsn.Client`)
    "http://host[:port][/path]", "https://"  the same, with the URL given as is

`fetch(request)` returns an ObsPy Stream of the requested channels trimmed to the span (empty: no data), or
raises `BackfillError` with a one-line reason; retrying is the caller's business.
"""

from __future__ import annotations

import collections
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from quakemon.base.timegrid import split_seed_id
from quakemon.wire.schema import iso_utc_ns

log = structlog.get_logger(__name__)

SETTLE_S = 2.0  # a request waits at least this long for the gaps of the station's other channels
MIN_GAP_S = 1.0  # shorter gaps are left to the windows' max_missing_fraction
MAX_LISTED = 64  # requests kept in the ingest status (the newest), for the inference stage to pick up
FDSN_TIMEOUT_S = 60.0


class BackfillError(Exception):
    """A source could not deliver a span (unreachable, refused, corrupt data); the message says why."""


@dataclass(frozen=True)
class BackfillRequest:
    """One station's missing span [start_ns, end_ns) and the channels (NET.STA.LOC.CHA codes' CHA) it lacks."""

    station: str  # NET.STA.LOC
    channels: tuple[str, ...]
    start_ns: int
    end_ns: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.station, self.start_ns, self.end_ns)

    @property
    def span_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def to_wire(self) -> list[Any]:
        """[station, [channels], start_ns, end_ns]: the form the ingest status carries."""
        return [self.station, list(self.channels), self.start_ns, self.end_ns]

    @classmethod
    def from_wire(cls, obj: Any) -> BackfillRequest:
        """The inverse of `to_wire`; raises ValueError for anything else (status reports are untrusted input)."""
        if not (isinstance(obj, list) and len(obj) == 4):
            raise ValueError(f"expected [station, channels, start_ns, end_ns], got {str(obj)[:80]!r}")
        station, channels, start, end = obj
        ok_channels = isinstance(channels, list) and 0 < len(channels) <= 16 and all(
            isinstance(c, str) and len(c) == 3 and c.isalnum() for c in channels)
        ok_times = all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)) and 0 <= start < end
        if not (isinstance(station, str) and station.count(".") == 2 and len(station) <= 40 and ok_channels
                and ok_times):
            raise ValueError(f"malformed backfill request {str(obj)[:80]!r}")
        return cls(station, tuple(channels), start, end)


class GapPlanner:
    """Per-station backfill requests from per-stream gaps (see the module docstring).

    `note(stream_id, from_s, to_s)` for every gap; `poll()` moves the requests that are due to `listed` (the
    newest MAX_LISTED) and returns them. Counters: `stats`.
    """

    def __init__(self, delay_s: float, max_span_s: float, min_gap_s: float = MIN_GAP_S,
                 clock: Any = time.monotonic) -> None:
        self.delay_s = max(delay_s, SETTLE_S)
        self.max_span_ns = int(max_span_s * 1e9)
        self.min_gap_ns = int(min_gap_s * 1e9)
        self.clock = clock
        self.open: dict[str, list[tuple[float, BackfillRequest]]] = {}  # station -> [(seen at, not yet due)]
        self.listed: collections.deque[BackfillRequest] = collections.deque(maxlen=MAX_LISTED)
        self.stats = collections.Counter({"backfill_requested": 0, "backfill_skipped": 0, "backfill_clipped": 0})

    def note(self, stream_id: str, from_s: float, to_s: float) -> None:
        """A gap of one stream, from the end of its previous record to the start of the next (POSIX s)."""
        parts = split_seed_id(stream_id)
        if parts is None:
            return
        station, channel = parts[0], stream_id.rsplit(".", 1)[1]
        start, end = round(from_s * 1e9), round(to_s * 1e9)
        if any(r.station == station and start < r.end_ns and end > r.start_ns for r in self.listed):
            return  # a late channel of an outage already requested
        pending = self.open.setdefault(station, [])
        for i, (seen, req) in enumerate(pending):
            if start <= req.end_ns and end >= req.start_ns:  # the same outage, seen on another channel
                pending[i] = (seen, BackfillRequest(station, tuple(sorted({*req.channels, channel})),
                                                    min(start, req.start_ns), max(end, req.end_ns)))
                return
        pending.append((self.clock(), BackfillRequest(station, (channel,), start, end)))

    def poll(self) -> list[BackfillRequest]:
        """The requests that became due (logged as `backfill_requested`), now also in `listed`."""
        now = self.clock()
        due: list[BackfillRequest] = []
        for station in list(self.open):
            pending = self.open[station]
            due += [req for seen, req in pending if now - seen >= self.delay_s]
            pending[:] = [(seen, req) for seen, req in pending if now - seen < self.delay_s]
            if not pending:
                del self.open[station]
        return [r for r in map(self._close, due) if r is not None]

    def _close(self, req: BackfillRequest) -> BackfillRequest | None:
        if req.end_ns - req.start_ns < self.min_gap_ns:
            self.stats["backfill_skipped"] += 1
            return None
        if req.end_ns - req.start_ns > self.max_span_ns:
            clipped = BackfillRequest(req.station, req.channels, req.end_ns - self.max_span_ns, req.end_ns)
            log.warning("backfill_clipped", station=req.station, missing_s=req.span_s, backfilled_s=clipped.span_s,
                        note="only the newest max_span_s of the gap is backfilled")
            self.stats["backfill_clipped"] += 1
            req = clipped
        self.stats["backfill_requested"] += 1
        self.listed.append(req)
        log.info("backfill_requested", station=req.station, channels=list(req.channels), span_s=req.span_s,
                 start=iso_utc_ns(req.start_ns), end=iso_utc_ns(req.end_ns))
        return req


class Source(Protocol):
    def fetch(self, req: BackfillRequest) -> Any: ...


class SdsSource:
    """An SDS tree (slarchive's layout) read with ObsPy's SDS client."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __str__(self) -> str:
        return f"sds://{self.root}"

    def fetch(self, req: BackfillRequest) -> Any:
        from obspy import Stream

        net, sta, loc = req.station.split(".")
        t0, t1 = _utc(req.start_ns), _utc(req.end_ns)
        out = Stream()
        if not Path(self.root).is_dir():  # not mounted (yet): worth retrying
            raise BackfillError(f"{self}: the SDS root is not a directory")
        try:
            from obspy.clients.filesystem.sds import Client  # it checks the root: made for every read

            client = Client(self.root)
            for cha in req.channels:
                out += client.get_waveforms(net, sta, loc, cha, t0, t1)
        except Exception as exc:  # unreadable files: ObsPy raises many types
            raise BackfillError(f"{self}: {type(exc).__name__}: {str(exc)[:300]}") from None
        return out


class FdsnSource:
    """An FDSN web service's dataselect (fdsnws/dataselect/1/query), without service discovery."""

    def __init__(self, base_url: str, timeout_s: float = FDSN_TIMEOUT_S) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._client: Any = None

    def __str__(self) -> str:
        return self.base_url

    def fetch(self, req: BackfillRequest) -> Any:
        from obspy.clients.fdsn.header import FDSNNoDataException

        net, sta, loc = req.station.split(".")
        try:
            if self._client is None:  # built on first use: its constructor already talks to the server
                from obspy.clients.fdsn import Client

                self._client = Client(self.base_url, timeout=self.timeout_s, _discover_services=False)
            return self._client.get_waveforms(net, sta, loc or "--", ",".join(req.channels), _utc(req.start_ns),
                                              _utc(req.end_ns))
        except FDSNNoDataException:
            from obspy import Stream

            return Stream()
        except Exception as exc:  # HTTP errors, refused connections, undecodable MiniSEED
            raise BackfillError(f"{self}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None


SOURCE_FORMS = '"" (off), "sds:///path", "fdsn://host[:port]" or an http(s):// URL'


def valid_source(url: str) -> bool:
    """Is `url` a `[backfill] source` in one of the module docstring's forms ("" = off)?"""
    if url == "":
        return True
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    if parsed.scheme == "sds":
        return bool(parsed.path) and not parsed.netloc
    return parsed.scheme in ("fdsn", "http", "https") and bool(parsed.hostname)


def open_source(url: str) -> Source | None:
    """The source `[backfill] source` names, or None when it is ""; raises ValueError for a malformed one."""
    if not valid_source(url):
        raise ValueError(f"backfill source: expected {SOURCE_FORMS}, got {url!r}")
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "sds":
        return SdsSource(parsed.path)
    if parsed.scheme == "fdsn":
        return FdsnSource(f"http://{parsed.netloc}")
    return FdsnSource(url.rstrip("/"))


def _utc(ns: int) -> Any:
    from obspy import UTCDateTime

    return UTCDateTime(ns=ns)
