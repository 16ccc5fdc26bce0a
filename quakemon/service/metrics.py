"""Prometheus metrics for the daemon, in a registry of their own, and the HTTP endpoint that serves them.

Nothing is registered at import time: `Metrics()` builds a fresh `CollectorRegistry`, so tests and
several pipelines in one process never collide on the global registry. Names follow Prometheus
conventions (`quakemon_` prefix, base units, `_total` for counters).

Metrics live in the process that serves them. Under `quakemon run` the stages are separate processes:
they report cumulative counts to the supervisor, whose bridge (quakemon.service.daemon.MetricsBridge) feeds them in.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
    reconnects. Output: detections{station} ("new" detections). Publish socket: zmq_events{event} (ZeroMQ
    monitor events by name: ACCEPTED, HANDSHAKE_SUCCEEDED, HANDSHAKE_FAILED_AUTH, DISCONNECTED, ...).
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


def start_metrics_server(listen: str, registry: CollectorRegistry) -> tuple[int, Callable[[], None]]:
    """Serve `registry` at http://listen/metrics on a daemon thread; returns (bound port, stop function)."""
    host, port = parse_listen(listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise QuakemonError(f"metrics.listen: cannot listen on {listen!r}: {exc}") from None
    bound = int(server.server_port)
    log.info("metrics_listening", host=host, port=bound)

    def stop(timeout: float = 2.0) -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout)

    return bound, stop
