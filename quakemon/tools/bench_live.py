"""`quakemon bench` part (c): live capacity, N stations through `quakemon serve` into a real `quakemon run`.

See `quakemon.tools.bench` for what is measured and how; this module owns the daemon and server subprocesses
and reads their CPU and memory from /proc.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.base.net import free_port
from quakemon.tools.bench_common import (
    NETWORK,
    BenchPlan,
    spread_checkpoint,
    write_noise_archive,
    write_synthetic_archive,
)

log = structlog.get_logger(__name__)


#: the bench's trigger (on, off, min_duration): every window that crosses p = 0.5 publishes (latency samples)
BENCH_TRIGGER = (0.5, 0.5, 0.0)


def daemon_config(path: Path, *, server: str, stations: Sequence[str], checkpoint: Path, runtime_dir: Path,
                  publish: str, stride_s: float = 1.0, batch_size: int = 64, queue_hwm: int | None = None,
                  screen_every: int | None = None, screen_net: str | Path | None = None,
                  trigger: tuple[float, float, float] | None = BENCH_TRIGGER) -> Path:
    """A `quakemon run` config for the bench: no resume state, triggers at `trigger` (on, off, min_duration;
    None: the daemon's defaults, what an operator runs). screen_every: `[model] screen_every` (None: the
    daemon's default); screen_net: `[model] screen_net` (the cascade; sets screen_every = 1)."""
    streams = [f"{NETWORK}.{s}..HH?" for s in stations]
    hwm = f"queue_hwm = {int(queue_hwm)}\n" if queue_hwm else ""
    if screen_net is not None:
        screen_every = 1
    screen = "" if screen_every is None else f"screen_every = {int(screen_every)}\n"
    if screen_net is not None:
        screen += f"screen_net = {json.dumps(str(screen_net))}\n"
    triggers = "" if trigger is None else (f"[trigger]\non = {float(trigger[0])}\noff = {float(trigger[1])}\n"
                                           f"min_duration = {float(trigger[2])}\n\n")
    path.write_text(
        "[seedlink]\n"
        f'server = "{server}"\nstreams = {json.dumps(streams)}\nstate_file = ""\nnetto = 10.0\n'
        "reconnect_backoff_max = 2.0\n\n"
        f'[model]\ncheckpoint = "{checkpoint}"\nbatch_size = {int(batch_size)}\n{screen}\n'
        f"[window]\nstride_s = {float(stride_s)}\n\n"
        f"{triggers}"
        f'[pipeline]\nruntime_dir = "{runtime_dir}"\n{hwm}\n'
        f'[publish]\nendpoint = "{publish}"\nsndhwm = 100000\n\n'
        '[logging]\nlevel = "warning"\nformat = "json"\n'
    )
    return path


def _proc_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their users), else RSS; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def proc_usage(root: int) -> tuple[float, int]:
    """(CPU seconds user+system, memory bytes as PSS) summed over `root` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, mem = 0.0, 0
    for pid in _proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick
        mem += _pss_bytes(pid)
    return cpu, mem


def stage_cpu_seconds(daemon: int) -> dict[str, float]:
    """CPU seconds (user + system) of the daemon's processes by stage kind (`supervisor` for the daemon itself;
    several processes of one kind are summed), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in _proc_tree(daemon):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        kind = argv[argv.index("quakemon.service.stage_main") + 1] if "quakemon.service.stage_main" in argv[:-1] \
            else ("supervisor" if pid == daemon else "other")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


