"""Post-parse validation of MiniSEED records and record-by-record decoding.

ObsPy's MiniSEED reader accepts some garbage (impossible headers, records it decoded while libmseed
reported an error), so every record that reaches the station buffers passes `validate_trace` first.
`decode_records` never raises: a blob of records becomes good Traces plus `(offset, reason)` for each
rejected record, so one bad record costs one record, not the stream.

Rejection reasons (stable labels for metrics): truncated, bad_header, bad_reclen, decode_error,
decode_warning (libmseed/Steim integrity warnings count as corruption), npts_mismatch, bad_encoding,
bad_sampling_rate, bad_time, bad_id, nan, empty, too_long.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import threading
import time
import warnings
from typing import Any

import numpy as np
import obspy
from obspy import Trace

try:  # ObsPy's MSEED plugin reader: skips obspy.read's per-call format detection and dispatch
    from obspy.io.mseed.core import _read_mseed as _read_mseed_impl
except ImportError:  # pragma: no cover - fall back to the public entry point on other ObsPy versions
    _read_mseed_impl = None

#: Plausible limits for a waveform record (see `validate_trace`).
MAX_SAMPLING_RATE = 1000.0
MIN_SAMPLING_RATE = 1e-6  # one sample per 11.6 days; below that the end time overflows any sane span
EARLIEST_NS = 0  # 1970-01-01
FUTURE_SLACK_NS = 86_400 * 10**9  # start/end may be at most one day after the host clock
DEFAULT_RECLEN = 512
_RECLENS = {2**p for p in range(8, 17)}  # 256 .. 65536 bytes
_SEQ_BYTES = frozenset(b"0123456789 \x00")
_QUALITY_BYTES = frozenset(b"DRQM")
_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -")

_NET_RE = re.compile(r"[A-Z0-9]{1,2}")
_STA_RE = re.compile(r"[A-Z0-9]{1,5}")
_LOC_RE = re.compile(r"[A-Z0-9]{0,2}|--")
_CHA_RE = re.compile(r"[A-Z0-9]{3}")


def validate_trace(
    trace: Trace,
    *,
    max_samples: int = 2**26,
    now_ns: int | None = None,
) -> str | None:
    """Return a rejection reason if a decoded trace is implausible, else None.

    Checks: numeric samples (bad_encoding), 1e-6 <= sampling rate <= 1000 Hz (bad_sampling_rate),
    1970 <= start and end <= host clock + 1 day (bad_time), SEED codes of legal length and characters
    (bad_id), at least one sample (empty) and at most `max_samples` (too_long), no NaN/Inf (nan).
    """
    stats = trace.stats
    data = trace.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "iuf":
        return "bad_encoding"
    rate = float(stats.sampling_rate)
    if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        return "bad_sampling_rate"
    n = int(data.size)
    if n == 0:
        return "empty"
    if n > max_samples:
        return "too_long"
    start_ns = int(stats.starttime.ns)
    end_ns = start_ns + int(round((n - 1) * 1e9 / rate))
    limit = (time.time_ns() if now_ns is None else now_ns) + FUTURE_SLACK_NS
    if start_ns < EARLIEST_NS or end_ns > limit:
        return "bad_time"
    loc = stats.location
    if not (
        _NET_RE.fullmatch(stats.network)
        and _STA_RE.fullmatch(stats.station)
        and _LOC_RE.fullmatch(loc)
        and _CHA_RE.fullmatch(stats.channel)
    ):
        return "bad_id"
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return "nan"
    return None


def _blockette1000(header: bytes) -> tuple[int, str] | None:
    """(record length, struct byte-order prefix) from a record's blockette 1000, or None if absent/invalid."""
    found = _find_blockette1000(header)
    return None if found is None else found[:2]


