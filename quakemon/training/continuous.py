"""Detection quality on continuous data: a checkpoint and a classic STA/LTA, side by side on the same records.

Three measures, each for the model and for the reference STA/LTA on identical data:

* False detections per station-day on continuous noise (e.g. the msnoise noise days, `quakemon.data.noise_days`),
  with an exact Poisson 95 % interval (chi-square, Garwood 1936). Every "new" detection there counts as false.
* Recall by kind on event records: real local events (`quakemon.data.realdata.local_events`) and synthetic
  regional and teleseismic events over real noise (`quakemon.data.distant`). A P arrival is detected when a
  detection's onset lies within [P - window length, P + 10 s]; a detection 10-60 s after a P is "late" (S wave or
  coda of that event), any other detection in an event record is false.
* The same recall restricted to P arrivals with at least `LONG_LEAD_S` (30 s) of data before them in their
  record: there both detectors have the context they need (the STA/LTA its filled LTA, the model whole windows
  of noise before the onset), so the comparison does not favour the one that starts detecting sooner.
* A threshold sweep: recall and false detections per station-day for trigger ``on`` from 0.5 to 0.99, so an
  operator can choose ``on``. The model's probabilities are computed once per record (`model_series`, the
  runner's own windowing, preprocessing and inference); the sweep re-runs only the trigger on them.

The STA/LTA is ObsPy's recursive STA/LTA on the vertical, band-passed 1-20 Hz (upper corner capped at 0.45 of the
sampling rate), 1 s / 10 s, trigger on 3.5 / off 1.0 (`trigger_onset`). Its first LTA length of every trace is
skipped (the recursive LTA is still filling up there), as the model cannot detect before its first full window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from obspy import Stream
from scipy.stats import chi2

from quakemon.models.checkpoint import Checkpoint
from quakemon.pipeline.picker import Pick, is_new_p, pick_every_row
from quakemon.pipeline.settings import TRIGGER
from quakemon.pipeline.trigger import DetectionRef, StationTrigger

log = structlog.get_logger(__name__)

#: Detection onset within [P - window, P + MATCH_AFTER_S] counts as detecting that P.
MATCH_AFTER_S = 10.0
#: P arrivals with at least this much data before them in their record form the "long lead" recall.
LONG_LEAD_S = 30.0
#: A detection 10-60 s after a P arrival is "late" (S or coda of that event), not false.
LATE_S = 60.0
#: Trigger `on` values of the sweep.
SWEEP_ON: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)
#: The kind of the real teleseismic records (`quakemon.training.teleseismic`), a column of its own in the sweep.
TELESEISMIC_KIND = "real:teleseismic"
#: STA/LTA trigger-on values of its sweep (off stays 1.0).
SWEEP_STA_LTA: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


@dataclass(frozen=True)
class StaLta:
    """The reference detector's settings."""

    sta_s: float = 1.0
    lta_s: float = 10.0
    on: float = 3.5
    off: float = 1.0
    band_hz: tuple[float, float] = (1.0, 20.0)


@dataclass
class Series:
    """One station's model probabilities: window start/end (POSIX seconds) and p(label) per window."""

    start: np.ndarray
    end: np.ndarray
    p: np.ndarray


@dataclass
class EventRecord:
    """A record with known P arrivals: its stream, P times (POSIX seconds) and kind (local/regional/teleseismic)."""

    name: str
    stream: Stream
    p_times: list[float]
    kind: str
    info: dict[str, Any] = field(default_factory=dict)


def poisson_interval(k: int, exposure: float, level: float = 0.95) -> tuple[float, float, float]:
    """Rate k/exposure and its exact (chi-square) two-sided confidence interval."""
    a = (1.0 - level) / 2.0
    lo = chi2.ppf(a, 2 * k) / 2.0 if k > 0 else 0.0
    hi = chi2.ppf(1.0 - a, 2 * k + 2) / 2.0
    return k / exposure, float(lo / exposure), float(hi / exposure)


