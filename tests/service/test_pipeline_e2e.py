"""End to end on loopback: `quakemon serve` -> `quakemon run` (real stage processes) -> SUB / `quakemon listen`.

One daemon run is shared by the tests of the first group (in file order): readiness and watchdog, detections
equal to the in-process and `quakemon replay` results, heartbeats, a stopped subscriber, a killed inference
worker, SIGTERM. A second group runs the stages as two process groups joined over tcp:// ("two hosts").

The checkpoint is the random tiny model with a rescaled head (probabilities depend on the data); trigger
thresholds are calibrated on an in-process replay of the same archive so that triggers open and close.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.pipeline import (
    Calibration,
    NotifySocket,
    Proc,
    Subscriber,
    calibrate,
    children,
    comparable,
    craft_checkpoint,
    free_port,
    probabilities,
    start_daemon,
    start_server,
    wait_for,
    write_archive,
    write_config,
)

from quakemon.wire.schema import parse_iso_utc, validate_detection, validate_heartbeat

SPEED = 20.0  # the 120 s archive streams in 6 s per pass (looped, each pass shifted in time)
START_TIMEOUT = 120.0  # four processes import torch at once on a shared 2-core machine
PASS_WINDOWS = 101  # complete 20 s windows on the 1 s grid inside the first 120 s pass


@dataclass
class Env:
    dir: Path
    archive: Path
    checkpoint: Path
    cal: Calibration
    end_ns: int
    server: Proc
    port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("e2e")
    archive, start, span = write_archive(d / "rjob.mseed")
    ckpt = craft_checkpoint(tiny_checkpoint, d / "crafted.safetensors", archive)
    end_ns = round((start + span) * 1e9)
    cal = calibrate(ckpt, archive, end_ns)
    assert {d["state"] for d in cal.detections} == {"new", "closed"}, cal.detections
    server, port = start_server(archive, d, speed=SPEED)
    yield Env(d, archive, ckpt, cal, end_ns, server, port)
    assert server.stop() == 0, server.stderr()[-2000:]


@dataclass
class Run:
    daemon: Proc
    notify: NotifySocket
    sub: Subscriber
    endpoint: str
    config: Path
    started_wall: float


def _config(env: Env, name: str, **extra) -> tuple[Path, int]:
    port = free_port()
    rt = env.dir / f"rt-{name}"
    return write_config(env.dir / f"{name}.toml", server_port=env.port, checkpoint=env.checkpoint, runtime_dir=rt,
                        publish_port=port, on=env.cal.on, off=env.cal.off, extra=extra or None), port


def _windows_out(sub: Subscriber) -> int:
    beats = sub.bodies("heartbeat")
    return max((b["windows_out"] for b in beats), default=0)


@pytest.fixture(scope="module")
def run(env: Env):
    config, port = _config(env, "single", metrics={"listen": "127.0.0.1:0"})
    endpoint = f"tcp://127.0.0.1:{port}"
    notify = NotifySocket(env.dir / "notify.sock")
    sub = Subscriber(endpoint)  # connects before the publisher binds, so it misses nothing
    started = time.time()
    daemon = start_daemon(config, env.dir, "single", watchdog_pid_self=True,
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: _windows_out(sub) >= PASS_WINDOWS + 5, 90, "the first pass through the pipeline")
        yield Run(daemon, notify, sub, endpoint, config, started)
    finally:
        daemon.stop()
        sub.close()
        notify.close()


def _iso_ts(text: str) -> float:
    return parse_iso_utc(text)


def test_ready_only_after_stages_and_watchdog_pings(run: Run):
    stage_ready = run.daemon.events("stage_ready")
    assert sorted(e["stage"] for e in stage_ready[:3]) == ["inference", "ingest", "preprocess-0"]
    ready_walls = [w for w, m in run.notify.walls() if "READY=1" in m.splitlines()]
    assert len(ready_walls) == 1
    assert ready_walls[0] >= max(_iso_ts(e["timestamp"]) for e in stage_ready[:3]) - 0.01
    # WATCHDOG_PID is the daemon's own pid (as systemd sets it): it pings, every WATCHDOG_USEC/2, on progress
    pings = run.notify.times("WATCHDOG=1")
    assert len(pings) >= 5, run.notify.messages
    gaps = [b - a for a, b in zip(pings[3:], pings[4:], strict=False)]
    assert max(gaps) < 1.5, gaps
    status = [m for _, m in run.notify.messages if m.startswith("STATUS=") and "windows inferred" in m]
    assert status and "1 stations" in status[-1], status[-3:]
    spawned = run.daemon.events("stage_spawned")
    assert len({e["pid"] for e in spawned}) == 3 and all(e["pid"] in children(run.daemon.pid) for e in spawned)


def test_live_detections_match_replay(run: Run, env: Env):
    dets = run.sub.bodies("detection.")
    for body in dets:
        validate_detection(body)
    live = comparable(dets, env.end_ns)
    assert live == comparable(env.cal.detections, env.end_ns)
    assert {s for _, s, *_ in live} == {"new", "closed"}
    live_p = probabilities(dets, env.end_ns)
    replay_p = probabilities(env.cal.detections, env.end_ns)
    assert all(abs(live_p[k] - replay_p[k]) <= 1e-4 for k in live_p), (live_p, replay_p)
    latencies = [d["latency_s"] for d in dets]
    assert all(lat is not None and 0 <= lat < 30 for lat in latencies), latencies
    print(f"latency_s: min {min(latencies):.3f} max {max(latencies):.3f} n {len(latencies)}")


def test_cli_replay_gives_the_same_detections(run: Run, env: Env):
    out = env.dir / "replay.jsonl"
    proc = Proc([sys.executable, "-m", "quakemon.cli.app", "replay", str(env.archive), "--config", str(run.config),
                 "--output", str(out), "--quiet"], env.dir, "replay")
    try:
        assert proc.wait(120) == 0, proc.stderr()[-3000:]
    finally:
        proc.stop()
    # the replay's data end closes detections still held then ("flush"); the live stream goes on (looped), so
    # live they close later: those closes are not compared
    replayed = [b for line in out.read_text().splitlines() if line.strip()
                for b in [json.loads(line)] if b.get("close_reason") != "flush"]
    live = run.sub.bodies("detection.")
    assert comparable(replayed, env.end_ns) == comparable(live, env.end_ns)
    live_p, replay_p = probabilities(live, env.end_ns), probabilities(replayed, env.end_ns)
    assert live_p.keys() == replay_p.keys()
    assert all(abs(live_p[k] - replay_p[k]) <= 1e-4 for k in live_p)


def test_heartbeats_are_valid_and_count_the_pipeline(run: Run):
    beats = run.sub.bodies("heartbeat")
    assert len(beats) >= 5
    for body in beats:
        validate_heartbeat(body)
    last = beats[-1]
    assert last["stations"] == 1 and last["windows_in"] >= last["windows_out"] >= PASS_WINDOWS
    assert last["dropped"] == 0 and set(last["queue_depths"]) == {"ingest", "preprocess", "inference"}
    assert last["lag_s"] is not None and last["device"] == "cpu" and last["precision"] == "fp32"
    seqs = [b["seq"] for b in run.sub.bodies()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost on loopback


def test_supervisor_serves_prometheus_metrics(run: Run):
    import urllib.request

    (serving,) = run.daemon.events("metrics_serving")
    with urllib.request.urlopen(f"http://127.0.0.1:{serving['port']}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["quakemon_windows_out_total"] >= PASS_WINDOWS
    assert values["quakemon_windows_in_total"] >= values["quakemon_windows_out_total"] - 50
    assert values['quakemon_station_lag_seconds{station="BW.RJOB."}'] > 0


def test_stopped_subscriber_does_not_stall_and_listen_reports_the_gap(run: Run, env: Env):
    listener = Proc([sys.executable, "-m", "quakemon.cli.app", "listen", run.endpoint, "--json", "--heartbeats",
                     "--silence", "60", "--timeout", "60"], env.dir, "listen")
    try:
        wait_for(lambda: len(listener.stdout().splitlines()) >= 2, 60, "listen printing heartbeats")
        os.kill(listener.pid, signal.SIGSTOP)  # stops reading: the publisher must not care
        stopped = time.monotonic()
        time.sleep(6.0)  # > ZMTP heartbeat timeout (3 s): the publisher drops the silent peer
        beats = [t for t, _ in run.sub.timed("heartbeat") if t >= stopped]
        os.kill(listener.pid, signal.SIGCONT)
        assert len(beats) >= 8, beats  # 0.5 s heartbeats kept coming to the other subscriber
        assert max(b - a for a, b in zip([stopped, *beats], beats, strict=False)) < 2.0

        def gap_report():
            lines = [json.loads(x) for x in listener.stdout().splitlines() if x.startswith("{")]
            return [x for x in lines if x.get("kind") == "listen" and x.get("event") == "seq_gap"]

        reports = wait_for(gap_report, 20, "a seq_gap report from quakemon listen")
        assert reports[0]
    finally:
        os.kill(listener.pid, signal.SIGCONT)
        listener.stop()


def test_killed_inference_worker_is_restarted(run: Run):
    (spawn,) = [e for e in run.daemon.events("stage_spawned") if e["stage"] == "inference"]
    assert spawn["pid"] in children(run.daemon.pid)
    old_epoch = run.sub.bodies("heartbeat")[-1]["epoch"]
    n_before = len(run.sub.bodies("detection."))
    killed = time.monotonic()
    os.kill(spawn["pid"], signal.SIGKILL)
    run.daemon.wait_event("stage_died", 10, stage="inference")
    run.daemon.wait_event("stage_spawned", 10, count=2, stage="inference")
    first_new = wait_for(lambda: next((t for t, b in run.sub.timed("heartbeat") if b["epoch"] != old_epoch), None),
                         START_TIMEOUT, "heartbeats from the restarted inference worker")
    print(f"inference restart: first heartbeat of the new epoch {first_new - killed:.1f} s after SIGKILL")
    wait_for(lambda: any(b["epoch"] != old_epoch for b in run.sub.bodies("detection.")), 60,
             "detections after the restart")
    assert len(run.sub.bodies("detection.")) > n_before
    assert run.daemon.proc.poll() is None


def test_sigterm_stops_cleanly_within_10_s(run: Run):
    kids = children(run.daemon.pid)
    assert len(kids) == 3
    t0 = time.monotonic()
    run.daemon.signal(signal.SIGTERM)
    code = run.daemon.wait(15)
    elapsed = time.monotonic() - t0
    print(f"SIGTERM -> exit {code} in {elapsed:.2f} s")
    assert code == 0 and elapsed < 10
    assert run.notify.times("STOPPING=1")
    stderr = run.daemon.stderr()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not [k for k in kids if os.path.exists(f"/proc/{k}")]
    state_file = run.config.with_suffix(".state")
    assert json.loads(state_file.read_text()), state_file  # ingest saved its SeedLink resume state


# -- two hosts ------------------------------------------------------------------------------------------------


def test_two_process_groups_over_tcp_match_single_host(env: Env):
    """`--stages ingest,preprocess` and `--stages inference` as separate daemons joined by tcp://127.0.0.1."""
    pipeline = {"windows_endpoint": f"tcp://127.0.0.1:{free_port()}",
                "spectra_endpoint": f"tcp://127.0.0.1:{free_port()}"}
    config, port = _config(env, "twohost", pipeline=pipeline)
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    notify = NotifySocket(env.dir / "notify-a.sock")
    # WATCHDOG_PID names another process: this daemon must not ping (the variables were not meant for it)
    front = start_daemon(config, env.dir, "host-a", stages="ingest,preprocess",
                         env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    # the second "host" needs a runtime directory of its own (one daemon per runtime_dir), as a real host has
    config_b = write_config(env.dir / "twohost-b.toml", server_port=env.port, checkpoint=env.checkpoint,
                            runtime_dir=env.dir / "rt-twohost-b", publish_port=port, on=env.cal.on,
                            off=env.cal.off, extra={"pipeline": pipeline})
    back = start_daemon(config_b, env.dir, "host-b", stages="inference")
    try:
        front.wait_event("daemon_ready", START_TIMEOUT)
        back.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: _windows_out(sub) >= PASS_WINDOWS + 5, 90, "the first pass through both hosts")
        # the subscriber was waiting before the inference host started: it gets every message from seq 1 on,
        # although host A queued a backlog of windows that host B turns into detections as soon as it can
        seqs = [b["seq"] for b in sub.bodies()]
        assert seqs == list(range(1, len(seqs) + 1)), seqs[:20]
        dets = sub.bodies("detection.")
        for body in dets:
            validate_detection(body)
        assert comparable(dets, env.end_ns) == comparable(env.cal.detections, env.end_ns)
        replay_p = probabilities(env.cal.detections, env.end_ns)
        assert all(abs(p - replay_p[k]) <= 1e-4 for k, p in probabilities(dets, env.end_ns).items())
        assert sub.bodies("heartbeat")[-1]["stations"] == 1
        assert notify.times("READY=1") and not notify.times("WATCHDOG=1")
    finally:
        codes = (front.stop(), back.stop())
        sub.close()
        notify.close()
    assert codes == (0, 0), (front.stderr()[-2000:], back.stderr()[-2000:])
