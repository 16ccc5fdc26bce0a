"""A screen checkpoint's metadata, read and checked without torch (`quakemon.models.screen_net` loads the
network): the config check of `[model] screen_net` runs in processes that must stay free of torch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from quakemon.base.errors import QuakemonError

#: The format `save_screen` writes. Format 1 (the first ScreenNet: every component a channel, no pooling) names
#: only the input shape and the widths in its "args"; format 2 adds the architecture arguments "pool" and
#: "components", so a file says which architecture it holds. Both are read; a format-1 file is the format-2
#: architecture with pool 1 and components "all".
FORMAT = "quakemon.screen/2"
FORMAT_V1 = "quakemon.screen/1"
#: The architecture arguments ("args") each format's files carry, exactly.
ARGS_KEYS = {FORMAT_V1: frozenset({"in_channels", "freq_bins", "frames", "widths"}),
             FORMAT: frozenset({"in_channels", "freq_bins", "frames", "widths", "pool", "components"})}
#: How a ScreenNet combines the spectrogram's components before its first convolution: "all" keeps each as an
#: input channel, "max" takes their largest log magnitude per bin (one input channel).
COMPONENTS = ("all", "max")
METADATA_KEY = "quakemon_screen"
#: Contract fields a screen is tied to (its input shape and what it learnt depend on them).
CONTRACT_KEYS = ("sampling_rate", "window_samples", "component_order", "stft_nperseg", "stft_hop")


class ScreenCheckpointError(QuakemonError):
    """A screen checkpoint that cannot be used: unreadable, another format, or built for another detector."""


def contract_fields(contract: Any) -> dict[str, Any]:
    return {k: getattr(contract, k) for k in CONTRACT_KEYS}


def check_screen_meta(path: str | os.PathLike, meta: dict[str, Any], teacher_sha256: str | None = None,
                      contract: Any = None) -> None:
    """Check a screen's parsed metadata: a known format, the architecture arguments that format carries, a finite
    threshold and, when given, the detector's sha256 and input contract. Raises ScreenCheckpointError saying what
    is wrong."""
    fmt = meta.get("format")
    if fmt not in ARGS_KEYS:
        raise ScreenCheckpointError(f"{path}: format {fmt!r}, expected one of {sorted(ARGS_KEYS)!r} (a screen "
                                    "from another version of quakemon: distil it again)")
    args = meta.get("args")
    if not isinstance(args, dict) or set(args) != ARGS_KEYS[fmt]:
        got = sorted(args) if isinstance(args, dict) else args
        raise ScreenCheckpointError(f"{path}: malformed screen metadata (architecture arguments {got!r}, format "
                                    f"{fmt} has {sorted(ARGS_KEYS[fmt])!r})")
    if fmt == FORMAT and args["components"] not in COMPONENTS:
        raise ScreenCheckpointError(f"{path}: unknown screen architecture (components {args['components']!r}, "
                                    f"this version knows {list(COMPONENTS)!r})")
    try:
        threshold = float(meta["threshold"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ScreenCheckpointError(f"{path}: malformed screen metadata ({type(exc).__name__}: {exc})") from None
    if not math.isfinite(threshold):
        raise ScreenCheckpointError(f"{path}: threshold {threshold!r} is not finite")
    if teacher_sha256 is not None and meta.get("teacher_sha256") != teacher_sha256:
        raise ScreenCheckpointError(f"{path} was distilled from detector {str(meta.get('teacher_sha256'))[:16]}..., "
                                    f"not from the loaded one ({teacher_sha256[:16]}...)")
    if contract is not None and meta.get("contract") != contract_fields(contract):
        raise ScreenCheckpointError(f"{path} was built for input {meta.get('contract')}, the detector takes "
                                    f"{contract_fields(contract)}")


def read_screen_meta(path: str | os.PathLike, teacher_sha256: str | None = None,
                     contract: Any = None) -> dict[str, Any]:
    """The metadata of the screen checkpoint at `path`, checked (`check_screen_meta`), without loading its
    weights. Raises ScreenCheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ScreenCheckpointError(f"screen checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise ScreenCheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})"
                                    ) from None
    if raw is None:
        raise ScreenCheckpointError(f"{path} has no '{METADATA_KEY}' metadata: not a screen checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ScreenCheckpointError(f"{path}: malformed screen metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ScreenCheckpointError(f"{path}: malformed screen metadata (not an object)")
    check_screen_meta(path, meta, teacher_sha256, contract)
    return meta
