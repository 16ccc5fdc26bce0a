"""`quakemon serve`: the SeedLink 4.0/3.1 server that streams archived MiniSEED (`quakemon.tools.serve`)."""

from __future__ import annotations

import argparse

from quakemon.cli.common import Subparsers, _hex_seq, _non_negative, _port, add_command


def add_serve(sub: Subparsers) -> None:
    p = add_command(sub, "serve", cmd_serve, "SeedLink 4.0/3.1 server streaming archived MiniSEED (tests, demos)")
    p.add_argument("paths", nargs="+", help="MiniSEED files or directories")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=18000, help="TCP port (0 = any free port; see --port-file)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--speed", type=_non_negative, default=1.0, help="x real time; 0 = as fast as the client reads")
    p.add_argument("--loop", action="store_true", help="repeat the archive, each pass shifted by its span")
    p.add_argument("--retime-now", action="store_true", help="shift record times so the archive starts now")
    p.add_argument("--first-seq", type=_hex_seq, default=0, metavar="HEX", help="sequence number of record 0 (hex)")
    p.add_argument("--protocol", choices=["4.0", "3.1"], default="4.0", help="highest protocol offered (3.1: 3.1 only)")
    p.add_argument("--command-timeout", type=float, default=30.0,
                   help="close a client that sends no command for this many seconds before its transfer starts")
    p.add_argument("--max-clients", type=int, default=64, help="connections in all")
    p.add_argument("--max-per-address", type=int, default=16, help="connections per client address")


def cmd_serve(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.tools.serve import serve

    configure_logging(args.log_level or "info", "auto")
    return serve(args.paths, host=args.host, port=args.port, speed=args.speed, loop=args.loop,
                 retime=args.retime_now, first_seq=args.first_seq, port_file=args.port_file,
                 max_protocol=args.protocol, command_timeout=args.command_timeout, max_clients=args.max_clients,
                 max_per_address=args.max_per_address) or 0