@dataclass
class LiveStep:
    """Everything measured for one N."""

    stations: int
    speed: float
    queue_hwm: int | None = None
    ok: bool = False
    reason: str = ""
    measure_s: float = 0.0
    windows_per_s: float = 0.0
    expected_windows_per_s: float = 0.0
    dropped: int = 0
    lag_growth_s: float | None = None
    latency_n: int = 0
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_max_s: float | None = None
    # the heartbeat's lag_s (the processing lag: a window's arrival at ingest to its inference, the oldest
    # window of the newest batch, or the longest wait in the queue): measured without detections too
    processing_lag_p50_s: float | None = None
    processing_lag_p99_s: float | None = None
    hop_p50_s: float | None = None
    hop_p99_s: float | None = None
    cpu_cores: float = 0.0
    cpu_per_station: float = 0.0
    cpu_ms_per_window: float | None = None  # daemon CPU time per window inferred: barely moved by other load
    mem_mb: float = 0.0
    mem_mb_per_station: float = 0.0
    startup_s: float = 0.0
    server_cpu_cores: float = 0.0  # the `quakemon serve` process (not part of the daemon's figures)
    server_cpu_ms_per_window: float | None = None
    # the daemon's CPU by stage kind (supervisor, ingest, preprocess, inference): cores and ms per window out
    stage_cpu_cores: dict[str, float] = field(default_factory=dict)
    stage_cpu_ms_per_window: dict[str, float] = field(default_factory=dict)
    # with a screen: windows through the model / decided by the screen alone over the interval (heartbeat)
    forwarded: int | None = None
    screened_out: int | None = None
    forwarded_share: float | None = None
    daemon_exit: int | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""  # the end of the daemon's and server's output when the step failed


def _parse_iso(text: str) -> float:
    from quakemon.wire.schema import parse_iso_utc

    return parse_iso_utc(text)


