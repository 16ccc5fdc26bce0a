"""Per-station trigger calibration on the msnoise noise days, beside the plain trigger and the STA/LTA
(docs/detection-quality.md, "Per-station calibration").

    nice -n 10 python benchmarks/calibration.py --model OLD.safetensors --noise-days UV05 UV10 \
        --events-day UV10 --json out.json

For each noise day: the calibrated threshold of every window (`quakemon.pipeline.calibration`, learnt online from
the day's own earlier probabilities; `on` during the warm-up), the trigger run with it, and the false detections
per station-day after the warm-up (the first `history` hours of the day), beside the plain trigger and the
recursive STA/LTA on the same hours, for a sweep of target rates and histories.

Recall: the real P catalogue's records are short (no history), so they are triggered at `on`, as the daemon would
for a station it has just met; the synthetic regional/teleseismic events (`quakemon.data.distant`) are cut from
`--events-day`, so each record's window at time t gets the threshold the calibration had learnt from that day's
noise up to t (the record's windows lie on the day's window grid). The model's probabilities on a noise day are
cached per checkpoint (`quakemon.training.continuous.day_series`). Torch uses at most two threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

RATES = (1.0, 2.0, 4.0, 8.0)
HISTORIES_H = (3.0, 6.0, 12.0)


def onsets_with(series, thresholds: np.ndarray, off: float = 0.5, min_duration_s: float = 2.0) -> list[float]:
    """The daemon trigger's "new" onsets with a per-window `on` (flush at the end)."""
    from quakemon.pipeline.trigger import StationTrigger

    trig = StationTrigger(float(thresholds[0]) if len(thresholds) else 1.0, off, min_duration_s, "earthquake")
    out: list[float] = []
    for s, e, p, o in zip(series.start.tolist(), series.end.tolist(), series.p.tolist(), thresholds.tolist(),
                          strict=True):
        trig.on = max(o, off)
        out += [ev.onset for ev in trig._update(s, e, {"earthquake": p}) if ev.state == "new"]
    return out + [ev.onset for ev in trig.flush() if ev.state == "new"]


def day_thresholds(series, on: float, cfg) -> np.ndarray:
    from quakemon.pipeline.calibration import calibrated_thresholds

    return calibrated_thresholds(series.start, series.end, series.p, on, cfg)


def noise_day(series, stream, on: float, cfgs: dict[str, Any], window_s: float) -> dict[str, Any]:
    """False detections after each history's warm-up: plain trigger, calibrated (per rate), STA/LTA."""
    from quakemon.training import continuous as cont

    t0, t1 = float(series.start[0]), float(series.end[-1])
    plain = np.asarray(cont.trigger_onsets(series, on))
    classic = np.asarray(cont.sta_lta_onsets(stream))
    out: dict[str, Any] = {}
    for name, cfg in cfgs.items():
        after = t0 + cfg.history_s
        days = (t1 - after) / 86400.0
        thr = day_thresholds(series, on, cfg)
        cal = np.asarray(onsets_with(series, thr))
        warm = thr[series.start >= after]
        out[name] = {
            "history_h": cfg.history_s / 3600, "rate_target": cfg.rate_per_day, "measured_days": days,
            "calibrated": cont.false_rate(int((cal >= after).sum()), days),
            "calibrated_whole_day": int(cal.size),
            "plain": cont.false_rate(int((plain >= after).sum()), days),
            "sta_lta": cont.false_rate(int((classic >= after).sum()), days),
            "threshold": {"min": float(warm.min()), "median": float(np.median(warm)), "max": float(warm.max())},
            "near_sta_lta": cont.near_count(cal[cal >= after].tolist(), classic.tolist(), window_s),
        }
    return out


