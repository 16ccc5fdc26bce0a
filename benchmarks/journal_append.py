"""Journal append rate and latency with synchronous=full and synchronous=normal.

    python benchmarks/journal_append.py [--n 2000] [--dir /var/lib/quakemon]

Run it on the filesystem that will hold the journal: the fsync cost is the filesystem's and the disk's.
Each append is one committed transaction carrying a real detection body (about 600 bytes of JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from quakemon.wire.journal import Journal
from quakemon.wire.schema import detection_body, json_bytes


def body() -> bytes:
    b = detection_body(station="BW.RJOB.", state="new", label="earthquake", probability=0.93,
                       probabilities={"noise": 0.07, "earthquake": 0.93}, onset=1_251_072_000.0,
                       window_start=1_251_072_000.0, window_end=1_251_072_030.0, peak_probability=0.93,
                       model={"name": "hybridvit", "sha256": "ab" * 32})
    b.update(seq=1, topic_seq=1, epoch="20261206T000000Z-0123456789abcdef", latency_s=0.123)
    return json_bytes(b)


def run(directory: Path, synchronous: str, n: int) -> dict[str, float]:
    payload = body()
    with tempfile.TemporaryDirectory(dir=directory) as tmp, Journal(Path(tmp) / "j.db", synchronous=synchronous) as j:
        lat = []
        start = time.perf_counter()
        for seq in range(1, n + 1):
            t = time.perf_counter()
            j.append(seq, "ep", "detection.BW.RJOB", payload)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    lat.sort()
    return {"synchronous": synchronous, "n": n, "bytes": len(payload), "per_s": round(n / total),
            "p50_ms": round(statistics.median(lat) * 1e3, 3), "p99_ms": round(lat[int(0.99 * (n - 1))] * 1e3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    for mode in ("full", "normal"):
        print(json.dumps(run(args.dir, mode, args.n)))


if __name__ == "__main__":
    main()
