"""Benchmark: P pickers on the real-data catalogue, against the catalogued P times, in one run.

    .venv/bin/python benchmarks/picks.py [--no-detections] [--repeats 5]
    .venv/bin/python benchmarks/picks.py --pipeline [--strides 1 2 4]

--pipeline: the picks the detections carry, scored against the catalogue beside the first window's start (the
onset of quakemon.detection/1), with recall, late detections and CPU cost per stride (benchmarks/pipeline_picks.py).

What the detector hands the picker is simulated for every catalogued P (`quakemon.data.realdata.local_events()`,
resampled to the bundled model's 100 Hz with `realdata.load`): the 20 s windows on the 1 s grid whose end lies
1-5 s after the P (the model fires once enough of the P is inside the window); where the recording is too short for
those, the earliest window of the recording that holds the P with at least 1 s after it. Z-only stations get zero
horizontals, as the windower gives them. Every candidate picks every window; the table gives the median |pick - P|,
the share of windows picked within 0.5 s and 1.0 s of the P (misses count as outside), the share without a pick,
the median signed error, and the cost per pick (best of --repeats, all windows in one call for the batched
pickers, one call per window for ObsPy's). "window start" is today's detection onset (the window's start).
A variant gets 5 s of data before the window too. The share of 20 s windows of the catalogued real noise
(`realdata.noise_recordings()`, every 10 s) that get a pick shows what each method makes of noise.

With detections (default): each catalogued recording is also replayed through `DetectionRunner` with the bundled
model (every trigger: no re-trigger hold); each "new" detection's first window over ``on`` ([window_start,
window_start + 20 s], cut from the same 100 Hz data) is picked, and scored against the nearest catalogued P
within that window (detections without a P inside are listed as false). Not collected by pytest (no test_ names).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from obspy.signal.trigger import ar_pick, pk_baer
from scipy.signal import lfilter

from quakemon.base.logs import configure_logging
from quakemon.data import realdata
from quakemon.pipeline import picker
from quakemon.pipeline.picker import PickerConfig, aic_onset, pick_p, prepare_vertical

FS = 100.0
WIN = 2000
LEAD = 500  # 5 s of data before the window, for the 'with 5 s before' variant
NS = 1_000_000_000


@dataclass
class Cases:
    """Windows [M, 3, WIN] float32 (ZNE), their start (ns), the true P offset in each (s), and labels."""

    data: np.ndarray
    start_ns: np.ndarray
    p_offset_s: np.ndarray
    names: list[str]
    components: list[str]
    lead: np.ndarray  # [M, 3, LEAD + WIN]: LEAD samples before the window, then the window; NaN where unavailable


def _stream_array(rec: realdata.EventRecording) -> tuple[np.ndarray, int]:
    st = realdata.load(rec, FS)
    n = min(len(tr.data) for tr in st)
    out = np.zeros((3, n))
    for tr in st:
        out["ZNE".index(tr.stats.channel[-1]) if tr.stats.channel[-1] in "ZNE" else 0] = tr.data[:n]
    return out, st[0].stats.starttime.ns


def _cut(arr: np.ndarray, t0_ns: int, start_ns: int, lead: int = 0) -> np.ndarray | None:
    i = round((start_ns - t0_ns) * FS / NS) - lead
    if i < 0 or i + lead + WIN > arr.shape[1]:
        return None
    return arr[:, i : i + lead + WIN]


def _lead(arr: np.ndarray, t0_ns: int, start_ns: int) -> np.ndarray:
    got = _cut(arr, t0_ns, start_ns, LEAD)
    return got if got is not None else np.full((3, LEAD + WIN), np.nan)


def _cases(rows: list, starts: list, offs: list, names: list, comps: list, leads: list) -> Cases:
    return Cases(np.asarray(rows, np.float32), np.asarray(starts, np.int64), np.asarray(offs, np.float64), names,
                 comps, np.asarray(leads, np.float32).reshape(len(rows), 3, LEAD + WIN))


def catalogue_cases(after_s: tuple[float, float] = (1.0, 5.0)) -> Cases:
    """The simulated detector windows of every catalogued P (module docstring)."""
    rows, starts, offs, names, comps, leads = [], [], [], [], [], []
    for rec in realdata.local_events():
        arr, t0 = _stream_array(rec)
        for p in rec.p_times:
            p_ns = p.ns
            first_end = math.ceil((p_ns + after_s[0] * NS) / NS)
            ends = range(first_end, math.floor((p_ns + after_s[1] * NS) / NS) + 1)
            picked = [(e - 20) * NS for e in ends if _cut(arr, t0, (e - 20) * NS) is not None]
            if not picked:  # short recording: the earliest grid window holding the P with >= 1 s after it
                s = math.ceil(t0 / NS) * NS
                if s <= p_ns <= s + (20 - after_s[0]) * NS and _cut(arr, t0, s) is not None:
                    picked = [s]
            for s in picked:
                rows.append(_cut(arr, t0, s))
                leads.append(_lead(arr, t0, s))
                starts.append(s)
                offs.append((p_ns - s) / NS)
                names.append(rec.name)
                comps.append(rec.components)
    return _cases(rows, starts, offs, names, comps, leads)


# ------------------------------------------------------------------------------------------------------ candidates
def cand_window_start(x: np.ndarray) -> np.ndarray:
    return np.zeros(len(x))


def cand_chosen(x: np.ndarray) -> np.ndarray:
    return pick_p(x, 0, FS).offset_s


def with_lead(cases: Cases) -> np.ndarray:
    """The chosen picker on [window start - 5 s, window end] where the data exist, else on the window alone."""
    out = pick_p(cases.data, 0, FS).offset_s
    ok = np.isfinite(cases.lead).all(axis=(1, 2))
    if ok.any():
        out[ok] = pick_p(cases.lead[ok], 0, FS).offset_s - LEAD / FS
    return out


def cand_aic_ungated(x: np.ndarray) -> np.ndarray:
    """The chosen picker without its SNR gate (min_snr 0)."""
    return pick_p(x, 0, FS, config=PickerConfig(min_snr=0.0)).offset_s


def cand_aic_two_stage(x: np.ndarray, before_s: float = 1.0, after_s: float = 0.5) -> np.ndarray:
    """The chosen picker's onset refined by a second AIC over [onset - before_s, onset + after_s], same SNR gate."""
    cfg = PickerConfig()
    batch = pick_p(x, 0, FS, config=PickerConfig(min_snr=0.0))
    y, _ = prepare_vertical(x, FS, cfg)
    coarse = np.where(batch.picked, np.round(batch.offset_s * FS), -1).astype(np.int64)
    lo = np.maximum(coarse - int(before_s * FS), int(cfg.edge_s * FS))
    hi = np.minimum(coarse + int(after_s * FS), y.shape[1])
    fine, _ = aic_onset(y, lo, hi, int(cfg.min_segment_s * FS))
    return np.where((coarse >= 0) & (fine >= 0) & (batch.snr >= cfg.min_snr), fine / FS, np.nan)


