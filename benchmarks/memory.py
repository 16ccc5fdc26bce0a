"""Resident memory of a live daemon per process and in total, for two source trees in one run (e.g. before/after).

    python benchmarks/memory.py --before /path/to/other/checkout [--stations 100] [--settle 40] [--samples 6]

One `quakemon serve` streams N synthetic three-component 100 Hz stations (XB.Sxxxx..HH?) at 1x real time on
loopback. For each tree ("before": --before, "after": this checkout) a `quakemon run` daemon is started from that
tree (PYTHONPATH), fed by the same server; once windows come out of the pipeline and --settle seconds have passed,
every process of the daemon is sampled --samples times, 2 s apart, from /proc: RSS (VmRSS of /proc/PID/status) and
PSS (/proc/PID/smaps_rollup: shared pages split between the processes that map them; the fairer sum). The median
sample per process is printed with the totals, the per-station figures and the after/before ratios. The windows
the pipeline put out and dropped while sampling show that each daemon kept up.
A script, not a test (no test_ names): it runs for a few minutes and needs both cores mostly idle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from quakemon.base.net import free_port
from quakemon.tools import bench_common as bench
from quakemon.tools.bench_live import _proc_tree, daemon_config

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("supervisor", "ingest", "preprocess", "inference")


@dataclass
class Run:
    """The median RSS and PSS (bytes) per daemon process, and the pipeline's throughput while sampling."""

    tree: str
    rss: dict[str, int] = field(default_factory=dict)
    pss: dict[str, int] = field(default_factory=dict)
    windows_per_s: float = 0.0
    dropped: int = 0
    dropped_by_stage: dict[str, int] = field(default_factory=dict)


def role(pid: int, daemon: int) -> str:
    """"supervisor" for the daemon itself, else the stage name from the stage process's command line."""
    if pid == daemon:
        return "supervisor"
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    module = b"quakemon.service.stage_main"
    return args[args.index(module) + 1].decode() if module in args else Path(args[0].decode()).name


def memory(pid: int) -> tuple[int, int | None]:
    """(RSS, PSS or None where /proc/PID/smaps_rollup is missing) in bytes."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return rss, None
    pss = next((int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:")), None)
    return rss, pss


def heartbeat(sub: zmq.Socket, timeout_s: float) -> dict:
    """The next heartbeat body on the daemon's publish socket, after those already queued (which are old)."""
    while sub.poll(0):
        sub.recv_multipart()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(200):
            topic, body = sub.recv_multipart()[:2]
            if topic == b"heartbeat":
                return json.loads(body)
    raise RuntimeError(f"no heartbeat within {timeout_s} s")


def measure(tree: Path, label: str, server: str, stations: list[str], workdir: Path, settle_s: float,
            samples: int) -> Run:
    """Start a daemon from `tree`, wait for steady state, sample /proc, stop it."""
    publish = f"tcp://127.0.0.1:{free_port()}"
    workdir.mkdir(parents=True)
    config = daemon_config(workdir / "daemon.toml", server=server, stations=stations,
                           checkpoint=bench.bench_checkpoint(), runtime_dir=workdir / "rt", publish=publish,
                           queue_hwm=10 * len(stations))
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    log = (workdir / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "quakemon", "run", "--config", str(config)], env=env,
                              cwd=tree, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(publish)
    run = Run(tree=f"{label}: {tree}")
    try:
        deadline = time.monotonic() + 180
        while int(heartbeat(sub, 180).get("windows_out") or 0) == 0:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"{label}: no windows out of the daemon; see {workdir / 'daemon.log'}")
        time.sleep(settle_s)
        first, t0 = heartbeat(sub, 10), time.monotonic()
        taken: dict[str, list[tuple[int, int | None]]] = {}
        for _ in range(samples):
            for pid in _proc_tree(daemon.pid):
                try:
                    taken.setdefault(role(pid, daemon.pid), []).append(memory(pid))
                except (OSError, ValueError):
                    continue  # a process that just ended
            time.sleep(2.0)
        last, t1 = heartbeat(sub, 10), time.monotonic()
        for name, values in taken.items():
            run.rss[name] = int(statistics.median(v[0] for v in values))
            pss = [v[1] for v in values if v[1] is not None]
            if pss:
                run.pss[name] = int(statistics.median(pss))
        run.windows_per_s = (int(last.get("windows_out") or 0) - int(first.get("windows_out") or 0)) / (t1 - t0)
        run.dropped = int(last.get("dropped") or 0) - int(first.get("dropped") or 0)
        before = first.get("dropped_by_stage") or {}
        run.dropped_by_stage = {stage: int(n or 0) - int(before.get(stage) or 0)
                                for stage, n in (last.get("dropped_by_stage") or {}).items() if n}
    finally:
        sub.close()
        ctx.term()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        log.close()
    return run


def mb(value: int | None) -> str:
    return "      -" if value is None else f"{value / 2**20:7.0f}"


def print_runs(runs: list[Run], stations: int) -> None:
    names = [r for r in ROLES if any(r in run.rss for run in runs)]
    names += sorted({n for run in runs for n in run.rss} - set(names))
    for run in runs:
        print(f"\n{run.tree}\n  {'process':12s} {'RSS MB':>7s} {'PSS MB':>7s}")
        for name in names:
            print(f"  {name:12s} {mb(run.rss.get(name))} {mb(run.pss.get(name))}")
        rss, pss = sum(run.rss.values()), sum(run.pss.values()) or None
        print(f"  {'total':12s} {mb(rss)} {mb(pss)}")
        per = f"{pss / stations / 2**20:.2f}" if pss else "-"
        print(f"  per station: RSS {rss / stations / 2**20:.2f} MB, PSS {per} MB; pipeline {run.windows_per_s:.0f} "
              f"windows/s ({stations} expected), {run.dropped} dropped while sampling {run.dropped_by_stage or ''}")
    if len(runs) == 2:
        before, after = runs
        print("\nafter / before:")
        for name in names:
            for kind, a, b in (("RSS", after.rss, before.rss), ("PSS", after.pss, before.pss)):
                if a.get(name) and b.get(name):
                    print(f"  {name:12s} {kind} {a[name] / b[name]:.2f}")
        for kind, a, b in (("RSS", after.rss, before.rss), ("PSS", after.pss, before.pss)):
            if a and b:
                total_a, total_b = sum(a.values()), sum(b.values())
                print(f"  {'total':12s} {kind} {total_a / total_b:.2f} ({(1 - total_a / total_b) * 100:.0f} % lower)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the other source tree (e.g. a clone of the main branch)")
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--settle", type=float, default=40.0, help="seconds after the first windows out")
    parser.add_argument("--samples", type=int, default=6)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="quakemon-memory-"))
    files = bench.write_synthetic_archive(tmp / "archive", args.stations, 240.0, seed=1, layout="station")
    port_file = tmp / "port"
    server = subprocess.Popen([sys.executable, "-m", "quakemon.tools.serve", *map(str, files), "--port", "0",
                               "--port-file", str(port_file), "--speed", "1", "--loop", "--retime-now",
                               "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        stations = [bench.station_code(i) for i in range(args.stations)]
        trees = ([("before", args.before.resolve())] if args.before else []) + [("after", ROOT)]
        print(f"{args.stations} stations x 3 components at 100 Hz, 1x real time; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; work files in {tmp}")
        runs = [measure(tree, label, address, stations, tmp / label, args.settle, args.samples)
                for label, tree in trees]
        print_runs(runs, args.stations)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