def live_step(files: Sequence[Path], checkpoint: Path, workdir: Path, *, speed: float = 1.0, stride_s: float = 1.0,
              measure_s: float = 30.0, batch_size: int = 64, timeout_s: float = 120.0,
              lag_growth_limit_s: float = 2.0, latency_p99_limit_s: float | None = 1.0,
              env: dict[str, str] | None = None,
              queue_hwm: int | None = None, screen_every: int | None = None, screen_net: str | Path | None = None,
              trigger: tuple[float, float, float] | None = BENCH_TRIGGER, warmup_s: float = 3.0) -> LiveStep:
    """Start a daemon for the stations of `files`; once it is ready, serve them in real time (x speed) from a
    fresh `quakemon serve --retime-now` (so data time = wall time and the heartbeat lag is meaningful), and
    measure a steady interval that starts `warmup_s` after the first windows. screen_net, trigger: as
    `daemon_config`."""
    import zmq

    stations = sorted({p.name.split(".")[1] for p in files})
    step = LiveStep(stations=len(stations), speed=speed, expected_windows_per_s=len(stations) * speed / stride_s,
                    queue_hwm=queue_hwm)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    publish = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(workdir / "bench.toml", server=f"127.0.0.1:{port}", stations=stations,
                           checkpoint=checkpoint, runtime_dir=workdir, publish=publish, stride_s=stride_s,
                           batch_size=batch_size, queue_hwm=queue_hwm, screen_every=screen_every,
                           screen_net=screen_net, trigger=trigger)
    logs = open(workdir / "processes.log", "wb")  # noqa: SIM115 - closed in finally
    server: subprocess.Popen | None = None
    daemon = subprocess.Popen([sys.executable, "-m", "quakemon", "run", "--config", str(config)],
                              stdout=logs, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})})
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publish)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    latencies: list[float] = []
    hops: list[float] = []
    lags: list[float] = []
    beats = 0
    measuring: tuple[float, dict[str, Any], tuple[float, int]] | None = None
    server_cpu = 0.0
    stages_before: dict[str, float] = {}
    warm_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for name, proc in (("daemon", daemon), ("SeedLink server", server)):
                if proc is not None and proc.poll() is not None:
                    step.reason = f"{name} exited with code {proc.returncode}; see {workdir}/processes.log"
            if step.reason:
                break
            if not sub.poll(200):
                continue
            topic, raw = sub.recv_multipart()[:2]
            now = time.time()
            body = json.loads(raw)
            if topic.startswith(b"detection."):
                lat = body.get("latency_s")
                if measuring is not None and isinstance(lat, int | float):
                    latencies.append(float(lat))
                continue
            if topic != b"heartbeat":
                continue
            beats += 1
            if server is None:  # the daemon is up: start streaming now
                step.startup_s = time.monotonic() - t0
                server = subprocess.Popen(
                    [sys.executable, "-m", "quakemon.tools.serve", *map(str, files), "--port", str(port),
                     "--speed", str(speed), "--loop", "--retime-now", "--log-level", "warning"],
                    stdout=logs, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
            if measuring is not None:
                hops.append(now - _parse_iso(body["time"]))
                if isinstance(body.get("lag_s"), int | float):
                    lags.append(float(body["lag_s"]))
            if warm_until is None and int(body.get("windows_out") or 0) > 0:
                warm_until = time.monotonic() + warmup_s  # let the first burst of windows settle
            elif warm_until is not None and measuring is None and time.monotonic() >= warm_until:
                measuring = (time.monotonic(), body, proc_usage(daemon.pid))
                server_cpu = proc_usage(server.pid)[0]
                stages_before = stage_cpu_seconds(daemon.pid)
                deadline = time.monotonic() + measure_s + 10.0  # room for the closing heartbeat
            elif measuring is not None and time.monotonic() - measuring[0] >= measure_s:
                _finish_step(step, measuring, (time.monotonic(), body, proc_usage(daemon.pid)), latencies, hops,
                             lag_growth_limit_s, latency_p99_limit_s)
                step.processing_lag_p50_s, step.processing_lag_p99_s = percentile(lags, 50), percentile(lags, 99)
                step.server_cpu_cores = (proc_usage(server.pid)[0] - server_cpu) / step.measure_s
                _stage_figures(step, stages_before, stage_cpu_seconds(daemon.pid))
                if step.server_cpu_cores > 0.85:
                    step.reason += f"; SeedLink server busy ({step.server_cpu_cores:.2f} cores): it may be the limit"
                break
        else:
            step.reason = ("no steady interval measured before the timeout ("
                           + (f"daemon ready after {step.startup_s:.0f} s" if beats else "no heartbeat") + ")")
    finally:
        sub.close(linger=0)
        ctx.term()
        for proc in (daemon, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (daemon, server):
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        step.daemon_exit = daemon.returncode
        logs.close()
        if not step.ok:
            step.log_tail = (workdir / "processes.log").read_text(errors="replace")[-2000:]
    return step


def _stage_figures(step: LiveStep, before: dict[str, float], after: dict[str, float]) -> None:
    """Per-stage cores and CPU ms per window, and the server's, over the step's interval."""
    dt, rate = step.measure_s, step.windows_per_s
    step.stage_cpu_cores = {k: (after[k] - before.get(k, 0.0)) / dt for k in after if dt > 0}
    if rate > 0:
        step.stage_cpu_ms_per_window = {k: 1000 * v / rate for k, v in step.stage_cpu_cores.items()}
        step.server_cpu_ms_per_window = 1000 * step.server_cpu_cores / rate


def _finish_step(step: LiveStep, first: tuple[float, dict[str, Any], tuple[float, int]],
                 last: tuple[float, dict[str, Any], tuple[float, int]], latencies: list[float], hops: list[float],
                 lag_growth_limit_s: float, latency_p99_limit_s: float | None = None) -> None:
    (t_a, hb_a, (cpu_a, _)), (t_b, hb_b, (cpu_b, mem_b)) = first, last
    dt = t_b - t_a
    step.measure_s = dt
    step.windows_per_s = (int(hb_b.get("windows_out") or 0) - int(hb_a.get("windows_out") or 0)) / dt
    step.dropped = int(hb_b.get("dropped") or 0) - int(hb_a.get("dropped") or 0)
    # data_age_s (host time minus the newest data, worst station) is what lag_s was before lag_s became the
    # processing lag; with retimed data it is how far ingest is behind the stream
    lag_a, lag_b = (hb.get("data_age_s", hb.get("lag_s")) for hb in (hb_a, hb_b))
    step.lag_growth_s = None if lag_a is None or lag_b is None else float(lag_b) - float(lag_a)
    step.latency_n = len(latencies)
    step.latency_p50_s, step.latency_p99_s = percentile(latencies, 50), percentile(latencies, 99)
    step.latency_max_s = max(latencies) if latencies else None
    step.hop_p50_s, step.hop_p99_s = percentile(hops, 50), percentile(hops, 99)
    step.cpu_cores = (cpu_b - cpu_a) / dt
    step.cpu_per_station = step.cpu_cores / max(1, step.stations)
    step.cpu_ms_per_window = 1000 * step.cpu_cores / step.windows_per_s if step.windows_per_s > 0 else None
    step.mem_mb = mem_b / 2**20
    step.mem_mb_per_station = step.mem_mb / max(1, step.stations)
    inf_a, inf_b = hb_a.get("inference") or {}, hb_b.get("inference") or {}
    if "forwarded" in inf_b:
        step.forwarded = int(inf_b["forwarded"]) - int(inf_a.get("forwarded") or 0)
        step.screened_out = int(inf_b.get("screened_out") or 0) - int(inf_a.get("screened_out") or 0)
        decided = step.forwarded + step.screened_out
        step.forwarded_share = step.forwarded / decided if decided else None
    step.heartbeat = {k: hb_b.get(k) for k in ("stations", "windows_in", "windows_out", "dropped", "dropped_by_stage",
                                               "queue_depths", "lag_s", "data_age_s", "data_lag_s", "device",
                                               "precision", "inference")}
    problems = []
    if step.windows_per_s < 0.9 * step.expected_windows_per_s:
        problems.append(f"{step.windows_per_s:.0f} windows/s < 90 % of {step.expected_windows_per_s:.0f}")
    if step.dropped:
        problems.append(f"{step.dropped} windows dropped")
    if step.lag_growth_s is None or step.lag_growth_s > lag_growth_limit_s:
        problems.append(f"ingest lag grew by {step.lag_growth_s} s")
    if latency_p99_limit_s is not None and step.latency_p99_s is not None and step.latency_p99_s > latency_p99_limit_s:
        problems.append(f"p99 latency {step.latency_p99_s:.2f} s > {latency_p99_limit_s:g} s")
    step.ok = not problems
    step.reason = "; ".join(problems) or "kept up"


def bench_live(archive_dir: Path, checkpoint: Path, plan: BenchPlan, workdir: Path,
               progress: Callable[[str], None] = lambda s: None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Grow N over plan.live_stations until a step does not keep up; the largest N that did is the capacity.

    Without plan.live_screen_net the model is `checkpoint` with the spread head and the bench's trigger (every
    station busy). With it, the cascade as an operator runs it: `checkpoint` itself (the detector the screen was
    distilled from; checked here), the screen, and the daemon's default trigger settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    steps: list[LiveStep] = []
    files: list[Path] = []
    live_ckpt: Path | None = None
    cascade = plan.live_screen_net is not None
    if cascade:
        check_screen(plan.live_screen_net, checkpoint)
        live_ckpt = checkpoint
    for n in plan.live_stations:
        if len(files) < n:  # the archive grows with N, so a run that stops early does not write it all
            files += live_archive(archive_dir, plan, n - len(files), first=len(files))
        if live_ckpt is None:
            live_ckpt = spread_checkpoint(checkpoint, workdir / "live.safetensors", files[: min(4, len(files))])
        hwm = None if plan.live_queue_s is None else max(100, math.ceil(plan.live_queue_s * n * plan.live_speed
                                                                          / plan.stride_s))
        progress(f"live: {n} stations at {plan.live_speed:g}x real time, queue_hwm {hwm or 'default'}")
        step = live_step(files[:n], live_ckpt, workdir / f"n{n}", speed=plan.live_speed, stride_s=plan.stride_s,
                         measure_s=plan.live_measure_s, batch_size=plan.live_batch, timeout_s=plan.live_timeout_s,
                         lag_growth_limit_s=plan.lag_growth_limit_s,
                         latency_p99_limit_s=plan.latency_p99_limit_s, env=env, queue_hwm=hwm,
                         screen_every=None if cascade else plan.live_screen_every,
                         screen_net=plan.live_screen_net, trigger=None if cascade else BENCH_TRIGGER,
                         warmup_s=plan.live_warmup_s)
        steps.append(step)
        progress(f"live: {n} stations: {step.reason}")
        if not step.ok:
            break
    marginal = [
        {"from": a.stations, "to": b.stations,
         "cpu_cores_per_station": (b.cpu_cores - a.cpu_cores) / (b.stations - a.stations),
         "mem_mb_per_station": (b.mem_mb - a.mem_mb) / (b.stations - a.stations)}
        for a, b in zip(steps, steps[1:], strict=False) if a.ok and b.measure_s > 0 and b.stations > a.stations
    ]
    sustained = [s for s in steps if s.ok]
    best = max(sustained, key=lambda s: s.stations) if sustained else None
    return {
        "speed": plan.live_speed, "stride_s": plan.stride_s, "batch_size": plan.live_batch, "env": env or {},
        "queue_s": plan.live_queue_s, "screen_every": None if cascade else plan.live_screen_every,
        "screen_net": plan.live_screen_net, "data": plan.live_data, "checkpoint": str(live_ckpt),
        "event_every_s": plan.live_event_every_s if plan.live_data == "synthetic" else None,
        "max_stations_sustained": best.stations if best else 0,
        "latency_p99_at_max_s": best.latency_p99_s if best else None,
        "steps": [asdict(s) for s in steps],
        "marginal": marginal,
    }


LIVE_DATA = ("synthetic", "uv10", "uv10-z")


def live_archive(directory: Path, plan: BenchPlan, n: int, first: int = 0) -> list[Path]:
    """Stations first .. first + n - 1 of the live archive (plan.live_data): "synthetic" (synthetic noise),
    "uv10" (real noise, three components cut from the msnoise UV10 day: `write_noise_archive`), "uv10-z" (the
    same stations, HHZ only: a vertical-only station); each with one synthetic local event per station per
    plan.live_event_every_s (None: none, for the real noise only)."""
    if plan.live_data == "synthetic":
        if plan.live_event_every_s is None:
            raise ValueError("synthetic live data needs live_event_every_s")
        return write_synthetic_archive(directory, n, plan.live_archive_s, seed=1, first=first, layout="station",
                                       event_every_s=plan.live_event_every_s)
    if plan.live_data not in LIVE_DATA:
        raise ValueError(f"live data {plan.live_data!r}: choose from {', '.join(LIVE_DATA)}")
    files = write_noise_archive(directory, n, plan.live_archive_s, day="UV10", first=first,
                                event_every_s=plan.live_event_every_s)
    if plan.live_data == "uv10-z":
        from obspy import read

        for path in files:
            read(str(path)).select(channel="HHZ").write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return files


def check_screen(screen_net: str | Path, checkpoint: Path) -> None:
    """Raise ValueError unless `screen_net` is a screen distilled from `checkpoint` for its input contract (the
    daemon would refuse it at start)."""
    from quakemon.base.errors import QuakemonError
    from quakemon.models.checkpoint import file_sha256, read_metadata
    from quakemon.models.contract import InputContract
    from quakemon.models.screen_meta import read_screen_meta

    try:
        contract = InputContract.from_dict(read_metadata(checkpoint)["contract"])
        read_screen_meta(str(screen_net), file_sha256(checkpoint), contract)
    except (QuakemonError, KeyError, OSError, ValueError) as exc:
        raise ValueError(f"live screen net {screen_net}: not a screen for {checkpoint}: {exc}") from None
