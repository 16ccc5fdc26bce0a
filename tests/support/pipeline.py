"""Helpers for the end-to-end daemon tests: test data, a data-dependent checkpoint, processes and sockets.

Everything runs on 127.0.0.1 with free ports; every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from quakemon.base.net import free_port  # noqa: F401 - the one free_port, for the daemon tests' helpers
from quakemon.client import Subscriber as ClientSubscriber

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ["BW.RJOB..EH?"]
BLOCKS = 4  # 30 s blocks: RJOB event, noise, RJOB event, noise -> a 120 s archive


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- data and model -------------------------------------------------------------------------------------------


def write_archive(path: Path, blocks: int = BLOCKS, event_every: int = 2, seed: int = 0) -> tuple[Path, float, float]:
    """obspy.read()'s BW.RJOB (30 s, 100 Hz) as every `event_every`-th of `blocks` blocks, noise in the others;
    returns (path, start, span_s)."""
    import obspy

    base = obspy.read()
    span = base[0].stats.npts / base[0].stats.sampling_rate
    rng = np.random.default_rng(seed)
    out = obspy.Stream()
    for i in range(blocks):
        block = base.copy()
        for tr in block:
            tr.stats.starttime += i * span
            if i % event_every:
                tr.data = rng.normal(0, 20, tr.stats.npts)
            tr.data = np.round(tr.data).astype(np.int32)
        out += block
    out.merge()
    out.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path, float(base[0].stats.starttime.timestamp), blocks * span


def replay_series(checkpoint: Path, paths: list[Path], **trigger: Any) -> tuple[list[dict], dict[str, Any]]:
    """In-process replay (DetectionRunner) -> (detections, {station: ProbabilitySeries})."""
    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import DetectionRunner

    ckpt = load_checkpoint(checkpoint)
    runner = DetectionRunner(ckpt, device="cpu", precision="fp32", keep_series=True,
                             **{"on": 0.99, "off": 0.99, "min_duration_s": 0.0, **trigger})
    source = ArchiveSource([str(p) for p in paths], None)
    try:
        dets = list(runner.add_traces(source.traces(threading.Event()))) + runner.finish()
    finally:
        source.close()
    return dets, runner.series


def craft_checkpoint(tiny: Path, out: Path, archive: Path, gain: float = 20.0) -> Path:
    """The random tiny model with its head rescaled so that p(earthquake) spreads over (0, 1) on `archive`.

    Random weights give a logit difference that depends only mildly on the input; multiplying it by `gain`
    around its median over the archive turns that into clearly different probabilities per window.
    """
    import torch

    from quakemon.models import save_checkpoint
    from quakemon.models.checkpoint import load_checkpoint

    _, series = replay_series(tiny, [archive])
    p = np.concatenate([np.asarray(s.probabilities, np.float64) for s in series.values()])
    i = 1  # "earthquake"
    diff = np.log(p[:, i]) - np.log(p[:, 1 - i])
    centre = float(np.median(diff))
    ckpt = load_checkpoint(tiny)
    head = ckpt.model.head
    with torch.no_grad():
        head.weight.mul_(gain)
        head.bias.mul_(gain)
        head.bias[i] -= gain * centre
    save_checkpoint(out, ckpt.model.eval(), list(ckpt.labels), ckpt.contract,
                    provenance={"note": f"random test weights, head x{gain}, centred"})
    return out


@dataclass
class Calibration:
    on: float
    off: float
    margin: float
    complete_until_ns: int  # windows ending at or before this are cut identically live and in replay
    detections: list[dict]  # replay detections caused by complete windows


def calibrate(checkpoint: Path, archive: Path, archive_end_ns: int) -> Calibration:
    """Pick on = off between two observed probabilities so that at least one trigger opens and closes inside
    the archive, with the widest margin to any observed probability (robust to float differences)."""
    _, series = replay_series(checkpoint, [archive])
    (st,) = series.values()
    ends = np.asarray(st.end_ns)
    keep = ends <= archive_end_ns
    p = np.asarray(st.probabilities, np.float64)[keep, 1]
    values = np.unique(p)
    best: tuple[float, float] | None = None
    for a, b in zip(values[:-1], values[1:], strict=True):
        thr = (a + b) / 2
        above = p >= thr
        closes = np.flatnonzero(above[:-1] & ~above[1:])  # a run that ends inside the archive
        runs = int(np.count_nonzero(above[1:] & ~above[:-1]) + above[0])
        if closes.size and 1 <= runs <= 6 and not above[-3:].any() and (best is None or (b - a) / 2 > best[1]):
            best = (thr, (b - a) / 2)
    assert best is not None, f"no usable threshold in probabilities {np.round(p, 3).tolist()}"
    thr, margin = best
    dets, _ = replay_series(checkpoint, [archive], on=thr, off=thr)
    complete = [d for d in dets if d.get("close_reason") != "flush" and _window_end_ns(d) <= archive_end_ns]
    return Calibration(thr, thr, margin, archive_end_ns, complete)


def _window_end_ns(det: dict) -> int:
    """End of the window that caused the detection message (``last_window_end``; ``window_end`` is its first)."""
    from quakemon.wire.schema import parse_iso_utc

    return round(parse_iso_utc(det["last_window_end"]) * 1e9)


def comparable(dets: list[dict], until_ns: int) -> list[tuple]:
    """(id, state, onset, window_start, end) of detections caused by windows ending at or before `until_ns`."""
    return sorted((d["id"], d["state"], d["onset"], d["window_start"], d.get("end"))
                  for d in dets if _window_end_ns(d) <= until_ns)


def probabilities(dets: list[dict], until_ns: int) -> dict[tuple[str, str], float]:
    return {(d["id"], d["state"]): d["probability"] for d in dets if _window_end_ns(d) <= until_ns}


# -- config ---------------------------------------------------------------------------------------------------


def write_config(path: Path, *, server_port: int, checkpoint: Path, runtime_dir: Path, publish_port: int,
                 on: float, off: float, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "seedlink": {"server": f"127.0.0.1:{server_port}", "streams": STREAMS,
                     "state_file": str(path.parent / f"{path.stem}.state"), "netto": 10.0,
                     "reconnect_backoff_max": 2.0},
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "precision": "fp32", "batch_size": 16,
                  "max_wait_ms": 50.0},
        "window": {"stride_s": 1.0},
        "trigger": {"on": on, "off": off, "min_duration": 0.0, "label": "earthquake"},
        "pipeline": {"runtime_dir": str(runtime_dir), "queue_hwm": 5000, "heartbeat_interval_s": 0.5},
        "publish": {"endpoint": f"tcp://127.0.0.1:{publish_port}"},
        "logging": {"level": "info", "format": "json"},
    }
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# -- processes ------------------------------------------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "QUAKEMON_INJECT"))}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


STARTED: list[Proc] = []  # the processes started by the running test (tests/conftest.py reports their logs)


def log_tail(proc: Proc, lines: int = 60) -> str:
    """The last `lines` lines of a process's stderr, shown when a test fails."""
    try:
        return "\n".join(proc.stderr().splitlines()[-lines:])
    except OSError as exc:
        return f"(stderr unreadable: {exc})"