def event_recall(ev_series: list, events: list, day_series, on: float, cfgs: dict[str, Any],
                 window_s: float) -> dict[str, Any]:
    """Recall by kind with the calibrated thresholds: synthetic records from the day's grid, real ones at `on`."""
    from quakemon.training import continuous as cont

    out: dict[str, Any] = {"plain": cont.recall_by_kind(
        [(r, cont.trigger_onsets(s, on)) for r, s in zip(events, ev_series, strict=True)], window_s)}
    for name, cfg in cfgs.items():
        thr_day = day_thresholds(day_series, on, cfg) if day_series is not None else None
        rows, warm = [], []
        for r, s in zip(events, ev_series, strict=True):
            if r.kind.startswith("synthetic:") and thr_day is not None:
                idx = np.clip(np.searchsorted(day_series.start, s.start, "right") - 1, 0, len(thr_day) - 1)
                thr = thr_day[idx]
                if len(s.start) and s.start[0] >= day_series.start[0] + cfg.history_s:
                    warm.append(id(r))
            else:
                thr = np.full(len(s.p), on)
            rows.append((r, onsets_with(s, thr)))
        out[name] = cont.recall_by_kind(rows, window_s)
        # the synthetic records after the warm-up, calibrated and plain (the same records)
        out[f"{name}_after_warmup"] = cont.recall_by_kind([(r, o) for r, o in rows if id(r) in warm], window_s)
        out[f"{name}_after_warmup_plain"] = cont.recall_by_kind(
            [(r, cont.trigger_onsets(s, on)) for r, s in zip(events, ev_series, strict=True) if id(r) in warm],
            window_s)
    return out


def cached_series(sha16: str, day: str):
    """A noise day's cached probabilities (`continuous.day_series`'s cache) of a checkpoint by sha256 prefix."""
    from quakemon.data.noise_days import cache_dir
    from quakemon.training.continuous import Series

    found = sorted((cache_dir() / "series").glob(f"{sha16}*_{day}_fp32.npz"))
    if len(found) != 1:
        raise SystemExit(f"{len(found)} cached series match {sha16!r} on {day}: {[p.name for p in found]}")
    with np.load(found[0]) as z:
        return Series(z["start"], z["end"], z["p"])


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(2)
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.settings import CalibrationSettings
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--noise-days", nargs="*", default=["UV05", "UV10"], choices=["UV05", "UV10"])
    parser.add_argument("--events-day", default="UV10", choices=["UV05", "UV10", "none"])
    parser.add_argument("--no-real", action="store_true", help="leave out the real P catalogue")
    parser.add_argument("--n-per-kind", type=int, default=40)
    parser.add_argument("--on", type=float, default=0.7)
    parser.add_argument("--rates", type=float, nargs="*", default=list(RATES))
    parser.add_argument("--histories", type=float, nargs="*", default=list(HISTORIES_H), help="hours")
    parser.add_argument("--series-of", default=None, metavar="SHA16",
                        help="noise days only, from the cached probabilities of the checkpoint whose sha256 starts "
                             "with SHA16 (when the checkpoint itself is gone)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    t_start = time.time()
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    window_s = ckpt.contract.window_seconds
    if args.series_of:
        args.events_day, args.no_real = "none", True
    cfgs = {f"H{h:g}h_R{r:g}": CalibrationSettings("rate", r, h * 3600.0, max(1, int(round(h * 2))))
            for h in args.histories for r in args.rates}  # half-hour slots
    report: dict[str, Any] = {"model": {"sha256": args.series_of} if args.series_of else ckpt.model_info,
                              "on": args.on, "events_day": args.events_day, "slots": "half an hour each", "noise": {}}
    days = sorted({*args.noise_days, *([args.events_day] if args.events_day != "none" else [])})
    series = {d: cached_series(args.series_of, d) if args.series_of else next(iter(cont.day_series(ckpt, d).values()))
              for d in days}
    for d in args.noise_days:
        report["noise"][d] = noise_day(series[d], load_day(d), args.on, cfgs, window_s)
        for name, r in report["noise"][d].items():
            print(f"{d} {name}: calibrated {r['calibrated']['false']} ({r['calibrated']['per_station_day']:.1f}/day)"
                  f" plain {r['plain']['false']} sta/lta {r['sta_lta']['false']} over {r['measured_days']:.3f} d,"
                  f" threshold median {r['threshold']['median']:.5f} max {r['threshold']['max']:.5f}")
    events = [] if args.no_real else cont.real_event_records(ckpt.contract.sampling_rate)
    if args.events_day != "none":
        events += cont.synthetic_event_records(load_day(args.events_day), args.n_per_kind)
    if events:
        ev_series = cont.record_series(ckpt, events)
        rec = event_recall(ev_series, events, series.get(args.events_day), args.on, cfgs, window_s)
        report["events"] = rec
        for name, r in rec.items():
            print(name, {k: f"{v['detected']}/{v['events']}" for k, v in sorted(r.items())})
    report["seconds"] = round(time.time() - t_start, 1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