# ------------------------------------------------------------------------------------------------------ detectors
def model_series(ckpt: Checkpoint, streams: Iterable[Stream], label: str = "earthquake", precision: str = "fp32",
                 batch_size: int = 256) -> dict[str, Series]:
    """Per-station probabilities of `label` through the runner (windowing, preprocessing, inference on the CPU),
    every window forwarded (no screening)."""
    from quakemon.pipeline.runner import DetectionRunner

    runner = DetectionRunner(ckpt, device="cpu", precision=precision, batch_size=batch_size, keep_series=True,
                             trigger_label=label, screen_every=1)
    col = list(ckpt.labels).index(label)
    for st in streams:  # channels interleaved in time, as a live stream delivers them
        for _ in runner.add_stream(list(st)):
            pass
    runner.finish()
    out = {}
    for station, s in runner.series.items():
        order = np.argsort(s.start_ns)
        out[station] = Series(np.asarray(s.start_ns)[order] / 1e9, np.asarray(s.end_ns)[order] / 1e9,
                              np.asarray([p[col] for p in s.probabilities], dtype=np.float64)[order])
    return out


def trigger_onsets(series: Series, on: float, off: float = 0.5, min_duration_s: float = 2.0,
                   new_p: NewPCheck | None = None, *, retrigger_hold_s: float | None = None,
                   split_on_new_p: bool = False) -> list[float]:
    """Onsets of the "new" detections the daemon's trigger gives on these probabilities (flush at the end).

    retrigger_hold_s: one detection per event (default: the daemon's, `TriggerSettings.retrigger_hold_s`); 0
    closes a detection at its first window below ``off``. new_p: the record's samples, for the daemon's check
    of a re-trigger inside a hold (a clearly new P opens a new detection; without it a re-trigger inside the
    hold always extends the held detection) and, with `split_on_new_p` (`trigger.split_on_new_p`), of a window
    over ``on`` inside an active detection."""
    hold = TRIGGER.retrigger_hold_s if retrigger_hold_s is None else retrigger_hold_s
    trig = StationTrigger(on, min(off, on), min_duration_s, "earthquake", retrigger_hold_s=hold,
                          split_on_new_p=split_on_new_p and new_p is not None)
    onsets = []
    for s, e, p in zip(series.start.tolist(), series.end.tolist(), series.p.tolist(), strict=True):
        check = (lambda ref, t=s: new_p(ref, t)) if new_p is not None else None
        onsets += [ev.onset for ev in trig._update(s, e, {"earthquake": p}, check) if ev.state == "new"]
    onsets += [ev.onset for ev in trig.flush() if ev.state == "new"]
    return onsets


class NewPCheck:
    """The daemon's "clearly new P" check (`quakemon.pipeline.detect.DetectionStage`) on a record's vertical, for
    a trigger fed probabilities only: a window is picked with `lead_s` of data before it (`PICK_LEAD_S`), at
    `sampling_rate` (other rates resampled as the runner does), and the detection's pick is that of its first
    window over ``on``."""

    def __init__(self, stream: Stream, sampling_rate: float = 100.0, window_s: float = 20.0,
                 lead_s: float | None = None, after_s: float | None = None) -> None:
        from fractions import Fraction

        from scipy.signal import resample_poly

        from quakemon.pipeline.detect import PICK_LEAD_S

        st = (stream.select(component="Z") or stream).copy().merge(fill_value="interpolate")
        tr = max(st, key=lambda t: t.stats.npts)
        x = np.asarray(tr.data, dtype=np.float64)
        if tr.stats.sampling_rate != sampling_rate:
            ratio = Fraction(sampling_rate / tr.stats.sampling_rate).limit_denominator(1000)
            x = resample_poly(x, ratio.numerator, ratio.denominator)
        self.x, self.fs, self.t0 = x, float(sampling_rate), tr.stats.starttime.timestamp
        self.window_s, self.lead_s = window_s, PICK_LEAD_S if lead_s is None else lead_s
        self.after_s = TRIGGER.new_pick_after_s if after_s is None else after_s

    def pick(self, start: float) -> Pick:
        """The pick of the window starting at `start` (POSIX seconds), with its lead."""
        i0 = max(0, int(round((start - self.lead_s - self.t0) * self.fs)))
        i1 = int(round((start + self.window_s - self.t0) * self.fs))
        seg = self.x[i0:i1].astype(np.float32)
        batch = pick_every_row((seg - seg.mean())[None], int(round((self.t0 + i0 / self.fs) * 1e9)), self.fs)
        return batch.picks()[0]

    def __call__(self, ref: DetectionRef, start: float) -> bool:
        if ref.pick is None:
            ref.pick = self.pick(ref.window_start)
        return is_new_p(self.pick(start), ref.pick, self.after_s)


