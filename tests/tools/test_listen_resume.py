"""`quakemon listen --resume`: a listen subprocess SIGKILLed at random points while a journaled publisher sends
1,200 detections, restarted each time with the same position file, prints every journaled message once, in seq
order (the one message being printed at a kill may print again: its seq is the previous line's)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.pipeline import ROOT, wait_for

from quakemon.base.net import free_port
from quakemon.wire.catchup import CatchupServer
from quakemon.wire.journal import Journal, JournalReader
from quakemon.wire.publisher import Publisher
from quakemon.wire.schema import detection_body

N = 1200
KILLS = 3
T0 = 1_700_000_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def body(k: int) -> dict:
    t = T0 + 10 * k
    closed = k % 2 == 1
    return detection_body(station=f"XX.S{k % 37:02d}.", state="closed" if closed else "new", label="earthquake",
                          probability=0.9, probabilities={"noise": 0.1, "earthquake": 0.9}, window_start=t,
                          window_end=t + 20, peak_probability=0.95, model=MODEL,
                          pick_time_ns=int((t + 3) * 1e9) + k, pick_method="aic", pick_snr=5.0,
                          end=t + 30 if closed else None, close_reason="off" if closed else None)


def publish(endpoint: str, journal_path: Path, catchup: str, done: threading.Event, stop: threading.Event) -> None:
    journal = Journal(journal_path, synchronous="normal")
    pub = Publisher(endpoint, heartbeat_interval_s=0.2, journal=journal, catchup_endpoint=catchup)
    try:
        for k in range(N):
            if stop.is_set():
                return
            pub.publish_detection(body(k))
            pub.maybe_heartbeat(dict)
            time.sleep(0.008)
        done.set()
        while not stop.is_set():  # heartbeats until the last listen has caught up
            pub.maybe_heartbeat(dict)
            time.sleep(0.05)
    finally:
        pub.close(linger_ms=0)
        journal.close()


def start_listen(endpoint: str, position: Path, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quakemon.cli.app", "--log-level", "warning", "listen", endpoint,
                             "--resume", str(position), "--json"], stdout=out, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, cwd=ROOT)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_listen_resume_survives_three_sigkills_without_loss_or_reordering(tmp_path):
    rng = random.Random(20261206)
    journal_path = tmp_path / "journal.sqlite"
    Journal(journal_path).close()  # the catch-up server needs the file
    catchup = CatchupServer(journal_path, "tcp://127.0.0.1:0")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    done, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=publish, args=(endpoint, journal_path, catchup.endpoint, done, stop),
                              daemon=True)
    output, position = tmp_path / "out.jsonl", tmp_path / "position.json"
    proc = None
    thread.start()
    try:
        with output.open("ab") as out:
            kills_at = []
            for _ in range(KILLS):
                proc = start_listen(endpoint, position, out)
                printed = len(read_lines(output))
                wait_for(lambda n=printed: len(read_lines(output)) > n, 30, "listen printing")
                time.sleep(rng.uniform(0.1, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills_at.append(len(read_lines(output)))
                time.sleep(rng.uniform(0.0, 0.5))
            assert not done.is_set(), "the kills should land while detections are being published"
            proc = start_listen(endpoint, position, out)
            wait_for(done.is_set, 60, "all detections published")
            with JournalReader(journal_path) as reader:
                expected = [(r.seq, json.loads(r.body)["id"]) for r in reader.after(0, 10_000)]
            assert len(expected) == N
            wait_for(lambda: read_lines(output) and read_lines(output)[-1]["seq"] == expected[-1][0], 60,
                     "listen caught up")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        stop.set()
        thread.join(10)
        catchup.close()
    lines = read_lines(output)
    got = [(b["seq"], b["id"]) for b in lines]
    repeats = [i for i in range(1, len(got)) if got[i] == got[i - 1]]
    assert len(repeats) <= KILLS and all(i in kills_at for i in repeats), (repeats, kills_at)
    unique = [g for i, g in enumerate(got) if i not in repeats]
    assert unique == expected  # every journaled message once, in seq order
    assert all(b["schema"].startswith("quakemon.detection") for b in lines)


def test_catchup_flag_needs_resume(capsys):
    from quakemon.tools.listen import main

    assert main(["tcp://127.0.0.1:1", "--catchup", "tcp://127.0.0.1:2", "--timeout", "0.1"]) == 2
    assert "--catchup needs --resume" in capsys.readouterr().err
