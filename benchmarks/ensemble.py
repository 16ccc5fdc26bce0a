"""Ensembles of checkpoints: their per-window probabilities combined, scored as detection_quality scores one model
(docs/detection-quality.md, "Ensembles").

    nice -n 10 python benchmarks/ensemble.py --member old=quakemon/assets/quakemon-detector.safetensors \
        --member ms4=ms4.safetensors --ensemble old+ms4 --days UV05 UV10 --json out.json

Every member runs on the same windows (the runner's 20 s windows every 1 s); an ensemble's probability of a window
is the combination of its members' probabilities of that window: the arithmetic mean ("mean"), the geometric
mean ("geomean") or the smallest ("min": every member must reach the trigger's `on`). The combined probabilities
go through the very scoring of `quakemon.training.continuous` (`score_continuous`: the daemon's trigger, on 0.7 /
off 0.5 / min_duration 2 s with the flush rule, false detections per station-day with the exact Poisson 95 %
interval, recall by kind, late and false detections in the event records, threshold sweeps), beside the recursive
STA/LTA on the same data. Each member alone is scored the same way.

Data: the msnoise noise days (`--days`; a member's probabilities on a day are cached by
`continuous.day_series`), the real P catalogue and the synthetic regional/teleseismic events over UV10 (seed
7000001; a member's probabilities on them are cached by `screen.event_series`). Nothing is trained.

`--cost-hours H`: CPU seconds of each member's probabilities on the first H hours of UV10 (the runner,
preprocessing and forward, `time.process_time`), so an ensemble's cost is the sum of its members'. Torch uses at
most two threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: How the members' probabilities of one window become the ensemble's.
RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda stack: stack.mean(axis=0),
    "geomean": lambda stack: np.prod(stack, axis=0) ** (1.0 / stack.shape[0]),
    "min": lambda stack: stack.min(axis=0),
}


def combine(probabilities: Sequence[np.ndarray], rule: str) -> np.ndarray:
    """One probability per window from the members' (each an array over the same windows) by `rule`."""
    if rule not in RULES:
        raise ValueError(f"unknown combination rule {rule!r}; expected one of {sorted(RULES)}")
    if not probabilities:
        raise ValueError("an ensemble needs at least one member")
    shapes = {np.shape(p) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"members' probabilities differ in shape: {sorted(shapes)}")
    stack = np.asarray(probabilities, dtype=np.float64)
    if stack.size and (stack.min() < 0.0 or stack.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    return RULES[rule](stack)


def combine_series(members: Sequence[Any], rule: str):
    """The ensemble's `continuous.Series` of one station; the members must cover exactly the same windows."""
    from quakemon.training.continuous import Series

    first = members[0]
    for i, s in enumerate(members[1:], 1):
        if not (np.array_equal(s.start, first.start) and np.array_equal(s.end, first.end)):
            raise ValueError(f"member {i} has other windows than member 0 ({len(s.start)} against "
                             f"{len(first.start)}): an ensemble needs the same windows from every member")
    return Series(first.start, first.end, combine([s.p for s in members], rule))


def combine_stations(members: Sequence[dict[str, Any]], rule: str) -> dict[str, Any]:
    """{station: Series} of the ensemble from each member's {station: Series} (the same stations in each)."""
    stations = set(members[0])
    for i, m in enumerate(members[1:], 1):
        if set(m) != stations:
            raise ValueError(f"member {i} has stations {sorted(m)}, member 0 {sorted(stations)}")
    return {st: combine_series([m[st] for m in members], rule) for st in members[0]}


def parse_members(specs: Sequence[str]) -> dict[str, str]:
    """NAME=PATH pairs, names unique and free of '+' (which joins names in --ensemble)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or "+" in name:
            raise SystemExit(f"--member wants NAME=PATH with no '+' in NAME, got {spec!r}")
        if name in out:
            raise SystemExit(f"--member {name!r} given twice")
        out[name] = path
    return out


def parse_ensembles(specs: Sequence[str], members: dict[str, str]) -> list[list[str]]:
    """'a+b[+c]' names of members; at least two distinct ones each."""
    out = []
    for spec in specs:
        names = spec.split("+")
        if len(names) < 2 or len(set(names)) != len(names) or not set(names) <= set(members):
            raise SystemExit(f"--ensemble wants two or more distinct --member names joined by '+', got {spec!r} "
                             f"(members: {sorted(members)})")
        out.append(names)
    return out


def member_series(ckpt, days: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list, list]:
    """A checkpoint's ({day: {station: Series}}, event records, [Series per record]): the noise days', the real
    catalogue's and the synthetic events' probabilities, each cached per checkpoint after its first computation."""
    import screen

    from quakemon.training import continuous as cont

    noise = {d: cont.day_series(ckpt, d) for d in days}
    records, series = [], []
    for kind in ("real", "synthetic"):
        by_station, pairs = screen.event_series(ckpt, kind)
        records += [r for r, _ in pairs]
        series += [by_station[st] for _, st in pairs]
    return noise, records, series


def tally(recall: dict[str, Any], prefix: str) -> dict[str, int]:
    """P arrivals, detected, late and false summed over the kinds starting with `prefix` (one `recall_by_kind`)."""
    out = {"events": 0, "detected": 0, "late": 0, "false": 0}
    for kind, agg in recall.items():
        if kind.startswith(prefix):
            for k in out:
                out[k] += agg[k]
    return out


def row(name: str, report: dict[str, Any], on: str, detector: str = "model") -> dict[str, Any]:
    """One detector's figures in a report at trigger `on` (a key of the sweeps, e.g. "0.7" for the model, "3.5"
    for the STA/LTA, `detector` "sta_lta"): false detections per noise day, recall, late and false detections."""
    out: dict[str, Any] = {"candidate": name, "on": on}
    for day, r in report["noise"].items():
        f = r[f"sweep_{detector}"][on]
        out[day] = {"false": f["false"], "per_station_day": f["per_station_day"], "ci95": f["ci95"]}
    events = report.get("events", {})
    rec = events.get(f"sweep_{detector}", {}).get(on)
    if rec is None and detector == "model" and on == f"{report['trigger']['on']:g}":
        rec = events.get("model", {})
    for key, prefix in (("real", "real:"), ("regional", "synthetic:regional"),
                        ("teleseismic", "synthetic:teleseismic")):
        out[key] = tally(rec or {}, prefix)
    return out


def format_rows(rows: Sequence[dict[str, Any]], days: Sequence[str]) -> list[str]:
    """Markdown table: false detections per station-day (95 % CI) per day, real recall, late / false, distant."""
    lines = ["| candidate, on | " + " | ".join(f"{d} false/day (95 % CI)" for d in days)
             + " | real catalogue | real: late / false | synthetic regional | synthetic teleseismic |",
             "|---|" + "---:|" * (len(days) + 4)]
    for r in rows:
        cells = [f"{r[d]['per_station_day']:.0f} ({r[d]['ci95'][0]:.1f}-{r[d]['ci95'][1]:.1f})" for d in days]
        real, reg, tel = r["real"], r["regional"], r["teleseismic"]
        lines.append(f"| {r['candidate']}, {r['on']} | " + " | ".join(cells)
                     + f" | {real['detected']}/{real['events']} | {real['late']} / {real['false']} | "
                     f"{reg['detected']}/{reg['events']} | {tel['detected']}/{tel['events']} |")
    return lines


def coincidence(noise: dict[str, dict[str, dict[str, Any]]], names: Sequence[str], on: float,
                window_s: float) -> dict[str, Any]:
    """Per noise day and ordered pair of members (a, b): a's detections (trigger on `on`) and how many of them lie
    within `window_s` of one of b's. Where a's false alarms coincide with b's, no combination removes them."""
    from quakemon.training import continuous as cont

    out: dict[str, Any] = {}
    for day in next(iter(noise.values())):
        onsets = {n: [o for s in noise[n][day].values() for o in cont.trigger_onsets(s, on)] for n in names}
        out[day] = {f"{a}~{b}": {a: len(onsets[a]), "near": cont.near_count(onsets[a], onsets[b], window_s)}
                    for a in names for b in names if a != b}
    return out


