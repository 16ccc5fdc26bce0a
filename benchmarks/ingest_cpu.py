"""CPU per record of the live ingest stage's Python work, each part on its own, in this process.

Usage: python benchmarks/ingest_cpu.py [--stations N] [--repeats R]

Parts: decoding one 512-byte Steim-2 record (`quakemon.ingest.validate.decode_record`, what the SeedLink reader
runs per record), matching its id (`SelectorSet.matches`, twice per record live), and windowing (N stations'
3 components in 4 s records through `StationWindower.add_samples`). Each figure is the least process CPU time
over R rounds, so other load on the machine barely moves it; compare figures from the same machine.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Callable

import numpy as np
import obspy
import structlog

from quakemon.ingest.base import Samples
from quakemon.ingest.selectors import SelectorSet
from quakemon.ingest.validate import decode_record
from quakemon.models.contract import InputContract
from quakemon.pipeline.windowing import StationWindower

T0_NS = 1_800_000_000 * 10**9


def least_cpu_us(fn: Callable[[], int], repeats: int) -> float:
    """The least process CPU time of fn() over `repeats` rounds, in us per item (fn returns its item count)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        items = fn()
        best = min(best, (time.process_time() - start) / items)
    return 1e6 * best


def records() -> list[bytes]:
    rng = np.random.default_rng(0)
    trace = obspy.Trace(rng.integers(-1000, 1000, 20_000).astype(np.int32),
                        {"network": "XB", "station": "S0001", "channel": "HHZ", "sampling_rate": 100.0})
    buf = io.BytesIO()
    trace.write(buf, format="MSEED", reclen=512, encoding="STEIM2")
    raw = buf.getvalue()
    return [raw[i : i + 512] for i in range(0, len(raw), 512)]


def main(stations: int, repeats: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    recs = records()

    def decode() -> int:
        for _ in range(5):
            for rec in recs:
                decode_record(rec)
        return 5 * len(recs)

    selectors = SelectorSet([f"XB.S{i:04d}..HH?" for i in range(stations)])
    ids = [f"XB.S{i:04d}..HH{c}" for i in range(stations) for c in "ZNE"]

    def match() -> int:
        for seed_id in ids:
            selectors.matches(seed_id)
        return len(ids)

    rng = np.random.default_rng(1)
    pieces = [Samples(f"XB.S{s:04d}..HH{c}", 100.0, T0_NS + r * 4 * 10**9, rng.standard_normal(400))
              for r in range(30) for s in range(stations) for c in "ZNE"]

    def window() -> int:
        windower = StationWindower(InputContract(), 1.0, [f"XB.S{i:04d}..HH?" for i in range(stations)])
        for piece in pieces:
            windower.add_samples(piece)
        return len(pieces)

    match()  # (warm: the steady state of a live stream)
    print(f"decode_record: {least_cpu_us(decode, repeats):.1f} us per 512-byte Steim-2 record")
    print(f"SelectorSet.matches: {least_cpu_us(match, repeats):.2f} us per id ({stations} station selectors)")
    print(f"StationWindower.add_samples: {least_cpu_us(window, repeats):.1f} us per 4 s record ({stations} stations)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    main(args.stations, args.repeats)
