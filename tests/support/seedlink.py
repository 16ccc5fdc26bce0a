"""Shared helpers for the SeedLink server/source tests: archives, server processes, collecting Traces, a worker.

Run as a script (`python tests/support/seedlink.py worker ...`) it is the ingest process of the SIGKILL test:
it runs a SeedLinkSource and appends one line per Trace to a file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quakemon.tools.serve_records import Record, pack_records, parse_record, sort_records  # noqa: E402


def example_stream(net: str = "BW", sta: str = "RJOB"):
    """ObsPy's bundled 3-component example (30 s at 100 Hz) renamed to NET.STA, as int32 data."""
    import numpy as np
    import obspy

    st = obspy.read()
    for tr in st:
        tr.stats.network, tr.stats.station = net, sta
        tr.data = np.round(tr.data).astype(np.int32)
    return st


def make_records(stations: Sequence[tuple[str, str]] = (("BW", "RJOB"),), encoding: str | None = None) -> list[Record]:
    """512-byte records of the example data for each (net, sta), sorted like the server's archive."""
    out: list[Record] = []
    for net, sta in stations:
        st = example_stream(net, sta)
        if encoding:
            for tr in st:
                tr.stats.mseed = {"encoding": encoding}
        out.extend(parse_record(r) for r in pack_records(st))
    return sort_records(out)


def write_archive(path: Path, stations: Sequence[tuple[str, str]] = (("BW", "RJOB"),)) -> Path:
    """Write the example data for `stations` as one MiniSEED file (4096-byte records: the server re-packs)."""
    import obspy

    st = obspy.Stream()
    for net, sta in stations:
        st += example_stream(net, sta)
    st.write(str(path), format="MSEED", reclen=4096)
    return path


def rid(tr) -> tuple[str, int]:
    """Identity of a record: SEED id and start time in ns."""
    return tr.id, int(tr.stats.starttime.ns)


def record_ids(records: Sequence[Record], keep: Callable[[Record], bool] = lambda r: True) -> list[tuple[str, int]]:
    return [(r.seed_id, round(r.start * 10_000) * 100_000) for r in records if keep(r)]


def collect(source, until: Callable[[list], bool], timeout: float) -> list:
    """Run source.traces() until `until(traces)` or `timeout` seconds; always returns."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    got: list = []
    try:
        for tr in source.traces(stop):
            got.append(tr)
            if until(got):
                break
    finally:
        timer.cancel()
    return got


@contextlib.contextmanager
def server_process(paths: Sequence[Path], port: int, *args: str) -> Iterator[subprocess.Popen]:
    """`python -m quakemon.tools.serve` on `port`; waits until it listens; killed on exit."""
    port_file = Path(paths[0]).with_suffix(f".port{port}")
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "quakemon.tools.serve", *map(str, paths), "--port", str(port),
           "--port-file", str(port_file), "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def worker(server: str, stream: str, state: str, out: str, last_id: str) -> int:
    """Ingest process for the SIGKILL test: one line `seq id start_ns` per Trace; exit after `last_id`."""
    from quakemon.ingest.seedlink import SeedLinkSource

    src = SeedLinkSource(server, [stream], state, netto=5, backoff_initial=0.1, backoff_max=0.5,
                         state_interval=0.2)
    stop = threading.Event()
    with open(out, "a", buffering=1) as fh:
        for tr in src.traces(stop):
            line = f"{tr.id} {tr.stats.starttime.ns}"
            fh.write(line + "\n")
            fh.flush()
            if line == last_id:
                break
    src.close()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    sys.exit(worker(*sys.argv[2:7]))
