"""Test data for backfill: a live archive with a hole, and the hole's data with an event in an SDS tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 100.0
EVENT_AT_S = 1800.0  # the event's offset inside the hole


@dataclass
class Outage:
    live: Path  # MiniSEED: `before_s` of noise, the hole, `after_s` of noise
    sds: Path  # SDS root holding the hole: noise with obspy.read()'s BW.RJOB event at EVENT_AT_S
    hole_start: float  # POSIX s
    hole_s: float
    event_at_s: float  # the event's offset inside the hole


def write_outage(root: Path, hole_s: float = 7200.0, before_s: float = 60.0, after_s: float = 60.0,
                 event_at_s: float = EVENT_AT_S, seed: int = 0) -> Outage:
    """BW.RJOB..EH[ZNE] at 100 Hz, STEIM2 int32: the live file and the SDS tree (`sds/YEAR/NET/STA/CHA.D/...`,
    one day file per channel, as slarchive writes it)."""
    import obspy

    base = obspy.read()
    start = base[0].stats.starttime
    rng = np.random.default_rng(seed)
    live, hole = obspy.Stream(), obspy.Stream()
    for tr in base:
        def piece(t0: float, seconds: float, tr=tr) -> obspy.Trace:
            out = tr.copy()
            out.stats.starttime = start + t0
            out.data = np.round(rng.normal(0, 20, int(seconds * RATE))).astype(np.int32)
            return out

        live += piece(0.0, before_s)
        live += piece(before_s + hole_s, after_s)
        filled = piece(before_s, hole_s)
        at = int(event_at_s * RATE)
        filled.data[at : at + tr.stats.npts] = np.round(tr.data).astype(np.int32)
        hole += filled
    live_path = root / "live.mseed"
    live.write(str(live_path), format="MSEED", reclen=512, encoding="STEIM2")
    sds = root / "sds"
    for tr in hole:
        s = tr.stats
        day = sds / str(s.starttime.year) / s.network / s.station / f"{s.channel}.D"
        day.mkdir(parents=True, exist_ok=True)
        name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{s.starttime.year}.{s.starttime.julday:03d}"
        tr.write(str(day / name), format="MSEED", reclen=512, encoding="STEIM2")
    return Outage(live_path, sds, float((start + before_s).timestamp), hole_s, event_at_s)


class FdsnServer:
    """A tiny FDSN dataselect service on 127.0.0.1: GET /fdsnws/dataselect/1/query?net=&sta=&loc=&cha=&start=&end=
    answers the matching part of `traces` as MiniSEED (204 when nothing matches).

    `failures`: answers for the first requests instead ("404", "500", "corrupt": 200 with bytes that are not
    MiniSEED), one per request; `requests` lists the query strings received.
    """

    def __init__(self, traces, failures: list[str] | None = None) -> None:
        import http.server
        import threading

        self.traces = traces
        self.failures = list(failures or [])
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                status, body = server.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.fdsn.mseed" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, bytes]:
        import io
        import urllib.parse

        from obspy import UTCDateTime

        url = urllib.parse.urlsplit(path)
        if url.path != "/fdsnws/dataselect/1/query":
            return 404, b"Error 404: no such service\n"
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "corrupt":
                return 200, b"\x00garbage, not MiniSEED" * 64
            return int(failure), f"Error {failure}: injected\n".encode()
        q = dict(urllib.parse.parse_qsl(url.query))
        loc = "" if q.get("location", q.get("loc")) in (None, "--") else q.get("location", q.get("loc"))
        chans = q.get("channel", q.get("cha", "*")).split(",")
        st = self.traces.select(network=q.get("network", q.get("net")), station=q.get("station", q.get("sta")),
                                location=loc)
        st = st.__class__([tr for tr in st if any(tr.stats.channel == c or c == "*" for c in chans)]).slice(
            UTCDateTime(q.get("starttime", q.get("start"))), UTCDateTime(q.get("endtime", q.get("end"))))
        if not st:
            return 204, b""
        buf = io.BytesIO()
        st.write(buf, format="MSEED", reclen=512, encoding="STEIM2")
        return 200, buf.getvalue()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
