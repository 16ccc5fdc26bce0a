"""Detection quality of a checkpoint against a recursive STA/LTA on the msnoise noise days (docs/detection-quality.md).

    nice -n 10 python benchmarks/detection_quality.py --model quakemon/assets/quakemon-detector.safetensors \
        --days UV05 UV10 --events-day UV10 --json out.json

Counts false detections per station-day on each noise day (`quakemon.data.noise_days`), recall on the real P
catalogue (`quakemon.data.realdata.local_events`) and on synthetic regional/teleseismic events over the real noise
of `--events-day`, with threshold sweeps (`--sprit-sites`: false detections on the held-out sprit sites of
`quakemon.data.sprit_noise` too); prints the markdown tables. `--teleseisms` instead scores the real teleseismic P
arrivals of `quakemon.data.teleseisms` (evaluation only) with `quakemon.training.teleseismic`. The model's
probabilities on a noise day are cached per checkpoint (`quakemon.training.continuous.day_series`). Torch uses at
most two threads.
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
    parser.add_argument("--sprit-sites", action="store_true",
                        help="also count false detections on the sprit validation sites (vertical-only and 3-C)")
    parser.add_argument("--on", type=float, default=0.7)
    parser.add_argument("--split-on-new-p", action="store_true",
                        help="the trigger splits an active detection at a clearly new P (trigger.split_on_new_p)")
    parser.add_argument("--native-rate", action="store_true", help="the real records at their own rate, resampled "
                        "by the runner as in the daemon (default: realdata.load's FFT resampling to the model's rate); "
                        "with --teleseisms: only that way (default: also resampled to the model's rate first)")
    parser.add_argument("--teleseisms", action="store_true", help="only the real teleseismic records "
                        "(rf's example data, evaluation only) instead of the noise days and the other catalogues")
    parser.add_argument("--hours", nargs=2, type=float, default=None, metavar=("START", "END"),
                        help="score only these hours (UTC, 0-24) of each noise day and of --events-day, e.g. the "
                             "hours a model adapted on the day's other hours has not seen")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.hours and not 0 <= args.hours[0] < args.hours[1] <= 24:
        parser.error(f"--hours {args.hours[0]:g} {args.hours[1]:g}: want 0 <= START < END <= 24")
    configure_logging("warning", "console")
    t0 = time.time()
    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    if args.teleseisms:
        return teleseisms(ckpt, args.on, args.json, t0, not args.native_rate)
    noise = {d: load_day(d) for d in args.days}
    series = {d: cont.day_series(ckpt, d) for d in args.days}
    if args.hours:
        noise = {d: hours_of(st, args.hours) for d, st in noise.items()}
        series = {d: {k: within(x, noise[d]) for k, x in s.items()} for d, s in series.items()}
    if args.sprit_sites:
        more, more_series = sprit_validation(ckpt)
        noise.update(more)
        series.update(more_series)
    events = [] if args.no_real else cont.real_event_records(None if args.native_rate
                                                             else ckpt.contract.sampling_rate)
    if args.events_day != "none":
        day = load_day(args.events_day)
        events += cont.synthetic_event_records(hours_of(day, args.hours) if args.hours else day, args.n_per_kind)
    report = cont.evaluate_continuous(ckpt, noise, events, on=args.on, noise_series=series,
                                      split_on_new_p=args.split_on_new_p)
    out = cont.summary(report)
    out["events_day"] = args.events_day
    out["native_rate"] = args.native_rate
    out["hours"] = args.hours
    out["seconds"] = round(time.time() - t0, 1)
    print(cont.markdown(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


def hours_of(st, hours):
    """The part of a noise day's stream from hour hours[0] to hour hours[1] of its first day (UTC)."""
    from obspy import UTCDateTime

    day = UTCDateTime(st[0].stats.starttime.date)
    return st.slice(day + hours[0] * 3600.0, day + hours[1] * 3600.0)


def within(series, st):
    """The windows of `series` that lie wholly inside the stream's time span."""
    from quakemon.training.continuous import Series

    t0 = min(tr.stats.starttime for tr in st).timestamp
    t1 = max(tr.stats.endtime for tr in st).timestamp
    keep = (series.start >= t0) & (series.end <= t1 + 1e-6)
    return Series(series.start[keep], series.end[keep], series.p[keep])


def teleseisms(ckpt, on: float, json_path: str | None, t0: float, resampled_first: bool) -> int:
    """The real teleseismic P arrivals (`quakemon.data.teleseisms`): tables printed, report written as JSON. The
    model runs on the 5 Hz records as the daemon resamples them, and (resampled_first) on the records resampled to
    its rate beforehand."""
    from quakemon.data.teleseisms import load_catalogue
    from quakemon.training import teleseismic

    cat = load_catalogue()
    report = teleseismic.evaluate(ckpt, teleseismic.event_records(cat.records), on=on,
                                  resampled_first=resampled_first)
    report["dropped"] = cat.dropped
    report["seconds"] = round(time.time() - t0, 1)
    print(f"{len(cat.records)} records kept; left out: {cat.dropped}")
    print(teleseismic.markdown(report))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=float)
    return 0


def sprit_validation(ckpt):
    """Streams and model probabilities of the sprit validation sites (never trained on), each as a vertical-only
    ("sprit:SiteNN:Z") and a three-component ("sprit:SiteNN:ZNE") station, at the model's rate from t = 0."""
    from obspy import Stream, Trace, UTCDateTime

    from quakemon.data import sprit_noise
    from quakemon.training.multisite import site_series

    fs = ckpt.contract.sampling_rate
    streams, series = {}, {}
    for rec in sprit_noise.recordings("validation"):
        data = sprit_noise.load(rec, fs)
        net, sta = rec.station.split(".")
        for comps in ("Z", "ZNE"):
            name = f"sprit:{rec.site}:{comps}"
            streams[name] = Stream([Trace(data[i], {"network": net, "station": sta, "location": "00",
                                                    "channel": f"HH{c}", "sampling_rate": fs,
                                                    "starttime": UTCDateTime(0)}) for i, c in enumerate(comps)])
            series[name] = {f"{net}.{sta}.00": site_series(ckpt, rec, data, fs, components=comps)}
    return streams, series


if __name__ == "__main__":
    sys.exit(main())
