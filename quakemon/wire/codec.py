"""The wire's error type and its JSON encoding, shared by array frames and published bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from quakemon.base.errors import QuakemonError


class MessageError(QuakemonError):
    """A message does not follow the wire schema (malformed frames, unknown dtype, missing field, ...)."""


def json_bytes(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (no NaN: they are not JSON)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