def cost(ckpts: dict[str, Any], hours: float) -> dict[str, Any]:
    """CPU seconds of each member's probabilities on the first `hours` of UV10 (one station), and per window."""
    from quakemon.data.noise_days import load_day
    from quakemon.training import continuous as cont

    day = load_day("UV10")
    t0 = min(tr.stats.starttime for tr in day)
    part = day.slice(t0, t0 + hours * 3600.0)
    out: dict[str, Any] = {"hours": hours}
    for name, ckpt in ckpts.items():
        c0 = time.process_time()
        (s,) = cont.model_series(ckpt, [part]).values()
        cpu = time.process_time() - c0
        out[name] = {"windows": len(s.p), "cpu_s": round(cpu, 2), "cpu_ms_per_window": round(1e3 * cpu / len(s.p), 3),
                     "cpu_s_per_station_hour": round(cpu / hours, 2)}
        print(f"cost {name}: {cpu:.1f} CPU s for {len(s.p)} windows ({1e3 * cpu / len(s.p):.2f} ms per window)",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--member", action="append", default=[], metavar="NAME=PATH", required=True)
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B[+C]", required=True)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--days", nargs="*", default=["UV05", "UV10"], choices=["UV05", "UV10"])
    parser.add_argument("--on", type=float, default=0.7)
    parser.add_argument("--cost-hours", type=float, default=0.0, help="also time each member on UV10 (hours)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    paths = parse_members(args.member)
    ensembles = parse_ensembles(args.ensemble, paths)
    configure_logging("warning", "console")
    t_start = time.time()
    ckpts = {name: load_checkpoint(path) for name, path in paths.items()}
    contracts = {name: (c.contract.window_seconds, c.contract.sampling_rate, tuple(c.labels))
                 for name, c in ckpts.items()}
    if len(set(contracts.values())) != 1:
        raise SystemExit(f"members' contracts differ (window s, rate, labels): {contracts}")
    window_s = next(iter(ckpts.values())).contract.window_seconds
    data = {name: member_series(c, args.days) for name, c in ckpts.items()}
    records = data[next(iter(data))][1]
    for name, (_, recs, _) in data.items():
        if [r.name for r in recs] != [r.name for r in records]:
            raise SystemExit(f"member {name} has other event records than the first member")
    streams = {d: load_day(d) for d in args.days}
    candidates: dict[str, tuple[dict[str, Any], dict[str, Any], list]] = {}
    for name, (noise, _, ev) in data.items():
        candidates[name] = ({"member": name, **ckpts[name].model_info}, noise, ev)
    for names in ensembles:
        for rule in args.rules:
            noise = {d: combine_stations([data[n][0][d] for n in names], rule) for d in args.days}
            ev = [combine_series(list(group), rule) for group in zip(*(data[n][2] for n in names), strict=True)]
            label = f"{'+'.join(names)} {rule}"
            candidates[label] = ({"ensemble": names, "rule": rule,
                                  "members": {n: ckpts[n].model_info for n in names}}, noise, ev)
    together = coincidence({n: d[0] for n, d in data.items()}, list(data), args.on, window_s)
    for day, pairs in together.items():
        print(day, ", ".join(f"{k}: {v['near']} of {v[k.split('~')[0]]}" for k, v in pairs.items()))
    reports = {}
    for label, (model, noise, ev) in candidates.items():
        rep = cont.score_continuous(model, window_s, streams, noise, records, ev, on=args.on)
        reports[label] = cont.summary(rep)
        reports[label].get("events", {}).pop("records", None)  # per-record rows: detection_quality's JSON has them
        print(f"scored {label}", flush=True)
    sweep = [f"{o:g}" for o in cont.SWEEP_ON]
    at_on = [row(label, r, f"{args.on:g}") for label, r in reports.items()]
    first = next(iter(reports.values()))
    at_on.append(row("recursive STA/LTA", first, f"{cont.StaLta().on:g}", "sta_lta"))
    print("\n".join(format_rows(at_on, args.days)))
    sweeps = {label: [row(label, r, o) for o in sweep] for label, r in reports.items() if label not in data}
    for rows in sweeps.values():
        print()
        print("\n".join(format_rows(rows, args.days)))
    out: dict[str, Any] = {"members": {n: {"path": paths[n], **ckpts[n].model_info} for n in paths},
                           "days": args.days, "events_day": "UV10", "on": args.on, "table": at_on,
                           "coincidence": together,
                           "sweeps": sweeps,
                           "sta_lta_sweep": [row("recursive STA/LTA", first, f"{o:g}", "sta_lta")
                                             for o in cont.SWEEP_STA_LTA],
                           "reports": reports}
    if args.cost_hours:
        out["cost"] = cost(ckpts, args.cost_hours)
    out["seconds"] = round(time.time() - t_start, 1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
