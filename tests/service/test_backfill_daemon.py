"""Backfill end to end: a 2-hour SeedLink outage filled from an SDS archive gives the detections of `quakemon replay`.

`quakemon serve` streams BW.RJOB with a 2-hour hole it cannot fill (the data is not in its archive): a minute of
noise, the hole, another minute. The hole's data, with obspy.read()'s BW.RJOB event in it, lies in an SDS tree
written with ObsPy. The daemon (`quakemon run`, [backfill] source = "sds://...") sees the gap (`seedlink_gap`),
reads the span from the tree and publishes its detections with ``"backfill": true``; `quakemon replay` of the
tree must give the same detections: ids, states, onsets and P picks. The data is from 2009 and served as fast as
the daemon reads, so the test takes seconds, not hours. A second daemon reads a shorter hole from a real HTTP FDSN
service on 127.0.0.1 that fails twice first.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import numpy as np
import obspy
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.backfill import FdsnServer, write_outage
from support.pipeline import (
    Proc,
    Subscriber,
    craft_checkpoint,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

from quakemon.models.checkpoint import load_checkpoint
from quakemon.pipeline.runner import replay
from quakemon.wire.schema import DETECTION_SCHEMA, parse_iso_utc, validate_detection

STRIDE_S = 10.0
WINDOW_S = 20.0  # the tiny checkpoint's window length


def threshold(checkpoint, sds, event_start: float) -> float:
    """on = off halfway between the highest probability of a noise window and the next higher observed one, with
    the event's windows above it (the margin dwarfs float differences between batchings)."""
    _, series = replay_series(checkpoint, [sds], stride_s=STRIDE_S)
    (s,) = series.values()
    start = np.asarray(s.start_ns) / 1e9
    p = np.asarray(s.probabilities, np.float64)[:, 1]
    event = (start + WINDOW_S > event_start) & (start < event_start + 30.0)
    noise_max = float(p[~event].max())
    above = np.unique(p[p > noise_max])
    assert above.size and above[0] - noise_max > 2e-3, (noise_max, above[:3])
    return (noise_max + float(above[0])) / 2


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def comparable(bodies: list[dict]) -> list[tuple]:
    return sorted((b["id"], b["state"], b["onset"], b["pick"]["time"], b["pick"]["method"], b["window_start"],
                   b.get("end"), b.get("close_reason")) for b in bodies)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("crafted")
    return craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", write_archive(d / "c.mseed")[0])


