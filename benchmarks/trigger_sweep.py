"""How the trigger's `min_duration` and `on` trade false detections against recall, from one set of probabilities.

    nice -n 10 python benchmarks/trigger_sweep.py --model quakemon/assets/quakemon-detector.safetensors \
        --days UV10 --events-day UV10

The model's probabilities on the noise days (cached per checkpoint in the user cache) and on the event records
(the real P catalogue and the synthetic regional/teleseismic events over `--events-day`) are computed once; the
daemon's trigger (one detection per event: its re-trigger hold with the new-P check, `continuous.trigger_onsets`)
is then run for every `min_duration` and `on`. Prints false detections per station-day, real and synthetic recall.
Give only noise days the model was not trained on. This is operator guidance on held-out data, as the `on` sweep
of `quakemon evaluate`: a default chosen from it would be chosen on evaluation data.
"""

from __future__ import annotations

import argparse
import json
import sys

DURATIONS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)
ONS = (0.5, 0.7, 0.9)


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(2)
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--days", nargs="+", default=["UV10"], help="noise days to count false detections on")
    parser.add_argument("--events-day", default="UV10", help="the noise day the synthetic events are laid over")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    rate, window_s = ckpt.contract.sampling_rate, ckpt.contract.window_seconds
    days = {}
    for day in args.days:
        stream = load_day(day)
        series = cont.day_series(ckpt, day)
        days[day] = ({k: cont.NewPCheck(stream, rate, window_s) for k in series}, series)
    events = cont.real_event_records() + cont.synthetic_event_records(load_day(args.events_day))
    ev_series = cont.record_series(ckpt, events)
    ev_checks = [cont.NewPCheck(r.stream, rate, window_s) for r in events]
    rows = []
    for dur in DURATIONS:
        for on in ONS:
            false = {day: sum(len(cont.trigger_onsets(s, on, 0.5, dur, checks[k])) for k, s in series.items())
                     for day, (checks, series) in days.items()}
            found = {"real": [0, 0], "synthetic": [0, 0]}
            for r, s, c in zip(events, ev_series, ev_checks, strict=True):
                got = cont.match(cont.trigger_onsets(s, on, 0.5, dur, c), r.p_times, window_s)
                agg = found[r.kind.split(":")[0]]
                agg[0] += got["detected"]
                agg[1] += got["events"]
            rows.append({"min_duration_s": dur, "on": on, "false": false, **found})
    print("| min_duration (s) | on | " + " | ".join(f"{d} false/day" for d in args.days)
          + " | recall real | recall synthetic |")
    print("|---:|---:|" + "---:|" * len(args.days) + "---:|---:|")
    for row in rows:
        noise = " | ".join(str(row["false"][d]) for d in args.days)
        print(f"| {row['min_duration_s']:g} | {row['on']:g} | {noise} | {row['real'][0]}/{row['real'][1]} | "
              f"{row['synthetic'][0]}/{row['synthetic'][1]} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"model": ckpt.sha256, "days": args.days, "events_day": args.events_day, "rows": rows}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