def sta_lta_onsets(stream: Stream, cfg: StaLta = StaLta(), on: float | None = None) -> list[float]:
    """Trigger-on times of the recursive STA/LTA on each vertical trace (POSIX seconds)."""
    level = cfg.on if on is None else on
    return sta_lta_sweep(stream, cfg, [level])[level]


def sta_lta_sweep(stream: Stream, cfg: StaLta, ons: Iterable[float]) -> dict[float, list[float]]:
    """`sta_lta_onsets` at each trigger-on level of `ons`, from one STA/LTA ratio per vertical trace."""
    from obspy.signal.trigger import trigger_onset

    out: dict[float, list[float]] = {o: [] for o in ons}
    for tr in stream.select(component="Z"):
        ratio = sta_lta_ratio(tr, cfg)
        if ratio is None:
            continue
        t0, fs, cft = ratio
        for o, onsets in out.items():
            onsets += [t0 + i / fs for i, _ in trigger_onset(cft, o, cfg.off)]
    return {o: sorted(onsets) for o, onsets in out.items()}


# ------------------------------------------------------------------------------------------------------- scoring
def detects(onsets: Sequence[float], p: float, window_s: float) -> bool:
    """Whether a detection onset lies within [p - window_s, p + MATCH_AFTER_S]: the P arrival at p is detected."""
    return any(p - window_s <= o <= p + MATCH_AFTER_S for o in onsets)


def match(onsets: Sequence[float], p_times: Sequence[float], window_s: float) -> dict[str, int]:
    """Detected P arrivals, late and false detections of one record."""
    detected = sum(detects(onsets, p, window_s) for p in p_times)
    late = sum(1 for o in onsets if not any(p - window_s <= o <= p + MATCH_AFTER_S for p in p_times)
               and any(p + MATCH_AFTER_S < o <= p + LATE_S for p in p_times))
    false = sum(1 for o in onsets if not any(p - window_s <= o <= p + LATE_S for p in p_times))
    return {"events": len(p_times), "detected": int(detected), "late": int(late), "false": int(false)}


def near_count(onsets: Sequence[float], others: Sequence[float], window_s: float) -> int:
    """How many of `onsets` lie within `window_s` of one of `others` (e.g. model detections near an STA/LTA
    trigger: candidates for real events on a noise day)."""
    return int(sum(any(abs(o - c) <= window_s for c in others) for o in onsets))


def recall_by_kind(per_record: list[tuple[EventRecord, list[float]]], window_s: float) -> dict[str, Any]:
    """{kind: {events, detected, recall, late, false}} plus "all"."""
    out: dict[str, Any] = {}
    for rec, onsets in per_record:
        m = match(onsets, rec.p_times, window_s)
        for key in (rec.kind, "all"):
            agg = out.setdefault(key, {"events": 0, "detected": 0, "late": 0, "false": 0})
            for k, v in m.items():
                agg[k] += v
    for agg in out.values():
        agg["recall"] = agg["detected"] / agg["events"] if agg["events"] else None
    return out


