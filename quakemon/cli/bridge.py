"""`quakemon bridge`: one QuakeML file per closed event into a folder, from a running daemon, losing nothing."""

from __future__ import annotations

import argparse
import sys
import threading

from quakemon.cli.common import Subparsers, add_command


def add_bridge(sub: Subparsers) -> None:
    p = add_command(sub, "bridge", cmd_bridge,
                    "follow a daemon's detections and write one QuakeML file per closed event into a folder "
                    "(atomically; resumes from a position file, so restarts lose nothing)")
    p.add_argument("endpoint", help="the daemon's PUB endpoint, e.g. tcp://host:5556")
    p.add_argument("--quakeml-dir", required=True, help="folder for <event id>.xml files (created if missing)")
    p.add_argument("--resume", required=True, metavar="FILE",
                   help="position file; a FILE that does not exist yet starts from the oldest journaled message")
    p.add_argument("--catchup", default=None, help="catch-up endpoint (default: the one heartbeats advertise)")
    p.add_argument("--curve-secret-key", default=None, help="this client's CURVE secret key file")
    p.add_argument("--curve-server-key", default=None, help="the daemon's CURVE public key file")


def cmd_bridge(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.base.signals import stop_on_signals
    from quakemon.tools.bridge import run_bridge

    configure_logging(args.log_level or "info", "auto")
    with stop_on_signals(threading.Event()) as stop:
        written = run_bridge(args.endpoint, args.quakeml_dir, args.resume, stop=stop, catchup=args.catchup,
                             curve_secret_key=args.curve_secret_key, curve_server_key=args.curve_server_key)
    print(f"wrote {written} QuakeML file(s) to {args.quakeml_dir}", file=sys.stderr)
    return 0
