"""The value checks of the daemon's configuration keys.

Each check takes a value already coerced to the key's type and returns it (possibly normalised) or raises
`Invalid`, whose message says what was expected; `quakemon.service.config` names the file and the key.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

from quakemon.ingest.selectors import STREAM_SYNTAX, SelectorError, parse_streams

Check = Callable[[Any], Any]


class Invalid(ValueError):
    """Raised by a key check; the message says what was expected."""


def setting(default: Any, doc: str, check: Check | None = None, *, mixed: bool = False) -> Any:
    """A config key: its default, a one-line doc and an optional check (normalises or raises `Invalid`).
    mixed: the value may have another type than the default's ("auto" or a number); the check alone decides."""
    return field(default=default, metadata={"doc": doc, "check": check, "mixed": mixed})


# -- checks --------------------------------------------------------------------------------------------------


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    def check(v: float) -> float:
        too_low = lo is not None and (v <= lo if lo_open else v < lo)
        if too_low or (hi is not None and v > hi) or (isinstance(v, float) and not math.isfinite(v)):
            lo_txt = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
            hi_txt = "" if hi is None else f"<= {hi}"
            raise Invalid(f"a number {' and '.join(t for t in (lo_txt, hi_txt) if t)}")
        return v

    return check


def one_of(*values: str) -> Check:
    def check(v: str) -> str:
        if v not in values:
            raise Invalid("one of " + ", ".join(json.dumps(x) for x in values))
        return v

    return check


def auto_or_count(hi: int) -> Check:
    """"auto" or an integer 0..hi (a string of digits, from a command-line override, counts)."""

    def check(v: str | int) -> str | int:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi):
            return v
        raise Invalid(f'"auto" or an integer 0..{hi}')

    return check


def host_port(v: str, *, what: str, allow_empty: bool = False, min_port: int = 1) -> str:
    if allow_empty and v == "":
        return v
    host, sep, port = v.rpartition(":")
    expected = f'"host:port" ({what}, port {min_port}..65535)' + (' or "" (off)' if allow_empty else "")
    if not sep or not host or "/" in v or not port.isdigit() or not min_port <= int(port) <= 65535:
        raise Invalid(expected)
    return v


def server_address(v: str) -> str:
    return host_port(v, what="a SeedLink server, no seedlink:// prefix")


def listen_address(v: str) -> str:
    return host_port(v, what="HTTP listen address, port 0 picks a free one", allow_empty=True, min_port=0)


def stream_list(v: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(s.text for s in parse_streams(v))
    except SelectorError as exc:
        raise Invalid(f"distinct {STREAM_SYNTAX}, but {exc}") from None


_ENDPOINT = re.compile(r"^(tcp://[^\s/]+:(\d+|\*)|ipc://\S+|inproc://\S+)$")


def endpoint(v: str, *, allow_auto: bool = False) -> str:
    if allow_auto and v == "auto":
        return v
    if not _ENDPOINT.match(v) or (v.startswith("ipc://") and len(v) - len("ipc://") > 107):
        raise Invalid('a ZeroMQ endpoint "tcp://host:port", "ipc://path" (path <= 107 bytes) or "inproc://name"'
                       + (' or "auto"' if allow_auto else ""))
    return v


def auto_endpoint(v: str) -> str:
    return endpoint(v, allow_auto=True)


def catchup_endpoint(v: str) -> str:
    return v if v in ("", "auto") else endpoint(v)


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def device_name(v: str) -> str:
    if not _DEVICE.match(v):
        raise Invalid('"auto", "cpu", "cuda" or "cuda:N"')
    return v


def env_path(v: str) -> str:
    return os.path.expandvars(v)


def non_empty(v: str) -> str:
    if not v.strip():
        raise Invalid("a non-empty string")
    return v


def check_screen_net(path: str, checkpoint: str) -> None:
    """A cascade screen checkpoint (`quakemon.models.screen_meta`) that exists and was distilled for the detector
    `checkpoint` ("" = the bundled one) and its input contract; read without torch. Raises Invalid."""
    from quakemon.base.errors import QuakemonError
    from quakemon.models.checkpoint import file_sha256, read_metadata, resolve_checkpoint
    from quakemon.models.contract import InputContract
    from quakemon.models.screen_meta import read_screen_meta

    if not os.path.isfile(os.path.expanduser(path)):
        raise Invalid(f"an existing screen checkpoint file, got {path!r}, which does not exist")
    try:
        detector = resolve_checkpoint(checkpoint)
        contract = InputContract.from_dict(read_metadata(detector)["contract"])
        read_screen_meta(os.path.expanduser(path), file_sha256(detector), contract)
    except (QuakemonError, KeyError, OSError, ValueError) as exc:
        raise Invalid(f"a screen checkpoint for the configured detector, but {exc}") from None
