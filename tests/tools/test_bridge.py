"""`quakemon bridge`: one QuakeML file per closed event, written atomically, none lost when the bridge is
SIGKILLed and restarted with its position file (a real subprocess against a journaled publisher)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import obspy
import pytest
import zmq
from support.pipeline import ROOT, wait_for

from quakemon.base.errors import QuakemonError
from quakemon.base.net import free_port
from quakemon.tools.bridge import QuakeMLFolder
from quakemon.wire.catchup import CatchupServer
from quakemon.wire.journal import Journal
from quakemon.wire.publisher import Publisher
from quakemon.wire.schema import detection_body, event_body

EVENTS = 24
T0 = 1_700_000_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def detection(k: int, station: str) -> dict:
    t = T0 + 100 * k
    return detection_body(station=station, state="new", label="earthquake", probability=0.9,
                          probabilities={"noise": 0.1, "earthquake": 0.9}, window_start=t, window_end=t + 20,
                          peak_probability=0.95, model=MODEL, pick_time_ns=int((t + 3) * 1e9), pick_method="aic",
                          pick_snr=5.0)


def event(k: int, dets: list[dict], state: str) -> dict:
    rows = [{"station": d["station"], "onset": d["onset"], "probability": 0.9, "detection_id": d["id"],
             "pick": d["pick"]} for d in dets]
    return event_body(state=state, label="earthquake", stations=rows, coincidence_sum=len(rows), threshold=2.0,
                      window_s=5.0, close_reason="window" if state == "closed" else None)


def messages() -> tuple[list[dict], dict[str, set[str]]]:
    """Per event: two detections, the event opened, then closed; and each event's detection ids."""
    out, expected = [], {}
    for k in range(EVENTS):
        dets = [detection(k, "BW.RJOB."), detection(k, "GR.FUR.")]
        closed = event(k, dets, "closed")
        out += dets + [event(k, dets, "new"), closed]
        expected[closed["id"]] = {d["id"] for d in dets}
    return out, expected


def test_a_closed_event_becomes_one_quakeml_file_with_its_picks(tmp_path):
    folder = QuakeMLFolder(tmp_path / "out")
    bodies, expected = messages()
    written = [p for p in map(folder.handle, bodies[:8]) if p is not None]
    assert [p.stem for p in written] == list(expected)[:2]
    cat = obspy.read_events(str(written[0]))
    assert len(cat) == 1 and {str(p.resource_id).rsplit("/", 1)[-1] for p in cat[0].picks} == expected[written[0].stem]
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_an_unwritable_folder_is_refused_with_its_name(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(QuakemonError, match="file"):
        QuakeMLFolder(blocker / "out")


def test_the_bridge_survives_a_kill_and_writes_every_closed_event(tmp_path):
    out = tmp_path / "out"
    position = tmp_path / "bridge.position"
    journal = Journal(tmp_path / "j.db", synchronous="normal")
    catchup = CatchupServer(journal.path, f"tcp://127.0.0.1:{free_port()}")
    ctx = zmq.Context()
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", context=ctx, journal=journal, linger_ms=0,
                    catchup_endpoint=catchup.advertised, heartbeat_interval_s=0.1)
    bodies, expected = messages()
    stop = threading.Event()
    pending = list(bodies)
    lock = threading.Lock()

    def publish() -> None:  # the publisher's own thread: slow enough that the kill lands mid-stream
        while not stop.is_set():
            with lock:
                body = pending.pop(0) if pending else None
            if body is not None:
                (pub.publish_event if body["schema"].startswith("quakemon.event/") else pub.publish_detection)(body)
            pub.maybe_heartbeat(dict)
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    cmd = [sys.executable, "-m", "quakemon", "--log-level", "warning", "bridge", pub.endpoint, "--quakeml-dir",
           str(out), "--resume", str(position)]
    procs = []
    try:
        thread.start()
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL))
        wait_for(lambda: len(list(out.glob("*.xml"))) >= 6, timeout=60, what="the first QuakeML files")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL))
        wait_for(lambda: len(list(out.glob("*.xml"))) == EVENTS, timeout=90, what="every event's QuakeML file")
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(20) == 0
    finally:
        stop.set()
        thread.join(10)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        pub.close(linger_ms=0)
        catchup.close()
        journal.close()
        ctx.term()
    assert {p.stem for p in out.glob("*.xml")} == set(expected)
    assert not list(out.glob(".*.tmp"))
    for path in out.glob("*.xml"):
        cat = obspy.read_events(str(path))
        assert {str(p.resource_id).rsplit("/", 1)[-1] for p in cat[0].picks} == expected[path.stem]


def test_a_killed_bridges_unfinished_file_is_removed_at_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".ev1.xml.x1y2z3.tmp"
    stale.write_bytes(b"<half")
    QuakeMLFolder(out)
    assert not stale.exists()
