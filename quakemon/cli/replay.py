"""`quakemon replay` (archived MiniSEED -> detections, optionally a plot) and `quakemon demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quakemon.base.errors import ConfigError
from quakemon.cli.common import (
    Subparsers,
    _non_negative,
    add_command,
    add_config_flags,
    config_from_args,
    require_checkpoint,
)


def add_replay(sub: Subparsers) -> None:
    p = add_command(sub, "replay", cmd_replay, "archived MiniSEED -> detections (JSON Lines), same code path")
    p.add_argument("paths", nargs="+", help="MiniSEED files, directories or SDS roots")
    add_config_flags(p)
    p.add_argument("--model", help="checkpoint (default: model.checkpoint, else the bundled model)")
    p.add_argument("--output", "-o", default="-", help="JSON Lines file, or - for stdout")
    p.add_argument("--plot", help="write a PNG of waveforms, probabilities and detections")
    p.add_argument("--probabilities", metavar="DIR",
                   help="also write every window's class probabilities as MiniSEED to this SDS folder")
    p.add_argument("--select", action="append", metavar="NET.STA.LOC.CHA", help="stream selector (repeatable)")
    p.add_argument("--screen-every", type=int, default=None, metavar="K",
                   help="screen and refine: forward one window in K of a quiet station (model.screen_every; 1 = off)")
    p.add_argument("--screen-net", default=None, metavar="PATH",
                   help="cascade screen checkpoint instead of --screen-every (model.screen_net)")
    p.add_argument("--screen-threshold", type=float, default=None, metavar="S",
                   help="screen score from which a station's every window is forwarded (model.screen_threshold)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_demo(sub: Subparsers) -> None:
    p = add_command(sub, "demo", cmd_demo, "serve + run + listen on bundled real recordings and the bundled model")
    p.add_argument("--duration", type=_non_negative, default=None, help="stop after this many seconds")
    p.add_argument("--plot", default="quakemon-demo.png", help='PNG written at the end ("" = none)')
    p.add_argument("--speed", type=_non_negative, default=2.0, help="how much faster than real time to stream")


def cmd_replay(args: argparse.Namespace) -> int:
    from quakemon.ingest.selectors import check_selectors

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"replay: expected MiniSEED files or directories, got {', '.join(map(repr, missing))}, "
                          "which do not exist")
    selectors = check_selectors(args.select or []) or None
    if args.probabilities is not None:
        from quakemon.pipeline.probarchive import check_archive_dir

        check_archive_dir(args.probabilities, "--probabilities")  # before the output file is created
    cfg, _ = config_from_args(args, {"model.checkpoint": args.model, "model.screen_every": args.screen_every,
                                     "model.screen_threshold": args.screen_threshold,
                                     "model.screen_net": args.screen_net})
    require_checkpoint(cfg, args.model)
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.associate import associator_from_config
    from quakemon.pipeline.runner import replay

    ckpt = load_checkpoint(resolve_checkpoint(cfg.model.checkpoint))
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    t = cfg.trigger
    try:
        result = replay(args.paths, ckpt, output=out, stride_s=cfg.window.stride_s,
                        associator=associator_from_config(cfg.associate), selectors=selectors,
                        trigger={**t.detection_kwargs(), "trigger_label": t.label,
                                 "max_missing": cfg.window.max_missing_fraction},
                        device=cfg.model.device, precision=cfg.model.precision, graph=cfg.model.graph,
                        batch_size=max(cfg.model.batch_size, 256), progress=not args.quiet,
                        keep_series=bool(args.plot), probabilities=args.probabilities,
                        screen_every=cfg.model.screen_every, screen_threshold=cfg.model.screen_threshold,
                        screen_net=cfg.model.screen_net or None)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.plot:
        from quakemon.tools.plot import plot_replay

        plot_replay(args.paths, result, args.plot, selectors=selectors)
    new = sum(1 for d in result.detections if d["state"] == "new")
    print(f"replay: {result.windows} windows, {new} detections", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from quakemon.tools.demo import run_demo

    return run_demo(duration_s=args.duration, plot=args.plot or None, speed=args.speed)
