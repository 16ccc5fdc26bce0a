"""The messages between stage processes: window batches, spectra batches and status reports.

Each is one multipart message made by `quakemon.wire.schema.pack_arrays`, with the header

    {"kind": "windows", "windows": [WindowMeta.to_wire(), ...],   + array "data"    float32 [B, C, N]
     "sender": {"source": "host:pid", "rewinds": n}}              (optional: the ingest process and how often
                                                                    it had rewound when it sent the batch)
    {"kind": "spectra", "windows": [WindowMeta.to_wire(), ...]}   + array "spectra" float32 [B, C, F, T]
                                                                  + array "data"    float32 [B, C, N] (the
                                                                    windows' samples, for the P picks)
    {"kind": "status",  "status": {stage, source, pid, ready, loops, progress, stats, time}}   (no arrays)

Window metadata is typed (`WindowMeta`) inside a stage and serialised only here, at the stage boundary.

The sender of a window batch is stamped when the batch is sent (`Batch.frames`), so a batch the ingest stage sends
again after a rewind carries the new count: a preprocess process told to reset drops what was sent before the
rewind and still reaches it (`quakemon.service.stages.preprocess`, "Reset").

Every received message is validated here, before a stage uses any of it: a stage PULL socket may be reachable
by other hosts, so a message is untrusted input. `decode` raises `InvalidMessage` (one type, with a short
`reason` the stages count by) for anything that is not exactly what the sending stage makes: too many frames or
too large a header, header keys of the wrong type, an unknown or unexpected kind, array names other than the
kind's, dtypes other than float32, shapes whose first axis is not the number of windows or (given the model's
`InputContract`) whose other axes are not the contract's, more than MAX_WINDOWS windows, window metadata that
is not a well-formed station and time span, status reports whose counters are not finite numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import WindowMeta
from quakemon.wire.schema import MessageError, pack_arrays, unpack_arrays

WINDOWS = "windows"
SPECTRA = "spectra"
STATUS = "status"

#: the arrays of each data message, in order (a spectra message without "data" gets window-start picks only)
ARRAYS = {WINDOWS: (("data",),), SPECTRA: (("spectra", "data"), ("spectra",))}
MAX_WINDOWS = 4096  # windows per message (ingest flushes at most 256 at a time, preprocess sends <= 512)
MAX_META_BYTES = 1024  # JSON of one window's metadata, generously
MAX_STATUS_BYTES = 256 * 1024
MAX_HEADER_BYTES = MAX_WINDOWS * MAX_META_BYTES
MAX_SPAN_NS = 24 * 3600 * 10**9  # a window spans less than a day
MAX_TIME_NS = 2**62  # year 2116: the wire's ISO times and int64 arithmetic stay far from their limits
STAGE_NAMES = ("ingest", "preprocess", "inference")
_STATION = re.compile(r"[A-Za-z0-9_-]{1,16}\.[A-Za-z0-9_-]{1,16}\.[A-Za-z0-9_-]{0,16}")
_CODE = re.compile(r"[A-Za-z0-9_-]{0,16}")
# status counters another stage reads as numbers (inference's heartbeat); each must be a finite number when present
_NUMERIC_STATS = ("stations", "windows_out", "dropped_ingest", "queue_ingest", "oldest_end_s",
                  "dropped_preprocess", "queue_preprocess", "messages_rejected", "silent_stations")


class InvalidMessage(MessageError):
    """A received stage message that is dropped: `reason` says which check it failed (a short slug)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Sender(NamedTuple):
    """The ingest process that sent a window batch (`source_id`) and how many rewinds it had made by then."""

    source: str
    rewinds: int


@dataclass(frozen=True)
class Batch:
    """Windows on their way to the next stage: their metadata and arrays whose first axis runs over them.
    `sender`: set on a received window batch that carried one (module docstring)."""

    kind: str  # WINDOWS | SPECTRA
    metas: tuple[WindowMeta, ...]
    arrays: Mapping[str, np.ndarray]
    sender: Sender | None = None

    def __len__(self) -> int:
        return len(self.metas)

    def frames(self, sender: Sender | None = None) -> list[bytes | memoryview]:
        """The message (zero-copy views onto the arrays: leave them unchanged until sent), stamped with `sender`
        when given."""
        header: dict[str, Any] = {"kind": self.kind, "windows": [m.to_wire() for m in self.metas]}
        if sender is not None:
            header["sender"] = {"source": sender.source, "rewinds": sender.rewinds}
        return pack_arrays(header, self.arrays)


