"""Pass-through subcommands, `quakemon listen` and `quakemon associate`: everything after the subcommand name
goes unchanged to that module's own `main(argv)`, so their flags and `--help` are defined in one place."""

from __future__ import annotations

import argparse
import importlib

from quakemon.base.errors import QuakemonError
from quakemon.cli.common import Subparsers, add_command

# subcommand -> module whose main(argv) -> int receives the rest of the command line
PASSTHROUGH = {"listen": "quakemon.tools.listen", "associate": "quakemon.service.associate_main"}

_HELP = {"listen": "subscribe and print detections; reports seq gaps and silence (--resume FILE: lossless)",
         "associate": "group detections from one or more publishers into events (event.<id>)"}


def add_passthrough(sub: Subparsers, name: str) -> None:
    """Register pass-through `name` (for `quakemon --help`; `split_passthrough` routes it before parsing)."""
    p = add_command(sub, name, None, _HELP[name], add_help=False)
    p.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of `quakemon {name}`; see its -h")


def split_passthrough(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, list[str], str | None] | None:
    """(command, its argv, --log-level) when argv names a pass-through subcommand, else None."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i >= len(argv) or argv[i] not in PASSTHROUGH:
        return None
    head = parser.parse_args(argv[:i + 1])  # validates the global options (exits 2 on a bad one)
    return argv[i], argv[i + 1:], head.log_level


def run_passthrough(command: str, argv: list[str], log_level: str | None) -> int:
    """Run a pass-through subcommand: its module's main(argv) parses everything after the subcommand name."""
    from quakemon.base.logs import configure_logging

    module_name = PASSTHROUGH[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise QuakemonError(f"`quakemon {command}` is not available in this installation "
                            f"(module {module_name} is missing)") from None
    configure_logging(log_level or "info", "auto")  # logs go to stderr; stdout stays the command's output
    return int(module.main(argv) or 0)
