"""Would an SNR gate help? Model detections kept only where a short-term/long-term energy ratio rises.

    nice -n 10 python benchmarks/snr_gate.py --model quakemon/assets/quakemon-detector.safetensors \
        --days UV10 --events-day UV10 --on 0.7

For each model detection (trigger `--on`, each value given) the gate takes the largest recursive STA/LTA ratio
(1 s / 10 s, 1-20 Hz band-passed vertical, the reference detector's characteristic function) within the
detection's first window [onset, onset + 20 s] and keeps the detection when it reaches `g`. The second gate
(`--gate pick`) is one the daemon can apply as it stands: the SNR of the detection's P pick
(`quakemon.pipeline.picker`, the first window over `on` with the daemon's lead, as `continuous.NewPCheck` picks
it), kept when it reaches `g`. Prints false detections per noise day and recall on the event catalogues (real P
catalogue + synthetic regional/teleseismic over `--events-day`) for each `g`. Give only the noise days the model
was not trained on (`--days`), and the synthetic events over one of them.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GATES = (0.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)


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


def pick_snr(stream, onsets: list[float]) -> list[float]:
    """The SNR of each detection's P pick (0 where the window could not be picked)."""
    from quakemon.training.continuous import NewPCheck

    if not onsets:
        return []
    check = NewPCheck(stream)
    snrs = [check.pick(o).snr for o in onsets]
    return [float(v) if np.isfinite(v) else 0.0 for v in snrs]


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
    parser.add_argument("--days", nargs="+", default=["UV05", "UV10"], help="noise days to count false alarms on")
    parser.add_argument("--events-day", default="UV10", help="the noise day the synthetic events are laid over")
    parser.add_argument("--on", type=float, nargs="+", default=[0.7], help="trigger on thresholds")
    parser.add_argument("--gate", choices=("stalta", "pick"), default="stalta",
                        help="stalta: the STA/LTA ratio in the first window; pick: the P pick's SNR")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    result: dict = {"model": ckpt.sha256, "days": args.days, "events_day": args.events_day, "on": {}}
    days = {day: (load_day(day), next(iter(cont.day_series(ckpt, day).values()))) for day in args.days}
    events = cont.real_event_records() + cont.synthetic_event_records(load_day(args.events_day))
    streams = [cont._relabel(r.stream, i) for i, r in enumerate(events)]
    series = cont.model_series(ckpt, streams)
    rate = ckpt.contract.sampling_rate  # the daemon's trigger: its hold, with the new-P check inside it
    day_checks = {day: cont.NewPCheck(stream, rate) for day, (stream, _) in days.items()}
    result["gate"] = args.gate

    def measure(stream, onsets: list[float]) -> list[float]:
        return cft_max(stream, onsets) if args.gate == "stalta" else pick_snr(stream, onsets)

    for on in args.on:
        res: dict = {"noise": {}, "events": {f"{g:g}": {} for g in GATES}}
        for day, (stream, s) in days.items():
            m = measure(stream, cont.trigger_onsets(s, on, new_p=day_checks[day]))
            res["noise"][day] = {f"{g:g}": int(sum(v >= g for v in m)) for g in GATES}
        for r, st in zip(events, streams, strict=True):
            s = series.get(".".join(st[0].id.split(".")[:3]))
            onsets = cont.trigger_onsets(s, on, new_p=cont.NewPCheck(r.stream, rate)) if s is not None else []
            m = measure(st, onsets)
            group = r.kind.split(":")[0]
            for g in GATES:
                kept = [o for o, v in zip(onsets, m, strict=True) if v >= g]
                agg = res["events"][f"{g:g}"].setdefault(group, [0, 0])
                agg[0] += cont.match(kept, r.p_times, 20.0)["detected"]
                agg[1] += len(r.p_times)
        result["on"][f"{on:g}"] = res
        print(f"on {on:g}")
        print("| gate g | " + " | ".join(f"{d} false/day" for d in args.days) + " | recall real | recall synthetic |")
        print("|---:|" + "---:|" * len(args.days) + "---:|---:|")
        for g in GATES:
            k = f"{g:g}"
            real, syn = res["events"][k].get("real", [0, 0]), res["events"][k].get("synthetic", [0, 0])
            noise = " | ".join(str(res["noise"][d][k]) for d in args.days)
            print(f"| {k} | {noise} | {real[0]}/{real[1]} | {syn[0]}/{syn[1]} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
