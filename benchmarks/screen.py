"""Simulation of screen and refine (`quakemon.pipeline.screen`) on full-stride probabilities (docs/performance.md,
"Screen and refine").

    .venv/bin/python benchmarks/screen.py --json benchmarks/results/screen_old.json

A window's probability does not depend on which other windows are forwarded, so the cascade is simulated from
the full-stride (1 s) probabilities of every window: the very `Screen` class the pipeline runs decides which
windows are forwarded and what the trigger gets, and a `TriggerBank` with the default settings (on 0.7, off 0.5,
min_duration 2 s, retrigger hold 30 s) turns them into detections, beside the same trigger fed every window.

Data: the msnoise noise days UV05 and UV10 (the model's probabilities cached by
`quakemon.training.continuous.day_series`), the real P catalogue (`realdata.local_events()`, records of a window
or longer) and the synthetic regional and teleseismic events over UV10 (`quakemon.data.distant`, 40 per kind),
the last two through the runner once (`continuous.model_series`) and cached beside the noise days.

For each (K, s): the share of windows forwarded; the trigger transitions (new and closed, with onset, windows,
end and close reason) identical to full stride or not; "new" detections lost and added; P arrivals detected
(within 10 s before ... after, `continuous.match`) lost; and the excursions (runs of windows at or above s) of
which no window was forwarded, with how many of them reach the trigger's `on`.

    .venv/bin/python benchmarks/screen.py --cost --json out.json

`--cost`: what the screen saves, measured: an archive of 4 station-hours (two hours of each noise day, each hour
as its own station, with two synthetic distant events per hour) replayed by `quakemon replay` (a subprocess each,
its CPU time from the kernel, start-up included) with `--screen-every 1` and with `--screen-every K`, alternating,
`--repeats` times; the ratio of the medians and the detections of both are printed. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

EVERY = (2, 4, 8, 10)
THRESHOLDS = (0.05, 0.1, 0.2, 0.3)


def _bank():
    from quakemon.pipeline.settings import TRIGGER
    from quakemon.pipeline.trigger import TriggerBank

    return TriggerBank(TRIGGER.on, TRIGGER.off, TRIGGER.min_duration_s, ["earthquake"], None, None,
                       TRIGGER.retrigger_hold_s)


def _key(ev) -> tuple:
    return (ev.station, ev.state, ev.label, round(ev.onset, 3), round(ev.window_start, 3), round(ev.window_end, 3),
            None if ev.end is None else round(ev.end, 3), ev.close_reason)


def simulate(series: dict[str, Any], every: int, threshold: float) -> dict[str, Any]:
    """Trigger transitions and per-window forwarded flags of the cascade on {station: Series}."""
    from quakemon.pipeline.screen import Screen, ScreenItem

    bank = _bank()
    events: list = []
    forwarded: dict[str, np.ndarray] = {}
    if every == 1:
        for station, s in series.items():
            for a, b, p in zip(s.start.tolist(), s.end.tolist(), s.p.tolist(), strict=True):
                events += bank.update(station, a, b, [p])
            forwarded[station] = np.ones(len(s.p), bool)
        return {"events": events + bank.flush(), "forwarded": forwarded}
    screen = Screen(every, threshold, 1.0, 20.0, [0],
                    busy=lambda st: any(bank.trigger(st, lb).state != "idle" for lb in bank.trigger_labels))

    def feed(item: ScreenItem, probs: np.ndarray, fwd: bool) -> None:
        m = item.meta
        forwarded[m.station][item.payload] = fwd
        events.extend(bank.update(m.station, m.start_ns / 1e9, m.end_ns / 1e9, [float(probs[0])]))

    for station, s in series.items():
        forwarded[station] = np.zeros(len(s.p), bool)
        starts = np.round(s.start * 1e9).astype(np.int64)
        ends = np.round(s.end * 1e9).astype(np.int64)
        for i in range(len(starts)):
            meta = SimpleNamespace(station=station, start_ns=int(starts[i]), end_ns=int(ends[i]), valid=True)
            screen.offer(ScreenItem(meta, i), 0.0)
        while need := screen.advance(feed):
            for it in need:
                it.probs = np.array([s.p[it.payload]], np.float32)
        while need := screen.release(feed):
            for it in need:
                it.probs = np.array([s.p[it.payload]], np.float32)
    return {"events": events + bank.flush(), "forwarded": forwarded}


def missed_excursions(series: dict[str, Any], forwarded: dict[str, np.ndarray], threshold: float,
                      on: float) -> tuple[int, int, int]:
    """(excursions, of which none forwarded, of those reaching `on`): runs of consecutive windows >= threshold."""
    total = missed = missed_on = 0
    for station, s in series.items():
        above = s.p >= threshold
        edges = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            total += 1
            if not forwarded[station][a:b].any():
                missed += 1
                missed_on += bool((s.p[a:b] >= on).any())
    return total, missed, missed_on


def compare(series: dict[str, Any], every: int, threshold: float, records: list | None,
            full: dict[str, Any]) -> dict[str, Any]:
    """One (K, s) on one data set, against the full-stride run `full`."""
    from quakemon.pipeline.settings import TRIGGER
    from quakemon.training import continuous as cont

    run = simulate(series, every, threshold)
    a = sorted(map(_key, full["events"]), key=str)
    b = sorted(map(_key, run["events"]), key=str)
    new_a = {k for k in a if k[1] == "new"}
    new_b = {k for k in b if k[1] == "new"}
    n = sum(len(s.p) for s in series.values())
    fwd = sum(int(f.sum()) for f in run["forwarded"].values())
    exc, missed, missed_on = missed_excursions(series, run["forwarded"], threshold, TRIGGER.on)
    out = {"windows": n, "forwarded": fwd, "forwarded_share": round(fwd / max(n, 1), 4),
           "transitions_identical": a == b, "new_full": len(new_a), "new_lost": len(new_a - new_b),
           "new_added": len(new_b - new_a), "transitions_differing": len(set(a) ^ set(b)),
           "excursions": exc, "excursions_unseen": missed, "excursions_unseen_reaching_on": missed_on}
    if records is not None:
        det_full = det = 0
        for rec, station in records:
            onsets_full = [k[3] for k in new_a if k[0] == station]
            onsets = [k[3] for k in new_b if k[0] == station]
            det_full += cont.match(onsets_full, rec.p_times, 20.0)["detected"]
            det += cont.match(onsets, rec.p_times, 20.0)["detected"]
        out["p_total"] = sum(len(r.p_times) for r, _ in records)
        out["p_detected_full"], out["p_detected"] = det_full, det
    return out


def event_series(ckpt, kind: str) -> tuple[dict[str, Any], list]:
    """{station: Series} and [(record, station)] of the real catalogue ("real") or the synthetic events
    ("synthetic"), through the runner, cached per checkpoint."""
    from quakemon.data.noise_days import cache_dir, load_day
    from quakemon.training import continuous as cont

    records = (cont.real_event_records(ckpt.contract.sampling_rate) if kind == "real"
               else cont.synthetic_event_records(load_day("UV10"), 40))
    streams = [cont._relabel(r.stream, i) for i, r in enumerate(records)]
    stations = [".".join(st[0].id.split(".")[:3]) for st in streams]
    path = cache_dir() / "series" / f"{ckpt.sha256[:16]}_screen_{kind}_fp32.npz"
    if path.exists():
        z = np.load(path)
        series = {str(st): cont.Series(z[f"{st}|start"], z[f"{st}|end"], z[f"{st}|p"]) for st in z["stations"]}
    else:
        series = cont.model_series(ckpt, streams)
        arrays = {"stations": np.array(sorted(series))}
        for st, s in series.items():
            arrays.update({f"{st}|start": s.start, f"{st}|end": s.end, f"{st}|p": s.p})
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return series, [(r, st) for r, st in zip(records, stations, strict=True) if st in series]


def cost_archive(folder, hours_per_day: int = 2, seed: int = 11) -> tuple[list[str], float]:
    """MiniSEED files of noise-day hours (one station each, all starting at the same time) with two synthetic
    distant events each; returns (paths, station-hours)."""
    from quakemon.data.distant import add_distant_event
    from quakemon.data.noise_days import load_day

    rng = np.random.default_rng(seed)
    paths = []
    for day in ("UV05", "UV10"):
        tr = load_day(day).select(component="Z")[0]
        fs = tr.stats.sampling_rate
        for h in range(hours_per_day):
            x = tr.data[int((6 + 5 * h) * 3600 * fs) : int((7 + 5 * h) * 3600 * fs)].astype(np.float64)
            for k, kind in enumerate(("regional", "teleseismic")):
                p_sample = (900 + 1800 * k + rng.uniform(0, 600)) * fs
                x, _ = add_distant_event(x[None], kind, p_sample, fs, float(rng.uniform(5, 30)), rng)
                x = x[0]
            out = tr.copy()
            out.data = np.round(x).astype(np.int32)
            out.stats.station = f"{day[-2:]}H{h}"
            out.stats.starttime = tr.stats.starttime + 6 * 3600
            path = folder / f"{out.id}.mseed"
            out.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
            paths.append(str(path))
    return paths, 2.0 * hours_per_day


def replay_cpu(paths: list[str], every: int, threshold: float, out) -> tuple[float, list[str]]:
    """(CPU seconds of a `quakemon replay` subprocess, the ids of its "new" detections)."""
    import os
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-m", "quakemon.cli.app", "--log-level", "warning", "replay", *paths,
                    "--screen-every", str(every), "--screen-threshold", str(threshold), "--quiet", "--output",
                    str(out)], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    bodies = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return cpu, sorted(b["id"] for b in bodies if b.get("state") == "new")


def cost(every: int, threshold: float, repeats: int) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, station_hours = cost_archive(folder)
        runs: dict[int, list[float]] = {1: [], every: []}
        detections: dict[int, list[str]] = {}
        for _ in range(repeats):
            for k in (1, every):
                cpu, detections[k] = replay_cpu(paths, k, threshold, folder / f"out{k}.jsonl")
                runs[k].append(cpu)
                print(f"screen_every {k}: {cpu:.1f} CPU s, {cpu / station_hours:.2f} CPU s per station-hour, "
                      f"{len(detections[k])} detections", flush=True)
        med = {k: float(np.median(v)) for k, v in runs.items()}
        ratio = med[every] / med[1]
        print(f"median CPU s per station-hour: {med[1] / station_hours:.2f} (every window) vs "
              f"{med[every] / station_hours:.2f} (screen_every {every}): ratio {ratio:.2f}")
        return {"station_hours": station_hours, "every": every, "threshold": threshold, "cpu_s": runs,
                "per_station_hour_median": {k: v / station_hours for k, v in med.items()}, "ratio": ratio,
                "new_detections": {k: len(v) for k, v in detections.items()},
                "same_detections": detections[1] == detections[every]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, nargs="+", default=list(EVERY))
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--cost", action="store_true", help="measure the replay's CPU time instead (module docstring)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.cost:
        report = cost(args.every[0] if args.every != list(EVERY) else 4, args.thresholds[0]
                      if args.thresholds != list(THRESHOLDS) else 0.1, args.repeats)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=1)
        return 0
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import cache_dir
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training import continuous as cont

    configure_logging("warning")
    t0 = time.time()
    ckpt = load_checkpoint(resolve_checkpoint(None))
    sets: dict[str, tuple[dict[str, Any], list | None]] = {}
    for day in ("UV05", "UV10"):
        path = cache_dir() / "series" / f"{ckpt.sha256[:16]}_{day}_fp32.npz"
        if not path.exists():
            cont.day_series(ckpt, day)  # computes and caches it (minutes)
        z = np.load(path)
        sets[f"noise {day}"] = ({str(z["station"]): cont.Series(z["start"], z["end"], z["p"])}, None)
    sets["real catalogue"] = event_series(ckpt, "real")
    sets["synthetic distant (UV10)"] = event_series(ckpt, "synthetic")
    report: dict[str, Any] = {"model": ckpt.model_info, "trigger": "defaults", "stride_s": 1.0, "results": []}
    for name, (series, records) in sets.items():
        full = simulate(series, 1, 1.0)
        for k in args.every:
            for thr in args.thresholds:
                r = {"data": name, "every": k, "threshold": thr, **compare(series, k, thr, records, full)}
                report["results"].append(r)
                print(json.dumps(r))
    report["seconds"] = round(time.time() - t0, 1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
