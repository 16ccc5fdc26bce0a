"""`quakemon train`, `quakemon evaluate` (around `training.train` and `training.scoring`) and `quakemon params`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from quakemon.base.errors import QuakemonError
from quakemon.cli.common import Subparsers, add_command, config_from_args
from quakemon.models.contract import InputContract


def add_train(sub: Subparsers) -> None:
    p = add_command(sub, "train", cmd_train, "train HybridViT on labelled waveforms")
    p.add_argument("--data", action="append", required=True,
                   help="synthetic:N, a SeisBench folder, or a CSV (file,label or network,station,p_time)")
    p.add_argument("--output", "-o", required=True, help="checkpoint to write (.safetensors)")
    for flag, typ, default in (("--backbone", str, "TINY"), ("--depth", int, 4), ("--epochs", int, 10),
                               ("--batch-size", int, 64), ("--lr", float, 3e-4), ("--freeze-epochs", int, 0),
                               ("--seed", int, 0), ("--component-dropout", float, DEFAULT_COMPONENT_DROPOUT),
                               ("--pretrained", str, ""), ("--device", str, "auto"), ("--val-fraction", float, 0.15)):
        p.add_argument(flag, type=typ, default=default)
    p.add_argument("--quiet", action="store_true")


def add_evaluate(sub: Subparsers) -> None:
    p = add_command(sub, "evaluate", cmd_evaluate, "score a checkpoint on labelled windows or continuous data")
    p.add_argument("--model", help="checkpoint (default: the bundled model)")
    p.add_argument("--data", action="append", help="labelled windows, as for train")
    p.add_argument("--continuous", nargs="*",
                   help="MiniSEED files: with --events, event matching; without, continuous noise (every detection "
                   "false) scored side by side with a recursive STA/LTA. msnoise:UV05 / msnoise:UV10 name the "
                   "msnoise noise days (fetched into the user cache)")
    p.add_argument("--events", help="CSV network,station,p_time for --continuous")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--on", type=float, default=0.7, help="trigger on for --continuous without --events")
    p.add_argument("--synthetic-events", type=int, default=40,
                   help="--continuous without --events: regional and teleseismic events of each kind over the "
                   "first record's real noise, next to the real P catalogue (0: none)")
    p.add_argument("--teleseisms", action="store_true",
                   help="--continuous without --events: also the real teleseismic P arrivals (rf's example records, "
                   "5 Hz, resampled as the daemon does; fetched into the user cache), kind real:teleseismic")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of synthetic --data (default {EVALUATION_SEED}: never a training seed of "
                   "quakemon train's default; pass the training seed to score the training windows)")
    p.add_argument("--json", action="store_true")


def add_params(sub: Subparsers) -> None:
    add_command(sub, "params", cmd_params, "print the exact parameter count of every backbone")


def cmd_train(args: argparse.Namespace) -> int:
    config_from_args(args)  # logging as configured
    return train_main(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    config_from_args(args)
    return evaluate_main(args)


def cmd_params(args: argparse.Namespace) -> int:
    from quakemon.models.params import main

    main()
    return 0


#: Default of `quakemon train --component-dropout`: a model trained with it also serves vertical-only stations.
DEFAULT_COMPONENT_DROPOUT = 0.3
#: Default seed of synthetic data in `quakemon evaluate`; far from `quakemon train`'s default seed 0 and its
#: neighbours (each source i of a run uses seed + i).
EVALUATION_SEED = 1_000_003


def load_sources(sources: list[str], contract: InputContract, seed: int):
    """Load and concatenate labelled sources (all array-shaped after loading)."""
    from quakemon.data.datasets import LabelledWaveforms, load_labelled

    parts = [load_labelled(src, contract, seed=seed + i) for i, src in enumerate(sources)]
    if len(parts) == 1:
        return parts[0]
    names = parts[0].label_names
    if any(p.label_names != names for p in parts):
        raise QuakemonError(f"sources disagree on label names: {[p.label_names for p in parts]}")
    if any(not isinstance(p.waveforms, np.ndarray) for p in parts):
        waves: Any = [w for p in parts for w in p.waveforms]
    else:
        waves = np.concatenate([p.waveforms for p in parts])
    return LabelledWaveforms(waves, np.concatenate([p.labels for p in parts]), names,
                             [m for p in parts for m in p.meta])


def train_main(args: argparse.Namespace) -> int:
    from quakemon.training.train import TrainConfig, train, z_only_warning

    contract = InputContract(component_sets=("Z",)) if args.component_dropout > 0 else InputContract()
    if (why := z_only_warning(contract, args.component_dropout)) is not None:
        print(f"warning: {why}", file=sys.stderr)
    data = load_sources(args.data, contract, args.seed)
    cfg = TrainConfig(backbone=args.backbone, depth=args.depth, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, freeze_epochs=args.freeze_epochs, seed=args.seed, device=args.device,
                      component_dropout=args.component_dropout, pretrained=args.pretrained,
                      val_fraction=args.val_fraction)
    result = train(data, contract, cfg, args.output, progress=not args.quiet,
                   provenance={"data": list(args.data)})
    print(json.dumps({"checkpoint": str(result.checkpoint), "sha256": result.sha256, "best_epoch": result.best_epoch,
                      "val": result.best}, indent=2))
    return 0


def read_event_csv(path: str | Path) -> list[tuple[str, float]]:
    """CSV network,station[,location],p_time -> [("NET.STA", epoch seconds)]."""
    from obspy import UTCDateTime

    events = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            try:
                events.append((f"{row['network']}.{row['station']}", UTCDateTime(row["p_time"]).timestamp))
            except (KeyError, TypeError, ValueError) as exc:
                raise QuakemonError(f"{path}:{i}: expected columns network,station,p_time: {exc}") from None
    return events


def archive_station_hours(paths: list[str]) -> float:
    """Hours of data summed over stations (NET.STA.LOC + instrument), from the archive's records.

    Each channel's record spans are summed; a station counts the longest of its channels, so vertical-only and
    three-component stations both count their real span.
    """
    from obspy import read

    channel_s: dict[str, float] = {}
    for p in paths:
        files = [p] if Path(p).is_file() else [str(f) for f in Path(p).rglob("*") if f.is_file()]
        for f in files:
            for tr in read(f, headonly=True):
                channel_s[tr.id] = channel_s.get(tr.id, 0.0) + (tr.stats.endtime - tr.stats.starttime)
    station_s: dict[str, float] = {}
    for seed_id, seconds in channel_s.items():
        key = seed_id[:-1]  # NET.STA.LOC + band and instrument code
        station_s[key] = max(station_s.get(key, 0.0), seconds)
    return sum(station_s.values()) / 3600.0


def evaluate_main(args: argparse.Namespace) -> int:
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training.scoring import binary_scores, match_events
    from quakemon.wire.schema import parse_iso_utc

    ckpt = load_checkpoint(resolve_checkpoint(args.model))
    report: dict[str, Any] = {"model": ckpt.model_info}
    if args.data:
        from quakemon.pipeline.adapter import WaveformDataAdapter
        from quakemon.pipeline.engine import pick_device
        from quakemon.training.train import adapter_tensors, predict_proba

        seed = EVALUATION_SEED if args.seed is None else args.seed
        data = load_sources(args.data, ckpt.contract, seed)
        report["seed"] = seed
        x, y = adapter_tensors(WaveformDataAdapter.from_contract(ckpt.contract, data.waveforms, data.labels.tolist()))
        positive = ckpt.labels.index("earthquake") if "earthquake" in ckpt.labels else len(ckpt.labels) - 1
        probs = predict_proba(ckpt.model, x, pick_device("cpu"))
        report["windows"] = binary_scores(probs[:, positive].numpy(), (y == positive).numpy(), args.threshold).to_dict()
    if args.continuous and not args.events:
        report["noise"] = _noise_report(ckpt, args)
    elif args.continuous:
        from quakemon.pipeline.runner import replay

        result = replay(args.continuous, ckpt, progress=False)
        onsets = [(d["station"], parse_iso_utc(d["onset"])) for d in result.detections if d["state"] == "new"]
        match = match_events(onsets, read_event_csv(args.events),
                             station_hours=archive_station_hours(args.continuous))
        report["continuous"] = match.to_dict()
    if len(report) == 1:
        raise QuakemonError("evaluate needs --data and/or --continuous")
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        _print_report(report)
    return 0


def _noise_report(ckpt, args: argparse.Namespace) -> dict[str, Any]:
    """Continuous noise (files or msnoise noise days) and the event catalogues, model next to STA/LTA."""
    from obspy import Stream, read

    from quakemon.training import continuous as cont

    noise: dict[str, Stream] = {}
    series = {}
    for src in args.continuous:
        if src.startswith("msnoise:"):
            from quakemon.data.noise_days import load_day

            noise[src] = load_day(src.split(":", 1)[1])
            series[src] = cont.day_series(ckpt, src.split(":", 1)[1])  # cached per checkpoint in the user cache
        else:
            files = [src] if Path(src).is_file() else sorted(str(f) for f in Path(src).rglob("*") if f.is_file())
            if not files:
                raise QuakemonError(f"--continuous {src}: no such file or folder")
            st = Stream()
            for f in files:
                st += read(f)
            st.merge(method=1)
            noise[src] = st.split()
    events = cont.real_event_records(ckpt.contract.sampling_rate)
    if args.synthetic_events > 0:
        events += cont.synthetic_event_records(next(iter(noise.values())), args.synthetic_events)
    if args.teleseisms:
        from quakemon.data.teleseisms import load_catalogue
        from quakemon.training.teleseismic import event_records

        events += event_records(load_catalogue().records)
    report = cont.evaluate_continuous(ckpt, noise, events, on=args.on, noise_series=series)
    out = cont.summary(report)
    out["markdown"] = cont.markdown(report)
    return out


def _print_report(report: dict[str, Any]) -> None:
    print(f"model {report['model']['name']} sha256 {report['model']['sha256'][:12]}")
    if "windows" in report:
        w = report["windows"]
        print(f"windows: n={w['n']} positives={w['positives']} precision={w['precision']:.3f} "
              f"recall={w['recall']:.3f} f1={w['f1']:.3f} roc_auc={w['roc_auc']:.3f} (threshold {w['threshold']})")
    if "continuous" in report:
        c = report["continuous"]
        print(f"continuous: events={c['events']} detected={c['detected']} recall={c['recall']:.3f} "
              f"false={c['false_detections']} over {c['hours']:.3f} station-hours "
              f"({c['false_per_station_hour']:.2f}/station-hour); missed {c['missed']}")
    if "noise" in report:
        print(report["noise"]["markdown"])
    sys.stdout.flush()