def cand_stalta_aic(x: np.ndarray, sta_s: float = 0.5, lta_s: float = 5.0, thr: float = 3.0) -> np.ndarray:
    """Recursive STA/LTA on the band-passed vertical (lfilter, batched): first sample over thr (else the maximum,
    ignoring the first lta_s), then AIC over [trigger - 1.5 s, trigger + 0.5 s]."""
    cfg = PickerConfig()
    y, ok = prepare_vertical(x, FS, cfg)
    e = y * y
    cs, cl = 1.0 / (sta_s * FS), 1.0 / (lta_s * FS)
    sta = lfilter([cs], [1.0, cs - 1.0], e, axis=1)
    lta = lfilter([cl], [1.0, cl - 1.0], e, axis=1)
    ratio = np.where(lta > 0, sta / np.maximum(lta, 1e-300), 0.0)
    ratio[:, : int(lta_s * FS)] = 0.0
    over = ratio >= thr
    trig = np.where(over.any(axis=1), np.argmax(over, axis=1), np.argmax(ratio, axis=1))
    lo = np.maximum(trig - int(1.5 * FS), 0)
    hi = np.minimum(trig + int(0.5 * FS), y.shape[1])
    onset, _ = aic_onset(y, lo, hi, int(cfg.min_segment_s * FS))
    return np.where(ok & (onset >= 0), onset / FS, np.nan)


def cand_pk_baer(x: np.ndarray) -> np.ndarray:
    """ObsPy pk_baer on the band-passed vertical, ObsPy test parameters converted from 200 Hz to 100 Hz."""
    y, ok = prepare_vertical(x, FS, PickerConfig())
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        if ok[i]:
            p, _ = pk_baer(y[i].astype(np.float32), int(FS), 10, 30, 7.0, 12.0, 50, 50)
            out[i] = p / FS if p > 0 else np.nan
    return out


def cand_ar_pick(x: np.ndarray) -> np.ndarray:
    """ObsPy ar_pick with the parameters of ObsPy's test; a vertical-only window gets its vertical as N and E."""
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        z, n, e = (np.asarray(c, np.float32) for c in x[i])
        if not n.any():
            n = e = z
        try:
            p, _ = ar_pick(z, n, e, FS, 1.0, 20.0, 1.0, 0.1, 4.0, 1.0, 2, 8, 0.1, 0.2)
        except Exception:  # noqa: BLE001 - a failed pick is a miss here
            continue
        out[i] = p if 0 < p < WIN / FS else np.nan
    return out


CANDIDATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "window start (today's onset)": cand_window_start,
    f"{picker.METHOD} (chosen)": cand_chosen,
    "aic without the SNR gate": cand_aic_ungated,
    "aic + fine aic -1/+0.5 s": cand_aic_two_stage,
    "sta/lta 0.5/5 s + aic": cand_stalta_aic,
    "pk_baer (obspy)": cand_pk_baer,
    "ar_pick (obspy, 3-C)": cand_ar_pick,
}


# ------------------------------------------------------------------------------------------------------ scoring
def score(pick: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = pick - truth
    a = np.abs(err)
    has = np.isfinite(err)
    return {
        "n": len(truth),
        "median_abs": float(np.median(np.where(has, a, np.inf))),
        "within_0_5": float(np.mean(has & (a <= 0.5))),
        "within_1_0": float(np.mean(has & (a <= 1.0))),
        "no_pick": float(np.mean(~has)),
        "median_signed": float(np.median(err[has])) if has.any() else float("nan"),
        "picks_0_5": float(np.mean(a[has] <= 0.5)) if has.any() else float("nan"),
        "picks_1_0": float(np.mean(a[has] <= 1.0)) if has.any() else float("nan"),
        "picks_median_abs": float(np.median(a[has])) if has.any() else float("nan"),
    }


def timed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, repeats: int) -> tuple[np.ndarray, float]:
    best, out = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(x)
        best = min(best, time.perf_counter() - t)
    return out, best / len(x) * 1e6


def print_table(title: str, rows: list[tuple[str, dict[str, float], float | None]]) -> None:
    print(f"\n{title}")
    print("  all windows (a window without a pick counts as a miss)  | windows with a pick")
    print(f"{'method':30s} {'n':>3s} {'med|err|':>8s} {'<=0.5s':>6s} {'<=1.0s':>6s} {'no pick':>7s} | "
          f"{'med|err|':>8s} {'<=0.5s':>6s} {'<=1.0s':>6s} {'med err':>7s} | {'us/pick':>7s}")
    for name, s, us in rows:
        cost = f"{us:7.0f}" if us is not None else f"{'-':>7s}"
        print(f"{name:30s} {s['n']:3d} {s['median_abs']:8.2f} {s['within_0_5']:6.0%} {s['within_1_0']:6.0%} "
              f"{s['no_pick']:7.0%} | {s['picks_median_abs']:8.2f} {s['picks_0_5']:6.0%} {s['picks_1_0']:6.0%} "
              f"{s['median_signed']:7.2f} | {cost}")


def uncertainty_coverage(cases: Cases) -> None:
    batch = pick_p(cases.data, cases.start_ns, FS)
    err = np.abs(batch.offset_s - cases.p_offset_s)
    ok = batch.picked
    unc = batch.uncertainty_s[ok]
    print(f"\n{picker.METHOD} uncertainty: median {np.median(unc):.3f} s (range {unc.min():.3f}-{unc.max():.3f}); "
          f"|err| <= 1 sigma {np.mean(err[ok] <= unc):.0%}, <= 2 sigma {np.mean(err[ok] <= 2 * unc):.0%}; "
          f"SNR median {np.nanmedian(batch.snr):.1f}")


