"""Benchmark: the detections' P picks as the pipeline makes them, on the real-data catalogue, per window stride.

    .venv/bin/python benchmarks/pipeline_picks.py [--strides 1 2 4] [--holds 0 30] [--split on off] [--model CKPT]

Every recording of `quakemon.data.realdata.local_events()` is replayed through the real `DetectionRunner` with the
bundled model (records in 5 s pieces, interleaved across channels, as a live stream delivers them). Each "new"
detection is matched to the catalogued P nearest its pick: within 10 s it detects that P; 10-60 s after a P it is
"late" (S wave or coda re-trigger); elsewhere "other". The table gives the recall (catalogued P arrivals with a
detection), the median |pick - P| and the share within 0.5 s and 1.0 s over the matched detections, and beside it
the same for the detection's first window start (the onset of quakemon.detection/1); the picks by method; and the
cost, CPU seconds (all threads, `time.process_time`) per station-hour of data, replay of the whole catalogue. Also
imported by benchmarks/picks.py (--pipeline). Not collected by pytest (no test_ names).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from quakemon.base.logs import configure_logging
from quakemon.data import realdata

NS = 1_000_000_000
MATCH_S = 10.0
LATE_S = 60.0


@dataclass
class StrideResult:
    stride_s: float
    hold_s: float
    split: bool = True
    p_total: int = 0
    p_detected: int = 0
    pick_err: list[float] = field(default_factory=list)  # pick - P, matched detections
    start_err: list[float] = field(default_factory=list)  # window_start - P, the same detections
    late: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    methods: Counter = field(default_factory=Counter)
    cpu_s: float = 0.0
    station_hours: float = 0.0


def _ns(iso: str) -> int:
    from obspy import UTCDateTime

    return UTCDateTime(iso).ns


def replay_catalogue(stride_s: float, hold_s: float, ckpt=None,
                     split: bool | None = None) -> tuple[StrideResult, list[tuple]]:
    """Replay every catalogued recording; returns the scores and (recording, "new" bodies) per recording.
    split: `trigger.split_on_new_p` (None: its default)."""
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import DetectionRunner, Inference
    from quakemon.pipeline.settings import TRIGGER
    from quakemon.wire.schema import DETECTION_SCHEMA

    ckpt = ckpt or load_checkpoint(resolve_checkpoint(None))
    split = TRIGGER.split_on_new_p if split is None else split
    res = StrideResult(stride_s, hold_s, split)
    per_rec = []
    with Inference(ckpt, device="cpu", overlap=False) as inference:
        for rec in realdata.local_events():
            st = realdata.load(rec)
            c0 = time.process_time()
            with DetectionRunner(ckpt, stride_s=stride_s, retrigger_hold_s=hold_s, inference=inference,
                                 split_on_new_p=split) as runner:
                bodies = [*runner.add_stream(st), *runner.finish()]
            res.cpu_s += time.process_time() - c0
            res.station_hours += (max(tr.stats.endtime for tr in st) - min(tr.stats.starttime for tr in st)) / 3600
            new = [b for b in bodies if b["schema"] == DETECTION_SCHEMA and b["state"] == "new"]
            per_rec.append((rec, new))
            ps = [p.ns for p in rec.p_times]
            res.p_total += len(ps)
            hit = set()
            for b in new:
                t = _ns(b["onset"])
                res.methods[b["pick"]["method"]] += 1
                near = min(ps, key=lambda p: abs(t - p)) if ps else None
                if near is not None and abs(t - near) <= MATCH_S * NS:
                    hit.add(near)
                    res.pick_err.append((t - near) / NS)
                    res.start_err.append((_ns(b["window_start"]) - near) / NS)
                elif any(0 < t - p <= LATE_S * NS for p in ps):
                    res.late.append(f"{rec.name} {b['onset'][11:22]}")
                else:
                    res.other.append(f"{rec.name} {b['onset'][11:22]}")
            res.p_detected += len(hit)
    return res, per_rec


def stats(err: list[float]) -> tuple[float, float, float]:
    e = np.abs(np.asarray(err, dtype=np.float64))
    if not e.size:
        return float("nan"), float("nan"), float("nan")
    return float(np.median(e)), float(np.mean(e <= 0.5)), float(np.mean(e <= 1.0))


def print_results(results: list[StrideResult]) -> None:
    print("| stride s | hold s | split | recall | matched detections | pick: median \\|err\\| s | <= 0.5 s | <= 1.0 s "
          "| window start: median \\|err\\| s | <= 0.5 s | <= 1.0 s | late | other | picks by method "
          "| CPU s per station-hour |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        pm, p5, p1 = stats(r.pick_err)
        sm, s5, s1 = stats(r.start_err)
        methods = ", ".join(f"{k} {v}" for k, v in sorted(r.methods.items()))
        print(f"| {r.stride_s:g} | {r.hold_s:g} | {'on' if r.split else 'off'} | {r.p_detected}/{r.p_total} "
              f"| {len(r.pick_err)} | {pm:.2f} "
              f"| {p5:.0%} | {p1:.0%} | {sm:.2f} | {s5:.0%} | {s1:.0%} | {len(r.late)} | {len(r.other)} "
              f"| {methods} | {r.cpu_s / max(r.station_hours, 1e-9):.0f} |")
    for r in results:
        if r.late or r.other:
            print(f"stride {r.stride_s:g} s, hold {r.hold_s:g} s, split {r.split}: late {r.late}; other {r.other}")
        big = [e for e in r.pick_err if abs(e) > 1.0]
        if big:
            print(f"stride {r.stride_s:g} s, hold {r.hold_s:g} s: picks off by more than 1 s: "
                  f"{[round(e, 2) for e in big]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strides", type=float, nargs="+", default=[1.0])
    ap.add_argument("--holds", type=float, nargs="+", default=None, help="retrigger_hold_s values (default: the "
                    "TriggerSettings default)")
    ap.add_argument("--split", nargs="+", choices=["on", "off"], default=None,
                    help="trigger.split_on_new_p values (default: its default)")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    args = ap.parse_args()
    configure_logging("warning")
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.settings import TRIGGER

    holds = args.holds if args.holds is not None else [TRIGGER.retrigger_hold_s]
    splits = [s == "on" for s in args.split] if args.split else [TRIGGER.split_on_new_p]
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    results = [replay_catalogue(s, h, ckpt, sp)[0] for s in args.strides for h in holds for sp in splits]
    print_results(results)


if __name__ == "__main__":
    main()
