"""`quakemon run` under `ulimit -n 1024`: a flood of idle /metrics clients, a killed stage, a stopped stage.

One daemon (real stage processes, a SeedLink server on loopback, sd_notify to a fake manager) is shared by the
tests, in order: a stale control socket of a dead daemon is gone at start; 5000 idle connections to the metrics
port neither stop /metrics from answering nor starve the daemon of file descriptors, so a stage killed with
SIGKILL is restarted; a stage stopped with SIGSTOP is named in STATUS= and in the watchdog's log line; at exit the
daemon removes its own control socket.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.pipeline import NotifySocket, Proc, free_port, start_server, wait_for, write_archive, write_config

START_TIMEOUT = 120.0
DAEMON_NOFILE = 1024
IDLE_CLIENTS = 5000


@dataclass
class Daemon:
    proc: Proc
    notify: NotifySocket
    runtime: Path
    metrics_port: int
    stale: Path


def _raise_own_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise the hard limit
            return
        except (ValueError, OSError):
            pytest.skip(f"needs {wanted} open files in the test process, hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("limits")
    archive, _, _ = write_archive(d / "rjob.mseed")
    server, port = start_server(archive, d, speed=10.0)
    runtime = d / "rt"
    runtime.mkdir(mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = runtime / f"control-{dead.pid}"
    with socket.socket(socket.AF_UNIX) as sock:  # what a daemon killed with SIGKILL leaves behind
        sock.bind(str(stale))
    config = write_config(d / "limits.toml", server_port=port, checkpoint=tiny_checkpoint, runtime_dir=runtime,
                          publish_port=free_port(), on=0.9, off=0.5, extra={"metrics": {"listen": "127.0.0.1:0"}})
    notify = NotifySocket(d / "notify.sock")
    args = ["/bin/sh", "-c", f'ulimit -n {DAEMON_NOFILE} && WATCHDOG_PID=$$ exec "$@"', "sh",
            sys.executable, "-m", "quakemon.cli.app", "run", "--config", str(config)]
    proc = Proc(args, d, "limits", env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
    try:
        proc.wait_event("daemon_ready", START_TIMEOUT)
        (serving,) = proc.wait_event("metrics_serving", 5)
        yield Daemon(proc, notify, runtime, int(serving["port"]), stale)
    finally:
        proc.stop()
        notify.close()
        server.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stage_pids(proc: Proc, stage: str) -> list[int]:
    return [e["pid"] for e in proc.events("stage_spawned") if e["stage"] == stage]


def test_stale_control_socket_is_removed_at_start(daemon: Daemon):
    (removed,) = daemon.proc.events("stale_control_socket_removed")
    assert removed["path"] == str(daemon.stale) and not daemon.stale.exists()
    assert (daemon.runtime / f"control-{daemon.proc.pid}").exists()


def test_idle_metrics_clients_hold_nothing_and_a_killed_stage_comes_back(daemon: Daemon):
    _raise_own_nofile(IDLE_CLIENTS + 512)
    assert "quakemon_windows_in_total" in scrape(daemon.metrics_port)
    t0 = time.monotonic()
    clients: list[socket.socket] = []
    try:
        for _ in range(IDLE_CLIENTS // 500):  # in batches: connected, then idle (no request, never closed)
            for _ in range(500):
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(("127.0.0.1", daemon.metrics_port))
                assert err in (0, errno.EINPROGRESS, errno.EAGAIN), os.strerror(err)
                clients.append(s)
            time.sleep(0.05)
        assert open_fds(daemon.proc.pid) < 200  # connections capped: the daemon's descriptors stay bounded
        body = scrape(daemon.metrics_port)  # answers while thousands of idle clients are around
        assert "quakemon_windows_in_total" in body
        victim = stage_pids(daemon.proc, "preprocess-0")[-1]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(stage_pids(daemon.proc, "preprocess-0")) >= 2, 20, "preprocess-0 respawned")
        daemon.proc.wait_event("stage_ready", 60, count=2, stage="preprocess-0")
        assert daemon.proc.proc.poll() is None, daemon.proc.stderr()[-3000:]
        assert "quakemon_windows_in_total" in scrape(daemon.metrics_port)
        assert open_fds(daemon.proc.pid) < 200
    finally:
        for s in clients:
            s.close()
    assert "Too many open files" not in daemon.proc.stderr()
    assert time.monotonic() - t0 < 60


def test_a_stopped_stage_is_named_in_status_and_in_the_watchdog_log(daemon: Daemon):
    pid = stage_pids(daemon.proc, "inference")[-1]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: any(m.startswith("STATUS=stalled: inference") for _, m in daemon.notify.messages), 15,
                 "STATUS= naming the stopped stage")
        (stalled,) = daemon.proc.wait_event("stage_stalled", 5, stage="inference")
        assert stalled["pid"] == pid
        missed = daemon.proc.wait_event("watchdog_no_progress", 10)
        assert "inference" in missed[-1]["stalled_stages"]
    finally:
        os.kill(pid, signal.SIGCONT)
    daemon.proc.wait_event("stage_progress_resumed", 15, stage="inference")
    def last_status() -> str:
        return [m for _, m in list(daemon.notify.messages) if m.startswith("STATUS=")][-1]

    wait_for(lambda: not last_status().startswith("STATUS=stalled"), 15, "STATUS= without the stall", interval=0.2)


def test_the_daemon_removes_its_control_socket_at_exit(daemon: Daemon):
    own = daemon.runtime / f"control-{daemon.proc.pid}"
    assert own.exists()
    daemon.proc.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert not own.exists() and not list(daemon.runtime.glob("control-*"))