def recall_with_lead(per_record: list[tuple[EventRecord, list[float]]], window_s: float,
                     lead_s: float = LONG_LEAD_S) -> dict[str, Any]:
    """{kind: {events, detected, recall}} plus "all", over the P arrivals with at least `lead_s` of data before
    them in their record (from the record's earliest sample); detected as in `match` (`detects`)."""
    out: dict[str, Any] = {}
    for rec, onsets in per_record:
        start = min((tr.stats.starttime.timestamp for tr in rec.stream), default=None)
        for p in rec.p_times:
            if start is None or p - start < lead_s:
                continue
            hit = detects(onsets, p, window_s)
            for key in (rec.kind, "all"):
                agg = out.setdefault(key, {"events": 0, "detected": 0})
                agg["events"] += 1
                agg["detected"] += int(hit)
    for agg in out.values():
        agg["recall"] = agg["detected"] / agg["events"]
    return out


def station_days(series: dict[str, Series], window_s: float) -> float:
    """Station-days covered by the windows (a station's windows, each stride apart, plus one window length)."""
    total = 0.0
    for s in series.values():
        if len(s.start):
            stride = float(np.median(np.diff(s.start))) if len(s.start) > 1 else window_s
            total += (len(s.start) - 1) * stride + window_s
    return total / 86400.0


def false_rate(count: int, days: float) -> dict[str, Any]:
    rate, lo, hi = poisson_interval(count, days)
    return {"false": count, "station_days": days, "per_station_day": rate, "ci95": [lo, hi]}


# ----------------------------------------------------------------------------------------------------- the report
def evaluate_continuous(ckpt: Checkpoint, noise: dict[str, Stream], events: list[EventRecord], *,
                        on: float = 0.7, off: float = 0.5, min_duration_s: float = 2.0,
                        sta_lta: StaLta = StaLta(), precision: str = "fp32",
                        noise_series: dict[str, dict[str, Series]] | None = None,
                        split_on_new_p: bool = False) -> dict[str, Any]:
    """The side-by-side report of one checkpoint (`score_continuous` on its probabilities).

    `noise` maps a name (e.g. "UV10") to that day's stream; `noise_series` may hold precomputed model
    probabilities for some of them (same checkpoint), which are then not computed again. split_on_new_p: the
    model's trigger splits an active detection at a clearly new P (`NewPCheck` on each record's samples).
    """
    series = {name: (noise_series or {}).get(name) or model_series(ckpt, [st], precision=precision)
              for name, st in noise.items()}
    return score_continuous(ckpt.model_info, ckpt.contract.window_seconds, noise, series, events,
                            record_series(ckpt, events, precision), on=on, off=off, min_duration_s=min_duration_s,
                            sta_lta=sta_lta, split_on_new_p=split_on_new_p,
                            sampling_rate=ckpt.contract.sampling_rate)


def record_series(ckpt: Checkpoint, events: list[EventRecord], precision: str = "fp32") -> list[Series]:
    """The model's probabilities on each event record, in the order of `events` (empty for a record shorter than
    a window). Each record gets a location code of its own, so records of one station never share windows or
    triggers."""
    if not events:
        return []
    streams = [_relabel(r.stream, i) for i, r in enumerate(events)]
    by_station = model_series(ckpt, streams, precision=precision)
    empty = Series(np.zeros(0), np.zeros(0), np.zeros(0))
    return [by_station.get(".".join(st[0].id.split(".")[:3]), empty) for st in streams]