def test_outage_is_backfilled_from_sds_like_a_replay(tmp_path, crafted):
    outage = write_outage(tmp_path)
    ckpt = crafted
    on = threshold(ckpt, outage.sds, outage.hole_start + outage.event_at_s)
    server, port = start_server(outage.live, tmp_path, speed=0, loop=False)
    publish, metrics = free_port(), free_port()
    config = write_config(tmp_path / "backfill.toml", server_port=port, checkpoint=ckpt, runtime_dir=tmp_path / "rt",
                          publish_port=publish, on=on, off=on,
                          extra={"window": {"stride_s": STRIDE_S}, "metrics": {"listen": f"127.0.0.1:{metrics}"},
                                 "backfill": {"source": f"sds://{outage.sds}", "delay_s": 0.0}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish}", "detection.")
    daemon = start_daemon(config, tmp_path, "daemon")
    out = tmp_path / "replay.jsonl"
    replay = Proc([sys.executable, "-m", "quakemon.cli.app", "replay", str(outage.sds), "--config", str(config),
                   "--output", str(out), "--quiet"], tmp_path, "replay")
    try:
        assert replay.wait(180) == 0, replay.stderr()[-3000:]
        replayed = [b for b in map(json.loads, out.read_text().splitlines()) if b["schema"] == DETECTION_SCHEMA]
        assert any(b["state"] == "new" for b in replayed), "the event must be detected in replay"

        gap = daemon.wait_event("seedlink_gap", 120)[0]
        assert gap["missing_s"] == pytest.approx(outage.hole_s, abs=0.01)
        (finished,) = daemon.wait_event("backfill_finished", 120)
        assert finished["station"] == "BW.RJOB." and finished["span_s"] == pytest.approx(outage.hole_s, abs=0.01)
        assert finished["windows"] >= outage.hole_s / STRIDE_S - WINDOW_S / STRIDE_S
        assert finished["detections"] == sum(1 for b in replayed if b["state"] == "new")
        backfilled = wait_for(lambda: [b for b in sub.bodies() if b.get("backfill")]
                              if len([b for b in sub.bodies() if b.get("backfill")]) >= finished["messages"] else None,
                              30, "the backfill detections")
        for body in backfilled:
            validate_detection(body)
            assert body["latency_s"] is None
        assert comparable(backfilled) == comparable(replayed)
        live = [b for b in sub.bodies() if "backfill" not in b]  # live detections carry no backfill key
        assert not [b for b in live if outage.hole_start <= parse_iso_utc(b["onset"]) < outage.hole_start + 7200]
        started = daemon.events("backfill_started")
        assert len(started) == 1 and started[0]["source"] == f"sds://{outage.sds}"
        (requested,) = daemon.events("backfill_requested")  # one request for the station's three channels
        assert requested["channels"] == ["EHE", "EHN", "EHZ"]
        wanted = {("quakemon_backfill_spans_total", (("outcome", "done"),)): 1.0,
                  ("quakemon_backfill_detections_total", ()): float(finished["detections"])}
        wait_for(lambda: all(scrape(metrics).get(k) == v for k, v in wanted.items()), 30, f"{wanted} in /metrics")
    finally:
        replay.stop()
        code = daemon.stop()
        sub.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]


def test_a_failing_fdsn_service_is_retried_and_never_stops_the_daemon(tmp_path, crafted):
    """The FDSN service answers 404, then corrupt MiniSEED, then the data: the inference stage logs both failures,
    retries with backoff and publishes the span's detections (those of a replay of the same data); no stage dies."""
    outage = write_outage(tmp_path, hole_s=600.0, event_at_s=300.0)
    on = threshold(crafted, outage.sds, outage.hole_start + outage.event_at_s)
    hole = obspy.read(str(outage.sds / "*" / "*" / "*" / "*" / "*"))
    fdsn = FdsnServer(hole, failures=["404", "corrupt"])
    server, port = start_server(outage.live, tmp_path, speed=0, loop=False)
    publish = free_port()
    config = write_config(tmp_path / "fdsn.toml", server_port=port, checkpoint=crafted, runtime_dir=tmp_path / "rt",
                          publish_port=publish, on=on, off=on,
                          extra={"window": {"stride_s": STRIDE_S}, "backfill": {"source": fdsn.url, "delay_s": 0.0}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish}", "detection.")
    daemon = start_daemon(config, tmp_path, "daemon")
    try:
        failed = daemon.wait_event("backfill_fetch_failed", 120, count=2)
        assert [(e["attempt"], e["retry_in_s"]) for e in failed] == [(1, 1.0), (2, 2.0)]
        assert "404" in failed[0]["error"] and "MSEED" in failed[1]["error"]
        (finished,) = daemon.wait_event("backfill_finished", 120)
        ckpt = load_checkpoint(crafted)
        expected = replay([str(outage.sds)], ckpt, stride_s=STRIDE_S, progress=False,
                          trigger={"on": on, "off": on, "min_duration_s": 0.0, "trigger_label": "earthquake"})
        replayed = expected.detections
        assert finished["detections"] == sum(b["state"] == "new" for b in replayed) >= 1
        backfilled = wait_for(lambda: [b for b in sub.bodies() if b.get("backfill")]
                              if len([b for b in sub.bodies() if b.get("backfill")]) >= finished["messages"] else None,
                              30, "the backfill detections")
        assert comparable(backfilled) == comparable(replayed)
        assert not daemon.events("stage_died") and len(fdsn.requests) == 3
    finally:
        code = daemon.stop()
        sub.close()
        server.stop()
        fdsn.close()
    assert code == 0, daemon.stderr()[-3000:]
