"""Detection quality of a checkpoint against a recursive STA/LTA on the msnoise noise days (docs/detection-quality.md).

    nice -n 10 python benchmarks/detection_quality.py --model quakemon/assets/quakemon-detector.safetensors \
        --days UV05 UV10 --events-day UV10 --json out.json

Counts false detections per station-day on each noise day (`quakemon.data.noise_days`), recall on the real P
catalogue (`quakemon.data.realdata.local_events`) and on synthetic regional/teleseismic events over the real noise
of `--events-day`, with threshold sweeps; prints the markdown tables. The model's probabilities on a noise day
are cached per checkpoint (`quakemon.training.continuous.day_series`). Torch uses at most two threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(2)
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--days", nargs="*", default=["UV05", "UV10"], choices=["UV05", "UV10"])
    parser.add_argument("--events-day", default="UV10", choices=["UV05", "UV10", "none"])
    parser.add_argument("--n-per-kind", type=int, default=40)
    parser.add_argument("--no-real", action="store_true", help="leave out the real P catalogue")
    parser.add_argument("--on", type=float, default=0.7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    t0 = time.time()
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    noise = {d: load_day(d) for d in args.days}
    series = {d: cont.day_series(ckpt, d) for d in args.days}
    events = [] if args.no_real else cont.real_event_records(ckpt.contract.sampling_rate)
    if args.events_day != "none":
        events += cont.synthetic_event_records(load_day(args.events_day), args.n_per_kind)
    report = cont.evaluate_continuous(ckpt, noise, events, on=args.on, noise_series=series)
    out = cont.summary(report)
    out["events_day"] = args.events_day
    out["seconds"] = round(time.time() - t0, 1)
    print(cont.markdown(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
