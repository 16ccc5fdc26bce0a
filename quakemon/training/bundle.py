"""Build and evaluate the bundled detector (quakemon/assets/quakemon-detector.safetensors).

    python -m quakemon.training.bundle train      # base, fine-tuning stages and evaluation (fixed seeds)
    python -m quakemon.training.bundle finetune --init BASE.safetensors  # only the fine-tuning stages from BASE
    python -m quakemon.training.bundle evaluate   # re-runs the real-data evaluation of an existing checkpoint

`train` builds a base model from synthetic data (OUT.base.safetensors next to the output), then the fine-tuning
stages from it. `finetune` turns a base into the shipped model in two stages
(`FINETUNE_STAGES`, `quakemon.training.finetune`): (1) multi-site real noise, distant and local events over it and
their phase-randomised copies, for a band-passed input contract; (2) from stage 1, the same plus the UV05 noise
day's hard negatives mined with stage 1. Its evaluation adds the continuous report
(`quakemon.training.continuous`) on both noise days, next to a recursive STA/LTA; UV05 is a training day.

Training data of the base: `quakemon.data.synthetic.generate` (physically motivated local earthquakes and hard
negatives over synthetic and real ObsPy noise files that are *not* evaluation recordings) plus real noise
windows cut from BW.KW1 (`quakemon.data.training_noise.training_noise_segments`, triggers masked). No evaluation
recording is ever used for training: evaluation runs on `quakemon.data.realdata.local_events()` and
`noise_recordings()`.

Evaluation slides windows over each real recording on the absolute 1 s grid, through the one preprocessing,
the inference engine and the trigger (the daemon's code). A local event counts as detected when a detection's
onset lies within [P - window length, P + 10 s]; a detection 10-60 s after a P arrival is counted as "late"
(it fired on the S wave or coda of that event); every other detection is a false detection. Z-only recordings
are fed with zeroed horizontals, the input the model saw under component dropout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.models.checkpoint import BUNDLED_CHECKPOINT, Checkpoint, load_checkpoint
from quakemon.models.contract import InputContract

log = structlog.get_logger(__name__)

SEED = 20261128
N_SYNTHETIC = 12_000
REPORT = BUNDLED_CHECKPOINT.with_suffix(".eval.json")
#: The shipped model's fine-tuning stages after the base: `finetune.finetune` keyword arguments of each.
FINETUNE_STAGES: tuple[dict[str, Any], ...] = (
    {"day": None, "noise": "sprit", "epochs": 2, "bandpass": (0.7, 25.0), "surrogates": 5000},
    {"day": "UV05", "noise": "sprit", "epochs": 1, "bandpass": None, "surrogates": 5000},
)
#: A detection whose onset lies 10-60 s after a P arrival is "late" (S wave or coda of that event), not false.
LATE_S = 60.0


def training_data(contract: InputContract, n: int, seed: int):
    """Synthetic windows (25 % over real non-evaluation ObsPy noise files) + real BW.KW1 noise windows."""
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.data.synthetic import LABELS, SyntheticConfig, generate, obspy_noise_files
    from quakemon.data.training_noise import training_noise_segments

    cfg = SyntheticConfig(real_noise_files=obspy_noise_files(), real_noise_fraction=0.25)
    waves, labels, meta = generate(n, contract, seed, cfg)
    seg = training_noise_segments(contract.window_samples, contract.sampling_rate)[:, 0]  # [k, N] vertical noise
    rng = np.random.default_rng(seed + 1)
    k = len(seg)
    # three distinct real segments per window (Z, N, E), so horizontals are real noise too
    picks = np.stack([rng.permutation(k), rng.permutation(k), rng.permutation(k)], axis=1)
    real = seg[picks].astype(np.float32)  # [k, 3, N]
    order = [("ZNE".index(c) if c in "ZNE" else 0) for c in contract.component_order]
    real = real[:, order]
    waves = np.concatenate([waves, real])
    labels = np.concatenate([labels, np.zeros(k, np.int64)])
    meta = meta + [{"label": "noise", "noise_source": "real:BW.KW1"} for _ in range(k)]
    band_limit(waves, meta, contract.sampling_rate, rng)
    return LabelledWaveforms(waves, labels, list(LABELS), meta)


def band_limit(waves: np.ndarray, meta: list[dict], fs: float, rng: np.random.Generator,
               fraction: float = 0.35, corner_hz: tuple[float, float] = (12.0, 32.0)) -> None:
    """Low-pass a random share of windows in place, as a digitiser at 30-80 Hz (upsampled to the model's rate)
    would have: real 40 and 50 Hz stations reach the model with an empty upper spectrum, and without this the
    model would learn "energy above 25 Hz" as a property of every window. Applied to both classes alike."""
    chosen = rng.permutation(np.flatnonzero(rng.random(len(waves)) < fraction))
    blocks = [np.sort(chosen[lo : lo + 64]) for lo in range(0, len(chosen), 64)]
    for idx, fc in zip(blocks, low_pass_blocks(waves, blocks, fs, rng, corner_hz), strict=True):
        for i in idx:
            meta[i]["band_limit_hz"] = round(fc, 1)


def low_pass_blocks(waves: np.ndarray, blocks: list[np.ndarray], fs: float, rng: np.random.Generator,
                    corner_hz: tuple[float, float]) -> list[float]:
    """Low-pass `waves[idx]` in place for each index array of `blocks` (8th-order zero-phase Butterworth, one corner
    drawn uniformly from `corner_hz` per block, which keeps the filtering vectorised); returns the corners."""
    from scipy.signal import butter, sosfiltfilt

    corners = []
    for idx in blocks:
        fc = float(rng.uniform(*corner_hz))
        sos = butter(8, fc, btype="low", fs=fs, output="sos")
        waves[idx] = sosfiltfilt(sos, waves[idx], axis=-1).astype(np.float32)
        corners.append(fc)
    return corners


def _grid_windows(stream, contract: InputContract, stride_s: float = 1.0, force_z_only: bool = False):
    """Windows on the absolute grid over one station's stream: (data [B, C, N], starts_ns)."""
    from quakemon.pipeline.streams import stream_to_array

    fs = contract.sampling_rate
    comps = {tr.stats.channel[-1] for tr in stream}
    zero_missing = (force_z_only or not set("NE") <= comps) and "Z" in comps
    if zero_missing:
        z = stream.select(component="Z").copy()
        arr = np.zeros((contract.n_channels, z[0].stats.npts))
        arr[contract.component_order.index("Z")] = z[0].data
    else:
        arr = stream_to_array(stream, contract)
    t0 = stream[0].stats.starttime
    t0_ns = t0.ns
    stride_ns = int(round(stride_s * 1e9))
    first = -(-t0_ns // stride_ns) * stride_ns
    n = contract.window_samples
    starts, data = [], []
    k = first
    while True:
        offset = int(round((k - t0_ns) * fs / 1e9))
        if offset + n > arr.shape[1]:
            break
        data.append(arr[:, offset : offset + n])
        starts.append(k)
        k += stride_ns
    return (np.stack(data).astype(np.float32) if data else np.zeros((0, contract.n_channels, n), np.float32),
            starts, zero_missing)


def evaluate_real(ckpt: Checkpoint, on: float = 0.7, off: float = 0.5, min_duration_s: float = 2.0,
                  precision: str = "fp32") -> dict[str, Any]:
    """Recall on real local events and false detections per station-hour on real noise."""
    from quakemon.data.realdata import load, local_events, noise_recordings
    from quakemon.pipeline.detect import DetectionStage, WindowMeta, preprocess_windows
    from quakemon.pipeline.engine import InferenceEngine
    from quakemon.wire.schema import parse_iso_utc

    contract = ckpt.contract
    engine = InferenceEngine(ckpt, device="cpu", precision=precision, batch_size=256)
    window_s = contract.window_seconds
    rows = []
    recordings = [(rec, False) for rec in [*local_events(), *noise_recordings()]]
    # the three-component event recordings once more with their horizontals removed: Z-only vs ZNE, same data
    recordings += [(rec, True) for rec in local_events() if rec.components == "ZNE"]
    for rec, force_z in recordings:
        is_event = hasattr(rec, "p_times")
        if is_event and rec.kind not in ("local", "local/regional"):
            continue
        try:
            st = load(rec, sampling_rate=contract.sampling_rate)
        except Exception as exc:  # noqa: BLE001 - report and go on
            rows.append({"name": rec.name, "error": str(exc)})
            continue
        data, starts, z_only = _grid_windows(st, contract, force_z_only=force_z)
        if len(starts) == 0:
            rows.append({"name": rec.name, "skipped": "shorter than one window"})
            continue
        metas = [WindowMeta(rec.station, s, s + int(window_s * 1e9)) for s in starts]
        spectra, metas = preprocess_windows(data, metas, contract)
        stage = DetectionStage(engine, on, off, min_duration_s, "earthquake")
        result = stage.process(spectra, metas)
        dets = [b for b, _ in result.detections + stage.flush() if b["state"] == "new"]
        onsets = [parse_iso_utc(d["onset"]) for d in dets]
        span_h = (len(starts) - 1) * 1.0 / 3600 + window_s / 3600
        row: dict[str, Any] = {"name": rec.name + (" (horizontals removed)" if force_z else ""), "station": rec.station,
                               "components": "Z" if z_only else "ZNE", "reduced": force_z,
                               "windows": len(starts), "hours": span_h, "detections": len(dets),
                               "max_probability": float(np.nanmax(result.probabilities[:, -1]))}
        if is_event:
            ps = [p.timestamp for p in rec.p_times]
            usable = [p for p in ps if starts[0] / 1e9 <= p - 0.5 and p + 1.0 <= starts[-1] / 1e9 + window_s]
            hit = [p for p in usable if any(p - window_s <= o <= p + 10.0 for o in onsets)]
            late = [o for o in onsets if not any(p - window_s <= o <= p + 10.0 for p in ps)
                    and any(p + 10.0 < o <= p + LATE_S for p in ps)]
            false = [o for o in onsets if not any(p - window_s <= o <= p + LATE_S for p in ps)]
            row.update(events=len(usable), detected=len(hit), late=len(late), false=len(false))
        else:
            row.update(false=len(dets))
        rows.append(row)
    ok = [r for r in rows if "windows" in r]
    ev = [r for r in ok if "events" in r and not r["reduced"]]
    reduced = [r for r in ok if "events" in r and r["reduced"]]
    noise = [r for r in ok if "events" not in r]

    def summary(sel):
        events = sum(r["events"] for r in sel)
        return {"events": events, "detected": sum(r["detected"] for r in sel),
                "recall": (sum(r["detected"] for r in sel) / events) if events else None}

    noise_hours = sum(r["hours"] for r in noise)
    event_hours = sum(r["hours"] for r in ev)
    return {
        "model": ckpt.model_info, "trigger": {"on": on, "off": off, "min_duration_s": min_duration_s},
        "events_all": summary(ev), "events_3c": summary([r for r in ev if r["components"] == "ZNE"]),
        "events_z": summary([r for r in ev if r["components"] == "Z"]),
        "events_3c_as_z": summary(reduced),
        "noise": {"station_hours": noise_hours, "false": sum(r["false"] for r in noise),
                  "false_per_station_hour": (sum(r["false"] for r in noise) / noise_hours) if noise_hours else None},
        "event_recordings": {"station_hours": event_hours, "late": sum(r["late"] for r in ev),
                             "false": sum(r["false"] for r in ev)},
        "recordings": rows,
    }


def continuous_summary(ckpt: Checkpoint, events_day: str = "UV10") -> dict[str, Any]:
    """The continuous report (`quakemon.training.continuous`) on both noise days, without the sweeps' details."""
    from quakemon.data.noise_days import NOISE_DAYS, load_day
    from quakemon.training import continuous as cont

    days = {d: load_day(d) for d in NOISE_DAYS}
    events = cont.real_event_records(ckpt.contract.sampling_rate)
    events += cont.synthetic_event_records(days[events_day])
    rep = cont.summary(cont.evaluate_continuous(ckpt, days, events,
                                                noise_series={d: cont.day_series(ckpt, d) for d in days}))
    rep.pop("model", None)
    rep["events"].pop("records", None)
    rep["events_day"] = events_day
    return rep


def finetune_stages(init: Path, out: Path, precision: str = "fp32") -> None:
    """The shipped model from base checkpoint `init`: each of `FINETUNE_STAGES` starts from the one before (its
    output next to `out` as OUT.stageN.safetensors; the last one's in a hidden directory there, under `out`'s own
    file name, which the checkpoint's name is taken from), and the last is moved to `out` (which may be `init`)."""
    from dataclasses import replace

    import torch

    from quakemon.training.finetune import FinetuneSizes, finetune

    torch.set_num_threads(min(2, torch.get_num_threads()))
    last = out.parent / f".{out.stem}.stages" / out.name
    last.parent.mkdir(exist_ok=True)
    for i, stage in enumerate(FINETUNE_STAGES, 1):
        staged = last if i == len(FINETUNE_STAGES) else out.with_name(f"{out.stem}.stage{i}.safetensors")
        finetune(stage["day"], staged, init, epochs=stage["epochs"], noise=stage["noise"], precision=precision,
                 bandpass=stage["bandpass"], sizes=replace(FinetuneSizes(), surrogates=stage["surrogates"]),
                 progress=sys.stderr.isatty(),
                 command=f"python -m quakemon.training.bundle finetune (stage {i} of {len(FINETUNE_STAGES)})")
        init = staged
    last.replace(out)
    last.parent.rmdir()


def markdown(report: dict[str, Any]) -> str:
    lines = ["| recording | station | comps | windows | P arrivals | detected | late | false | max p |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["recordings"]:
        if "windows" not in r:
            lines.append(f"| {r['name']} | | | | | | | | {r.get('skipped') or r.get('error')} |")
            continue
        lines.append(f"| {r['name']} | {r['station']} | {r['components']} | {r['windows']} | {r.get('events', '-')} | "
                     f"{r.get('detected', '-')} | {r.get('late', '-')} | {r['false']} | {r['max_probability']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from quakemon.base.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m quakemon.training.bundle")
    parser.add_argument("action", choices=["train", "finetune", "evaluate"])
    parser.add_argument("--init", default=None, help="finetune: the checkpoint to start from")
    parser.add_argument("--continuous", action="store_true",
                        help="evaluate: add the noise-day report (needs the msnoise noise days)")
    parser.add_argument("--output", default=str(BUNDLED_CHECKPOINT))
    parser.add_argument("--n", type=int, default=N_SYNTHETIC)
    parser.add_argument("--epochs", type=int, default=None, help="train: default 6")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--precision", default=None,
                        help="train: the base's (default bf16; the fine-tuning stages run in fp32); finetune: the "
                             "stages' (default fp32)")
    args = parser.parse_args(argv)
    configure_logging("info", "console")
    out = Path(args.output)
    if args.action == "train":
        from quakemon.training.train import TrainConfig, train

        contract = InputContract(component_sets=("Z",))  # component dropout: Z-only stations are served too
        t0 = time.time()
        data = training_data(contract, args.n, SEED)
        log.info("bundle_data", counts=data.counts(), seconds=round(time.time() - t0, 1))
        cfg = TrainConfig(backbone="TINY", depth=args.depth, epochs=args.epochs or 6, batch_size=64, lr=5e-4,
                          component_dropout=0.3, seed=SEED, precision=args.precision or "bf16", val_fraction=0.1)
        base = out.with_name(f"{out.stem}.base.safetensors")
        train(data, contract, cfg, base, progress=sys.stderr.isatty(), provenance={
            "data": f"bundle.training_data(n={args.n}, seed={SEED}): synthetic + real BW.KW1 noise",
            "command": "python -m quakemon.training.bundle train (base)"})
        finetune_stages(base, out, "fp32")
    if args.action == "finetune":
        if args.epochs is not None:
            parser.error("--epochs: the fine-tuning stages fix their epochs (FINETUNE_STAGES)")
        finetune_stages(Path(args.init or BUNDLED_CHECKPOINT), out, args.precision or "fp32")
    ckpt = load_checkpoint(out)
    report = evaluate_real(ckpt)
    if args.action in ("train", "finetune") or args.continuous:
        report["continuous"] = continuous_summary(ckpt)
    out.with_suffix(".eval.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(markdown(report))
    keys = ("events_all", "events_3c", "events_3c_as_z", "events_z", "noise", "event_recordings")
    print(json.dumps({k: report[k] for k in keys},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