def quakemon_processes() -> str:
    """One line per live process whose command line names quakemon: a stray one can starve a later test."""
    rows = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "quakemon" in cmd and "pytest" not in cmd:
                rows.append(f"{entry} {cmd[:160]}")
    return "\n".join(rows) or "(none)"


class Proc:
    """A subprocess with stdout/stderr in files, JSON-log helpers and a bounded stop."""

    def __init__(self, args: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None,
                 shell_pid_var: bool = False) -> None:
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        if shell_pid_var:  # WATCHDOG_PID must be the daemon's own pid, as systemd sets it: exec keeps the pid
            args = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *args]
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env=_env(env), cwd=ROOT)
        self.pid = self.proc.pid
        STARTED.append(self)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if name is None or ev.get("event") == name:
                    out.append(ev)
        return out

    def wait_event(self, name: str, timeout: float, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        def found():
            evs = [e for e in self.events(name) if all(e.get(k) == v for k, v in match.items())]
            if self.proc.poll() is not None and len(evs) < count:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before {name}:\n"
                                     f"{self.stderr()[-4000:]}")
            return evs if len(evs) >= count else None

        return wait_for(found, timeout, f"{self.name}: {count}x {name} {match}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._err.close()
        return self.proc.returncode


def children(pid: int) -> list[int]:
    """Direct child pids of `pid` from /proc (no psutil)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def start_server(archive: Path, log_dir: Path, speed: float, loop: bool = True,
                 name: str = "serve") -> tuple[Proc, int]:
    port_file = log_dir / f"{name}.port"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "quakemon.cli.app", "serve", str(archive), "--port", "0", "--port-file",
            str(port_file), "--speed", str(speed)] + (["--loop"] if loop else [])
    proc = Proc(args, log_dir, name)
    port = wait_for(lambda: port_file.exists() and int(port_file.read_text().strip() or 0), 30, "server port file")
    return proc, port


def start_daemon(config: Path, log_dir: Path, name: str, stages: str | None = None,
                 env: dict[str, str] | None = None, watchdog_pid_self: bool = False) -> Proc:
    args = [sys.executable, "-m", "quakemon.cli.app", "run", "--config", str(config)]
    if stages:
        args += ["--stages", stages]
    return Proc(args, log_dir, name, env=env, shell_pid_var=watchdog_pid_self)


# -- sockets --------------------------------------------------------------------------------------------------


class Subscriber:
    """A SUB socket on a thread collecting (monotonic time, topic, body)."""

    def __init__(self, endpoint: str, topic: str = "") -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt_string(zmq.SUBSCRIBE, self.topic)
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    topic, body = sock.recv_multipart()
                    with self.lock:
                        self.messages.append((time.monotonic(), topic.decode(), json.loads(body)))
        finally:
            sock.close(linger=0)
            ctx.term()

    def bodies(self, prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [b for _, t, b in self.messages if t.startswith(prefix)]

    def timed(self, prefix: str = "") -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t0, b) for t0, t, b in self.messages if t.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class NotifySocket:
    """A fake systemd manager: a bound AF_UNIX datagram socket collecting (monotonic time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._walls: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self._walls.append((time.time(), data.decode()))
            self.messages.append((time.monotonic(), data.decode()))

    def walls(self) -> list[tuple[float, str]]:
        """(wall-clock time, message), to compare with the daemon's log timestamps."""
        return list(self._walls)

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if line in m.splitlines()]

    def wait_for(self, line: str, timeout: float = 5.0) -> list[float]:
        """times(line) once it is non-empty, or [] after timeout. The daemon logs an event right after sending its
        datagram; this thread can still be on its way to reading the datagram when the test sees the log line."""
        deadline = time.monotonic() + timeout
        while not (found := self.times(line)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def write_event_network(path: Path, stations: Sequence[str], blocks: Sequence[bool],
                        seed: int) -> tuple[Path, float, float]:
    """A network archive: per station, 30 s blocks of obspy.read()'s earthquake (True) or Gaussian noise (False),
    rolled by k seconds for the k-th station, as 512-byte STEIM2 MiniSEED. Returns (path, start, span_s)."""
    import obspy

    base = obspy.read()
    n, rate = base[0].stats.npts, base[0].stats.sampling_rate
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {tr.stats.channel: [] for tr in base}
    for event in blocks:
        for tr in base:
            parts[tr.stats.channel].append(tr.data.astype(np.float64) if event else rng.normal(0, 20, n))
    out = obspy.Stream()
    for k, station in enumerate(stations):
        for tr in base:
            shifted = tr.copy()
            shifted.data = np.round(np.roll(np.concatenate(parts[tr.stats.channel]), int(k * rate))).astype(np.int32)
            shifted.stats.station = station
            out += shifted
    out.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path, float(base[0].stats.starttime.timestamp), len(blocks) * n / rate


class Collector:
    """A quakemon.client.Subscriber on a thread, collecting every message it delivers."""

    def __init__(self, endpoint: str, position: str, start_timeout_s: float = 120.0) -> None:
        self.sub = ClientSubscriber(endpoint, position, discover_timeout_s=start_timeout_s, catchup_deadline_s=180.0)
        self.messages: list = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                msg = self.sub.get(0.2)
                if msg is not None:
                    self.messages.append(msg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.sub.close()

    def detections(self) -> list[tuple[str, str]]:
        return [(m.body["id"], m.body["state"]) for m in list(self.messages) if m.topic.startswith("detection")]

    def delivered_once(self) -> tuple[list[dict], Counter]:
        """The detection bodies received, and a count per (id, state); asserts the thread saw no error and that no
        (id, state) came twice."""
        assert self.error is None, repr(self.error)
        got = [m.body for m in self.messages if m.topic.startswith("detection")]
        per_id = Counter((b["id"], b["state"]) for b in got)
        assert all(n == 1 for n in per_id.values()), [k for k, n in per_id.items() if n > 1]  # nothing twice
        return got, per_id

    def open_detection(self) -> str | None:
        """The id of a detection seen "new" and not yet "closed" (one message so far), or None."""
        states = Counter(ident for ident, _ in self.detections())
        return next((ident for ident, n in states.items() if n == 1), None)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def daemon_first_pass(tmp_path: Path, archive: Path, checkpoint: Path, cal: Any, model: dict[str, Any],
                      windows: int, speed: float, start_timeout: float = 120.0) -> tuple[list[dict], dict[int, float]]:
    """Run `quakemon run` (trigger thresholds of `cal`, `[model]` keys `model`, a probability archive) on a looping
    `quakemon serve` of `archive` until its first pass (`windows` windows) is decided, stop it cleanly, and return
    the published detection bodies and the archived probability of each window, by window end (ns)."""
    from obspy import UTCDateTime
    from obspy.clients.filesystem.sds import Client

    server, sl_port = start_server(archive, tmp_path, speed=speed)
    port = free_port()
    prob = tmp_path / "prob"
    config = write_config(tmp_path / "q.toml", server_port=sl_port, checkpoint=checkpoint,
                          runtime_dir=tmp_path / "rt", publish_port=port, on=cal.on, off=cal.off,
                          extra={"model": model, "archive": {"probabilities": str(prob),
                                                             "probabilities_flush_s": 0.2}})
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    daemon = start_daemon(config, tmp_path, "daemon")
    try:
        daemon.wait_event("daemon_ready", start_timeout)
        wait_for(lambda: any(b["windows_out"] >= 2 * windows for b in sub.bodies("heartbeat")), 120,
                 "the first pass decided")
        assert daemon.stop(30) == 0, daemon.stderr()[-3000:]
    finally:
        daemon.stop()
        sub.close()
        server.stop()
    traces = Client(str(prob)).get_waveforms("BW", "RJOB", "", "LX1", UTCDateTime(2009, 1, 1),
                                              UTCDateTime(2010, 1, 1))
    archived = {round(t.ns): float(v) for tr in traces for t, v in zip(tr.times("utcdatetime"), tr.data,
                                                                       strict=True)}
    return sub.bodies("detection."), archived
