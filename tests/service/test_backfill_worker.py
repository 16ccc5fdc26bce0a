"""The backfill worker (`quakemon.service.stages.backfill.Backfiller`) against a real HTTP FDSN service on 127.0.0.1.

A backfilled span gives the detections `quakemon.pipeline.runner.replay` gives for the same data, marked
``"backfill": true``; a source that fails is logged and retried with backoff, and given up after `attempts`
without stopping the worker; nothing is fed while live windows wait (`busy`).
"""

from __future__ import annotations

import threading
import warnings

import obspy
import pytest
import structlog
from support.backfill import FdsnServer
from support.pipeline import calibrate, craft_checkpoint, wait_for, write_archive

from quakemon.base.net import free_port
from quakemon.ingest.backfill import BackfillRequest, FdsnSource
from quakemon.models.checkpoint import load_checkpoint
from quakemon.pipeline.runner import replay
from quakemon.service.config import load_config
from quakemon.service.stages.backfill import Backfiller, backfiller_from_config, requests_in
from quakemon.wire.schema import DETECTION_SCHEMA, MessageError, validate_detection


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("backfill")
    archive, start, span = write_archive(d / "rjob.mseed")
    ckpt_path = craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", archive)
    cal = calibrate(ckpt_path, archive, round((start + span) * 1e9))
    cfg = load_config(None, {"model.checkpoint": str(ckpt_path), "model.device": "cpu", "model.precision": "fp32",
                             "trigger.on": float(cal.on), "trigger.off": float(cal.off), "trigger.min_duration": 0.0,
                             "trigger.label": "earthquake", "backfill.attempts": 3,
                             "backfill.source": "fdsn://127.0.0.1:1"})
    ckpt = load_checkpoint(ckpt_path)
    t = cfg.trigger
    expected = replay([str(archive)], ckpt, stride_s=cfg.window.stride_s, progress=False, precision="fp32",
                      trigger={"on": t.on, "off": t.off, "min_duration_s": t.min_duration, "trigger_label": t.label,
                               "max_missing": cfg.window.max_missing_fraction}).detections
    assert any(b["state"] == "new" for b in expected)
    request = BackfillRequest("BW.RJOB.", ("EHE", "EHN", "EHZ"), round(start * 1e9), round((start + span) * 1e9))
    return cfg, ckpt, obspy.read(str(archive)), request, expected


def comparable(bodies: list[dict]) -> list[tuple]:
    return [(b["id"], b["state"], b["onset"], b["pick"], b["window_start"], b["last_window_end"], b.get("end"),
             b.get("close_reason"), round(b["probability"], 4)) for b in bodies]


def run(backfiller: Backfiller, request: BackfillRequest, messages: int) -> list[dict]:
    assert backfiller.offer([request.to_wire()]) == 1
    out: list[dict] = []
    wait_for(lambda: out.extend(backfiller.take()) or len(out) >= messages, 120, "the backfill detections")
    return out


def test_a_backfilled_span_gives_the_replay_detections_after_failed_reads(env):
    cfg, ckpt, traces, request, expected = env
    server = FdsnServer(traces, failures=["404", "corrupt"])
    backfiller = Backfiller(cfg, ckpt, FdsnSource(server.url), retry_first_s=0.01)
    try:
        with structlog.testing.capture_logs() as logs, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ObsPy on the corrupt answer
            got = run(backfiller, request, len(expected))
            wait_for(lambda: backfiller.stats()["backfill_done"] == 1, 10, "the span counted")
    finally:
        backfiller.close()
        server.close()
    assert all(b["backfill"] is True and b["schema"] == DETECTION_SCHEMA for b in got)
    assert comparable(got) == comparable(expected)
    failed = [e for e in logs if e["event"] == "backfill_fetch_failed"]
    assert [(e["attempt"], e["retry_in_s"]) for e in failed] == [(1, 0.01), (2, 0.02)]
    assert "404" in failed[0]["error"] and "MSEED" in failed[1]["error"]
    (finished,) = [e for e in logs if e["event"] == "backfill_finished"]
    assert finished["station"] == "BW.RJOB." and finished["detections"] == sum(b["state"] == "new" for b in got)
    stats = backfiller.stats()
    assert stats["backfill_windows"] == finished["windows"] > 0 and stats["backfill_failed"] == 0
    assert len(server.requests) == 3


