"""sd_notify against a fake service manager: a real datagram socket bound by the test (path and @abstract)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quakemon.service.sdnotify import Notifier, Watchdog, watchdog_interval


class FakeManager:
    """What systemd does with NOTIFY_SOCKET: a bound AF_UNIX datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self, wait: float = 0.05, limit_s: float = 2.0) -> list[str]:
        """Messages until none arrives for `wait` s, or `limit_s` has passed (a steady STATUS stream never stops)."""
        self.sock.settimeout(wait)
        out = []
        deadline = time.monotonic() + limit_s
        try:
            while time.monotonic() < deadline:
                out.append(self.recv())
        except TimeoutError:
            pass
        self.sock.settimeout(2.0)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeManager]:
    address = str(tmp_path / "notify") if request.param == "path" else f"@quakemon-test-{uuid.uuid4().hex}"
    m = FakeManager(address)
    yield m
    m.close()


def test_ready_status_watchdog_stopping(manager: FakeManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    n = Notifier()
    assert n.enabled
    assert n.ready("model loaded")
    assert manager.recv() == "READY=1\nSTATUS=model loaded"
    assert n.status("3 stations\nlag 1.0 s")
    assert manager.recv() == "STATUS=3 stations lag 1.0 s"  # one line: a newline would start a new assignment
    assert n.watchdog()
    assert manager.recv() == "WATCHDOG=1"
    assert n.stopping("SIGTERM")
    assert manager.recv() == "STOPPING=1\nSTATUS=SIGTERM"
    n.close()


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_vanished_manager_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert n.ready() is False  # logged, not raised
    n.close()


def test_same_bytes_as_systemd_notify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-notify")
    if tool is None:
        pytest.skip("systemd-notify not installed (apt-get install -y systemd) - cross-check not possible")
    m = FakeManager(str(tmp_path / "notify"))
    try:
        subprocess.run([tool, "--no-block", "--ready", "--status=model loaded"], timeout=10, check=False,
                       env={**os.environ, "NOTIFY_SOCKET": m.address}, capture_output=True)
        theirs = m.recv()
        Notifier(m.address).ready("model loaded")
        assert m.recv() == theirs
    finally:
        m.close()


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_watchdog_pings_only_on_progress(manager: FakeManager) -> None:
    wd = Watchdog(Notifier(manager.address), interval=15.0)
    assert wd.tick() is False  # nothing done yet: no ping
    assert manager.drain() == []
    wd.progress()
    assert wd.tick() is True
    assert manager.recv() == "WATCHDOG=1"
    assert wd.tick() is False  # stuck since the last ping
    assert manager.drain() == []
    wd.progress(5)
    assert wd.tick() is True
    assert manager.recv() == "WATCHDOG=1"


def test_stuck_pipeline_stops_the_pings_thread(manager: FakeManager) -> None:
    """A live pipeline gets pings every interval with STATUS from the callback; a hung one gets none."""
    wd = Watchdog(Notifier(manager.address), interval=0.05, status_fn=lambda: "2 stations, lag 0.4 s",
                  status_interval=0.05)
    wd.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # a working pipeline
            wd.progress()
            time.sleep(0.01)
        live = manager.drain()
        assert live.count("WATCHDOG=1") >= 3
        assert "STATUS=2 stations, lag 0.4 s" in live
        time.sleep(0.2)  # the pipeline hangs: any ping in flight lands now
        manager.drain()
        time.sleep(0.5)  # ~10 ticks without progress
        stuck = manager.drain()
        assert "WATCHDOG=1" not in stuck
        assert wd.missed >= 3
        assert any(m.startswith("STATUS=") for m in stuck)  # status still refreshed while stuck
        wd.progress()  # recovers
        assert "WATCHDOG=1" in manager.drain(0.5, limit_s=1.0)
    finally:
        wd.stop()


def test_a_missed_ping_names_what_the_detail_callback_says(manager: FakeManager) -> None:
    import structlog

    wd = Watchdog(Notifier(manager.address), interval=15.0, detail_fn=lambda: {"stalled_stages": ["inference"]})
    with structlog.testing.capture_logs() as logs:
        assert wd.tick() is False
    (missed,) = [e for e in logs if e["event"] == "watchdog_no_progress"]
    assert missed["stalled_stages"] == ["inference"] and missed["missed_ticks"] == 1
    broken = Watchdog(Notifier(manager.address), interval=15.0, detail_fn=lambda: 1 / 0)
    with structlog.testing.capture_logs() as logs:
        assert broken.tick() is False  # a failing callback never stops the watchdog
    assert "ZeroDivisionError" in logs[0]["detail_error"]