def status_frames(body: Mapping[str, Any]) -> list[bytes | memoryview]:
    """A status report as a message on a data socket."""
    return pack_arrays({"kind": STATUS, "status": dict(body)}, {})


def max_frame_bytes(contract: InputContract) -> int:
    """The largest frame a stage message for this contract can need (for ZeroMQ's MAXMSGSIZE on PULL sockets)."""
    freq, frames = contract.spectrogram_shape
    per_window = contract.n_channels * max(contract.window_samples, freq * frames) * 4
    return max(MAX_HEADER_BYTES, MAX_WINDOWS * per_window)


def decode(frames: Sequence[Any], contract: InputContract | None = None,
           expect: str | None = None) -> Batch | dict[str, Any]:
    """A received message: a Batch, or a status report (dict); raises InvalidMessage unless it is well-formed.

    expect: the one data kind this receiver takes (WINDOWS or SPECTRA; status reports are always taken).
    contract: when given, the arrays' shapes must be the contract's, beyond the first (window) axis.
    """
    if not 1 <= len(frames) <= 3:
        raise InvalidMessage("frames", f"{len(frames)} frames")
    head_bytes = _nbytes(frames[0])
    if head_bytes > MAX_HEADER_BYTES:
        raise InvalidMessage("size", f"header frame of {head_bytes} bytes, at most {MAX_HEADER_BYTES}")
    try:
        header, arrays = unpack_arrays(frames)
    except MessageError as exc:
        raise InvalidMessage("frames", str(exc)) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:  # deeply nested JSON, odd buffers
        raise InvalidMessage("frames", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    kind = header.get("kind")
    if kind == STATUS:
        if arrays:
            raise InvalidMessage("arrays", f"a status message carries no arrays, got {sorted(arrays)}")
        return _status(header.get("status"), head_bytes)
    if kind not in (WINDOWS, SPECTRA) or (expect is not None and kind != expect):
        wanted = (expect, STATUS) if expect else (WINDOWS, SPECTRA, STATUS)
        raise InvalidMessage("kind", f"expected one of {wanted}, got {str(kind)[:40]!r}")
    wires = header.get("windows")
    if not isinstance(wires, list) or not 1 <= len(wires) <= MAX_WINDOWS:
        raise InvalidMessage("windows", f"expected a list of 1 to {MAX_WINDOWS} window objects")
    try:
        metas = tuple(_meta(w, kind == SPECTRA) for w in wires)
    except InvalidMessage as exc:
        raise InvalidMessage(exc.reason, f"{kind} message: malformed window metadata: {exc}") from None
    _check_arrays(kind, arrays, len(wires), contract)
    return Batch(kind, metas, arrays, _sender(header.get("sender")))


def _sender(obj: Any) -> Sender | None:
    if obj is None:
        return None
    source, rewinds = (obj.get("source"), obj.get("rewinds")) if isinstance(obj, dict) else (None, None)
    if not (isinstance(source, str) and 0 < len(source) <= 256 and _is_int(rewinds) and 0 <= rewinds < 2**62):
        raise InvalidMessage("sender", "sender must be {source: a short string, rewinds: an int >= 0}")
    return Sender(source, rewinds)


def _nbytes(frame: Any) -> int:
    buf = getattr(frame, "buffer", frame)
    try:
        return memoryview(buf).nbytes
    except TypeError:
        raise InvalidMessage("frames", f"frame of type {type(frame).__name__}") from None


def _check_arrays(kind: str, arrays: Mapping[str, np.ndarray], n: int, contract: InputContract | None) -> None:
    names = tuple(arrays)
    if names not in ARRAYS[kind]:
        raise InvalidMessage("arrays", f"{kind} message: expected arrays {list(ARRAYS[kind][0])}, got {list(names)}")
    shapes: dict[str, tuple[int, ...] | None] = {name: None for name in names}
    if contract is not None:
        freq, frames = contract.spectrogram_shape
        shapes = {"data": (n, contract.n_channels, contract.window_samples),
                  "spectra": (n, contract.n_channels, freq, frames)}
    for name in names:
        arr = arrays[name]
        if arr.dtype != np.float32:
            raise InvalidMessage("dtype", f"array {name!r}: expected float32, got {arr.dtype.str}")
        want = shapes[name]
        if (want is not None and arr.shape != want) or arr.ndim < 2 or arr.shape[0] != n:
            raise InvalidMessage("shape", f"array {name!r}: expected shape {list(want or (n, '...'))}, "
                                          f"got {list(arr.shape)}")


def _meta(obj: Any, transformed: bool) -> WindowMeta:
    if not isinstance(obj, dict):
        raise InvalidMessage("meta", f"window metadata must be an object, got {type(obj).__name__}")
    station, instrument = obj.get("station"), obj.get("instrument", "")
    if not isinstance(station, str) or not _STATION.fullmatch(station):
        raise InvalidMessage("meta", f"station must be 'NET.STA.LOC', got {str(station)[:40]!r}")
    if not isinstance(instrument, str) or not _CODE.fullmatch(instrument):
        raise InvalidMessage("meta", f"instrument must be a short code, got {str(instrument)[:40]!r}")
    start, end = obj.get("start_ns"), obj.get("end_ns")
    if not (_is_int(start) and _is_int(end) and 0 <= start < end <= MAX_TIME_NS and end - start <= MAX_SPAN_NS):
        raise InvalidMessage("meta", f"start_ns < end_ns must be ints within range, got {start!r}, {end!r}")
    arrival = obj.get("arrival")
    if arrival is not None and not _is_finite(arrival):
        raise InvalidMessage("meta", f"arrival must be a finite number or null, got {arrival!r}")
    missing = obj.get("missing_fraction", 0.0)
    if not (_is_finite(missing) and 0.0 <= missing <= 1.0):
        raise InvalidMessage("meta", f"missing_fraction must be within [0, 1], got {missing!r}")
    constant = _components(obj.get("constant", []), "constant")
    valid = obj.get("valid")
    if transformed and not isinstance(valid, bool):
        raise InvalidMessage("meta", f"a transformed window needs a bool 'valid', got {valid!r}")
    if valid is not None and not isinstance(valid, bool):
        raise InvalidMessage("meta", f"valid must be a bool or absent, got {valid!r}")
    dead = _components(obj.get("dead", []), "dead")
    return WindowMeta(station=station, start_ns=start, end_ns=end, instrument=instrument,
                      arrival=None if arrival is None else float(arrival), missing_fraction=float(missing),
                      constant=constant, valid=valid, dead=dead)


def _components(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 16:
        raise InvalidMessage("meta", f"{what} must be a short list of component codes")
    if not all(isinstance(c, str) and 0 < len(c) <= 4 for c in value):
        raise InvalidMessage("meta", f"{what}: expected component codes, got {value[:4]!r}")
    return tuple(value)


def _status(body: Any, size: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidMessage("status", f"expected an object 'status', got {type(body).__name__}")
    if size > MAX_STATUS_BYTES:
        raise InvalidMessage("size", f"status report of {size} bytes, at most {MAX_STATUS_BYTES}")
    stage, source, stats = body.get("stage"), body.get("source"), body.get("stats")
    if stage not in STAGE_NAMES or not isinstance(source, str) or not 0 < len(source) <= 256:
        raise InvalidMessage("status", f"status report needs a known 'stage' and a 'source', got {str(stage)[:40]!r}")
    if not isinstance(stats, dict):
        raise InvalidMessage("status", "status report needs an object 'stats'")
    for key in _NUMERIC_STATS:
        value = stats.get(key)
        if value is not None and not (_is_finite(value) and value >= 0):
            raise InvalidMessage("status", f"counter {key!r} must be a finite number >= 0, got {str(value)[:40]!r}")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
