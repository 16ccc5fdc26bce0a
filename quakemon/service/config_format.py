"""The resolved config as TOML text: what `quakemon check-config` prints and the daemon's running-config snapshot."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from quakemon.service.config import Config, _sections


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) for x in v):
        v = dict(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def format_config(config: Config) -> str:
    """The resolved config as TOML (loadable again), each key with its one-line doc as a comment."""
    lines: list[str] = []
    for name, cls in _sections().items():
        lines.append(f"[{name}]")
        section = getattr(config, name)
        for f in dataclasses.fields(cls):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}  # {f.metadata['doc']}")
        lines.append("")
    return "\n".join(lines)
