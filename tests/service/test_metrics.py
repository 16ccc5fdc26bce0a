"""Metrics: own registry per instance, served over HTTP on 127.0.0.1:0 and scraped with urllib."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from quakemon.base.errors import ConfigError, QuakemonError
from quakemon.service.metrics import Metrics, parse_listen, start_metrics_server


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_serve_and_scrape() -> None:
    m = Metrics()
    port, stop = start_metrics_server("127.0.0.1:0", m.registry)
    try:
        assert port > 0
        m.windows_in.inc(5)
        m.observe_batch(3, 0.02)
        m.windows_dropped.labels(reason="queue_full").inc(2)
        m.set_station("BW.RJOB.", lag_s=1.5, buffer_fill=0.25)
        m.set_station("GR.FUR.", lag_s=-3.0, buffer_fill=1.0)  # host clock behind the data: clamped
        m.reconnects.inc()
        m.records_corrupt.labels(reason="bad_header").inc()
        m.detections.labels(station="BW.RJOB.").inc()
        got = scrape(port)
    finally:
        stop()
    assert got[("quakemon_windows_in_total", ())] == 5
    assert got[("quakemon_windows_out_total", ())] == 3
    assert got[("quakemon_windows_dropped_total", (("reason", "queue_full"),))] == 2
    assert got[("quakemon_batch_size_count", ())] == 1 and got[("quakemon_batch_size_sum", ())] == 3
    assert got[("quakemon_batch_size_bucket", (("le", "4.0"),))] == 1
    assert got[("quakemon_batch_size_bucket", (("le", "2.0"),))] == 0
    assert got[("quakemon_inference_seconds_sum", ())] == pytest.approx(0.02)
    assert got[("quakemon_station_lag_seconds", (("station", "BW.RJOB."),))] == 1.5
    assert got[("quakemon_station_lag_seconds", (("station", "GR.FUR."),))] == 0.0
    assert got[("quakemon_station_buffer_fill_ratio", (("station", "GR.FUR."),))] == 1.0
    assert got[("quakemon_reconnects_total", ())] == 1
    assert got[("quakemon_records_corrupt_total", (("reason", "bad_header"),))] == 1
    assert got[("quakemon_detections_total", (("station", "BW.RJOB."),))] == 1


def test_registries_are_independent_and_not_global() -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.reconnects.inc()
    assert a.registry.get_sample_value("quakemon_reconnects_total") == 1
    assert b.registry.get_sample_value("quakemon_reconnects_total") == 0
    assert REGISTRY.get_sample_value("quakemon_reconnects_total") is None


def test_stop_releases_the_port() -> None:
    m = Metrics()
    port, stop = start_metrics_server("127.0.0.1:0", m.registry)
    stop()
    port2, stop2 = start_metrics_server(f"127.0.0.1:{port}", m.registry)  # rebind the same port
    try:
        assert port2 == port
        with pytest.raises(QuakemonError, match=rf"metrics\.listen.*127\.0\.0\.1:{port}"):
            start_metrics_server(f"127.0.0.1:{port}", m.registry)  # in use
    finally:
        stop2()


@pytest.mark.parametrize("listen", ["9108", ":9108", "host:", "host:70000", "host:x"])
def test_bad_listen_names_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_listen(listen)


def test_parse_listen_forms() -> None:
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:0") == ("::1", 0)



def test_idle_clients_are_capped_and_timed_out_and_scrapes_still_answer() -> None:
    import socket
    import time

    from quakemon.service.metrics import MetricsServer

    m = Metrics()
    server = MetricsServer("127.0.0.1", 0, m.registry, max_connections=8, timeout_s=0.5).start()
    idle = []
    try:
        for _ in range(40):  # connected and silent: each would hold a thread in a thread-per-client server
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            idle.append(s)
        assert scrape(server.port)  # a scraper gets its answer
        deadline = time.monotonic() + 5
        while server.stats["evicted"] < 40 - 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.conns) <= 8 and server.stats["evicted"] >= 40 - 8
        time.sleep(1.0)  # past the per-connection deadline: the idle ones are gone
        assert len(server.conns) == 0 and server.stats["timed_out"] >= 1
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:  # other paths and methods
            s.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 405")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /" + b"x" * 9000)  # no end of the request in sight: refused, not buffered forever
            assert s.recv(100).startswith(b"HTTP/1.1 431")
    finally:
        for s in idle:
            s.close()
        server.stop()
