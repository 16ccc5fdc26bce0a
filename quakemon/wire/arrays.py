"""Array frames between pipeline stages: ``[JSON header, raw buffer, raw buffer, ...]``.

The header names the schema (``quakemon.arrays/1``), the caller's metadata and, per array, its name, dtype and
shape. Buffers are C-contiguous little-endian and are sent and received without copies (``np.frombuffer``).
Never pickle: dtypes are checked against an allow-list, sizes against the declared shapes. Errors are
`MessageError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from quakemon.wire.codec import MessageError, json_bytes

ARRAYS_SCHEMA = "quakemon.arrays/1"

#: dtypes allowed in array frames (numpy ``dtype.str``, little-endian). Anything else, notably object, is refused.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8", "<c8", "<c16"}
)
MAX_NDIM = 8



def _wire_array(name: str, array: np.ndarray) -> np.ndarray:
    """Return `array` as a C-contiguous little-endian array with an allowed dtype (no copy when already so)."""
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.dtype.str not in ALLOWED_DTYPES:
        raise MessageError(
            f"array {name!r}: dtype {arr.dtype.str!r} is not allowed on the wire; allowed: {sorted(ALLOWED_DTYPES)}"
        )
    if arr.ndim > MAX_NDIM:
        raise MessageError(f"array {name!r}: {arr.ndim} dimensions, at most {MAX_NDIM} allowed")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray turns 0-d into 1-d)


def pack_arrays(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """Frames for one multipart message: a JSON header, then one raw buffer per array (zero-copy views).

    `header` is the caller's JSON-serialisable metadata (station, window_start, ...); it comes back unchanged
    from :func:`unpack_arrays`. Arrays keep their insertion order. Non-contiguous or big-endian arrays are
    copied once; contiguous little-endian ones are sent straight from their memory, so they must not be
    modified until the send completes.
    """
    specs = []
    buffers: list[bytes | memoryview] = []
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise MessageError(f"array names must be strings, got {name!r}")
        arr = _wire_array(name, array)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        buffers.append(memoryview(arr.reshape(-1).view(np.uint8)))
    try:
        head = json_bytes({"schema": ARRAYS_SCHEMA, "header": dict(header), "arrays": specs})
    except (TypeError, ValueError) as exc:
        raise MessageError(f"array header is not JSON-serialisable: {exc}") from exc
    return [head, *buffers]


def _frame_buffer(frame: Any) -> memoryview:
    """A memoryview onto a frame: bytes, bytearray, memoryview or zmq.Frame (``recv_multipart(copy=False)``)."""
    buf = getattr(frame, "buffer", frame)
    try:
        return memoryview(buf)
    except TypeError as exc:
        raise MessageError(f"frame of type {type(frame).__name__} does not expose a buffer") from exc


def _parse_specs(head: Any) -> tuple[dict[str, Any], list[tuple[str, np.dtype, tuple[int, ...]]]]:
    if not isinstance(head, dict):
        raise MessageError(f"array header must be a JSON object, got {type(head).__name__}")
    if head.get("schema") != ARRAYS_SCHEMA:
        raise MessageError(f"array header schema: expected {ARRAYS_SCHEMA!r}, got {head.get('schema')!r}")
    header, specs = head.get("header"), head.get("arrays")
    if not isinstance(header, dict) or not isinstance(specs, list):
        raise MessageError("array header needs an object 'header' and a list 'arrays'")
    parsed = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise MessageError(f"array spec {i}: expected an object, got {spec!r}")
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str):
            raise MessageError(f"array spec {i}: 'name' must be a string, got {name!r}")
        if dtype not in ALLOWED_DTYPES:
            raise MessageError(f"array {name!r}: dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise MessageError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} ints >= 0, got {shape!r}")
        parsed.append((name, np.dtype(dtype), tuple(shape)))
    if len({p[0] for p in parsed}) != len(parsed):
        raise MessageError(f"array names repeat: {[p[0] for p in parsed]}")
    return header, parsed


def unpack_arrays(frames: Sequence[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays from frames made by :func:`pack_arrays`; raises :class:`MessageError` if malformed.

    Arrays are zero-copy views onto the frames (read-only when the frames are bytes); copy one to modify it.
    """
    if len(frames) < 1:
        raise MessageError("array message has no frames; expected a JSON header frame")
    try:
        head = json.loads(bytes(_frame_buffer(frames[0])))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"array header frame is not valid JSON: {exc}") from exc
    header, specs = _parse_specs(head)
    if len(frames) != 1 + len(specs):
        raise MessageError(f"array message: expected {1 + len(specs)} frames (header + {len(specs)} arrays), "
                           f"got {len(frames)}")
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape), frame in zip(specs, frames[1:], strict=True):
        buf = _frame_buffer(frame)
        expected = math.prod(shape) * dtype.itemsize
        if buf.nbytes != expected:
            raise MessageError(f"array {name!r}: shape {list(shape)} of {dtype.str} needs {expected} bytes, "
                               f"frame has {buf.nbytes}")
        arrays[name] = np.frombuffer(buf.cast("B") if buf.ndim != 1 or buf.format != "B" else buf,
                                     dtype=dtype).reshape(shape)
    return header, arrays