def _find_blockette1000(header: bytes) -> tuple[int, str, int] | None:
    """(record length, byte-order prefix, offset of the blockette) of a record's blockette 1000, or None."""
    if len(header) < 48:
        return None
    for order in (">", "<"):
        (offset,) = struct.unpack_from(order + "H", header, 46)
        for _ in range(8):  # follow the blockette chain a few links at most
            if not 48 <= offset <= len(header) - 8:
                break
            btype, nxt = struct.unpack_from(order + "HH", header, offset)
            if btype == 1000:
                reclen = 2 ** header[offset + 6]
                return (reclen, order, offset) if reclen in _RECLENS else None
            if nxt <= offset:
                break
            offset = nxt
    return None


# bytes per sample of the fixed-size encodings libmseed decodes: ASCII, int16, int32, float32, float64,
# GEOSCOPE 24-bit and 16-bit gain-ranged (two), CDSN, SRO, DWWSSN
_SAMPLE_BYTES = {0: 1, 1: 2, 3: 4, 4: 4, 5: 8, 12: 3, 13: 2, 14: 2, 16: 2, 30: 2, 32: 2}


def _payload_overruns(rec: bytes, order: str, b1000_offset: int, nsamp: int, reclen: int) -> bool:
    """True when an uncompressed record claims more samples than its record holds.

    libmseed (ObsPy's copy) then reads past the end of the record buffer: garbage samples, or worse.
    """
    size = _SAMPLE_BYTES.get(rec[b1000_offset + 4])  # the encoding byte of blockette 1000
    (data_offset,) = struct.unpack_from(order + "H", rec, 44)
    return size is not None and data_offset + nsamp * size > reclen


def detect_reclen(data: bytes, default: int = DEFAULT_RECLEN) -> int:
    """Record length of a blob of MiniSEED 2 records, from the first record's blockette 1000 (else `default`)."""
    found = _blockette1000(bytes(data[:256]))
    return found[0] if found else default


def _header_ok(rec: bytes) -> bool:
    """Cheap fixed-header sanity: sequence number digits/spaces and a D/R/Q/M quality indicator."""
    return all(b in _SEQ_BYTES for b in rec[:6]) and rec[6] in _QUALITY_BYTES


def _header_id_ok(rec: bytes) -> bool:
    """Station/location/channel/network bytes (8..19) are upper-case ASCII letters, digits, '-' or blanks.

    Checked before decoding: libmseed puts these bytes into its log messages, and ObsPy's log callback
    fails on non-UTF-8 text, which would hide the error from `decode_record`.
    """
    return all(b in _ID_BYTES for b in rec[8:20])


def _decode_one(rec: bytes) -> obspy.Stream:
    if _read_mseed_impl is not None:
        return _read_mseed_impl(io.BytesIO(rec))
    return obspy.read(io.BytesIO(rec), format="MSEED")  # pragma: no cover


