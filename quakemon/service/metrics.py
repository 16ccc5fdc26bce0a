"""Prometheus metrics for the daemon, in a registry of their own, and the HTTP endpoint that serves them.

Nothing is registered at import time: `Metrics()` builds a fresh `CollectorRegistry`, so tests and
several pipelines in one process never collide on the global registry. Names follow Prometheus
conventions (`quakemon_` prefix, base units, `_total` for counters).

Metrics live in the process that serves them. Under `quakemon run` the stages are separate processes:
they report cumulative counts to the supervisor, whose bridge (quakemon.service.daemon.MetricsBridge) feeds them in.

The endpoint (`MetricsServer`) is one thread with a selector, not a thread per client: at most
`max_connections` sockets are open (a new client evicts the connection open longest), each must send its
request and take its answer within `timeout_s`, requests are capped at 8 KiB. So idle or slow clients cannot
hold the daemon's threads or file descriptors; every answer closes its connection.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quakemon.base.errors import ConfigError, QuakemonError

log = structlog.get_logger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All quakemon metrics, registered in `self.registry`.

    Per station (label `station` = "NET.STA.LOC"): lag_seconds (now - end of the newest window),
    buffer_fill_ratio (share of its ring buffer holding samples). Pipeline: windows_in / windows_out /
    windows_dropped{reason}, batch_size and inference_seconds histograms, queue_depth{queue}. Ingest: records,
    records_corrupt{reason} (the decoder's rejection reasons), records_duplicate, gaps (as the SeedLink source
    counts them: a record starting more than half a sample after its stream's previous one ended),
    reconnects. Windower: records_rejected{reason}, clock_jumps, silent_stations, station_silences and
    station_silent{station}. Output: detections{station} ("new" detections). Publish socket: zmq_events{event}
    (ZeroMQ monitor events by name: ACCEPTED, HANDSHAKE_SUCCEEDED, HANDSHAKE_FAILED_AUTH, DISCONNECTED, ...), and
    curve_rejected{reason} (handshakes refused, by ZeroMQ's reason). Stage sockets: messages_rejected{reason}
    (malformed messages the preprocess and inference stages dropped). Backfill: backfill_spans{outcome},
    backfill_detections.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.station_lag = Gauge("quakemon_station_lag_seconds", "Wall clock minus end time of the newest sample",
                                 ["station"], registry=r)
        self.station_buffer_fill = Gauge("quakemon_station_buffer_fill_ratio",
                                         "Fraction of the station's ring buffer holding data", ["station"], registry=r)
        self.windows_in = Counter("quakemon_windows_in", "Windows cut by the scheduler", registry=r)
        self.windows_out = Counter("quakemon_windows_out", "Windows classified by the model", registry=r)
        self.windows_dropped = Counter("quakemon_windows_dropped", "Windows not classified, by reason",
                                       ["reason"], registry=r)
        self.batch_size = Histogram("quakemon_batch_size", "Windows per inference micro-batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("quakemon_inference_seconds", "Model forward time per micro-batch",
                                           buckets=SECONDS_BUCKETS, registry=r)
        self.queue_depth = Gauge("quakemon_queue_depth", "Messages waiting between stages", ["queue"], registry=r)
        self.records = Counter("quakemon_records", "MiniSEED records accepted", registry=r)
        self.records_corrupt = Counter("quakemon_records_corrupt", "Records rejected, by reason", ["reason"],
                                       registry=r)
        self.records_duplicate = Counter("quakemon_records_duplicate", "Duplicate records dropped", registry=r)
        self.gaps = Counter("quakemon_gaps", "Data gaps: records that start later than their stream's previous "
                            "record ended", registry=r)
        self.reconnects = Counter("quakemon_reconnects", "SeedLink reconnects", registry=r)
        self.detections = Counter("quakemon_detections", "Detections opened, by station", ["station"], registry=r)
        self.zmq_events = Counter("quakemon_zmq_events", "Publish socket events (HANDSHAKE_FAILED_AUTH, ...)",
                                  ["event"], registry=r)
        self.records_rejected = Counter("quakemon_records_rejected", "Records the station windower rejected, by "
                                        "reason (clock_glitch, late, duplicate, implausible_rate, rate_change)",
                                        ["reason"], registry=r)
        self.clock_jumps = Counter("quakemon_clock_jumps", "Station resets after an agreed clock jump or outage",
                                   registry=r)
        self.silent_stations = Gauge("quakemon_silent_stations", "Stations with no record for [seedlink] "
                                     "station_silence_s", registry=r)
        self.station_silences = Counter("quakemon_station_silences", "Times a station fell silent", registry=r)
        self.curve_rejected = Counter("quakemon_curve_rejected", "Subscribers refused by CURVE authentication, by "
                                      "reason", ["reason"], registry=r)
        self.station_silent = Gauge("quakemon_station_silent", "1 while the station sends no data, else 0",
                                    ["station"], registry=r)
        self.messages_rejected = Counter("quakemon_messages_rejected", "Malformed stage messages dropped, by reason",
                                         ["reason"], registry=r)
        self.backfill_spans = Counter("quakemon_backfill_spans", "Backfilled spans, by outcome (done, failed)",
                                      ["outcome"], registry=r)
        self.backfill_detections = Counter("quakemon_backfill_detections", "Detections in backfilled spans",
                                           registry=r)
        self.trigger_on = Gauge("quakemon_trigger_on", "The trigger's on in effect, per station and label, with "
                                "[trigger] calibration", ["station", "label"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One inference micro-batch: its size, its forward time and the windows it classified."""
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self.windows_out.inc(size)

    def set_station(self, station: str, lag_s: float, buffer_fill: float) -> None:
        """Per-station gauges; a negative lag (host clock behind the data) is clamped to 0."""
        self.station_lag.labels(station=station).set(max(lag_s, 0.0))
        self.station_buffer_fill.labels(station=station).set(buffer_fill)


