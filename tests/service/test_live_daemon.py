"""`quakemon run` on real MiniSEED that stops mid-detection, has a gap and one corrupt record on the wire.

One daemon run (real stage processes, a SeedLink server on loopback, a SUB socket, /metrics over HTTP) is
shared by the tests. The trigger thresholds are so low that every window of the random test model is over
them: a trigger opens on the first window, the gap closes it and a new one opens after it, and that one is
still open when the data stops.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import obspy
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.pipeline import Proc, Subscriber, free_port, start_daemon, wait_for, write_config

from quakemon.tools.serve import Faults, SeedLinkServer
from quakemon.tools.serve_records import load_records
from quakemon.wire.schema import parse_iso_utc

START_TIMEOUT = 120.0
SPEED = 10.0
GAP_S = (50.0, 56.0)  # seconds after the start with no data on any component
SPAN_S = 90.0
WINDOW_S = 20.0  # the default contract's window length: a station silent this long is closed


def write_gapped_archive(path: Path) -> Path:
    """ObsPy's BW.RJOB example (30 s, 100 Hz, 3 components) repeated to SPAN_S, with GAP_S cut out."""
    base = obspy.read()
    t0 = base[0].stats.starttime
    st = obspy.Stream()
    for i in range(int(SPAN_S // 30)):
        block = base.copy()
        for tr in block:
            tr.stats.starttime = t0 + 30 * i
            tr.data = np.round(tr.data).astype(np.int32)
        st += block
    st.merge()
    st = st.slice(t0, t0 + GAP_S[0] - 0.01) + st.slice(t0 + GAP_S[1], t0 + SPAN_S)
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


@dataclass
class Live:
    daemon: Proc
    sub: Subscriber
    server: SeedLinkServer
    metrics_port: int


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("live")
    records = load_records([write_gapped_archive(d / "gapped.mseed")])
    last = len(records) - 1

    def corrupt_last(seq: int, raw: bytes) -> bytes:  # the last record (no gap after it) gets year 0
        return raw[:20] + b"\x00\x00" + raw[22:] if seq == last else raw

    server = SeedLinkServer(records, speed=SPEED, loop=False, faults=Faults(mutate=corrupt_last)).start()
    port = free_port()
    config = write_config(d / "live.toml", server_port=server.port, checkpoint=tiny_checkpoint,
                          runtime_dir=d / "rt", publish_port=port, on=0.001, off=0.001,
                          extra={"metrics": {"listen": "127.0.0.1:0"}})
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    daemon = start_daemon(config, d, "live")
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        (serving,) = daemon.wait_event("metrics_serving", 5)
        yield Live(daemon, sub, server, int(serving["port"]))
    finally:
        code = daemon.stop()
        sub.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]
    assert "Traceback" not in daemon.stderr()


def _detections(live: Live) -> list[tuple[float, dict]]:
    return [(t, b) for t, b in live.sub.timed("detection.")]


def test_a_station_whose_data_stops_mid_detection_gets_its_closed(live: Live):
    def closed_after_the_data() -> list[dict] | None:
        dets = [b for _, b in _detections(live)]
        news = [b for b in dets if b["state"] == "new"]
        if len(news) < 2:  # the first trigger (closed by the gap) and the one after the gap
            return None
        return [b for b in dets if b["state"] == "closed" and b["id"] == news[-1]["id"]] or None

    (closed,) = wait_for(closed_after_the_data, 90 + WINDOW_S, "the 'closed' of the trigger the data stopped in")
    timed = _detections(live)
    by_id = {(b["id"], b["state"]): t for t, b in timed}
    news = [b for _, b in timed if b["state"] == "new"]
    first, second = news[0], news[-1]
    assert [b["close_reason"] for _, b in timed if b["state"] == "closed" and b["id"] == first["id"]] == ["gap"]
    assert parse_iso_utc(second["onset"]) - parse_iso_utc(first["onset"]) > GAP_S[0]  # opened after the gap
    assert closed["close_reason"] == "gap" and closed["station"] == "BW.RJOB."
    assert parse_iso_utc(second["onset"]) + WINDOW_S <= parse_iso_utc(closed["end"])
    assert parse_iso_utc(closed["end"]) <= parse_iso_utc(first["onset"]) + SPAN_S
    waited = by_id[(closed["id"], "closed")] - max(t for t, b in timed if b["state"] == "new")
    assert waited >= WINDOW_S - SPAN_S / SPEED, f"closed {waited:.1f} s after the last new: not a silence"
    beat = live.sub.bodies("heartbeat")[-1]  # counters from upstream still reach the heartbeat
    assert beat["stations"] == 1 and beat["windows_in"] >= beat["windows_out"] > 0 and beat["lag_s"] is not None


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_detections_corrupt_records_gaps_buffer_fill_and_socket_events(live: Live):
    (rejected,) = live.daemon.wait_event("seedlink_record_rejected", 90)  # the corrupt record, and why
    wanted = {
        ("quakemon_detections_total", (("station", "BW.RJOB."),)): 2.0,
        ("quakemon_records_corrupt_total", (("reason", rejected["reason"]),)): 1.0,
        ("quakemon_gaps_total", ()): 3.0,  # one per component
    }

    def settled() -> dict | None:
        got = scrape(live.metrics_port)
        return got if all(got.get(k) == v for k, v in wanted.items()) else None

    try:
        got = wait_for(settled, 90, "the detections, the corrupt record and the gaps in /metrics", interval=0.5)
    except AssertionError:
        got = scrape(live.metrics_port)
        raise AssertionError({k: v for k, v in got.items() if k[0] in {name for name, _ in wanted}}) from None
    assert sum(v for k, v in got.items() if k[0] == "quakemon_records_corrupt_total") == 1.0
    fill = got[("quakemon_station_buffer_fill_ratio", (("station", "BW.RJOB."),))]
    assert 0.0 < fill <= 1.0
    events = {dict(k[1])["event"]: v for k, v in got.items() if k[0] == "quakemon_zmq_events_total"}
    assert events.get("LISTENING", 0) >= 1 and events.get("ACCEPTED", 0) >= 1, events  # our subscriber
    assert events.get("HANDSHAKE_SUCCEEDED", 0) >= 1, events
