"""`quakemon run` with `[archive] probabilities` on archive data from 2009 streamed by `quakemon serve` today.

One real daemon (every stage process, a SeedLink server subprocess, a SUB socket) is shared by the tests:

* the heartbeat's `lag_s` (processing lag, from arrival times) stays small while `data_age_s` (how old the data
  is) reads years, and detections carry `data_age_s` beside `latency_s`;
* the inference stage is SIGKILLed once the data has stopped and `probabilities_flush_s` has passed: the archive
  it leaves is readable and holds every window it inferred (nothing was unflushed), with the probabilities a
  replay of the same data computes, and the data gap as a gap in the trace.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client
from support.pipeline import (
    Proc,
    Subscriber,
    free_port,
    replay_series,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

from quakemon.pipeline.probarchive import RECORD_BYTES

START_TIMEOUT = 120.0
SPEED = 8.0  # the 120 s archive streams in 15 s
GAP_S = (50.0, 56.0)  # seconds after the start with no data on any component
FLUSH_S = 1.0
YEAR_S = 365 * 86_400.0


@dataclass
class Run:
    daemon: Proc
    sub: Subscriber
    prob: Path
    archive: Path
    heartbeats: list[dict]  # the heartbeats received before the inference stage was killed
    killed_pid: int


def gapped_archive(path: Path) -> Path:
    """`support.pipeline.write_archive` (BW.RJOB, 2009) with GAP_S cut out."""
    _, start, _ = write_archive(path)
    st = obspy.read(str(path))
    t0 = UTCDateTime(start)
    st = st.slice(t0, t0 + GAP_S[0] - 0.01) + st.slice(t0 + GAP_S[1])
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


def stage_pids(proc: Proc, stage: str) -> list[int]:
    return [e["pid"] for e in proc.events("stage_spawned") if e["stage"] == stage]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("probdaemon")
    archive = gapped_archive(d / "rjob.mseed")
    server, sl_port = start_server(archive, d, speed=SPEED, loop=False)
    port = free_port()
    prob = d / "prob"
    config = write_config(d / "q.toml", server_port=sl_port, checkpoint=tiny_checkpoint, runtime_dir=d / "rt",
                          publish_port=port, on=0.001, off=0.001,
                          extra={"archive": {"probabilities": str(prob), "probabilities_flush_s": FLUSH_S}})
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    daemon = start_daemon(config, d, "daemon")
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)

        def settled() -> list[dict] | None:  # the data has ended: windows_out unchanged over 2 s of heartbeats
            beats = [b for b in sub.bodies("heartbeat") if b.get("windows_out")]
            return beats if len(beats) > 4 and beats[-5]["windows_out"] == beats[-1]["windows_out"] > 50 else None

        seen = len(wait_for(settled, 120, "the daemon to infer the whole archive", interval=0.5))
        beats_to_wait = 2 * (FLUSH_S + 1.0) / 0.5 + 2  # flush_s, the check interval and a margin, in heartbeats
        wait_for(lambda: len(sub.bodies("heartbeat")) >= seen + beats_to_wait, 30, "flush_s to pass")
        heartbeats = sub.bodies("heartbeat")
        (pid,) = stage_pids(daemon, "inference")
        os.kill(pid, signal.SIGKILL)  # no clean stop: what is on disk now is what a crash leaves
        wait_for(lambda: len(stage_pids(daemon, "inference")) == 2, 30, "the inference stage to be respawned")
        yield Run(daemon, sub, prob, archive, heartbeats, pid)
    finally:
        code = daemon.stop()
        sub.close()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]


def test_heartbeat_lag_is_processing_lag_and_data_age_shows_how_old_the_data_is(run: Run):
    beats = [b for b in run.heartbeats if b.get("windows_out")]
    assert beats
    for beat in beats:
        assert beat["lag_s"] is not None and 0 <= beat["lag_s"] < 60  # behind on what arrived: seconds at most
        assert beat["data_age_s"] > 15 * YEAR_S  # the data is from 2009
        assert beat["data_lag_s"] > 15 * YEAR_S


def test_detections_carry_data_age_beside_latency(run: Run):
    dets = run.sub.bodies("detection.")
    assert dets and all(d["latency_s"] is not None for d in dets if d["state"] == "new")
    for d in dets:
        if d["latency_s"] is not None:
            assert d["data_age_s"] > 15 * YEAR_S and d["data_age_s"] >= d["latency_s"]


def test_a_killed_stage_leaves_readable_files_holding_every_window_it_inferred(run: Run, tiny_checkpoint):
    files = sorted(run.prob.rglob("BW.RJOB..LX?.D.*"))
    assert [f.parent.name for f in files] == ["LX0.D", "LX1.D"]
    assert all(f.stat().st_size and f.stat().st_size % RECORD_BYTES == 0 for f in files)
    last = run.heartbeats[-1]
    inferred = last["windows_out"] - last["invalid_windows"]
    _, series = replay_series(tiny_checkpoint, [run.archive])
    ref = series["BW.RJOB."]
    want = {int(t): p for t, p in zip(ref.end_ns, ref.probabilities, strict=True) if np.isfinite(p).all()}
    client = Client(str(run.prob))
    for j, cha in enumerate(("LX0", "LX1")):
        st = client.get_waveforms("BW", "RJOB", "", cha, UTCDateTime(2009, 1, 1), UTCDateTime(2010, 1, 1))
        times = [round(t.ns) for tr in st for t in tr.times("utcdatetime")]
        values = np.concatenate([tr.data for tr in st])
        assert len(times) == inferred  # nothing lost: the stage had flushed all of it before it was killed
        assert len(st) >= 2  # the data gap is a gap in the trace, not zeros
        assert set(times) <= set(want)
        np.testing.assert_allclose(values, [want[t][j] for t in times], rtol=0, atol=1e-5)  # as the replay


def test_an_unwritable_archive_folder_stops_the_daemon_at_start_with_exit_2(tmp_path, tiny_checkpoint):
    (tmp_path / "file").write_text("")
    config = write_config(tmp_path / "q.toml", server_port=free_port(), checkpoint=tiny_checkpoint,
                          runtime_dir=tmp_path / "rt", publish_port=free_port(), on=0.5, off=0.5,
                          extra={"archive": {"probabilities": str(tmp_path / "file" / "prob")}})
    daemon = start_daemon(config, tmp_path, "unwritable")
    assert daemon.wait(60) == 2
    assert "archive.probabilities: cannot write" in daemon.stderr()
    assert "is not a directory" in daemon.stderr()
    assert not daemon.events("stage_spawned")
