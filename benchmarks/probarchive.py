"""What the probability archive costs the thread that infers, and a replay with and without it.

    python benchmarks/probarchive.py [--stations 100] [--windows 3600] [--replay-stations 20] [--pairs 3]

1. Writer: `--stations` stations x `--windows` windows (an hour at the default 1 s stride) of random
   two-class probabilities, fed in batches of 256 windows as the inference stage feeds them. Reports the time
   `ProbabilityArchive.add` takes on the caller's thread per 1,000 windows (the encoding and the writes run on
   the writer thread; the queue bound is lifted here, as the whole hour arrives at once) and the writer's
   throughput: samples (windows x classes) on disk per second.
2. Replay: `quakemon.pipeline.runner.replay` of `--replay-stations` copies of ObsPy's BW.RJOB example (300 s
   each) with the bundled model on the CPU, without and with `probabilities=`, in alternating pairs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import obspy
import structlog

from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
from quakemon.pipeline import probarchive
from quakemon.pipeline.detect import WindowMeta
from quakemon.pipeline.probarchive import ProbabilityArchive
from quakemon.pipeline.runner import replay

NS = 1_000_000_000
T0 = 1_772_323_200 * NS  # 2026-03-01T00:00:00Z


def writer(stations: int, windows: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rows = [(f"XX.S{i:03d}.", T0 + k * NS) for k in range(windows) for i in range(stations)]
    probarchive.MAX_PENDING = 1 << 30
    with tempfile.TemporaryDirectory() as tmp:
        arc = ProbabilityArchive(tmp, ["noise", "earthquake"], 1.0)
        caller = 0.0
        start = time.perf_counter()
        for lo in range(0, len(rows), 256):
            metas = [WindowMeta(s, t - 20 * NS, t) for s, t in rows[lo : lo + 256]]
            p = rng.random(len(metas), dtype=np.float32)
            t = time.perf_counter()
            arc.add(metas, np.stack([1 - p, p], axis=1))
            caller += time.perf_counter() - t
        arc.close()
        total = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.D.*"))
    n = len(rows)
    return {"windows": n, "caller_ms_per_1000": 1e3 * caller / n * 1000, "samples_per_s": 2 * n / total,
            "bytes_per_channel_day": size / (2 * stations) * 86_400 / windows}


def replay_pair(paths: list[str], ckpt, tmp: Path) -> tuple[float, float]:
    out = []
    for probabilities in (None, str(tmp / f"p{time.monotonic_ns()}")):
        t = time.perf_counter()
        res = replay(paths, ckpt, device="cpu", precision="fp32", progress=False, probabilities=probabilities)
        out.append(res.windows / (time.perf_counter() - t))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stations", type=int, default=100)
    ap.add_argument("--windows", type=int, default=3600)
    ap.add_argument("--replay-stations", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print("writer:", {k: round(v, 3) for k, v in writer(args.stations, args.windows).items()})
    ckpt = load_checkpoint(resolve_checkpoint(None))
    with tempfile.TemporaryDirectory() as tmp:
        base = obspy.read()
        paths = []
        for i in range(args.replay_stations):
            st = obspy.Stream()
            for k in range(10):  # 10 x 30 s
                block = base.copy()
                for tr in block:
                    tr.stats.station, tr.stats.starttime = f"S{i:03d}", tr.stats.starttime + 30 * k
                    tr.data = np.round(tr.data).astype(np.int32)
                st += block
            st.merge()
            paths.append(str(Path(tmp) / f"s{i}.mseed"))
            st.write(paths[-1], format="MSEED", reclen=512, encoding="STEIM2")
        for _ in range(args.pairs):
            without, with_ = replay_pair(paths, ckpt, Path(tmp))
            print(f"replay windows/s: without {without:.0f}, with --probabilities {with_:.0f}")


if __name__ == "__main__":
    main()