def score_continuous(model: dict[str, Any], window_s: float, noise: dict[str, Stream],
                     noise_series: dict[str, dict[str, Series]], events: list[EventRecord],
                     event_series: list[Series], *, on: float = 0.7, off: float = 0.5, min_duration_s: float = 2.0,
                     sta_lta: StaLta = StaLta(), split_on_new_p: bool = False,
                     sampling_rate: float | None = None, retrigger_hold_s: float | None = None) -> dict[str, Any]:
    """The side-by-side report from given probabilities: false detections per noise day, recall by kind, late
    detections, sweeps; the STA/LTA runs on the same streams.

    `noise_series[name]` holds the probabilities on `noise[name]` ({station: Series}); `event_series[i]` those on
    `events[i]`. `model` is what the report names as the model (e.g. `Checkpoint.model_info`); `window_s` is the
    window length (detections of a P arrival may start up to one window before it). The model's trigger is the
    daemon's, one detection per event included (`retrigger_hold_s`, default the daemon's): given `sampling_rate`
    (the model's rate) it checks a re-trigger inside a hold for a clearly new P as the daemon does (`NewPCheck` on
    each stream's samples, resampled to that rate); without it such a re-trigger always extends. split_on_new_p:
    the model's trigger also splits an active detection at a clearly new P (needs `sampling_rate`).
    """
    if split_on_new_p and sampling_rate is None:
        raise ValueError("split_on_new_p needs the model's sampling_rate")
    hold = TRIGGER.retrigger_hold_s if retrigger_hold_s is None else float(retrigger_hold_s)

    def model_onsets(s: Series, o: float, check: NewPCheck | None) -> list[float]:
        return trigger_onsets(s, o, off, min_duration_s, check, retrigger_hold_s=hold, split_on_new_p=split_on_new_p)

    def checker(st: Stream, station: str | None = None) -> NewPCheck | None:
        """The new-P check on `st`'s vertical (of `station`, "NET.STA.LOC", when given)."""
        if sampling_rate is None:
            return None
        if station is not None:
            net, sta, loc = (station.split(".") + ["", ""])[:3]
            st = st.select(network=net, station=sta, location=loc) or st
        return NewPCheck(st, sampling_rate, window_s)

    if len(event_series) != len(events):
        raise ValueError(f"{len(event_series)} event series for {len(events)} event records")
    report: dict[str, Any] = {"model": model,
                              "trigger": {"on": on, "off": off, "min_duration_s": min_duration_s,
                                          "split_on_new_p": split_on_new_p, "retrigger_hold_s": hold,
                                          "new_p_in_hold": sampling_rate is not None},
                              "sta_lta": {**sta_lta.__dict__, "band_hz": list(sta_lta.band_hz)},
                              "noise": {}, "series": {}}
    for name, st in noise.items():
        series = noise_series[name]
        report["series"][name] = series
        days = station_days(series, window_s)
        checks = {station: checker(st, station) for station in series}
        model_by_on = {o: [x for k, s in series.items() for x in model_onsets(s, o, checks[k])]
                       for o in sorted({*SWEEP_ON, on})}
        classic_by_on = sta_lta_sweep(st, sta_lta, sorted({*SWEEP_STA_LTA, sta_lta.on}))
        model_on = {o: len(x) for o, x in model_by_on.items()}
        classic = {o: len(x) for o, x in classic_by_on.items()}
        near = near_count(model_by_on[on], classic_by_on[sta_lta.on], window_s)
        report["noise"][name] = {
            "station_days": days, "windows": int(sum(len(s.p) for s in series.values())),
            "model": false_rate(model_on[on], days), "sta_lta": false_rate(classic[sta_lta.on], days),
            "model_also_sta_lta": int(near),
            "sweep_model": {f"{o:g}": false_rate(n, days) for o, n in model_on.items()},
            "sweep_sta_lta": {f"{o:g}": false_rate(n, days) for o, n in classic.items()},
        }
        log.info("noise_day_scored", day=name, model=model_on[on], sta_lta=classic[sta_lta.on], days=round(days, 3))
    if events:
        rec_series = [(r, s, checker(r.stream)) for r, s in zip(events, event_series, strict=True)]
        model_rows = {o: [(r, model_onsets(s, o, c)) for r, s, c in rec_series] for o in sorted({*SWEEP_ON, on})}
        sweeps = [sta_lta_sweep(r.stream, sta_lta, sorted({*SWEEP_STA_LTA, sta_lta.on})) for r in events]
        classic_rows = {o: [(r, x[o]) for r, x in zip(events, sweeps, strict=True)] for o in sweeps[0]}
        rows, classic_at = model_rows[on], classic_rows[sta_lta.on]
        report["events"] = {
            "model": recall_by_kind(rows, window_s),
            "sta_lta": recall_by_kind(classic_at, window_s),
            "long_lead": {"lead_s": LONG_LEAD_S, "model": recall_with_lead(rows, window_s),
                          "sta_lta": recall_with_lead(classic_at, window_s)},
            "sweep_model": {f"{o:g}": recall_by_kind(model_rows[o], window_s) for o in SWEEP_ON},
            "sweep_sta_lta": {f"{o:g}": recall_by_kind(classic_rows[o], window_s) for o in SWEEP_STA_LTA},
            "records": [{"name": r.name, "kind": r.kind, **r.info,
                         "max_p": float(s.p.max()) if len(s.p) else None,
                         **{f"model_{k}": v for k, v in match(onsets, r.p_times, window_s).items()}}
                        for (r, s, _), (_, onsets) in zip(rec_series, rows, strict=True)],
        }
    return report


