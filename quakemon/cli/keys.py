"""`quakemon keygen`: a CURVE key pair for the detection publisher and its subscribers."""

from __future__ import annotations

import argparse

from quakemon.cli.common import Subparsers, add_command


def add_keygen(sub: Subparsers) -> None:
    p = add_command(sub, "keygen", cmd_keygen, "write a CURVE key pair: NAME.key and NAME.key_secret (mode 0600)")
    p.add_argument("directory", help="created if missing (mode 0700)")
    p.add_argument("--name", default="quakemon")


def cmd_keygen(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.wire.security import keygen

    configure_logging(args.log_level or "warning", "auto")
    public, secret = keygen(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600)")
    return 0
