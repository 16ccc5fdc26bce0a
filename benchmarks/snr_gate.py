"""Would an SNR gate help? Model detections kept only where a short-term/long-term energy ratio rises.

    nice -n 10 python benchmarks/snr_gate.py --model quakemon/assets/quakemon-detector.safetensors

For each model detection (trigger on 0.7) the gate takes the largest recursive STA/LTA ratio (1 s / 10 s,
1-20 Hz band-passed vertical, the reference detector's characteristic function) within the detection's first
window [onset, onset + 20 s] and keeps the detection when it reaches `g`. Prints false detections per noise day
and recall on the event catalogues (real P catalogue + synthetic regional/teleseismic over UV10) for each `g`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GATES = (0.0, 1.5, 2.0, 2.5, 3.0, 3.5)


def cft_max(stream, onsets: list[float], window_s: float = 20.0) -> list[float]:
    from obspy.signal.trigger import recursive_sta_lta

    out = []
    tr = max(stream.select(component="Z"), key=lambda t: t.stats.npts)
    x = tr.copy()
    x.data = x.data.astype(np.float64)
    x.detrend("demean")
    fs = x.stats.sampling_rate
    x.filter("bandpass", freqmin=1.0, freqmax=min(20.0, 0.45 * fs), corners=4)
    cft = recursive_sta_lta(x.data, int(fs), int(10 * fs))
    cft[: int(10 * fs)] = 0
    t0 = x.stats.starttime.timestamp
    for o in onsets:
        i0, i1 = int((o - t0) * fs), int((o + window_s - t0) * fs)
        seg = cft[max(0, i0) : max(0, min(cft.size, i1))]
        out.append(float(seg.max()) if seg.size else 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(2)
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    result: dict = {"noise": {}, "events": {}}
    for day in ("UV05", "UV10"):
        (s,) = cont.day_series(ckpt, day).values()
        m = cft_max(load_day(day), cont.trigger_onsets(s, 0.7))
        result["noise"][day] = {f"{g:g}": int(sum(v >= g for v in m)) for g in GATES}
    events = cont.real_event_records() + cont.synthetic_event_records(load_day("UV10"))
    streams = [cont._relabel(r.stream, i) for i, r in enumerate(events)]
    series = cont.model_series(ckpt, streams)
    counts = {f"{g:g}": {} for g in GATES}
    for r, st in zip(events, streams, strict=True):
        s = series.get(".".join(st[0].id.split(".")[:3]))
        onsets = cont.trigger_onsets(s, 0.7) if s is not None else []
        m = cft_max(st, onsets)
        group = r.kind.split(":")[0]
        for g in GATES:
            kept = [o for o, v in zip(onsets, m, strict=True) if v >= g]
            agg = counts[f"{g:g}"].setdefault(group, [0, 0])
            agg[0] += cont.match(kept, r.p_times, 20.0)["detected"]
            agg[1] += len(r.p_times)
    result["events"] = counts
    print("| gate g | UV05 false/day | UV10 false/day | recall real | recall synthetic |")
    print("|---:|---:|---:|---:|---:|")
    for g in GATES:
        k = f"{g:g}"
        real, syn = counts[k].get("real", [0, 0]), counts[k].get("synthetic", [0, 0])
        print(f"| {k} | {result['noise']['UV05'][k]} | {result['noise']['UV10'][k]} | {real[0]}/{real[1]} | "
              f"{syn[0]}/{syn[1]} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
