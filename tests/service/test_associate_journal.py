"""`quakemon associate --journal`: events committed to a journal and served for catch-up, so a
`quakemon.client.Subscriber` that starts after they were published still receives every one, in seq order, and a
restarted associator continues the seq (new epoch)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import zmq
from support.pipeline import ROOT, wait_for

from quakemon.client import Subscriber
from quakemon.wire import schema as m
from quakemon.wire.journal import JournalReader
from quakemon.wire.publisher import Publisher

T0 = 1_274_977_473.0
MODEL = {"name": "test", "sha256": "cd" * 32}


def det(station: str, onset: float) -> dict:
    return m.detection_body(station=station, state="new", label="earthquake", probability=0.9,
                            probabilities={"noise": 0.1, "earthquake": 0.9}, pick_time_ns=round(onset * 1e9),
                            pick_uncertainty_s=0.05, pick_method="aic", pick_snr=10.0, window_start=onset,
                            window_end=onset + 20.0, last_window_start=onset + 2, last_window_end=onset + 22,
                            peak_probability=0.9, model=MODEL)


def start(pub: Publisher, journal: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quakemon.service.associate_main", "--connect", pub.endpoint,
                             "--bind", "tcp://127.0.0.1:0", "--journal", str(journal), "--threshold", "3",
                             "--window", "8", "--hold", "1", "--idle", "1.0", "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=ROOT)


def count(journal: Path) -> int:
    if not journal.exists():
        return 0
    with JournalReader(journal) as reader:
        return reader.count()


def bound(log: Path) -> str:
    def endpoint() -> str | None:
        for line in log.read_text().splitlines():
            if '"associate_bound"' in line:
                return json.loads(line)["endpoint"]
        return None

    return wait_for(endpoint, 30, "associate_bound")


def test_associate_journal_serves_missed_events_and_continues_seq(tmp_path):
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", ctx, linger_ms=0)
    journal = tmp_path / "events.sqlite"
    procs = []
    try:
        for run in range(2):
            log = tmp_path / f"associate{run}.log"
            proc = start(pub, journal, log)
            procs.append(proc)
            bound(log)
            for _ in range(15):  # the associator's SUB connects in the background: let it join
                pub.publish_heartbeat({})
                time.sleep(0.1)
            t = T0 + 100 * run
            for station in ("XX.A.", "XX.B.", "XX.C.", "XX.D."):
                pub.publish_detection(det(station, t + 0.5 * ord(station[3])))
            wait_for(lambda n=2 * (run + 1): count(journal) >= n, 30, "events journaled")
            proc.terminate()
            assert proc.wait(15) == 0
        with JournalReader(journal) as reader:
            records = reader.after(0, 1000)
        epochs = {r.epoch for r in records}
        assert len(epochs) == 2 and [r.seq for r in records] == sorted({r.seq for r in records})
        assert all(r.topic.startswith("event.") for r in records)

        log = tmp_path / "associate2.log"  # a third run, idle: a late Subscriber gets every journaled event
        procs.append(start(pub, journal, log))
        endpoint = bound(log)
        with Subscriber(endpoint, tmp_path / "position.json", discover_timeout_s=30) as client:
            got = [client.get(10.0) for _ in records]
        assert [(g.seq, g.body["id"], g.body["state"]) for g in got if g is not None] == \
            [(r.seq, json.loads(r.body)["id"], json.loads(r.body)["state"]) for r in records]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        pub.close(0)
        ctx.term()
