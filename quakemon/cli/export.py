"""`quakemon export`: detections and events from a journal or a replay's JSON Lines to QuakeML, SCML or CSV."""

from __future__ import annotations

import argparse
import sys

from quakemon.cli.common import Subparsers, add_command


def add_export(sub: Subparsers) -> None:
    p = add_command(sub, "export", cmd_export,
                    "write the detections (as picks) and events of a journal or a JSON Lines file as QuakeML, "
                    "SeisComP XML or CSV")
    p.add_argument("input", help="a journal (the daemon's SQLite file) or a JSON Lines file from `quakemon replay`")
    p.add_argument("--format", required=True, choices=("quakeml", "sc3ml", "csv"),
                   help="quakeml (QuakeML 1.2), sc3ml (SeisComP XML, for scdispatch/scdb), csv (one row a pick)")
    p.add_argument("-o", "--output", default="-", help="output file (default: standard output)")


def cmd_export(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.wire.export import export

    configure_logging(args.log_level or "warning", "auto")
    if args.output == "-":
        target = sys.stdout.buffer if args.format != "csv" else sys.stdout
        n = export(args.input, args.format, target)
        sys.stdout.flush()
    else:
        n = export(args.input, args.format, args.output)
    print(f"exported {n} pick(s) to {args.output if args.output != '-' else 'standard output'}", file=sys.stderr)
    return 0
