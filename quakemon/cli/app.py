"""The `quakemon` command: the parser and the dispatch; each command family lives in its own module.

    run.py      run (the daemon or some of its stages), check-config
    replay.py   replay (and its --plot), demo
    serve.py    serve (the SeedLink server)
    listen.py   listen, associate (pass-throughs to their modules' own main)
    keys.py     keygen
    export.py   export (QuakeML, SeisComP XML, CSV)
    bridge.py   bridge (one QuakeML file per closed event, live)
    train.py    train, evaluate, params
    bench.py    bench

Each command function reads its arguments, builds its config and calls one function of the layers below.

Exit codes: 0 ok; 2 usage or config error (argparse errors, `ConfigError`, whose message names the key);
1 runtime failure (any other `QuakemonError`, or an OS error such as a port in use or an unwritable file),
reported as one `quakemon: error: ...` line, never a traceback. 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quakemon import __version__
from quakemon.base.errors import QuakemonError
from quakemon.cli import bench, bridge, export, keys, listen, replay, run, serve, train
from quakemon.cli.common import LOG_LEVELS
from quakemon.cli.listen import PASSTHROUGH, run_passthrough, split_passthrough

__all__ = ["PASSTHROUGH", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quakemon", description="Streaming seismic event detector.",
                                     epilog="exit codes: 0 ok, 2 usage or config error, 1 runtime failure")
    parser.add_argument("--version", action="version", version=f"quakemon {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="override logging.level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `quakemon --help` lists them
    run.add_run(sub)
    replay.add_replay(sub)
    serve.add_serve(sub)
    listen.add_passthrough(sub, "listen")
    listen.add_passthrough(sub, "associate")
    run.add_check_config(sub)
    keys.add_keygen(sub)
    export.add_export(sub)
    bridge.add_bridge(sub)
    train.add_train(sub)
    train.add_evaluate(sub)
    replay.add_demo(sub)
    bench.add_bench(sub)
    train.add_params(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `quakemon`; returns the exit code (argparse usage errors exit 2 via SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        passthrough = split_passthrough(parser, argv)
        if passthrough is not None:
            return run_passthrough(*passthrough)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except QuakemonError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
