"""Screen and refine in the daemon: `quakemon run` with `[model] screen_every = 4` on a looping `quakemon serve`
publishes the detections an in-process replay with the same screen publishes, and its probability archive holds
the same values for every window (the screened windows' values included), so the same windows were forwarded.
An inference stage SIGKILLed while it holds windows for the screen (and while a detection is open) loses none:
the rewind sends them again, and the subscriber gets the replay's detections, none twice.

The checkpoint is the random tiny model with a rescaled head (probabilities depend on the data); the trigger
thresholds are calibrated on a replay of the same archive, and the screen threshold lies just below them, where
the replay shows that it screens windows out.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client
from support.pipeline import (
    Calibration,
    Collector,
    calibrate,
    comparable,
    craft_checkpoint,
    daemon_first_pass,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

SPEED = 20.0  # the 240 s archive streams in 12 s per pass (looped, each pass shifted in time)
START_TIMEOUT = 120.0
EVERY = 4


def quiet_archive(path: Path) -> tuple[Path, float, float]:
    """obspy.read()'s BW.RJOB (30 s) twice, each followed by 90 s of noise (long enough for the screen to turn
    the station sparse); returns (path, start, span_s)."""
    return write_archive(path, blocks=8, event_every=4, seed=1)


def quiet_enough(p: np.ndarray, t: float) -> bool:
    """Whether `t` is clear of every probability (replay and live may differ in the last bits) and the noise stays
    below it for 30 windows in a row (the station turns sparse after a window length, 21 windows, below it)."""
    below = np.concatenate([[0], (p < t).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(below))
    return bool(np.abs(p - t).min() > 0.003 and (edges[1::2] - edges[::2]).max(initial=0) >= 30)


@dataclass
class Setup:
    archive: Path
    ckpt: Path
    end_ns: int
    cal: Calibration
    screen: dict[str, float]
    dets: list[dict]  # the screened replay's detections
    series: Any  # and its probability series


def setup(tmp_path: Path, tiny: Path) -> Setup:
    """The archive, the crafted checkpoint, the trigger and screen thresholds and the screened replay."""
    archive, start, span = quiet_archive(tmp_path / "rjob.mseed")
    ckpt = craft_checkpoint(tiny, tmp_path / "crafted.safetensors", archive)
    end_ns = round((start + span) * 1e9)
    cal = calibrate(ckpt, archive, end_ns)
    _, full = replay_series(ckpt, [archive], screen_every=1)
    (full_series,) = full.values()
    p_full = np.asarray(full_series.probabilities, np.float64)[:, 1]
    threshold = next(t for t in np.arange(0.3, cal.off - 0.05, 0.0025) if quiet_enough(p_full, float(t)))
    screen = {"screen_every": EVERY, "screen_threshold": float(threshold)}
    dets, series = replay_series(ckpt, [archive], on=cal.on, off=cal.off, min_duration_s=0.0, **screen)
    (st,) = series.values()
    p = np.asarray(st.probabilities, np.float64)[:, 1]
    assert (np.abs(p - p_full) > 1e-6).sum() >= 10  # the replay screened windows out (their screen's values)
    assert {d["state"] for d in dets} == {"new", "closed"}
    return Setup(archive, ckpt, end_ns, cal, screen, dets, st)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_checkpoint) -> Setup:
    """`setup` once for the module's tests, which only read it (each daemon writes in its own tmp_path)."""
    return setup(tmp_path_factory.mktemp("screen"), tiny_checkpoint)


def test_the_daemon_screens_as_the_replay_does(tmp_path, prepared):
    env = prepared
    archive, ckpt, end_ns, cal, screen, dets, st = (env.archive, env.ckpt, env.end_ns, env.cal, env.screen,
                                                    env.dets, env.series)
    p = np.asarray(st.probabilities, np.float64)[:, 1]

    live, archived = daemon_first_pass(tmp_path, archive, ckpt, cal, screen, len(p), SPEED, START_TIMEOUT)
    assert comparable(live, end_ns) == comparable(dets, end_ns)
    assert comparable(live, end_ns)
    # windows whose screen window lies in the first pass (the replay's end forwards the last held ones)
    check = [(e, v) for e, v in zip(st.end_ns, p, strict=True) if e <= end_ns - EVERY * 10**9]
    assert len(check) > 80
    assert all(abs(archived[e] - v) <= 1e-4 for e, v in check), [(e, archived.get(e), v) for e, v in check
                                                                 if abs(archived.get(e, -1) - v) > 1e-4][:5]


@pytest.mark.parametrize("when", ["open", "quiet"])
def test_an_inference_stage_killed_loses_no_window(tmp_path, prepared, when):
    """Killed while a detection is open (the station dense), or after the first detection closed, once the station
    has turned sparse and holds windows for its next screen window."""
    env = prepared
    complete = {(d["id"], d["state"]) for d in env.dets if d.get("close_reason") != "flush"}
    server, sl_port = start_server(env.archive, tmp_path, speed=8.0, loop=False)  # 240 s in 30 s
    port = free_port()
    config = write_config(tmp_path / "q.toml", server_port=sl_port, checkpoint=env.ckpt, runtime_dir=tmp_path / "rt",
                          publish_port=port, on=env.cal.on, off=env.cal.off,
                          extra={"model": env.screen, "archive": {"probabilities": str(tmp_path / "prob"),
                                                                  "probabilities_flush_s": 0.2}})
    daemon = start_daemon(config, tmp_path, "daemon")
    collector = Collector(f"tcp://127.0.0.1:{port}", str(tmp_path / "position.json"))
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)

        killed_open = wait_for(collector.open_detection, 90, "a detection that is open")
        if when == "quiet":
            wait_for(lambda: (killed_open, "closed") in collector.detections(), 60, "the detection closed")
            time.sleep(4.0)  # 32 s of noise data: the station has stayed below the screen threshold, sparse
        victim = [e for e in daemon.events("stage_spawned") if e.get("kind") == "inference"][-1]["pid"]
        os.kill(victim, signal.SIGSTOP)
        time.sleep(3.0)  # 24 s of data piles up: the windows the stage holds and those queued die with it
        os.kill(victim, signal.SIGKILL)
        daemon.wait_event("stage_spawned", 30, kind="inference", count=2)
        wait_for(lambda: complete <= set(collector.detections()), 120, "every replay detection, new and closed")
        assert daemon.stop(30) == 0, daemon.stderr()[-3000:]
    finally:
        daemon.stop()
        collector.close()
        server.stop()
    got, per_id = collector.delivered_once()
    assert complete <= per_id.keys(), sorted(complete - per_id.keys())  # none lost
    assert {b["id"] for b in got} <= {d["id"] for d in env.dets}  # none split off under a new id
    assert (killed_open, "closed") in per_id
    replay_closed = {d["id"]: d["close_reason"] for d in env.dets if d["state"] == "closed"}
    for body in got:
        if body["state"] == "closed" and body["close_reason"] not in ("shutdown", "gap"):
            assert body["close_reason"] == replay_closed[body["id"]], body
    assert daemon.events("ingest_rewound"), daemon.stderr()[-3000:]
    want = [e for e, p in zip(env.series.end_ns, env.series.probabilities, strict=True) if np.isfinite(p).all()]
    traces = Client(str(tmp_path / "prob")).get_waveforms("BW", "RJOB", "", "LX1", UTCDateTime(2009, 1, 1),
                                                          UTCDateTime(2010, 1, 1))
    archived = sorted(round(t.ns) for tr in traces for t in tr.times("utcdatetime"))
    assert archived and archived == [t for t in want if t <= archived[-1]]  # every window once, none lost