class _FastDecoder:
    """One record -> Trace through libmseed's `msr_parse` (ObsPy's own bundled copy, called through ctypes).

    ObsPy's reader spends most of its time per 512-byte record in Python (segment lists, a Stats built field by
    field, strptime), and the live ingest stage decodes every record. This path asks the same C library for the
    same record and builds the Trace directly. It handles the common case only and answers None for anything
    else (a libmseed error or warning, blockette 100, an unexpected sample type or count), which then goes
    through ObsPy's reader as before, so a record's fate (Trace or rejection reason) is decided by the same rules
    either way. tests/ingest/test_validate.py checks that both paths give identical Traces over ObsPy's example
    data and every encoding.
    """

    def __init__(self) -> None:
        import ctypes

        from obspy.io.mseed.headers import HPTMODULUS, MSRecord, clibmseed

        self._ctypes = ctypes
        # the raw library, without ObsPy's per-call wrapper (it builds two ctypes callbacks per call): our own
        # callbacks are made once and installed before each parse; any libmseed message sends the record to
        # ObsPy's reader, which then raises or warns exactly as before
        self._raw = clibmseed.lib
        # msr_parse again, as our own function object of the same loaded library (same global state): it takes
        # the record's bytes as they are, where ObsPy's prototype checks a numpy array per call (ndpointer)
        self._parse = ctypes.CDLL(clibmseed.lib._name)["msr_parse"]
        self._parse.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(MSRecord)),
                                ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._parse.restype = ctypes.c_int
        self._lib = clibmseed
        self._messages: list[bytes] = []
        callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
        self._diag = callback(self._messages.append)
        self._log = callback(self._messages.append)
        self._lock = threading.Lock()  # libmseed's log hooks are process-global
        self._hpt_ns = 10**9 // int(HPTMODULUS)
        self._local = threading.local()
        self._types = {b"i": (ctypes.c_int32, np.int32), b"f": (ctypes.c_float, np.float32),
                       b"d": (ctypes.c_double, np.float64)}
        self._msr_type = MSRecord

    def _msr(self) -> Any:
        msr = getattr(self._local, "msr", None)
        if msr is None:  # one parse buffer per thread, reused (libmseed reallocates its samples in place)
            msr = self._local.msr = self._lib.msr_init(self._ctypes.POINTER(self._msr_type)())
        return msr

    def decode(self, rec: bytes, reclen: int, nsamp: int) -> Trace | None:
        if not _plain_record(rec):
            return None
        msr = self._msr()
        ctypes = self._ctypes
        with self._lock:
            self._messages.clear()
            self._raw.setupLogging(self._diag, self._log)
            ret = self._parse(rec, reclen, ctypes.pointer(msr), reclen, 1, 0)
            spoke = bool(self._messages)
        if not msr:  # libmseed freed the record on an error: a fresh one next time
            self._local.msr = None
            return None
        m = msr.contents
        if ret != 0 or spoke or m.Blkt100 or m.numsamples != nsamp or m.samplecnt != nsamp or nsamp <= 0:
            return None
        kind = self._types.get(m.sampletype)
        if kind is None or not m.datasamples:
            return None
        data = np.ctypeslib.as_array(ctypes.cast(m.datasamples, ctypes.POINTER(kind[0])), shape=(nsamp,))
        header = {
            "network": m.network.decode("ascii").strip(),
            "station": m.station.decode("ascii").strip(),
            "location": m.location.decode("ascii").strip(),
            "channel": m.channel.decode("ascii").strip(),
            "sampling_rate": float(m.samprate),
            "starttime": obspy.UTCDateTime(ns=int(m.starttime) * self._hpt_ns),
        }
        return Trace(data=np.array(data, dtype=kind[1]), header=header)


_FAST_ENCODINGS = frozenset({1, 3, 4, 5, 10, 11})  # int16, int32, float32, float64, Steim-1, Steim-2


def _plain_record(rec: bytes) -> bool:
    """True for a record ObsPy's reader would take without a word: the fast path handles only those.

    Mirrors the checks of ObsPy's header parsing (`obspy.io.mseed.util._get_record_information`): the byte
    order it would infer from the day of year, a plausible BTIME, a blockette chain of 1000 (valid encoding,
    word order matching the header) and optionally 1001, no pending time correction.
    """
    for order in (">", "<"):
        year, jday, hour, minute, second, fract = struct.unpack_from(order + "HHBBBxH", rec, 20)
        if 1 <= jday <= 366:
            break
    else:
        return False
    if not (1 <= year <= 9999 and hour <= 23 and minute <= 59 and second <= 59 and fract <= 9999):
        return False
    act, _io, _dq, _nb, tcorr, _data, offset = struct.unpack_from(order + "BBBBlHH", rec, 36)
    if tcorr and not act & 2:
        return False
    seen_1000 = False
    for _ in range(4):
        if offset == 0:
            break
        if not 48 <= offset <= len(rec) - 8:
            return False
        btype, nxt = struct.unpack_from(order + "HH", rec, offset)
        if btype == 1000:
            encoding, word_order = rec[offset + 4], rec[offset + 5]
            if encoding not in _FAST_ENCODINGS or word_order != (1 if order == ">" else 0):
                return False
            seen_1000 = True
        elif btype != 1001:
            return False
        if nxt != 0 and (nxt < 4 or nxt - 4 <= offset):
            return False
        offset = nxt
    else:
        return False
    return seen_1000