def parse_listen(listen: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'metrics.listen: expected "host:port" (port 0..65535), got {listen!r}')
    return host, int(port)


MAX_REQUEST_BYTES = 8192


class _Conn:
    __slots__ = ("sock", "deadline", "inbuf", "out")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.out: memoryview | None = None


class MetricsServer:
    """GET /metrics (also /) from `registry` on one selector thread; see the module docstring for the limits.

    `stats`: connections accepted, evicted (cap reached), timed_out, answered, rejected (bad requests).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *, max_connections: int = 32,
                 timeout_s: float = 5.0) -> None:
        if max_connections < 1 or timeout_s <= 0:
            raise ConfigError("metrics: expected max_connections >= 1 and timeout_s > 0")
        self.registry = registry
        self.max_connections = int(max_connections)
        self.timeout_s = float(timeout_s)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.listener = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(info[4])
            self.listener.listen(128)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.conns: dict[int, _Conn] = {}  # fd -> connection, in accept order (oldest first)
        self.stats = {"accepted": 0, "evicted": 0, "timed_out": 0, "answered": 0, "rejected": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quakemon-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        for conn in list(self.conns.values()):
            self._close(conn)
        self.selector.close()
        self.listener.close()

    # -- loop ---------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.selector.select(0.2)
            except OSError as exc:  # never let the endpoint take the daemon down
                log.warning("metrics_select_failed", error=str(exc))
                time.sleep(0.2)
                continue
            for key, mask in events:
                if key.data is None:
                    self._accept()
                elif key.fd in self.conns:
                    self._serve(self.conns[key.fd], mask)
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if c.deadline <= now]:
                self.stats["timed_out"] += 1
                self._close(conn)

    def _accept(self) -> None:
        for _ in range(256):  # a burst of clients: take what is queued, a bounded number per round
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the others keep being served
                log.warning("metrics_accept_failed", error=str(exc))
                return
            while len(self.conns) >= self.max_connections:
                self.stats["evicted"] += 1
                self._close(next(iter(self.conns.values())))
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.timeout_s)
            self.conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)
            self.stats["accepted"] += 1

    def _serve(self, conn: _Conn, mask: int) -> None:
        try:
            if conn.out is None and mask & selectors.EVENT_READ:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(conn)
                    return
                conn.inbuf += data
                if b"\r\n\r\n" not in conn.inbuf and b"\n\n" not in conn.inbuf:
                    if len(conn.inbuf) > MAX_REQUEST_BYTES:
                        self._respond(conn, 431, b"request too large\n")
                    return
                self._answer(conn)
            if conn.out is not None:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
                if not len(conn.out):
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)

    def _answer(self, conn: _Conn) -> None:
        parts = conn.inbuf.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            self.stats["rejected"] += 1
            self._respond(conn, 405, b"only GET\n")
            return
        path = parts[1].split(b"?", 1)[0]
        if path not in (b"/metrics", b"/"):
            self.stats["rejected"] += 1
            self._respond(conn, 404, b"not found: try /metrics\n")
            return
        try:
            body = generate_latest(self.registry)
        except Exception as exc:  # a collector failing must not kill the endpoint
            log.error("metrics_generate_failed", error=repr(exc))
            self._respond(conn, 500, b"metrics unavailable\n")
            return
        self.stats["answered"] += 1
        self._respond(conn, 200, b"" if parts[0] == b"HEAD" else body, CONTENT_TYPE_LATEST, len(body))

    def _respond(self, conn: _Conn, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                 length: int | None = None) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
        conn.out = memoryview(head.encode() + body)
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self.conns.pop(fd, None)
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()


def start_metrics_server(listen: str, registry: CollectorRegistry, *, max_connections: int = 32,
                         timeout_s: float = 5.0) -> tuple[int, Callable[[], None]]:
    """Serve `registry` at http://listen/metrics on a daemon thread; returns (bound port, stop function)."""
    host, port = parse_listen(listen)
    try:
        server = MetricsServer(host, port, registry, max_connections=max_connections, timeout_s=timeout_s).start()
    except OSError as exc:
        raise QuakemonError(f"metrics.listen: cannot listen on {listen!r}: {exc}") from None
    log.info("metrics_listening", host=host, port=server.port, max_connections=max_connections, timeout_s=timeout_s)

    def stop(timeout: float = 2.0) -> None:
        server.stop(timeout)

    return server.port, stop
