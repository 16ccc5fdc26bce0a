"""Record framing for both miniSEED versions, and decoding of miniSEED 3 records.

`record_length` reads how long a record is from its own header (miniSEED 2: blockette 1000; miniSEED 3: the
fixed header's identifier, extra-header and payload lengths), so a stream of records of any length can be cut
without assuming 512 bytes. `record_station` and `record_start` read the network/station and the start time
from either header without decoding samples (resume bookkeeping for records that fail to decode).

miniSEED 3 is decoded with `pymseed` (EarthScope's binding of libmseed 3): ObsPy 1.5 reads miniSEED 2 only.
The decoded record becomes an ObsPy Trace and passes the same `validate_trace` checks as a miniSEED 2 record.
"""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np
from obspy import Trace, UTCDateTime

from quakemon.ingest.validate import _find_blockette1000, validate_trace

MS3_MAGIC = b"MS\x03"
MS3_FIXED = 40
MAX_RECORD = 1 << 20  # longest record accepted from a stream (a longer length field is garbage)

__all__ = ["MS3_MAGIC", "decode_mseed3", "record_length", "record_start", "record_station"]


def record_length(buf: bytes | memoryview, offset: int = 0) -> int | None:
    """Length of the record starting at `offset`, from its header; None if `buf` holds too little to tell.

    Returns 0 when the bytes there are not a plausible record header (the caller resynchronises).
    """
    avail = len(buf) - offset
    if avail < 3:
        return None
    if bytes(buf[offset:offset + 3]) == MS3_MAGIC:
        if avail < MS3_FIXED:
            return None
        sid_len = buf[offset + 33]
        (extra_len,) = struct.unpack_from("<H", buf, offset + 34)
        (data_len,) = struct.unpack_from("<I", buf, offset + 36)
        total = MS3_FIXED + sid_len + extra_len + data_len
        return total if sid_len and total <= MAX_RECORD else 0
    if avail < 64:
        return None
    head = bytes(buf[offset:offset + min(avail, 256)])
    found = _find_blockette1000(head)
    if found is None:
        return None if avail < 256 else 0
    return found[0]


def record_station(rec: bytes) -> tuple[str, str] | None:
    """(network, station) from a miniSEED 2 or 3 header, or None when unreadable."""
    try:
        if rec[:3] == MS3_MAGIC:
            sid = rec[MS3_FIXED:MS3_FIXED + rec[33]].decode("ascii")
            if not sid.startswith("FDSN:"):
                return None
            parts = sid[5:].split("_")
            return (parts[0], parts[1]) if len(parts) >= 2 else None
        return rec[18:20].decode("ascii").strip(), rec[8:13].decode("ascii").strip()
    except (UnicodeDecodeError, IndexError):
        return None


def record_start(rec: bytes) -> float | None:
    """Start time (POSIX seconds) from a miniSEED 2 or 3 header, or None when unreadable."""
    try:
        if rec[:3] == MS3_MAGIC:
            ns, year, doy, hour, minute, sec = struct.unpack_from("<IHHBBB", rec, 4)
            base = dt.datetime(year, 1, 1, hour, minute, sec, tzinfo=dt.UTC) + dt.timedelta(days=doy - 1)
            return base.timestamp() + ns / 1e9
        for order in (">", "<"):
            year, doy, hour, minute, sec, _, fract = struct.unpack_from(order + "HHBBBBH", rec, 20)
            if 1900 <= year <= 2100 and 1 <= doy <= 366:
                base = dt.datetime(year, 1, 1, hour, minute, sec, tzinfo=dt.UTC) + dt.timedelta(days=doy - 1)
                return base.timestamp() + fract / 1e4
    except (struct.error, ValueError, OverflowError):
        return None
    return None


def decode_mseed3(rec: bytes, *, now_ns: int | None = None) -> Trace | str:
    """Decode one miniSEED 3 record; the Trace, or a rejection reason (see `quakemon.ingest.validate`)."""
    try:
        from pymseed import MS3Record
    except ImportError:  # pragma: no cover - pymseed is a dependency
        return "decode_error"
    length = record_length(rec)
    if length is None or len(rec) < length:
        return "truncated"
    if length == 0:
        return "bad_header"
    if length != len(rec):
        return "bad_reclen"
    try:
        msr = MS3Record.parse(rec, unpack_data=True)
        sid = msr.sourceid
        data = msr.np_datasamples
    except Exception:  # noqa: BLE001 - any libmseed failure (CRC, header, payload) is a rejected record
        return "decode_error"
    if not sid.startswith("FDSN:") or sid.count("_") < 5:
        return "bad_id"
    net, sta, loc, b, s, ss = sid[5:].split("_", 5)
    if data is None or msr.samplecnt != msr.numsamples:
        return "npts_mismatch"
    data = np.array(data)
    if data.dtype.kind == "S":
        return "bad_encoding"
    header = {"network": net, "station": sta, "location": loc, "channel": f"{b}{s}{ss}",
              "sampling_rate": float(msr.samprate), "starttime": UTCDateTime(ns=int(msr.starttime))}
    try:
        tr = Trace(data=data, header=header)
    except (ValueError, TypeError):
        return "bad_header"
    reason = validate_trace(tr, max_samples=max(2 * length, 8 * msr.datalength), now_ns=now_ns)
    return reason if reason is not None else tr