@functools.cache
def _fast_decoder() -> _FastDecoder | None:
    try:
        return _FastDecoder()
    except (ImportError, AttributeError) as exc:  # pragma: no cover - another ObsPy layout: ObsPy's reader only
        import structlog

        structlog.get_logger(__name__).warning("mseed_fast_decoder_unavailable", error=repr(exc))
        return None


def decode_record(rec: bytes, reclen: int | None = None, *, now_ns: int | None = None,
                  fast_path: bool = True) -> Trace | str:
    """Decode one MiniSEED record (version 2, or 3 through `quakemon.ingest.mseed3`); the Trace or a rejection
    reason. Never raises.

    ObsPy warnings (libmseed errors, Steim integrity checks) count as corruption. Not thread-safe with
    respect to other code that changes warning filters at the same time (warnings.catch_warnings).
    fast_path: try `_FastDecoder` first (same library, same result, less CPU); False = ObsPy's reader only.
    """
    if bytes(rec[:3]) == b"MS\x03":  # miniSEED 3: its own decoder (ObsPy reads miniSEED 2 only)
        from quakemon.ingest.mseed3 import decode_mseed3

        return decode_mseed3(bytes(rec), now_ns=now_ns)
    if reclen is None:
        reclen = len(rec)
    if len(rec) < reclen or len(rec) < 64:
        return "truncated"
    if not _header_ok(rec):
        return "bad_header"
    if not _header_id_ok(rec):
        return "bad_id"
    b1000 = _find_blockette1000(rec[:256])
    if b1000 is None:
        return "bad_header"
    found_reclen, order, b1000_offset = b1000
    if found_reclen != reclen:
        return "bad_reclen"
    (nsamp,) = struct.unpack_from(order + "H", rec, 30)
    if _payload_overruns(rec, order, b1000_offset, nsamp, reclen):
        return "npts_mismatch"
    fast = _fast_decoder()
    tr = fast.decode(bytes(rec), reclen, nsamp) if fast is not None and fast_path else None
    if tr is not None:
        reason = validate_trace(tr, max_samples=2 * reclen, now_ns=now_ns)
        return reason if reason is not None else tr
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            st = _decode_one(bytes(rec))
    except Exception:  # noqa: BLE001 - any failure of the C reader is a rejected record
        return "decode_error"
    if caught:
        return "decode_warning"
    if len(st) != 1:
        return "decode_error"
    tr = st[0]
    if isinstance(tr.data, np.ndarray) and tr.data.dtype.kind in "iuf" and tr.stats.npts != nsamp:
        return "npts_mismatch"
    reason = validate_trace(tr, max_samples=2 * reclen, now_ns=now_ns)
    return reason if reason is not None else tr


def decode_records(
    data: bytes, reclen: int | None = None, *, now_ns: int | None = None
) -> tuple[list[Trace], list[tuple[int, str]]]:
    """Split a blob into fixed-length MiniSEED records and decode each on its own. Never raises.

    reclen: record length; None detects it from the first record (512 when undetectable).
    Returns (good traces in blob order, [(byte offset, reason), ...] for rejected records). A trailing
    partial record is rejected as "truncated".
    """
    view = memoryview(bytes(data))
    if reclen is None:
        reclen = detect_reclen(view)
    traces: list[Trace] = []
    rejected: list[tuple[int, str]] = []
    for offset in range(0, len(view), reclen):
        out = decode_record(view[offset : offset + reclen].tobytes(), reclen, now_ns=now_ns)
        if isinstance(out, str):
            rejected.append((offset, out))
        else:
            traces.append(out)
    return traces, rejected


__all__ = [
    "DEFAULT_RECLEN",
    "decode_record",
    "decode_records",
    "detect_reclen",
    "validate_trace",
]
