"""One stage process of `quakemon run` SIGKILLed while a detection is open, with windows in flight: the supervisor
restarts it and the windows the dead process held are sent again (`Supervisor.rewind_for`, the ingest stage's
"Rewind"), so a subscriber gets exactly the detections a replay of the same archive gives: the same ids, one
"new" and one "closed" each, none closed as "gap", none lost; and the probability archive holds every window the
replay infers, none missing.

The stage is stopped (SIGSTOP) before the kill, so more than a window length of windows piles up in its socket
buffers and queue and dies with it: without the rewind they are lost, the open detection closes as "gap" and the
rest of the earthquake comes again under a new id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client
from support.pipeline import (
    Collector,
    calibrate,
    comparable,
    craft_checkpoint,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

SPEED = 4.0  # the 120 s archive streams in 30 s
START_TIMEOUT = 120.0
PILE_UP_S = 6.0  # the stage stopped before the kill: more than a window length (20 s) of data at SPEED piles up


def signal_pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits to be delivered to process `pid` (a stopped process takes it when continued)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) >> (sig - 1) & 1:
            return True
    return False


def stage_pid(daemon, kind: str) -> int:
    """The pid of the newest process of stage `kind` (from the supervisor's stage_spawned lines)."""
    return [e for e in daemon.events("stage_spawned") if e.get("kind") == kind][-1]["pid"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_checkpoint):
    """The archive, the crafted checkpoint, its calibration and the replay, once for both kinds (read only)."""
    d = tmp_path_factory.mktemp("lossless")
    archive, start, span = write_archive(d / "rjob.mseed")
    ckpt = craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", archive)
    cal = calibrate(ckpt, archive, round((start + span) * 1e9))
    replay, series = replay_series(ckpt, [archive], on=cal.on, off=cal.off)
    return archive, ckpt, cal, replay, series


@pytest.mark.parametrize(("kind", "lagging"), [("preprocess", None), ("inference", None), ("inference", "preprocess"),
                                               ("ingest", None)],
                         ids=["preprocess", "inference", "inference-preprocess-lagging", "ingest-queue-full"])
def test_stage_sigkilled_during_a_detection_loses_no_window(tmp_path, prepared, kind, lagging):
    """lagging: a stage upstream of the victim stopped with it and resumed after the victim's successor was spawned,
    while the supervisor is held: on a loaded machine, the preprocess process reads window batches that the ingest
    stage sent before its rewind after it handled its reset (they were in its socket, or sent before the rewind).

    ingest: the preprocess stage is stopped instead, so the windows the ingest stage cuts pile up in its queue
    while it goes on reading SeedLink and writing its resume state; then the ingest stage is killed and the
    preprocess stage continued. The restarted ingest stage must read those windows' records again."""
    archive, ckpt, cal, replay, series = prepared
    replay_closed = {d["id"]: d["close_reason"] for d in replay if d["state"] == "closed"}
    complete = {(d["id"], d["state"]) for d in cal.detections}
    assert {s for _, s in complete} == {"new", "closed"}

    server, sl_port = start_server(archive, tmp_path, speed=SPEED, loop=False)
    port = free_port()
    config = write_config(tmp_path / "q.toml", server_port=sl_port, checkpoint=ckpt, runtime_dir=tmp_path / "rt",
                          publish_port=port, on=cal.on, off=cal.off,
                          extra={"archive": {"probabilities": str(tmp_path / "prob"), "probabilities_flush_s": 0.2}})
    daemon = start_daemon(config, tmp_path, "daemon")
    collector = Collector(f"tcp://127.0.0.1:{port}", str(tmp_path / "position.json"))
    behind = blocked = None
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)

        killed_open = wait_for(collector.open_detection, 90, "a detection that is open")
        victim = stage_pid(daemon, kind)
        behind = stage_pid(daemon, lagging) if lagging else None
        blocked = stage_pid(daemon, "preprocess") if kind == "ingest" else None
        for pid in filter(None, (victim if blocked is None else blocked, behind)):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(PILE_UP_S)
        os.kill(victim, signal.SIGKILL)
        daemon.wait_event("stage_spawned", 30, kind=kind, count=2)
        if blocked is not None:
            os.kill(blocked, signal.SIGCONT)
        if behind is not None:  # asked to reset; the rewind waits for its report, so hold the supervisor ...
            wait_for(lambda: signal_pending(behind, signal.SIGUSR2), 10, "the reset signal")
            os.kill(daemon.pid, signal.SIGSTOP)
            os.kill(behind, signal.SIGCONT)
            daemon.wait_event("preprocess_output_discarded", 30)
            time.sleep(0.5)  # ... while the lagging process reads what the ingest stage sent before the rewind
            os.kill(daemon.pid, signal.SIGCONT)
        wait_for(lambda: complete <= set(collector.detections()), 120, "every replay detection, new and closed")
        assert daemon.stop(30) == 0, daemon.stderr()[-3000:]
    finally:
        for pid in filter(None, (daemon.pid, behind, blocked)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # (a failure above may have left one stopped)
        daemon.stop()
        collector.close()
        server.stop()
    got, per_id = collector.delivered_once()
    ids = {b["id"] for b in got}
    assert complete <= per_id.keys(), sorted(complete - per_id.keys())  # none lost
    assert ids <= set(replay_closed), sorted(ids - set(replay_closed))  # none split off under a new id
    assert (killed_open, "closed") in per_id
    ref = series["BW.RJOB."]
    want = sorted(int(t) for t, p in zip(ref.end_ns, ref.probabilities, strict=True) if np.isfinite(p).all())
    st = Client(str(tmp_path / "prob")).get_waveforms("BW", "RJOB", "", "LX1", UTCDateTime(2009, 1, 1),
                                                      UTCDateTime(2010, 1, 1))
    archived = sorted(round(t.ns) for tr in st for t in tr.times("utcdatetime"))
    assert archived and archived == [t for t in want if t <= archived[-1]]  # every window inferred, once
    live = [b for b in got if b.get("close_reason") != "shutdown"]
    assert comparable(live, cal.complete_until_ns) == comparable(cal.detections, cal.complete_until_ns)
    for body in got:  # closed as the replay closes it ("shutdown": the test's stop; the replay's end is "flush")
        if body["state"] == "closed" and body["close_reason"] != "shutdown":
            assert body["close_reason"] == replay_closed[body["id"]], body
    if kind != "ingest":  # (a restarted ingest stage reads its records again instead)
        assert daemon.events("ingest_rewound"), daemon.stderr()[-3000:]
    if kind == "inference":
        (reset,) = daemon.events("preprocess_output_discarded")
        if lagging:  # windows sent before the rewind arrived after the reset, and were dropped
            (rewound,) = daemon.events("preprocess_rewind_reached")
            assert rewound["windows_discarded"] > reset["windows_discarded"], (reset, rewound)
