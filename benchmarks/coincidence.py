"""Which noise-day detections are earthquakes? A two-station coincidence check on msnoise's UV05 and UV10.

    python benchmarks/coincidence.py --model old=OLD.safetensors --model ms4=ms4.safetensors \\
        --json benchmarks/results/coincidence.json

UV05 and UV10 recorded the same day (2010-09-01) a few km apart on Piton de la Fournaise, so a real event that one
station's detector fires on should leave a trace at the other station within a few seconds. For each detector
(each `--model` at trigger on 0.7 from its cached day probabilities, and the recursive STA/LTA 3.5/1.0) and each
station, every detection is checked at the other station.

The rule (fixed before any count was looked at; nothing below was tuned on the counts):

* Delay bound. D = the 3-D distance between the stations (UTM coordinates and altitude from the msnoise wheel's
  station list, `noise_days.station_coordinates`); DELAY = D / 1.5 km/s: the largest arrival-time difference of
  one wave between the stations for any source location, with 1.5 km/s a low P velocity for a volcanic edifice's
  shallow layers.
* Each detection stands for an interval in which the signal that caused it began: a model detection with onset
  o: [o, o + window length] (the trigger's contract: the signal lies between the onset and the end of the first
  window that reached `on`); an STA/LTA trigger at t: [t - 2 STA, t] (the 1 s STA reaches its level within about
  two STA lengths of an impulsive arrival).
* Evidence (a): a detection at the other station, by any of the detectors (the models and the STA/LTA), whose
  interval overlaps the detection's interval widened by DELAY on both sides.
* Evidence (b), weaker and independent of every detector's trigger: the other station's recursive STA/LTA ratio
  (1-20 Hz, 1 s / 10 s) reaches EVIDENCE_RATIO (2.0) somewhere in [start - DELAY, end + DELAY + 2 STA] of the
  detection's interval (the ratio lags an arrival by up to two STA lengths). Each run of samples at or above
  the level is an interval [first - 2 STA, last] and is tested like a detection.
* "Unconfirmed": neither (a) nor (b).
* Chance coincidences: the other station's evidence is shifted in time, circularly over the day, by each of
  OFFSETS_S (+-60 s to +-3600 s in steps of 60 s, none near 0) and counted again; the mean and spread of those
  counts is the number expected by chance for detections as frequent and as long as these.

Coincidence at two stations is evidence, not proof, that a detection is a real event: two stations a few km apart
share weather, ocean microseism and the volcano's tremor, so a shared noise burst can coincide too, and a small
event can be real and still below the other station's noise.

Each detection is also described at both stations, from the 1-20 Hz band-passed vertical (counts, no instrument
correction): the largest STA/LTA ratio in its search interval and its time; the largest amplitude in the 10 s from
2 s before that time; the amplitude over the robust noise level (1.4826 x median |x| of the 60 s ending 10 s
before the search interval); the duration the 1 s smoothed envelope stays at or above twice its median over that
noise stretch, around the peak; the dominant frequency (largest Hann-tapered periodogram value over the same
10 s) of the band-passed trace within 1-20 Hz and, as first planned, of the unfiltered vertical within 0.5-45 Hz
(there the ocean microseism's leakage wins for all but the strongest signals); and the delay of the other
station's ratio peak. The same measures on random intervals of each day give the ordinary noise for comparison.

Beside the rule, and chosen after its first counts (so not part of it): evidence (b) at the higher ratio levels
POST_HOC_LEVELS, because at 2.0 the ratio runs are so frequent that (b) confirms most long intervals by chance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Slowest apparent velocity assumed between the stations (km/s).
MIN_VELOCITY_KM_S = 1.5
#: Level of the other station's STA/LTA ratio that counts as evidence (b).
EVIDENCE_RATIO = 2.0
#: Time shifts of the other station's evidence for the chance estimate (s).
OFFSETS_S: tuple[float, ...] = tuple(float(s * k) for k in range(1, 61) for s in (60, -60))
#: Signal stretch described after the ratio peak (s before, s after).
SIGNAL_S = (2.0, 8.0)
#: Noise stretch before the search interval (length, gap before the interval, s).
NOISE_S = (60.0, 10.0)
STATIONS = ("UV05", "UV10")
#: Evidence (b) also at these ratio levels, reported apart from the rule (chosen after its first counts).
POST_HOC_LEVELS = (2.5, 3.0)
#: Random intervals per day for the noise baseline of the description.
BASELINE_N = 300
#: What `describe` measures at each station.
MEASURES = ("ratio", "amplitude", "snr", "duration_s", "f_dom_hz", "f_dom_raw_hz")


# -------------------------------------------------------------------------------------------------- the rule
def delay_bound_s(a_xyz: Sequence[float], b_xyz: Sequence[float], velocity_km_s: float = MIN_VELOCITY_KM_S) -> float:
    """The largest arrival-time difference of one wave between two stations: their distance over `velocity_km_s`
    (coordinates in m)."""
    if velocity_km_s <= 0:
        raise ValueError(f"velocity must be positive, got {velocity_km_s}")
    return math.dist(a_xyz, b_xyz) / (1000.0 * velocity_km_s)


def model_intervals(onsets: Sequence[float], window_s: float) -> np.ndarray:
    """Intervals [onset, onset + window] in which a model detection's signal began, shape (n, 2)."""
    o = np.asarray(onsets, dtype=np.float64).reshape(-1)
    return np.stack([o, o + window_s], axis=1)


