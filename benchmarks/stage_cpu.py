"""Per-stage CPU of the live daemon at N stations (1x real time, 1 s stride), read from /proc.

Usage: python benchmarks/stage_cpu.py N [--measure S] [--profile DIR] [--screen-net PATH] [--data D]
[--event-every S] (a script, not a test: it starts `quakemon serve` and `quakemon run`).

With --screen-net the daemon runs the cascade as `quakemon bench --live-screen-net` does (the bundled detector, the
screen, the default trigger settings); --data and --event-every choose the stations' data as `--live-data` and
`--live-event-every` do (default: synthetic, one event a minute, the bench's trigger).

For each process it prints the cores it used and its CPU milliseconds per window inferred (process CPU time over
the windows the heartbeats count out in the same interval). CPU per window hardly moves with other load on the
machine, unlike windows/s, so it is the figure to compare changes by on a shared host. --profile DIR also
records each stage process with py-spy during the interval (DIR/<stage>.txt, collapsed stacks, one line per
stack with its sample count: `sort -t' ' -k2 -nr` or a flame-graph tool reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from quakemon.base.net import free_port
from quakemon.tools import bench_common as bench
from quakemon.tools.bench_live import BENCH_TRIGGER, LIVE_DATA, daemon_config, live_archive

STARTUP_TIMEOUT_S = 600.0  # until the first windows come out (a loaded host takes minutes to import torch)
SETTLE_S = 20.0  # then the first burst of windows settles
MEASURE_S = 20.0


def children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/*/stat."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def windows_out(sub: zmq.Socket, timeout_s: float = 30.0, at_least: int = 0) -> int:
    """windows_out of the next heartbeat on `sub` that counts at least `at_least` (those queued before are old)."""
    while sub.poll(0):
        sub.recv_multipart()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(200):
            topic, body = sub.recv_multipart()[:2]
            count = int(json.loads(body).get("windows_out") or 0) if topic == b"heartbeat" else -1
            if count >= at_least:
                return count
    raise SystemExit(f"no heartbeat with windows_out >= {at_least} from the daemon in {timeout_s:.0f} s")


def profile(names: dict[int, str], seconds: float, out: Path) -> list[subprocess.Popen]:
    """py-spy recorders, one per stage process, for `seconds`."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH")
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                              "--format", "raw", "--threads", "--nonblocking", "-o", str(out / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid, name in names.items() if name not in ("supervisor", "serve")]


def main(n: int, measure_s: float = MEASURE_S, profile_dir: Path | None = None, screen_net: str | None = None,
         data: str = "synthetic", event_every_s: float | None = 60.0) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="stagecpu-"))
    plan = bench.BenchPlan(live_data=data, live_event_every_s=event_every_s, live_archive_s=240.0)
    files = live_archive(tmp / "arch", plan, n)
    port_file = tmp / "port"
    server = subprocess.Popen([sys.executable, "-m", "quakemon.tools.serve", *map(str, files), "--port", "0",
                               "--port-file", str(port_file), "--speed", "1", "--loop", "--retime-now"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    publish = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(tmp / "d.toml", server=f"127.0.0.1:{int(port_file.read_text())}",
                           stations=[bench.station_code(i) for i in range(n)], checkpoint=bench.bench_checkpoint(),
                           runtime_dir=tmp / "rt", publish=publish, queue_hwm=10 * n, screen_net=screen_net,
                           trigger=None if screen_net else BENCH_TRIGGER)
    daemon = subprocess.Popen([sys.executable, "-m", "quakemon", "run", "--config", str(config)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sub.connect(publish)
    try:
        windows_out(sub, STARTUP_TIMEOUT_S, at_least=1)
        time.sleep(SETTLE_S)
        names = {pid: Path(f"/proc/{pid}/cmdline").read_text().split("\0")[3] for pid in children(daemon.pid)}
        names[daemon.pid], names[server.pid] = "supervisor", "serve"
        spies = profile(names, measure_s, profile_dir) if profile_dir is not None else []
        before, windows_before = {pid: cpu_seconds(pid) for pid in names}, windows_out(sub)
        start = time.monotonic()
        time.sleep(measure_s)
        after, windows_after = {pid: cpu_seconds(pid) for pid in names}, windows_out(sub)
        elapsed = time.monotonic() - start
        windows = max(1, windows_after - windows_before)
        print(f"{n} stations: {windows / elapsed:.0f} windows/s inferred (expected {n})")
        for pid, name in names.items():
            used = after[pid] - before[pid]
            print(f"{n} stations, {name}: {used / elapsed:.2f} cores, {1000 * used / windows:.3f} CPU ms/window")
        total = sum(after[p] - before[p] for p, name in names.items() if name != "serve")
        print(f"{n} stations, daemon total: {total / elapsed:.2f} cores, {1000 * total / windows:.3f} CPU ms/window")
        for spy in spies:
            spy.wait(measure_s + 60)
    finally:
        sub.close()
        ctx.term()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stations", type=int)
    parser.add_argument("--measure", type=float, default=MEASURE_S, help="seconds measured after the warm-up")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy each stage process into this directory")
    parser.add_argument("--screen-net", default=None, help="run the cascade with this screen net")
    parser.add_argument("--data", default="synthetic", choices=LIVE_DATA)
    parser.add_argument("--event-every", type=float, default=60.0, help="seconds; 0: no events (real noise only)")
    args = parser.parse_args()
    main(args.stations, args.measure, args.profile, args.screen_net, args.data, args.event_every or None)
