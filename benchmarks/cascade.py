"""A cascade screen, measured: a tiny distilled ScreenNet (`quakemon.models.screen_net`) scores every window and
only the windows it passes go through the detector (docs/performance.md, "Cascade screen").

    .venv/bin/python -m quakemon.training.screen_distill --day UV05 --output /tmp/screen_uv05.safetensors
    .venv/bin/python benchmarks/cascade.py --screen /tmp/screen_uv05.safetensors --json out.json

Quality, simulated on full-stride probabilities (a window's probability does not depend on which other windows
are forwarded), on data the screen never trained on: the other noise day, the real P catalogue and the synthetic
regional and teleseismic events over UV10 (`benchmarks/screen.py`'s sets and caches; the training day is listed
too, marked). The screen's scores come from the runner's own windowing and preprocessing of the same records.
Cascade rule: a window is forwarded when its score reaches the checkpoint's threshold or when the station's
trigger is not idle (as the K-screen's dense state: a window that is not forwarded must never be able to move a
trigger); any other window is fed to the trigger as sigmoid(min(score, threshold)), below the trigger's off.
Reported per set and per threshold (the checkpoint's, and the others chosen on its validation windows for
teacher p >= 0.05 ... 0.5, kept in its metadata): windows at teacher p >= 0.5 / >= 0.1 that the screen fails to
pass; the share passed by the screen and forwarded in all; trigger transitions against full stride
(`benchmarks/screen.py`'s comparison) and P arrivals detected.

    .venv/bin/python benchmarks/cascade.py --screen S.safetensors --cost --json out.json

`--cost`: in one process, on `benchmarks/screen.py`'s 4 station-hour archive (vertical, 100 Hz): the replay
(`DetectionRunner`, two single-threaded forward workers) four ways, alternating, each `--repeats` times: with the
detector on every window; with the detector replaced by nothing (the per-window chain: decoding, windowing,
centring, z-score and STFT, triggers); with the screen net instead of the detector (chain + screen); and the
pipeline's cascade (`screen_net`: the screen on every window, the detector on the windows it forwards).
Process CPU time (all threads), per station-hour. Then on one batch of the archive's real spectrograms: the
screen net per window at batch 256 on 1 and 2 torch threads, the detector's forward per window (batch 64, 1
thread) and the preprocessing alone (`preprocess_windows`, 1 thread). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screen as kscreen  # noqa: E402  (benchmarks/screen.py: its data sets, trigger bank and comparison)


def simulate_cascade(series: dict[str, Any], scores: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """Trigger transitions and per-window forwarded / passed flags of the cascade on {station: Series}."""
    from quakemon.pipeline.settings import TRIGGER

    fill = 1.0 / (1.0 + math.exp(-threshold))
    if not fill < TRIGGER.off:
        raise ValueError(f"threshold {threshold} (p {fill:.3f}) is not below the trigger's off {TRIGGER.off}")
    bank = kscreen._bank()
    events: list = []
    forwarded, passed = {}, {}
    for station, s in series.items():
        sc = scores[station]
        ok = ~(sc < threshold)
        fwd = np.zeros(len(s.p), bool)
        quiet = 1.0 / (1.0 + np.exp(-np.minimum(sc, threshold)))
        for i, (a, b, p) in enumerate(zip(s.start.tolist(), s.end.tolist(), s.p.tolist(), strict=True)):
            busy = any(bank.trigger(station, lb).state != "idle" for lb in bank.trigger_labels)
            fwd[i] = busy or ok[i]
            events += bank.update(station, a, b, [p if fwd[i] else float(quiet[i])])
        forwarded[station], passed[station] = fwd, ok
    return {"events": events + bank.flush(), "forwarded": forwarded, "passed": passed}


def compare_cascade(series: dict[str, Any], scores: dict[str, np.ndarray], threshold: float,
                    records: list | None) -> dict[str, Any]:
    from quakemon.training import continuous as cont

    full = kscreen.simulate(series, 1, 1.0)
    run = simulate_cascade(series, scores, threshold)
    a = sorted(map(kscreen._key, full["events"]), key=str)
    b = sorted(map(kscreen._key, run["events"]), key=str)
    new_a, new_b = {k for k in a if k[1] == "new"}, {k for k in b if k[1] == "new"}
    p = np.concatenate([s.p for s in series.values()])
    ok = np.concatenate([run["passed"][st] for st in series])
    fwd = np.concatenate([run["forwarded"][st] for st in series])
    out = {"windows": int(len(p)), "passed_share": round(float(ok.mean()), 5),
           "forwarded_share": round(float(fwd.mean()), 5),
           "p>=0.5": int((p >= 0.5).sum()), "p>=0.5_not_passed": int(((p >= 0.5) & ~ok).sum()),
           "p>=0.5_not_forwarded": int(((p >= 0.5) & ~fwd).sum()),
           "p>=0.1": int((p >= 0.1).sum()), "p>=0.1_not_passed": int(((p >= 0.1) & ~ok).sum()),
           "p>=0.1_not_forwarded": int(((p >= 0.1) & ~fwd).sum()),
           "transitions_identical": a == b, "transitions_differing": len(set(a) ^ set(b)),
           "new_full": len(new_a), "new_lost": len(new_a - new_b), "new_added": len(new_b - new_a)}
    if records is not None:
        det_full = det = 0
        for rec, station in records:
            det_full += cont.match([k[3] for k in new_a if k[0] == station], rec.p_times, 20.0)["detected"]
            det += cont.match([k[3] for k in new_b if k[0] == station], rec.p_times, 20.0)["detected"]
        out.update(p_total=sum(len(r.p_times) for r, _ in records), p_detected_full=det_full, p_detected=det)
    return out


def screen_scores(ckpt, scr, streams, series: dict[str, Any]) -> dict[str, np.ndarray]:
    """{station: scores aligned with series[station].start} through the runner's windowing and preprocessing."""
    from quakemon.training.screen_distill import score, series_features

    feats = series_features(ckpt, streams, scr.net)
    out = {}
    for station, s in series.items():
        starts, x = feats[station]
        idx = np.searchsorted(starts, s.start)
        if not np.allclose(starts[np.minimum(idx, len(starts) - 1)], s.start, atol=1e-3):
            raise RuntimeError(f"{station}: screen windows do not match the series")
        out[station] = score(scr.net, x[idx])
    return out


