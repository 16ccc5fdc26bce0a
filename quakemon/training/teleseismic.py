"""Detection of real teleseismic P arrivals (`quakemon.data.teleseisms`, evaluation only): a checkpoint and the
reference STA/LTA on the same records, each record's detections sorted by what explains them.

The records are 5 Hz (signal up to 2.5 Hz). The daemon accepts such a channel: 1 s strides and 20 s windows fall
on whole samples, and each window is resampled to the model's rate with ``resample_poly`` (20/1 for 100 Hz) at
emission (`quakemon.pipeline.windowing`). `model_rows` runs the model exactly that way (through the runner), and,
as a cross-check, on the whole records resampled to the model's rate beforehand (``resample_poly``, `upsampled`).
The STA/LTA runs on the native 5 Hz vertical twice: with the standard settings (`continuous.StaLta`, whose 1-20 Hz
band the 0.45-of-rate cap turns into 1-2.25 Hz at 5 Hz) and band-passed 0.5-2 Hz (`LOW_BAND`), the band a 5 Hz
channel allows.

Each detection onset in a record is one of: the P (within [P - window, P + 10 s], as `continuous.match`); "late"
(10-60 s after the P: its coda or pP/sP); "at a later phase" (within [t - window, t + 10 s] of a predicted later
phase inside the record, e.g. PP, PcP, S); or "other" (nothing catalogued explains it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from obspy import Stream

from quakemon.models.checkpoint import Checkpoint
from quakemon.training.continuous import (
    LATE_S,
    MATCH_AFTER_S,
    SWEEP_ON,
    TELESEISMIC_KIND,
    EventRecord,
    NewPCheck,
    Series,
    StaLta,
    band_passed,
    record_series,
    sta_lta_onsets,
    trigger_onsets,
)

#: The STA/LTA in the band a 5 Hz channel allows (otherwise the standard settings).
LOW_BAND = StaLta(band_hz=(0.5, 2.0))


@dataclass(frozen=True)
class Outcome:
    """One detector on one record: P arrivals detected and the other detections by kind."""

    events: int
    detected: int
    late: int
    at_phase: int
    other: int


def classify(onsets: Sequence[float], p_times: Sequence[float], later: Sequence[float], window_s: float) -> Outcome:
    """Sort detection onsets (POSIX s) by what explains them: P arrivals (`p_times`), the 10-60 s after one,
    a later phase (`later`), or nothing (see the module docstring)."""
    def is_p(o: float) -> bool:
        return any(p - window_s <= o <= p + MATCH_AFTER_S for p in p_times)

    def is_late(o: float) -> bool:
        return any(p + MATCH_AFTER_S < o <= p + LATE_S for p in p_times)

    def at_phase(o: float) -> bool:
        return any(t - window_s <= o <= t + MATCH_AFTER_S for t in later)

    rest = [o for o in onsets if not is_p(o)]
    late = [o for o in rest if is_late(o)]
    phase = [o for o in rest if not is_late(o) and at_phase(o)]
    return Outcome(len(p_times), sum(any(p - window_s <= o <= p + MATCH_AFTER_S for o in onsets) for p in p_times),
                   len(late), len(phase), len(rest) - len(late) - len(phase))


def event_records(records) -> list[EventRecord]:
    """`teleseisms.TeleseismicRecord`s as `continuous.EventRecord`s of kind "real:teleseismic" (info: the
    arrivals' magnitude, distance, depth, first-P phase and later phases)."""
    out = []
    for r in records:
        info = {"arrivals": [{"event": a.event, "magnitude": a.magnitude, "distance_deg": round(a.distance_deg, 1),
                              "depth_km": round(a.depth_km, 1), "phase": a.phase,
                              "later": [(n, t.timestamp) for n, t in a.later]} for a in r.arrivals]}
        out.append(EventRecord(r.name, r.stream, r.p_times, TELESEISMIC_KIND, info))
    return out


def upsampled(record: EventRecord, rate: float) -> EventRecord:
    """The record with every trace resampled to `rate` by ``resample_poly`` over the whole trace."""
    from scipy.signal import resample_poly

    st = record.stream.copy()
    for tr in st:
        ratio = Fraction(rate / tr.stats.sampling_rate).limit_denominator(1000)
        tr.data = resample_poly(tr.data.astype(np.float64), ratio.numerator, ratio.denominator)
        tr.stats.sampling_rate = rate
    return EventRecord(record.name, st, record.p_times, record.kind, record.info)


def p_snr(stream: Stream, p_time: float, band_hz: tuple[float, float] = (0.5, 2.0), after_s: float = 10.0,
          before_s: float = 30.0) -> float:
    """RMS of the vertical, band-passed, over `after_s` after P over its RMS in the `before_s` before P."""
    tr = (stream.select(component="Z") or stream)[0]
    x = band_passed(tr, band_hz)
    fs, t0 = tr.stats.sampling_rate, tr.stats.starttime.timestamp
    i = int(round((p_time - t0) * fs))
    sig, noise = x[i:i + int(after_s * fs)], x[max(0, i - int(before_s * fs)):i]
    return float(np.sqrt(np.mean(sig**2)) / (np.sqrt(np.mean(noise**2)) + 1e-30))


def _later(record: EventRecord) -> list[float]:
    return [t for a in record.info.get("arrivals", []) for _, t in a.get("later", [])]


def model_rows(ckpt: Checkpoint, records: list[EventRecord], *, on: float = 0.7, off: float = 0.5,
               min_duration_s: float = 2.0, precision: str = "fp32", resampled_first: bool = True) -> dict[str, Any]:
    """The model's outcome on each record at `on` and its recall sweep, at the records' own rate (the daemon's
    per-window resampling: "native") and, with `resampled_first`, on the records resampled beforehand to the
    model's rate ("upsampled"). The trigger is the daemon's, one detection per event with its check of a
    re-trigger inside a hold for a clearly new P (`continuous.NewPCheck` on each record, at the model's rate)."""
    window_s = ckpt.contract.window_seconds
    rate = ckpt.contract.sampling_rate
    out: dict[str, Any] = {}
    ways = [("native", records)]
    if resampled_first:
        ways.append(("upsampled", [upsampled(r, rate) for r in records]))
    for how, recs in ways:
        series = record_series(ckpt, recs, precision)
        checks = [NewPCheck(r.stream, rate, window_s) for r in recs]
        out[how] = {"records": [_model_record(r, s, on, off, min_duration_s, window_s, c)
                                for r, s, c in zip(recs, series, checks, strict=True)],
                    "sweep": {f"{o:g}": sum(classify(trigger_onsets(s, o, off, min_duration_s, c), r.p_times,
                                                     _later(r), window_s).detected
                                            for r, s, c in zip(recs, series, checks, strict=True))
                              for o in SWEEP_ON}}
    return out


def _model_record(r: EventRecord, s: Series, on: float, off: float, min_duration_s: float,
                  window_s: float, check: NewPCheck | None = None) -> dict[str, Any]:
    near = [p for p, st in zip(s.p, s.start, strict=True) if any(t - window_s <= st <= t for t in r.p_times)]
    return {"name": r.name, "max_p": float(s.p.max()) if len(s.p) else None,
            "max_p_at_p": float(max(near)) if near else None,
            **_row(trigger_onsets(s, on, off, min_duration_s, check), r, window_s)}


def _row(onsets: list[float], r: EventRecord, window_s: float) -> dict[str, Any]:
    """`classify`'s counts and every onset, in seconds after the record's first P."""
    return {**classify(onsets, r.p_times, _later(r), window_s).__dict__,
            "onsets_after_p_s": [round(o - r.p_times[0], 1) for o in onsets]}


def sta_lta_rows(records: list[EventRecord], window_s: float,
                 settings: dict[str, StaLta] | None = None) -> dict[str, Any]:
    """The STA/LTA's outcome on each record for each named setting (default: standard and 0.5-2 Hz)."""
    settings = settings or {"standard": StaLta(), "0.5-2 Hz": LOW_BAND}
    return {name: {"settings": {**cfg.__dict__, "band_hz": list(cfg.band_hz)},
                   "records": [{"name": r.name, **_row(sta_lta_onsets(r.stream, cfg), r, window_s)}
                               for r in records]}
            for name, cfg in settings.items()}


def evaluate(ckpt: Checkpoint, records: list[EventRecord], *, on: float = 0.7,
             resampled_first: bool = True) -> dict[str, Any]:
    """The model (`model_rows`) and the STA/LTA (both settings) on the records, with each record's P SNR."""
    window_s = ckpt.contract.window_seconds
    return {"model": ckpt.model_info, "on": on, "window_s": window_s,
            "records": [{"name": r.name, "rate": r.stream[0].stats.sampling_rate,
                         "snr_0.5-2Hz": round(p_snr(r.stream, r.p_times[0]), 2), **r.info} for r in records],
            "model_outcome": model_rows(ckpt, records, on=on, resampled_first=resampled_first),
            "sta_lta": sta_lta_rows(records, window_s)}


def _total(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(r[k] for r in rows) for k in ("events", "detected", "late", "at_phase", "other")}


def markdown(report: dict[str, Any]) -> str:
    """Per-record and summary tables."""
    m, c = report["model_outcome"], report["sta_lta"]
    lines = ["| record (origin) | Mw | distance | depth | first P | P SNR 0.5-2 Hz | model max p near P | model | "
             "STA/LTA standard | STA/LTA 0.5-2 Hz |", "|---|---:|---:|---:|---|---:|---:|---|---|---|"]

    def cell(row):
        extra = [f"{row[k]} {label}" for k, label in (("late", "late"), ("at_phase", "at later phase"),
                                                       ("other", "other")) if row[k]]
        return ("P" if row["detected"] else "missed") + (f" (+{', '.join(extra)})" if extra else "")

    for i, rec in enumerate(report["records"]):
        a = rec["arrivals"][0]
        mr = m["native"]["records"][i]
        mp = "-" if mr["max_p_at_p"] is None else f"{mr['max_p_at_p']:.3f}"
        lines.append(f"| {a['event']} | {a['magnitude']:.1f} | {a['distance_deg']:.1f}° | {a['depth_km']:.0f} km | "
                     f"{a['phase']} | {rec['snr_0.5-2Hz']:.1f} | {mp} | {cell(mr)} | "
                     f"{cell(c['standard']['records'][i])} | {cell(c['0.5-2 Hz']['records'][i])} |")
    lines += ["", "| detector | P detected | late (10-60 s) | at a later phase | other |", "|---|---:|---:|---:|---:|"]
    rows = [(f"model, 5 Hz as the daemon resamples it (on {report['on']:g})", m["native"]["records"])]
    if "upsampled" in m:
        rows.append((f"model, records resampled to 100 Hz first (on {report['on']:g})", m["upsampled"]["records"]))
    rows += [("STA/LTA standard (1-20 Hz, capped to 1-2.25 Hz at 5 Hz)", c["standard"]["records"]),
             ("STA/LTA 0.5-2 Hz", c["0.5-2 Hz"]["records"])]
    for label, recs in rows:
        t = _total(recs)
        lines.append(f"| {label} | {t['detected']}/{t['events']} | {t['late']} | {t['at_phase']} | {t['other']} |")
    ways = [w for w in ("native", "upsampled") if w in m]
    head = {"native": "P detected (5 Hz, daemon)", "upsampled": "P detected (resampled first)"}
    lines += ["", "| model on | " + " | ".join(head[w] for w in ways) + " |", "|---:" * (1 + len(ways)) + "|"]
    n = _total(m["native"]["records"])["events"]
    for o in m["native"]["sweep"]:
        lines.append(f"| {o} | " + " | ".join(f"{m[w]['sweep'][o]}/{n}" for w in ways) + " |")
    return "\n".join(lines)
