"""Shared helpers for the SeedLink server/source tests: archives, server processes, collecting Traces, a worker.

Run as a script (`python tests/support/seedlink.py worker ...`) it is the ingest process of the SIGKILL test:
it runs a SeedLinkSource and appends one line per Trace (id, start, hash of the samples) to a file.
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


def wait_for_lines(proc: subprocess.Popen, out: Path, want: Sequence[str], timeout: float) -> None:
    """Until the worker's output file holds every line of `want` or `timeout` passes (what is missing then is
    lost, for the caller to assert on); fails at once if the worker dies."""
    deadline = time.monotonic() + timeout
    while not set(want) <= set(out.read_text().splitlines() if out.exists() else []):
        assert proc.poll() is None, "worker died"
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def record_line(tr) -> str:
    """`id start_ns crc32` of a decoded record: its identity and a hash of its samples."""
    import zlib

    return f"{tr.id} {tr.stats.starttime.ns} {zlib.crc32(tr.data.astype('<i4').tobytes()):08x}"


def worker(server: str, streams: str, state: str, out: str, last_id: str, batch: str = "0",
           seen: str = "") -> int:
    """Ingest process for the SIGKILL tests: one line `id start_ns crc32` per processed Trace (`record_line`).

    streams: comma-separated stream selectors. Exits after the record whose `id start_ns` is `last_id`, or runs
    until killed when `last_id` is "-". batch: 0 processes each Trace as it comes; n > 0 holds each station's
    Traces until it has 1, 2, .. n of them (by the station's place in `streams`, cycling), like a consumer that
    needs several records of a station before it can process them; then writes and commits them. So stations
    are processed unevenly: at any moment some lag behind others. seen: when given, a file that gets the same
    line for each Trace as it arrives, before it is held (so a test can kill the worker while it holds one).
    """
    from quakemon.ingest.seedlink import SeedLinkSource

    hold = int(batch)
    src = SeedLinkSource(server, streams.split(","), state, netto=5, backoff_initial=0.1, backoff_max=0.5,
                         state_interval=0.2, auto_commit=not hold)
    sizes = {f"{s.split('.')[0]}.{s.split('.')[1]}": i % max(hold, 1) + 1 for i, s in enumerate(streams.split(","))}
    held: dict[str, list] = {}
    stop = threading.Event()
    with open(out, "a", buffering=1) as fh, open(seen or os.devnull, "a", buffering=1) as arrived:
        for tr in src.traces(stop):
            arrived.write(record_line(tr) + "\n")
            station = f"{tr.stats.network}.{tr.stats.station}"
            ready = held.setdefault(station, [])
            ready.append(tr)
            if hold and len(ready) < sizes[station]:
                continue
            for t in ready:
                fh.write(record_line(t) + "\n")
            fh.flush()
            for t in ready:
                if hold:
                    src.commit(t)
            ready.clear()
            if record_line(tr).rsplit(" ", 1)[0] == last_id:
                break
    src.close()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    sys.exit(worker(*sys.argv[2:9]))