def test_a_source_that_keeps_failing_is_given_up_and_the_worker_goes_on(env):
    cfg, ckpt, traces, request, expected = env
    server = FdsnServer(traces)
    refused = Backfiller(cfg, ckpt, FdsnSource(f"http://127.0.0.1:{free_port()}", timeout_s=5), retry_first_s=0.01)
    try:
        with structlog.testing.capture_logs() as logs:
            refused.offer([request.to_wire()])
            wait_for(lambda: refused.stats()["backfill_failed"] == 1, 60, "the span given up")
        assert [e["attempt"] for e in logs if e["event"] == "backfill_fetch_failed"] == [1, 2, 3]
        (gave_up,) = [e for e in logs if e["event"] == "backfill_failed"]
        assert gave_up["attempts"] == 3 and refused.thread.is_alive()
        refused.source = FdsnSource(server.url)  # the service is back: the next span goes through
        later = BackfillRequest(request.station, request.channels, request.start_ns, request.end_ns - 1)
        got = run(refused, later, 1)
        assert got and refused.stats()["backfill_failed"] == 1
    finally:
        refused.close()
        server.close()


class Garbled:
    """A source whose reads succeed but deliver something that is not an ObsPy Stream (a source with a bug)."""

    def fetch(self, req: BackfillRequest) -> list[str]:
        return ["not a trace"]


def test_a_span_that_breaks_the_run_is_given_up_and_the_worker_goes_on(env):
    cfg, ckpt, traces, request, expected = env
    server = FdsnServer(traces)
    backfiller = Backfiller(cfg, ckpt, Garbled())
    try:
        with structlog.testing.capture_logs() as logs:
            backfiller.offer([request.to_wire()])
            wait_for(lambda: backfiller.stats()["backfill_failed"] == 1, 60, "the span given up")
        (failed,) = [e for e in logs if e["event"] == "backfill_failed"]
        assert "AttributeError" in failed["error"] and failed["station"] == "BW.RJOB."
        backfiller.source = FdsnSource(server.url)
        assert run(backfiller, BackfillRequest(request.station, request.channels, request.start_ns + 1,
                                               request.end_ns), 1)
    finally:
        backfiller.close()
        server.close()


def test_nothing_is_fed_while_live_windows_wait(env):
    cfg, ckpt, traces, request, expected = env
    server = FdsnServer(traces)
    release = threading.Event()
    asked = []

    def busy() -> bool:
        asked.append(1)
        return not release.is_set()

    backfiller = Backfiller(cfg, ckpt, FdsnSource(server.url), busy=busy)
    try:
        backfiller.offer([request.to_wire()])
        wait_for(lambda: len(asked) >= 20, 60, "the worker asking whether live windows wait")  # fetched, holding
        assert len(server.requests) == 1 and backfiller.stats()["backfill_done"] == 0 and backfiller.take() == []
        release.set()
        wait_for(lambda: backfiller.stats()["backfill_done"] == 1, 60, "the span, once live is idle")
        got = backfiller.take()
        assert comparable(got) == comparable(expected)
    finally:
        backfiller.close()
        server.close()


def test_requests_are_taken_once_and_malformed_ones_counted(env):
    cfg, ckpt, traces, request, expected = env
    backfiller = Backfiller(cfg, ckpt, FdsnSource(f"http://127.0.0.1:{free_port()}"), busy=lambda: True)
    try:
        statuses = [{"backfill_requests": [request.to_wire(), ["junk"]]}, {"stations": 1},
                    {"backfill_requests": "not a list"}, {"backfill_requests": [request.to_wire()]}]
        assert backfiller.offer(requests_in(statuses)) == 1
        assert backfiller.offer(requests_in(statuses)) == 0
        assert backfiller.stats()["backfill_rejected"] == 2
    finally:
        backfiller.close()


def test_backfill_is_off_without_a_source(env):
    cfg, ckpt, *_ = env
    off = load_config(None, {"model.checkpoint": cfg.model.checkpoint})
    assert backfiller_from_config(off, ckpt, busy=lambda: False) is None


def test_the_backfill_key_is_optional_on_the_wire(env):
    *_, expected = env
    body = {k: v for k, v in expected[0].items() if k != "backfill"}
    validate_detection(body)
    for ok in (True, False):
        validate_detection({**body, "backfill": ok})
    for bad in ("yes", 1, None):
        with pytest.raises(MessageError, match="backfill"):
            validate_detection({**body, "backfill": bad})