def _relabel(stream: Stream, index: int) -> Stream:
    """A copy of `stream` whose traces carry location code `index` in base 36 (two characters)."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    st = stream.copy()
    for tr in st:
        tr.stats.location = digits[index // 36 % 36] + digits[index % 36]
    return st


def day_series(ckpt: Checkpoint, day: str, precision: str = "fp32") -> dict[str, Series]:
    """`model_series` of one noise day (`quakemon.data.noise_days`), cached per checkpoint sha256 and precision."""
    from quakemon.data.noise_days import cache_dir, load_day

    path = cache_dir() / "series" / f"{ckpt.sha256[:16]}_{day}_{precision}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {str(z["station"]): Series(z["start"], z["end"], z["p"])}
    series = model_series(ckpt, [load_day(day)], precision=precision)
    (station, s), = series.items()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".part.npz"), station=station, start=s.start, end=s.end, p=s.p)
    path.with_suffix(".part.npz").replace(path)
    return series


def real_event_records(sampling_rate: float | None = 100.0, min_seconds: float = 20.0) -> list[EventRecord]:
    """The real-data catalogue's earthquakes (`realdata.local_events`), kind prefixed "real:"; records shorter than
    `min_seconds` (one window) are left out.

    sampling_rate: records at another rate are resampled by `realdata.load` (FFT method: the end of a record
    wraps around into its first seconds); None keeps each record's own rate, so the runner resamples it as the
    daemon does (`resample_poly`)."""
    from quakemon.data.realdata import load, local_events

    out = []
    for rec in local_events():
        st = load(rec, sampling_rate=sampling_rate)
        if min(tr.stats.endtime - tr.stats.starttime for tr in st) < min_seconds:
            continue
        out.append(EventRecord(rec.name, st, [p.timestamp for p in rec.p_times], f"real:{rec.kind}",
                               {"components": rec.components}))
    return out


def synthetic_event_records(noise: Stream, n_per_kind: int = 40, seed: int = 7_000_001) -> list[EventRecord]:
    """Synthetic regional and teleseismic events over the real noise of `noise`'s vertical (kind "synthetic:...").

    The default seed is not one any training data uses."""
    from quakemon.data.distant import distant_records

    tr = max(noise.select(component="Z"), key=lambda t: t.stats.npts)
    return [EventRecord(f"{kind}-{i:03d}", st, [p], f"synthetic:{kind}", info)
            for i, (st, p, kind, info) in enumerate(distant_records(tr, n_per_kind, seed))]


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the per-window probability series (JSON-friendly)."""
    return {k: v for k, v in report.items() if k != "series"}


