"""`quakemon run` (the daemon, or some of its stage processes) and `quakemon check-config`."""

from __future__ import annotations

import argparse
import os
import sys

from quakemon.base.errors import ConfigError
from quakemon.cli.common import Subparsers, add_command, add_config_flags, config_from_args, require_checkpoint

STAGES_HELP = "comma-separated subset of ingest,preprocess,inference (multi-host)"


def add_run(sub: Subparsers) -> None:
    p = add_command(sub, "run", cmd_run, "the daemon: SeedLink -> detections on PUB")
    add_config_flags(p, required=True)
    p.add_argument("--model", help="checkpoint (overrides model.checkpoint)")
    p.add_argument("--stages", help=STAGES_HELP)


def add_check_config(sub: Subparsers) -> None:
    p = add_command(sub, "check-config", cmd_check_config,
                    "validate a config file, check the paths the daemon writes and print the resolved values")
    p.add_argument("file")
    p.add_argument("--stages", help=f"{STAGES_HELP}: check only the paths these stages write")


def cmd_run(args: argparse.Namespace) -> int:
    from quakemon.service.config import STAGES, check_stages

    stages = check_stages(args.stages, key="--stages") if args.stages else None
    cfg, overrides = config_from_args(args, {"model.checkpoint": args.model},
                                      require_streams="ingest" in (stages or STAGES))
    require_checkpoint(cfg, args.model)
    from quakemon.service.daemon import run_daemon

    return run_daemon(cfg, args.config, overrides, stages)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the resolved values and the paths the daemon (or `--stages`) would write, exit 0; or the error, exit 2.

    The same checks as `quakemon run` makes before READY, except that nothing is created (a journal file is only
    opened when it exists). "auto" paths resolve in the environment check-config runs in, and writability is
    checked for the user running it.
    """
    from quakemon.service.config import check_journal, check_stages, load_config
    from quakemon.service.config_format import format_config
    from quakemon.service.paths import check_writable_paths

    where = f"config file {args.file!r}"
    try:
        config = load_config(args.file)
        stages = check_stages(args.stages, key="--stages")
        written = check_writable_paths(config, stages, create=False, where=where)
        if "inference" in stages and os.path.exists(config.publish.journal):
            check_journal(config, where)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.write(format_config(config))
    sys.stdout.write(f"# Paths written by {','.join(stages)} (checked writable for uid {os.getuid()}):\n")
    sys.stdout.writelines(f"#   {wp.key} = {path}\n" for wp, path in written)
    return 0
