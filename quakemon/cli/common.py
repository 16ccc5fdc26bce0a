"""What the command modules share: registering a subcommand, loading the config, argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quakemon.base.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Subparsers = argparse._SubParsersAction  # what `add_subparsers` returns
Command = Callable[[argparse.Namespace], int]


def add_command(sub: Subparsers, name: str, func: Command | None, help: str, **kw: Any) -> argparse.ArgumentParser:
    """Add subcommand `name` whose parsed arguments go to `func` (None: a pass-through, see `cli.listen`)."""
    p = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(func=func)
    return p


def add_config_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="TOML config file (see config/quakemon.toml)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key")


def config_from_args(args: argparse.Namespace, overrides: dict[str, Any] | None = None, *,
                     require_streams: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load the config (file, then `--set` and flag overrides), configure logging; return (config, overrides).

    Flag overrides whose value is None (a flag that was not given) are left out.
    """
    from quakemon.base.logs import configure_logging
    from quakemon.service.config import load_config

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        overrides[key.strip()] = value.strip()
    cfg = load_config(getattr(args, "config", None), overrides, require_streams=require_streams)
    configure_logging(args.log_level or cfg.logging.level, cfg.logging.format)
    return cfg, overrides


def require_checkpoint(cfg: Any, flag: str | None) -> None:
    """Fail before any work starts when an explicit checkpoint file does not exist (the bundled one is checked
    where it is resolved). `flag`: the --model value, to name the flag rather than the config key."""
    path = cfg.model.checkpoint
    if path and not Path(path).expanduser().is_file():
        key = "--model" if flag else "model.checkpoint"
        raise ConfigError(f"{key}: expected an existing checkpoint file (.safetensors), got {path!r}, which "
                          f"{'is not a file' if Path(path).expanduser().exists() else 'does not exist'}")


# Argument types. argparse names a type in its "invalid <name> value" message when the text is not a number at
# all, so these keep the names the messages have always shown.


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0..65535, got {text!r}")
    return value


def _hex_seq(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a hexadecimal SeedLink sequence number, got {text!r}") from None
    if not 0 <= value <= 0xFFFFFF:
        raise argparse.ArgumentTypeError(f"expected a sequence number 0..FFFFFF (hex), got {text!r}")
    return value
