"""The `quakemon` command: parse, load config, call one function. Exit codes: 0 ok, 2 usage/config, 1 runtime."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from quakemon.errors import QuakemonError


def _cmd_params(args: argparse.Namespace) -> int:
    from quakemon.models.params import main

    main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quakemon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="print the exact parameter count of every backbone")
    p.set_defaults(func=_cmd_params)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except QuakemonError as exc:
        print(f"quakemon: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