def markdown(report: dict[str, Any]) -> str:
    """Tables for docs: false detections per station-day, recall by kind, and the threshold sweep."""
    on = report["trigger"]["on"]
    lines = ["| noise day | station-days | model detections | per station-day (95 % CI) | STA/LTA detections | "
             "per station-day (95 % CI) |", "|---|---:|---:|---:|---:|---:|"]

    def fmt(r):
        return f"{r['per_station_day']:.2f} ({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})"

    for day, r in report["noise"].items():
        lines.append(f"| {day} | {r['station_days']:.3f} | {r['model']['false']} | {fmt(r['model'])} | "
                     f"{r['sta_lta']['false']} | {fmt(r['sta_lta'])} |")
    if "events" in report:
        lines += ["", f"| kind | P arrivals | model detected (on {on:g}) | model late | model false | "
                  "STA/LTA detected | STA/LTA late | STA/LTA false |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        m, c = report["events"]["model"], report["events"]["sta_lta"]
        for kind in sorted(m, key=lambda k: (k == "all", k)):
            lines.append(f"| {kind} | {m[kind]['events']} | {m[kind]['detected']} ({m[kind]['recall']:.0%}) | "
                         f"{m[kind]['late']} | {m[kind]['false']} | {c[kind]['detected']} ({c[kind]['recall']:.0%}) "
                         f"| {c[kind]['late']} | {c[kind]['false']} |")
        lead = report["events"].get("long_lead")
        if lead and lead["model"]:
            lm, lc = lead["model"], lead["sta_lta"]
            lines += ["", f"| kind, P with {lead['lead_s']:g} s or more of data before it | P arrivals | "
                      f"model detected (on {on:g}) | STA/LTA detected |", "|---|---:|---:|---:|"]
            for kind in sorted(lm, key=lambda k: (k == "all", k)):
                lines.append(f"| {kind} | {lm[kind]['events']} | {lm[kind]['detected']} ({lm[kind]['recall']:.0%}) | "
                             f"{lc[kind]['detected']} ({lc[kind]['recall']:.0%}) |")
    days = list(report["noise"])
    tele = TELESEISMIC_KIND in report.get("events", {}).get("model", {})
    head = ("| on | " + " | ".join(f"{d} false/station-day" for d in days) + " | recall real |"
            + (" recall real teleseismic |" if tele else "") + " recall synthetic |")
    lines += ["", head, "|---" * (3 + tele + len(days)) + "|"]
    for o in report["noise"][days[0]]["sweep_model"] if days else []:
        cells = [f"{report['noise'][d]['sweep_model'][o]['per_station_day']:.2f}" for d in days]
        rec = report.get("events", {}).get("sweep_model", {}).get(o, {})
        real = _group(rec, "real:", TELESEISMIC_KIND)
        syn = _group(rec, "synthetic:")
        lines.append(f"| {o} | " + " | ".join(cells) + f" | {real} |"
                     + (f" {_group(rec, TELESEISMIC_KIND)} |" if tele else "") + f" {syn} |")
    return "\n".join(lines)


def _group(rec: dict[str, Any], prefix: str, exclude: str | None = None) -> str:
    keys = [k for k in rec if k.startswith(prefix) and k != exclude]
    ev = sum(rec[k]["events"] for k in keys)
    det = sum(rec[k]["detected"] for k in keys)
    return f"{det}/{ev} ({det / ev:.0%})" if ev else "-"


def sta_lta_ratio(trace, cfg: StaLta = StaLta()) -> tuple[float, float, np.ndarray] | None:
    """The reference detector's characteristic function on one trace: (start time in POSIX seconds, sampling rate,
    recursive STA/LTA ratio of the demeaned, band-passed trace with its first LTA length set to 0), or None for a
    trace no longer than one LTA."""
    from obspy.signal.trigger import recursive_sta_lta

    fs = trace.stats.sampling_rate
    nsta, nlta = int(round(cfg.sta_s * fs)), int(round(cfg.lta_s * fs))
    if trace.stats.npts <= nlta:
        return None
    cft = recursive_sta_lta(band_passed(trace, cfg.band_hz), nsta, nlta)
    cft[:nlta] = 0.0
    return trace.stats.starttime.timestamp, fs, cft


def band_passed(trace, band_hz: tuple[float, float]) -> np.ndarray:
    """The trace's samples (float64), demeaned and band-passed as the reference detector sees them (4-corner
    Butterworth, upper corner capped at 0.45 of the sampling rate); the trace itself is not changed."""
    x = trace.copy()
    x.data = x.data.astype(np.float64)
    x.detrend("demean")
    x.filter("bandpass", freqmin=band_hz[0], freqmax=min(band_hz[1], 0.45 * x.stats.sampling_rate), corners=4)
    return x.data