def sta_lta_intervals(triggers: Sequence[float], sta_s: float) -> np.ndarray:
    """Intervals [t - 2 STA, t] in which an STA/LTA trigger's signal began, shape (n, 2)."""
    t = np.asarray(triggers, dtype=np.float64).reshape(-1)
    return np.stack([t - 2.0 * sta_s, t], axis=1)


def ratio_runs(t0: float, fs: float, ratio: np.ndarray, level: float, sta_s: float) -> np.ndarray:
    """Each run of samples with `ratio` >= `level` as an interval [first - 2 STA, last] (POSIX s), shape (n, 2)."""
    above = np.concatenate([[False], np.asarray(ratio) >= level, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    first, last = edges[0::2], edges[1::2] - 1
    return np.stack([t0 + first / fs - 2.0 * sta_s, t0 + last / fs], axis=1).reshape(-1, 2)


def coincident(a: np.ndarray, b: np.ndarray, delay_s: float) -> np.ndarray:
    """Per interval of `a`: whether one of `b` overlaps it once it is widened by `delay_s` on both sides."""
    a, b = _intervals(a), _intervals(b)
    if delay_s < 0:
        raise ValueError(f"delay must be >= 0, got {delay_s}")
    if not len(a) or not len(b):
        return np.zeros(len(a), dtype=bool)
    b = b[np.argsort(b[:, 0])]
    run_max_end = np.maximum.accumulate(b[:, 1])
    # the b intervals starting at or before a's widened end; among them, does one end at or after its widened start
    k = np.searchsorted(b[:, 0], a[:, 1] + delay_s, side="right")
    ok = k > 0
    ok[ok] = run_max_end[k[ok] - 1] >= a[ok, 0] - delay_s
    return ok


def shifted(b: np.ndarray, offset_s: float, start: float, span_s: float) -> np.ndarray:
    """`b` moved by `offset_s`, wrapped around [start, start + span_s) (an interval crossing the end appears at both
    ends)."""
    b = _intervals(b)
    if span_s <= 0:
        raise ValueError(f"span must be positive, got {span_s}")
    lo = (b[:, 0] - start + offset_s) % span_s + start
    moved = np.stack([lo, lo + (b[:, 1] - b[:, 0])], axis=1)
    return np.concatenate([moved, moved - span_s])


def chance_counts(a: np.ndarray, b: np.ndarray, delay_s: float, start: float, span_s: float,
                  offsets_s: Sequence[float] = OFFSETS_S) -> np.ndarray:
    """How many of `a` coincide with `b` shifted by each offset (circularly over the span): chance coincidences."""
    return np.array([int(coincident(a, shifted(b, off, start, span_s), delay_s).sum()) for off in offsets_s])


def chance_summary(counts: np.ndarray, observed: int) -> dict[str, Any]:
    """Mean, standard deviation, 5-95 % range of the shifted counts, and the share of shifts reaching `observed`."""
    counts = np.asarray(counts, dtype=np.float64)
    if not counts.size:
        raise ValueError("no shifted counts")
    return {"mean": round(float(counts.mean()), 3), "std": round(float(counts.std(ddof=1)) if counts.size > 1
                                                                  else 0.0, 3),
            "p5": float(np.percentile(counts, 5)), "p95": float(np.percentile(counts, 95)),
            "share_ge_observed": round(float(np.mean(counts >= observed)), 4), "shifts": int(counts.size)}


def _intervals(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.reshape(0, 2)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"intervals must have shape (n, 2), got {x.shape}")
    if np.any(x[:, 1] < x[:, 0]):
        raise ValueError("an interval ends before it starts")
    return x


# ----------------------------------------------------------------------------------------------- the counting
def check(detections: dict[str, dict[str, np.ndarray]], runs: dict[str, np.ndarray], delay_s: float,
          start: float, span_s: float, offsets_s: Sequence[float] = OFFSETS_S) -> dict[str, Any]:
    """Every detector's detections at each station checked at the other one.

    `detections[station][detector]` holds intervals (`model_intervals`, `sta_lta_intervals`); `runs[station]` the
    station's `ratio_runs`. Result per "A->B" direction and detector: the detections, how many have evidence (a)
    (also per detector at B), (b), either, the unconfirmed, the chance estimate of (a), (b) and either, and the
    per-detection flags (for the description)."""
    if set(runs) != set(detections) or len(detections) != 2:
        raise ValueError(f"need two stations with detections and ratio runs, got {sorted(detections)} and "
                         f"{sorted(runs)}")
    out: dict[str, Any] = {}
    for a_sta in detections:
        b_sta = next(s for s in detections if s != a_sta)
        b_all = np.concatenate([_intervals(v) for v in detections[b_sta].values()])
        for name, a in detections[a_sta].items():
            by_b = {n: coincident(a, v, delay_s) for n, v in detections[b_sta].items()}
            flag_a, flag_b = coincident(a, b_all, delay_s), coincident(a, runs[b_sta], delay_s)
            either = flag_a | flag_b
            chance_a = chance_counts(a, b_all, delay_s, start, span_s, offsets_s)
            chance_b = chance_counts(a, runs[b_sta], delay_s, start, span_s, offsets_s)
            chance_e = np.array([int((coincident(a, shifted(b_all, off, start, span_s), delay_s)
                                      | coincident(a, shifted(runs[b_sta], off, start, span_s), delay_s)).sum())
                                 for off in offsets_s])
            out.setdefault(f"{a_sta}->{b_sta}", {})[name] = {
                "detections": len(a), "a": int(flag_a.sum()), "a_by": {n: int(v.sum()) for n, v in by_b.items()},
                "b": int(flag_b.sum()), "either": int(either.sum()), "unconfirmed": int((~either).sum()),
                "chance_a": chance_summary(chance_a, int(flag_a.sum())),
                "chance_b": chance_summary(chance_b, int(flag_b.sum())),
                "chance_either": chance_summary(chance_e, int(either.sum())),
                "flags": {"a": flag_a.tolist(), "b": flag_b.tolist()},
            }
    return out


# ------------------------------------------------------------------------------------------------ the description
def describe(x: np.ndarray, raw: np.ndarray, ratio: np.ndarray, t0: float, fs: float, lo: float,
             hi: float) -> dict[str, float | None]:
    """One station's signal in the search interval [lo, hi] (POSIX s): ratio peak and its time, amplitude, SNR,
    duration and dominant frequency (see the module docstring). `x` is the 1-20 Hz band-passed vertical, `raw`
    the unfiltered one, `ratio` its STA/LTA ratio, all starting at `t0` sampled at `fs`."""
    from scipy.signal import hilbert

    n = len(x)

    def idx(t: float) -> int:
        return int(min(max(round((t - t0) * fs), 0), n))

    i0, i1 = idx(lo), idx(hi)
    if i1 <= i0:
        return {"ratio": None}
    ip = i0 + int(np.argmax(ratio[i0:i1]))
    tp = t0 + ip / fs
    s0, s1 = idx(tp - SIGNAL_S[0]), idx(tp + SIGNAL_S[1])
    n0, n1 = idx(lo - NOISE_S[1] - NOISE_S[0]), idx(lo - NOISE_S[1])
    amp = float(np.max(np.abs(x[s0:s1])))
    noise = x[n0:n1] if n1 - n0 > fs else x[max(0, ip - int(70 * fs)):max(0, ip - int(10 * fs))]
    sigma = 1.4826 * float(np.median(np.abs(noise))) if len(noise) else float("nan")
    # envelope over a stretch around the peak, 1 s moving average; duration above twice the noise stretch's median
    e0, e1 = idx(min(lo, tp) - NOISE_S[1] - NOISE_S[0]), idx(tp + 120.0)
    env = np.abs(hilbert(x[e0:e1]))
    k = max(1, int(fs))
    env = np.convolve(env, np.ones(k) / k, mode="same")
    nref = env[max(0, n0 - e0):max(0, n1 - e0)]
    level = 2.0 * float(np.median(nref if len(nref) > fs else env))
    above = env >= level
    j = ip - e0
    if not above[j]:
        duration = 0.0
    else:
        left = j - (np.flatnonzero(~above[:j][::-1])[0] if np.any(~above[:j]) else j)
        right = j + (np.flatnonzero(~above[j:])[0] if np.any(~above[j:]) else len(above) - j)
        duration = (right - left) / fs
    f_raw = dominant_frequency(raw[s0:s1], fs, (0.5, 45.0))
    f_band = dominant_frequency(x[s0:s1], fs, (1.0, 20.0))
    return {"t_peak": round(tp, 2), "ratio": round(float(ratio[ip]), 2), "amplitude": round(amp, 1),
            "snr": round(amp / sigma, 2) if sigma > 0 else None, "duration_s": round(float(duration), 2),
            "f_dom_hz": f_band, "f_dom_raw_hz": f_raw}


def dominant_frequency(x: np.ndarray, fs: float, band_hz: tuple[float, float]) -> float | None:
    """Frequency of the largest value of the Hann-tapered periodogram of demeaned `x` within `band_hz`."""
    seg = np.asarray(x, dtype=np.float64)
    if len(seg) < 2:
        return None
    seg = (seg - seg.mean()) * np.hanning(len(seg))
    spec = np.abs(np.fft.rfft(seg)) ** 2
    freqs = np.fft.rfftfreq(len(seg), 1.0 / fs)
    band = (freqs >= band_hz[0]) & (freqs <= band_hz[1])
    return round(float(freqs[band][np.argmax(spec[band])]), 2) if band.any() else None


def baseline(x: np.ndarray, raw: np.ndarray, ratio: np.ndarray, t0: float, fs: float, width_s: float, n: int,
             seed: int) -> dict[str, Any]:
    """Quartiles of each measure over `n` random search intervals of `width_s` (the day's ordinary noise, for
    comparison with the detections), away from the first and last 100 s."""
    rng = np.random.default_rng(seed)
    span = len(x) / fs
    starts = t0 + rng.uniform(100.0, span - 100.0 - width_s, n)
    rows = [describe(x, raw, ratio, t0, fs, lo, lo + width_s) for lo in starts]
    return {"n": n, **{k: quartiles([r.get(k) for r in rows]) for k in MEASURES}}


def quartiles(values: Sequence[float | None]) -> list[float] | None:
    """[25 %, median, 75 %] of the values that are not None, or None when there are none."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return [round(float(q), 2) for q in np.percentile(v, [25, 50, 75])] if v.size else None


# ----------------------------------------------------------------------------------------------------- the report
def table(result: dict[str, Any]) -> list[str]:
    """Markdown rows: per direction and detector, detections, coincident by (a), (b), either, with the chance
    expectation (mean +- sd over the shifts), and unconfirmed."""
    def cell(r: dict[str, Any], key: str) -> str:
        c = r[f"chance_{key}"]
        return f"{r[key]} ({c['mean']:.1f} +- {c['std']:.1f})"

    lines = ["| detector | checked | detections | (a) detection there (chance) | (b) ratio >= 2 there (chance) | "
             "(a) or (b) (chance) | unconfirmed |", "|---|---|---:|---:|---:|---:|---:|"]
    for direction, rows in result.items():
        for name, r in rows.items():
            lines.append(f"| {name} | {direction} | {r['detections']} | {cell(r, 'a')} | {cell(r, 'b')} | "
                         f"{cell(r, 'either')} | {r['unconfirmed']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from quakemon.base.logs import configure_logging
    from quakemon.data.noise_days import load_day, station_coordinates
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.training import continuous as cont

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", required=True,
                        help="a checkpoint whose day probabilities are cached (or are computed and cached)")
    parser.add_argument("--on", type=float, default=0.7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    t_start = time.time()
    paths = dict(m.split("=", 1) for m in args.model)
    if len(paths) != len(args.model) or any(not k or not v for k, v in paths.items()):
        raise SystemExit("--model takes distinct NAME=PATH")
    ckpts = {n: load_checkpoint(p) for n, p in paths.items()}
    windows = {c.contract.window_seconds for c in ckpts.values()}
    if len(windows) != 1:
        raise SystemExit(f"the models' window lengths differ: {sorted(windows)}")
    window_s = windows.pop()
    sta = cont.StaLta()
    xyz = {s: station_coordinates(s) for s in STATIONS}
    delay = delay_bound_s(xyz["UV05"], xyz["UV10"])
    print(f"distance {math.dist(xyz['UV05'], xyz['UV10']):.0f} m, delay bound {delay:.2f} s", flush=True)
    traces, filt, ratios, runs, detections, onsets = {}, {}, {}, {}, {}, {}
    for s in STATIONS:
        (tr,) = load_day(s).select(component="Z")
        traces[s], filt[s] = tr, cont.band_passed(tr, sta.band_hz)
        t0, fs, ratios[s] = cont.sta_lta_ratio(tr, sta)
        runs[s] = ratio_runs(t0, fs, ratios[s], EVIDENCE_RATIO, sta.sta_s)
        onsets[s] = {n: cont.trigger_onsets(next(iter(cont.day_series(c, s).values())), args.on)
                     for n, c in ckpts.items()}
        onsets[s]["sta_lta"] = cont.sta_lta_onsets(load_day(s), sta)
        detections[s] = {n: (sta_lta_intervals(o, sta.sta_s) if n == "sta_lta" else model_intervals(o, window_s))
                         for n, o in onsets[s].items()}
        print(s, {n: len(v) for n, v in detections[s].items()}, f"ratio runs >= {EVIDENCE_RATIO:g}: {len(runs[s])}",
              flush=True)
    start = max(tr.stats.starttime.timestamp for tr in traces.values())
    span = min(tr.stats.endtime.timestamp + tr.stats.delta for tr in traces.values()) - start
    result = check(detections, runs, delay, start, span)
    print("\n".join(table(result)), flush=True)
    post_hoc = {}
    for level in POST_HOC_LEVELS:
        lruns = {s: ratio_runs(traces[s].stats.starttime.timestamp, traces[s].stats.sampling_rate, ratios[s], level,
                               sta.sta_s) for s in STATIONS}
        res = check(detections, lruns, delay, start, span)
        post_hoc[f"{level:g}"] = {"ratio_runs": {s: len(v) for s, v in lruns.items()},
                                  **{d: {n: {"detections": r["detections"], "b": r["b"], "chance_b": r["chance_b"]}
                                         for n, r in per.items()} for d, per in res.items()}}
        print(f"(b) at ratio {level:g}:", {d: {n: (r["b"], r["chance_b"]["mean"], r["chance_b"]["std"])
                                                for n, r in per.items()} for d, per in res.items()}, flush=True)
    rows, summary = describe_all(result, detections, traces, filt, ratios, delay, sta.sta_s)
    for key, v in summary.items():
        print(key, v)
    noise = {s: {f"{w:g}s": baseline(filt[s], traces[s].data, ratios[s], traces[s].stats.starttime.timestamp,
                                     traces[s].stats.sampling_rate, w, BASELINE_N, seed=20100901 + i)
                 for w in (window_s + 2 * sta.sta_s, 4 * sta.sta_s)}
             for i, s in enumerate(STATIONS)}
    print("noise baseline", noise)
    for r in result.values():
        for d in r.values():
            d.pop("flags")
    out = {"rule": {"distance_m": round(math.dist(xyz["UV05"], xyz["UV10"]), 1),
                    "coordinates_utm_m": xyz, "min_velocity_km_s": MIN_VELOCITY_KM_S, "delay_s": round(delay, 3),
                    "model_interval": "[onset, onset + window]", "window_s": window_s,
                    "sta_lta_interval": "[t - 2 STA, t]", "evidence_ratio": EVIDENCE_RATIO,
                    "offsets_s": [min(OFFSETS_S), max(OFFSETS_S), len(OFFSETS_S)], "on": args.on,
                    "sta_lta": {**sta.__dict__, "band_hz": list(sta.band_hz)}},
           "models": {n: {"path": paths[n], **c.model_info} for n, c in ckpts.items()},
           "ratio_runs": {s: len(v) for s, v in runs.items()},
           "counts": result, "post_hoc_levels": post_hoc, "description": summary, "noise_baseline": noise,
           "detections": rows,
           "seconds": round(time.time() - t_start, 1)}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, separators=(",", ":"), default=float)
    return 0


def describe_all(result: dict[str, Any], detections: dict[str, dict[str, np.ndarray]], traces: dict[str, Any],
                 filt: dict[str, np.ndarray], ratios: dict[str, np.ndarray], delay: float,
                 sta_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-detection rows (both stations described) and quartiles of each measure per direction, detector and
    group ("a": evidence (a), "b only", "unconfirmed")."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for direction, per in result.items():
        a_sta, b_sta = direction.split("->")
        for name, r in per.items():
            for (lo, hi), fa, fb in zip(detections[a_sta][name].tolist(), r["flags"]["a"], r["flags"]["b"],
                                        strict=True):
                group = "a" if fa else "b only" if fb else "unconfirmed"
                here = describe(filt[a_sta], traces[a_sta].data, ratios[a_sta], traces[a_sta].stats.starttime.timestamp,
                                traces[a_sta].stats.sampling_rate, lo, hi + 2 * sta_s)
                there = describe(filt[b_sta], traces[b_sta].data, ratios[b_sta],
                                 traces[b_sta].stats.starttime.timestamp, traces[b_sta].stats.sampling_rate,
                                 lo - delay, hi + delay + 2 * sta_s)
                dt = round(there["t_peak"] - here["t_peak"], 2) if there.get("t_peak") and here.get("t_peak") else None
                rows.append({"direction": direction, "detector": name, "start": round(lo, 2), "group": group,
                             "here": here, "there": there, "peak_delay_s": dt})
            for group in ("a", "b only", "unconfirmed"):
                sel = [x for x in rows if x["direction"] == direction and x["detector"] == name
                       and x["group"] == group]
                if sel:
                    summary[f"{direction} {name} {group}"] = {
                        "n": len(sel), "peak_delay_s": quartiles([x["peak_delay_s"] for x in sel]),
                        **{f"{where}_{k}": quartiles([x[where].get(k) for x in sel])
                           for where in ("here", "there") for k in MEASURES}}
    return rows, summary


if __name__ == "__main__":
    sys.exit(main())