def quality(ckpt, scr, train_day: str, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """The comparison on every data set, for each of `thresholds` ({name: logit})."""
    from quakemon.data.noise_days import load_day
    from quakemon.training import continuous as cont

    sets = []
    for day in ("UV05", "UV10"):
        series = cont.day_series(ckpt, day)
        name = f"noise {day}" + (" (trained on)" if day == train_day else "")
        sets.append((name, series, screen_scores(ckpt, scr, [load_day(day)], series), None))
    for kind, name in (("real", "real catalogue"), ("synthetic", "synthetic distant (UV10)")):
        series, pairs = kscreen.event_series(ckpt, kind)
        records = (cont.real_event_records(ckpt.contract.sampling_rate) if kind == "real"
                   else cont.synthetic_event_records(load_day("UV10"), 40))
        streams = [cont._relabel(r.stream, i) for i, r in enumerate(records)]
        sets.append((name, series, screen_scores(ckpt, scr, streams, series), pairs))
    results = []
    for tname, thr in thresholds.items():
        for name, series, sc, pairs in sets:
            results.append({"data": name, "threshold": tname, "logit": round(thr, 4),
                            **compare_cascade(series, sc, thr, pairs)})
            print(json.dumps(results[-1]), flush=True)
    return results


# ------------------------------------------------------------------------------------------------------ cost
def _replay_cpu(ckpt, inference, traces, mode: str, scr, counts: dict | None = None) -> tuple[float, int]:
    """(process CPU seconds, windows) of one replay of `traces`: mode "model", "chain", "screen" or "cascade"
    (the pipeline's cascade, `[model] screen_net`; its forwarded / screened_out counts go to `counts`)."""
    from quakemon.pipeline.runner import DetectionRunner

    runner = DetectionRunner(ckpt, inference=inference, screen_every=1,
                             screen_net=scr if mode == "cascade" else None)
    if mode not in ("model", "cascade"):
        def infer(spectra, metas):
            if mode == "screen":
                scr.scores(spectra)
            return np.zeros((len(metas), len(ckpt.labels)), np.float32)

        runner.stage.infer = infer
    t0 = time.process_time()
    for _ in runner.add_stream(traces):
        pass
    runner.finish()
    cpu = time.process_time() - t0
    windows = runner.windows
    if counts is not None and mode == "cascade":
        counts.update({k: int(runner.stage.stats.get(k, 0)) for k in ("forwarded", "screened_out", "refined")})
    runner.close()
    return cpu, windows


def _per_window(fn, n: int, repeats: int = 5) -> float:
    """Median process CPU seconds per window of fn() over `n` windows."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times)) / n


def cost(ckpt, scr, repeats: int) -> dict[str, Any]:
    import tempfile

    import torch
    from obspy import read

    from quakemon.pipeline.detect import preprocess_windows, stack_windows
    from quakemon.pipeline.engine import InferenceEngine
    from quakemon.pipeline.runner import Inference
    from quakemon.pipeline.transforms import set_cpu_threads
    from quakemon.pipeline.windowing import StationWindower

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        paths, station_hours = kscreen.cost_archive(Path(tmp))
        traces = [tr for p in paths for tr in read(p)]
    inference = Inference(ckpt, device="cpu", precision="fp32")
    runs: dict[str, list[float]] = {"model": [], "chain": [], "screen": [], "cascade": []}
    windows = 0
    counts: dict[str, int] = {}
    for _ in range(repeats):
        for mode in runs:
            cpu, windows = _replay_cpu(ckpt, inference, traces, mode, scr, counts)
            runs[mode].append(cpu)
            print(f"replay {mode}: {cpu:.2f} CPU s, {cpu / station_hours:.3f} per station-hour", flush=True)
    inference.close()
    med = {k: float(np.median(v)) for k, v in runs.items()}
    # one batch of real spectrograms from the archive
    win = StationWindower(ckpt.contract, 1.0)
    ws = [w for w in win.add_traces(traces[:1])][:256]
    data, metas = stack_windows(ws)
    torch.set_num_threads(1)
    set_cpu_threads(1)
    spectra, _ = preprocess_windows(data, metas, ckpt.contract)
    n = len(spectra)
    engine = InferenceEngine(ckpt, device="cpu", precision="fp32", batch_size=64)
    micro = {"batch": n,
             "preprocess_1thread_us": 1e6 * _per_window(lambda: preprocess_windows(data, metas, ckpt.contract), n),
             "screen_1thread_us": 1e6 * _per_window(lambda: scr.scores(spectra), n),
             "forward_1thread_us": 1e6 * _per_window(lambda: engine.predict(spectra), n, 3)}
    torch.set_num_threads(2)
    micro["screen_2threads_us"] = 1e6 * _per_window(lambda: scr.scores(spectra), n)
    per_hour = {k: v / station_hours for k, v in med.items()}
    per_window_us = {k: 1e6 * v / windows for k, v in med.items()}
    report = {"station_hours": station_hours, "windows": windows, "cpu_s": runs,
              "per_station_hour_median": per_hour, "per_window_us_median": per_window_us,
              "forward_per_station_hour": per_hour["model"] - per_hour["chain"],
              "screen_per_station_hour": per_hour["screen"] - per_hour["chain"],
              "cascade_over_model": per_hour["cascade"] / per_hour["model"], "cascade_counts": counts,
              "micro": micro}
    print(json.dumps(report, indent=1))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--screen", required=True, help="screen checkpoint (quakemon.training.screen_distill)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cost", action="store_true", help="measure CPU cost instead (module docstring)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from quakemon.base.logs import configure_logging
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.models.screen_net import load_screen

    configure_logging("warning")
    ckpt = load_checkpoint(resolve_checkpoint(None))
    scr = load_screen(args.screen, ckpt.sha256, ckpt.contract)
    t0 = time.time()
    report: dict[str, Any] = {"model": ckpt.model_info, "screen": scr.meta, "threshold": scr.threshold}
    if args.cost:
        report["cost"] = cost(ckpt, scr, args.repeats)
    else:
        distilled = scr.meta.get("distilled", {})
        thresholds = {"checkpoint": scr.threshold}
        thresholds.update({f"val p>={k}": v for k, v in distilled.get("val_thresholds", {}).items()})
        report["results"] = quality(ckpt, scr, distilled.get("day", ""), thresholds)
    report["seconds"] = round(time.time() - t0, 1)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
