"""`quakemon run` (the daemon, or some of its stage processes) and `quakemon check-config`."""

from __future__ import annotations

import argparse

from quakemon.cli.common import Subparsers, add_command, add_config_flags, config_from_args, require_checkpoint


def add_run(sub: Subparsers) -> None:
    p = add_command(sub, "run", cmd_run, "the daemon: SeedLink -> detections on PUB")
    add_config_flags(p, required=True)
    p.add_argument("--model", help="checkpoint (overrides model.checkpoint)")
    p.add_argument("--stages", help="comma-separated subset of ingest,preprocess,inference (multi-host)")


def add_check_config(sub: Subparsers) -> None:
    p = add_command(sub, "check-config", cmd_check_config, "validate a config file and print the resolved values")
    p.add_argument("file")


def cmd_run(args: argparse.Namespace) -> int:
    from quakemon.service.config import STAGES, check_stages

    stages = check_stages(args.stages, key="--stages") if args.stages else None
    cfg, overrides = config_from_args(args, {"model.checkpoint": args.model},
                                      require_streams="ingest" in (stages or STAGES))
    require_checkpoint(cfg, args.model)
    from quakemon.service.daemon import run_daemon

    return run_daemon(cfg, args.config, overrides, stages)


def cmd_check_config(args: argparse.Namespace) -> int:
    from quakemon.service.config import check_config_main

    return check_config_main(args.file)
