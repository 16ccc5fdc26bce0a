"""Per-stage CPU of the live daemon at N stations (1x real time, 1 s stride), read from /proc.

Usage: python benchmarks/stage_cpu.py N     (a script, not a test: it starts `quakemon serve` and `quakemon run`)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quakemon.base.net import free_port
from quakemon.tools import bench_common as bench
from quakemon.tools.bench_live import daemon_config

WARMUP_S = 45.0
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


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="stagecpu-"))
    files = bench.write_synthetic_archive(tmp / "arch", n, 240.0, seed=1, layout="station")
    port_file = tmp / "port"
    server = subprocess.Popen([sys.executable, "-m", "quakemon.tools.serve", *map(str, files), "--port", "0",
                               "--port-file", str(port_file), "--speed", "1", "--loop", "--retime-now"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    config = daemon_config(tmp / "d.toml", server=f"127.0.0.1:{int(port_file.read_text())}",
                           stations=[bench.station_code(i) for i in range(n)], checkpoint=bench.bench_checkpoint(),
                           runtime_dir=tmp / "rt", publish=f"tcp://127.0.0.1:{free_port()}", queue_hwm=10 * n)
    daemon = subprocess.Popen([sys.executable, "-m", "quakemon", "run", "--config", str(config)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(WARMUP_S)
        names = {pid: Path(f"/proc/{pid}/cmdline").read_text().split("\0")[3] for pid in children(daemon.pid)}
        names[daemon.pid], names[server.pid] = "supervisor", "serve"
        before = {pid: cpu_seconds(pid) for pid in names}
        start = time.monotonic()
        time.sleep(MEASURE_S)
        after = {pid: cpu_seconds(pid) for pid in names}
        elapsed = time.monotonic() - start
        for pid, name in names.items():
            print(f"{n} stations, {name}: {(after[pid] - before[pid]) / elapsed:.2f} cores")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main(int(sys.argv[1]))
