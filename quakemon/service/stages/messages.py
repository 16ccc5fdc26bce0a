"""The messages between stage processes: window batches, spectra batches and status reports.

Each is one multipart message made by `quakemon.wire.schema.pack_arrays`, with the header

    {"kind": "windows", "windows": [WindowMeta.to_wire(), ...]}   + array "data"    float32 [B, C, N]
    {"kind": "spectra", "windows": [WindowMeta.to_wire(), ...]}   + array "spectra" float32 [B, C, F, T]
                                                                  + array "data"    float32 [B, C, N] (the
                                                                    windows' samples, for the P picks)
    {"kind": "status",  "status": {stage, source, pid, ready, loops, progress, stats, time}}   (no arrays)

Window metadata is typed (`WindowMeta`) inside a stage and serialised only here, at the stage boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quakemon.pipeline.detect import WindowMeta
from quakemon.wire.schema import MessageError, pack_arrays, unpack_arrays

WINDOWS = "windows"
SPECTRA = "spectra"
STATUS = "status"


@dataclass(frozen=True)
class Batch:
    """Windows on their way to the next stage: their metadata and arrays whose first axis runs over them."""

    kind: str  # WINDOWS | SPECTRA
    metas: tuple[WindowMeta, ...]
    arrays: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.metas)

    def frames(self) -> list[bytes | memoryview]:
        """The message (zero-copy views onto the arrays: leave them unchanged until sent)."""
        return pack_arrays({"kind": self.kind, "windows": [m.to_wire() for m in self.metas]}, self.arrays)


def status_frames(body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """A status report as a message on a data socket."""
    return pack_arrays({"kind": STATUS, "status": dict(body)}, {})


def decode(frames: Sequence[Any]) -> Batch | dict[str, Any]:
    """A received message: a Batch, or a status report (dict); raises MessageError when malformed."""
    header, arrays = unpack_arrays(frames)
    kind = header.get("kind")
    if kind == STATUS:
        body = header.get("status")
        if not isinstance(body, dict):
            raise MessageError(f"status message: expected an object 'status', got {body!r}")
        return body
    if kind not in (WINDOWS, SPECTRA):
        raise MessageError(f"stage message kind: expected one of {(WINDOWS, SPECTRA, STATUS)}, got {kind!r}")
    try:
        metas = tuple(WindowMeta.from_wire(m) for m in header["windows"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"{kind} message: malformed window metadata: {exc!r}") from exc
    return Batch(kind, metas, arrays)