def noise_cases() -> np.ndarray:
    """20 s windows every 10 s of the catalogued real noise (`realdata.noise_recordings()`), [M, 3, WIN]."""
    rows = []
    for rec in realdata.noise_recordings():
        arr, _ = _stream_array(rec)
        rows += [arr[:, i : i + WIN] for i in range(0, arr.shape[1] - WIN + 1, WIN // 2)]
    return np.asarray(rows, np.float32)


def per_recording(cases: Cases, pick: np.ndarray) -> None:
    print(f"\n{picker.METHOD} per recording (picked/windows, median and worst |err| s of the picks):")
    for name in dict.fromkeys(cases.names):
        m = np.array([n == name for n in cases.names])
        e = np.abs(pick[m] - cases.p_offset_s[m])
        e = e[np.isfinite(e)]
        med, worst = (np.median(e), e.max()) if e.size else (np.nan, np.nan)
        print(f"  {name:26s} {e.size:3d}/{int(m.sum()):<3d} {med:6.2f} {worst:6.2f}")


# ------------------------------------------------------------------------------------------------------ detections
def detection_cases() -> tuple[Cases, int, int]:
    """First windows over `on` of the bundled model's "new" detections on the catalogue that hold a catalogued P;
    also the number of the others: starting within 60 s after a P (a re-trigger in the event), or not."""
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import DetectionRunner
    from quakemon.wire.schema import DETECTION_SCHEMA

    ckpt = load_checkpoint(resolve_checkpoint(None))
    rows, starts, offs, names, comps, leads = [], [], [], [], [], []
    late = none = 0
    for rec in realdata.local_events():
        runner = DetectionRunner(ckpt, device="cpu", overlap=False, retrigger_hold_s=0.0)  # every trigger
        bodies = [*runner.add_stream(realdata.load(rec)), *runner.finish()]
        arr, t0 = _stream_array(rec)
        for body in bodies:
            if body.get("schema") != DETECTION_SCHEMA or body["state"] != "new":
                continue
            s = _ns(body["window_start"])  # the first window over on (the detection's onset is now its pick)
            inside = [p.ns for p in rec.p_times if s <= p.ns < s + WIN * NS // int(FS)]
            w = _cut(arr, t0, s)
            if not inside or w is None:
                if any(s - 60 * NS <= p.ns < s for p in rec.p_times):
                    late += 1
                else:
                    none += 1
                continue
            rows.append(w)
            leads.append(_lead(arr, t0, s))
            starts.append(s)
            offs.append((inside[0] - s) / NS)
            names.append(rec.name)
            comps.append(rec.components)
    return _cases(rows, starts, offs, names, comps, leads), late, none


def _ns(iso: str) -> int:
    from obspy import UTCDateTime

    return UTCDateTime(iso).ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-detections", action="store_true", help="skip the replay through the bundled model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pipeline", action="store_true", help="only the picks the pipeline publishes: every "
                    "catalogued recording through DetectionRunner (benchmarks/pipeline_picks.py), per --strides")
    ap.add_argument("--strides", type=float, nargs="+", default=[1.0], help="window strides for --pipeline, s")
    args = ap.parse_args()
    configure_logging("warning")
    if args.pipeline:
        from pipeline_picks import print_results, replay_catalogue

        from quakemon.pipeline.settings import TRIGGER

        print_results([replay_catalogue(s, TRIGGER.retrigger_hold_s)[0] for s in args.strides])
        return
    cases = catalogue_cases()
    arrivals = {(n, round(s / NS + o, 2))
                for n, s, o in zip(cases.names, cases.start_ns, cases.p_offset_s, strict=True)}
    print(f"catalogue: {len(cases.p_offset_s)} windows, {len(set(cases.names))} recordings, {len(arrivals)} P "
          f"arrivals; P at {cases.p_offset_s.min():.1f}-{cases.p_offset_s.max():.1f} s into the window")
    rows, chosen = [], None
    for name, fn in CANDIDATES.items():
        reps = args.repeats if fn not in (cand_pk_baer, cand_ar_pick) else 1
        pick, us = timed(fn, cases.data, reps)
        rows.append((name, score(pick, cases.p_offset_s), us))
        if fn is cand_chosen:
            chosen = pick
    rows.append((f"{picker.METHOD}, 5 s before the window too", score(with_lead(cases), cases.p_offset_s), None))
    print_table("simulated detector windows (window end 1-5 s after the catalogued P)", rows)
    noise = noise_cases()
    picked = {name: float(np.mean(np.isfinite(fn(noise)))) for name, fn in CANDIDATES.items()
              if fn is not cand_window_start}
    print(f"\nreal noise ({len(noise)} windows of 20 s, every 10 s, {len(realdata.noise_recordings())} recordings), "
          "share of windows with a pick:\n" + "\n".join(f"  {k:30s} {v:5.0%}" for k, v in picked.items()))
    uncertainty_coverage(cases)
    per_recording(cases, chosen)
    if not args.no_detections:
        det, late, none = detection_cases()
        print(f"\nbundled model, DetectionRunner on the catalogue: {len(det.p_offset_s)} \"new\" detections whose "
              f"first window over on holds a catalogued P (at {det.p_offset_s.min():.1f}-{det.p_offset_s.max():.1f} s "
              f"into it); {late} more start within 60 s after a P (re-triggers in an event), {none} elsewhere")
        drows = [(name, score(fn(det.data), det.p_offset_s), None) for name, fn in CANDIDATES.items()]
        drows.append((f"{picker.METHOD}, 5 s before the window too", score(with_lead(det), det.p_offset_s), None))
        print_table("first window over `on` of real detections", drows)
        batch = pick_p(det.data, det.start_ns, FS)
        print(f"\n{picker.METHOD} on the detections, misses (no pick or |err| > 0.5 s):")
        for i in np.flatnonzero(~(np.abs(batch.offset_s - det.p_offset_s) <= 0.5)):
            print(f"  {det.names[i]:26s} P at {det.p_offset_s[i]:5.2f} s, pick {batch.offset_s[i]:6.2f} s, "
                  f"SNR {batch.snr[i]:5.2f}")


if __name__ == "__main__":
    main()
