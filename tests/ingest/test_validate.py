"""Post-parse validation and record-by-record decoding: garbage records cost one record, never the stream."""

from __future__ import annotations

import io
import random
import struct
from collections import Counter

import numpy as np
import obspy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from obspy import Trace, UTCDateTime

from quakemon.ingest import validate
from quakemon.ingest.validate import (
    decode_record,
    decode_records,
    detect_reclen,
    validate_trace,
)

NOW_NS = UTCDateTime(2026, 1, 1).ns


def _example_stream(dtype: str = "int32") -> obspy.Stream:
    stream = obspy.read()
    for tr in stream:
        tr.data = tr.data.astype(dtype)
    return stream


def _records(stream: obspy.Stream, reclen: int = 512, encoding: str = "STEIM2") -> bytes:
    buf = io.BytesIO()
    stream.write(buf, format="MSEED", reclen=reclen, encoding=encoding)
    return buf.getvalue()


@pytest.fixture(scope="module")
def blob() -> bytes:
    return _records(_example_stream())


def _trace(**kw) -> Trace:
    header = dict(network="BW", station="RJOB", location="", channel="EHZ", sampling_rate=100.0,
                  starttime=UTCDateTime(2020, 1, 1))
    data = kw.pop("data", np.arange(100, dtype=np.int32))
    header.update(kw)
    return Trace(data=data, header=header)


def test_good_records_decode_to_the_original_samples(blob: bytes) -> None:
    traces, rejected = decode_records(blob, now_ns=NOW_NS)
    assert rejected == []
    assert len(traces) == len(blob) // 512 == 21
    merged = obspy.Stream(traces).merge(method=1)
    for orig in _example_stream():
        got = merged.select(id=orig.id)[0]
        assert got.stats.starttime == orig.stats.starttime
        np.testing.assert_array_equal(got.data, orig.data)


def test_record_length_is_detected(blob: bytes) -> None:
    assert detect_reclen(blob) == 512
    big = _records(_example_stream(), reclen=4096)
    assert detect_reclen(big) == 4096
    traces, rejected = decode_records(big, now_ns=NOW_NS)
    assert rejected == [] and sum(t.stats.npts for t in traces) == 9000
    assert detect_reclen(b"garbage" * 100) == 512


def test_mutation_corpus_never_raises_and_rejects(blob: bytes) -> None:
    """Deterministic corpus: 1,500 byte-flipped records, truncations and garbage. Nothing escapes."""
    rng = random.Random(20240611)
    records = [blob[i : i + 512] for i in range(0, len(blob), 512)]
    reasons: Counter[str] = Counter()
    accepted = 0
    for _ in range(1500):
        rec = bytearray(rng.choice(records))
        for _ in range(rng.randint(1, 4)):
            rec[rng.randrange(512)] ^= 1 << rng.randrange(8)
        good, rejected = decode_records(bytes(rec), 512, now_ns=NOW_NS)
        assert len(good) + len(rejected) == 1
        reasons.update(r for _, r in rejected)
        for tr in good:  # whatever passes is plausible
            accepted += 1
            assert validate_trace(tr, now_ns=NOW_NS) is None
            assert np.isfinite(tr.data.astype(np.float64)).all()
    for cut in range(0, 512, 37):  # truncated records
        good, rejected = decode_records(records[3][:cut], 512, now_ns=NOW_NS)
        assert good == [] and [r for _, r in rejected] == (["truncated"] if cut else [])
    garbage = bytes(rng.randrange(256) for _ in range(512 * 20))
    good, rejected = decode_records(garbage, now_ns=NOW_NS)
    assert good == [] and len(rejected) == 20
    print(f"\nmutation corpus: accepted {accepted}/1500, rejected {dict(reasons)}")
    assert sum(reasons.values()) + accepted == 1500
    assert sum(reasons.values()) > 1000  # most single-bit damage is caught
    assert reasons["decode_warning"] > 0  # Steim integrity / libmseed warnings are rejections


def test_steim_integrity_warning_rejects(blob: bytes) -> None:
    rec = bytearray(blob[:512])
    rec[64 + 11] ^= 0x01  # the reverse integration constant of the first Steim-2 frame
    assert decode_record(bytes(rec), now_ns=NOW_NS) == "decode_warning"
    assert isinstance(decode_record(blob[:512], now_ns=NOW_NS), Trace)


def _patch(rec: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(rec)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_forged_headers_are_rejected_with_a_reason(blob: bytes) -> None:
    rec = blob[:512]
    assert decode_record(_patch(rec, 32, ">hh", 2000, 1), now_ns=NOW_NS) == "bad_sampling_rate"  # 2 kHz
    assert decode_record(_patch(rec, 8, "5s", b"rj\xff b"), now_ns=NOW_NS) == "bad_id"
    assert decode_record(_patch(rec, 6, "c", b"X"), now_ns=NOW_NS) == "bad_header"
    assert decode_record(_patch(rec, 0, "6s", b"12a456"), now_ns=NOW_NS) == "bad_header"
    assert decode_record(_patch(rec, 20, ">H", 2100), now_ns=NOW_NS) == "bad_time"  # year 2100
    assert decode_record(_patch(rec, 30, ">H", 7), now_ns=NOW_NS) in {"npts_mismatch", "decode_warning"}
    # a blockette 1000 that claims 4096-byte records inside a 512-byte stream
    b1000 = struct.unpack_from(">H", rec, 46)[0]
    assert decode_record(_patch(rec, b1000 + 6, "B", 12), 512, now_ns=NOW_NS) == "bad_reclen"


def test_float32_nan_record_is_rejected() -> None:
    stream = _example_stream("float32")[:1]
    stream[0].data[5] = np.nan
    good, rejected = decode_records(_records(stream, encoding="FLOAT32"), now_ns=NOW_NS)
    assert [r for _, r in rejected] == ["nan"]
    assert all(np.isfinite(tr.data).all() for tr in good)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({}, None),
        ({"sampling_rate": 1000.0}, None),
        ({"sampling_rate": 1000.5}, "bad_sampling_rate"),
        ({"sampling_rate": float("inf")}, "bad_sampling_rate"),
        ({"starttime": UTCDateTime(1969, 12, 31, 23)}, "bad_time"),
        ({"starttime": UTCDateTime(ns=NOW_NS) + 2 * 86400}, "bad_time"),
        ({"station": "TOOLONG"}, "bad_id"),
        ({"network": "b$"}, "bad_id"),
        ({"channel": "EH"}, "bad_id"),
        ({"location": "--"}, None),
        ({"data": np.array([], dtype=np.int32)}, "empty"),
        ({"data": np.array([1.0, np.inf], dtype=np.float32)}, "nan"),
        ({"data": np.zeros(5000, dtype=np.int32)}, "too_long"),
        ({"data": np.array([b"a", b"b"])}, "bad_encoding"),
    ],
)
def test_validate_trace_labels(kw: dict, reason: str | None) -> None:
    assert validate_trace(_trace(**kw), max_samples=4096, now_ns=NOW_NS) == reason


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(allow_nan=True, allow_infinity=True, width=64),
    start=st.integers(min_value=-(10**18), max_value=4 * 10**18),
    nan_at=st.none() | st.integers(min_value=0, max_value=49),
)
def test_validate_trace_properties(rate: float, start: int, nan_at: int | None) -> None:
    data = np.ones(50, dtype=np.float32)
    if nan_at is not None:
        data[nan_at] = np.nan
    tr = _trace(data=data)
    tr.stats.starttime = UTCDateTime(ns=start)
    tr.stats.__dict__["sampling_rate"] = rate  # forge it the way a broken header could (Stats refuses some)
    reason = validate_trace(tr, now_ns=NOW_NS)
    ok_rate = np.isfinite(rate) and 1e-6 <= rate <= 1000
    if not ok_rate:
        assert reason == "bad_sampling_rate"
    elif start < 0 or start + (49 / rate) * 1e9 > NOW_NS + 86400e9 + 1:
        assert reason == "bad_time"
    elif nan_at is not None:
        assert reason == "nan"
    elif start + (49 / rate) * 1e9 < NOW_NS + 86400e9 - 1:
        assert reason is None


def _same_trace(a: Trace, b: Trace) -> bool:
    return (a.id == b.id and a.stats.sampling_rate == b.stats.sampling_rate
            and a.stats.starttime.ns == b.stats.starttime.ns
            and a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data))


@pytest.mark.parametrize(
    ("encoding", "dtype", "reclen", "byteorder"),
    [("STEIM2", "int32", 512, ">"), ("STEIM1", "int32", 512, ">"), ("STEIM2", "int32", 4096, ">"),
     ("STEIM2", "int32", 256, "<"), ("INT32", "int32", 512, ">"), ("INT16", "int16", 512, "<"),
     ("FLOAT32", "float32", 512, ">"), ("FLOAT64", "float64", 1024, ">")],
)
def test_fast_decoder_gives_the_trace_obspy_gives(encoding: str, dtype: str, reclen: int, byteorder: str) -> None:
    """The libmseed fast path and ObsPy's reader agree record by record: id, rate, start (ns), samples, dtype."""
    stream = _example_stream(dtype)
    stream[1].stats.starttime += 0.000123  # sub-100-us start: ObsPy writes a blockette 1001
    stream[2].stats.location = "00"
    buf = io.BytesIO()
    stream.write(buf, format="MSEED", reclen=reclen, encoding=encoding, byteorder=byteorder)
    blob = buf.getvalue()
    n = 0
    for offset in range(0, len(blob), reclen):
        rec = blob[offset : offset + reclen]
        nsamp = struct.unpack_from(byteorder + "H", rec, 30)[0]
        fast = validate._fast_decoder().decode(rec, reclen, nsamp)
        slow = decode_record(rec, reclen, now_ns=NOW_NS, fast_path=False)
        assert isinstance(fast, Trace) and isinstance(slow, Trace), (offset, fast, slow)
        assert _same_trace(fast, slow), (offset, fast, slow)
        n += 1
    assert n == len(blob) // reclen >= 3


def test_fast_decoder_and_obspy_agree_on_damaged_records(blob: bytes) -> None:
    """Over a byte-flip corpus a record is accepted, as the same Trace, with the fast path exactly when without.

    The reason of a rejection may differ (ObsPy's reader fails on an impossible time with a decode error
    where the fast path decodes and `validate_trace` says bad_time); acceptance may not.
    """
    rng = random.Random(7)
    records = [blob[i : i + 512] for i in range(0, len(blob), 512)]
    outcomes: Counter[str] = Counter()
    for _ in range(600):
        rec = bytearray(rng.choice(records))
        for _ in range(rng.randint(1, 3)):
            rec[rng.randrange(512)] ^= 1 << rng.randrange(8)
        fast = decode_record(bytes(rec), 512, now_ns=NOW_NS)
        slow = decode_record(bytes(rec), 512, now_ns=NOW_NS, fast_path=False)
        if isinstance(slow, str):
            assert isinstance(fast, str), (slow, fast)
            outcomes[slow] += 1
        else:
            assert isinstance(fast, Trace) and _same_trace(fast, slow)
            outcomes["accepted"] += 1
    assert outcomes["accepted"] > 0 and outcomes["decode_warning"] > 0, outcomes


def test_fast_decoder_falls_back_for_what_it_does_not_handle(blob: bytes) -> None:
    """A record libmseed warns about gets no fast Trace: ObsPy's reader decides (here: decode_warning)."""
    rec = bytearray(blob[:512])
    rec[64 + 11] ^= 0x01
    nsamp = struct.unpack_from(">H", rec, 30)[0]
    assert validate._fast_decoder().decode(bytes(rec), 512, nsamp) is None
    assert validate._fast_decoder().decode(blob[:512], 512, nsamp + 1) is None  # sample count disagrees


@pytest.mark.parametrize("encoding", ["INT32", "INT16", "FLOAT64"])
def test_uncompressed_record_claiming_more_samples_than_it_holds_is_rejected(encoding: str) -> None:
    """libmseed would read past the record's end (garbage samples); found by comparing the two decode paths."""
    dtype = {"INT32": "int32", "INT16": "int16", "FLOAT64": "float64"}[encoding]
    rec = _records(_example_stream(dtype)[:1], encoding=encoding)[:512]
    assert isinstance(decode_record(rec, 512, now_ns=NOW_NS), Trace)
    (nsamp,) = struct.unpack_from(">H", rec, 30)
    forged = _patch(rec, 30, ">H", nsamp + 1)
    for fast_path in (True, False):
        assert decode_record(forged, 512, now_ns=NOW_NS, fast_path=fast_path) == "npts_mismatch"


# --- miniSEED 3 (pymseed) -------------------------------------------------------------------------------------------


def _mseed3_records(data: np.ndarray, reclen: int = 512) -> list[bytes]:
    from pymseed import DataEncoding, MS3Record

    msr = MS3Record(reclen=reclen, encoding=DataEncoding.STEIM2)
    msr.sourceid, msr.samprate, msr.starttime = "FDSN:BW_RJOB__E_H_Z", 100.0, UTCDateTime(2020, 1, 1).ns
    return list(msr.generate(data, "i"))


def test_mseed3_records_decode_to_the_original_samples_or_a_reason() -> None:
    from quakemon.ingest.mseed3 import record_length, record_start, record_station

    data = np.cumsum(np.random.default_rng(3).integers(-500, 500, 3000)).astype(np.int32)
    recs = _mseed3_records(data)
    assert len(recs) > 2 and all(r[:3] == b"MS\x03" and record_length(r) == len(r) for r in recs)
    traces = [decode_record(r, now_ns=NOW_NS) for r in recs]
    assert all(isinstance(t, Trace) for t in traces), traces
    assert traces[0].id == "BW.RJOB..EHZ" and traces[0].stats.sampling_rate == 100.0
    assert np.array_equal(np.concatenate([t.data for t in traces]), data)
    assert record_station(recs[1]) == ("BW", "RJOB")
    assert record_start(recs[1]) == pytest.approx(traces[1].stats.starttime.timestamp)
    damaged = bytearray(recs[1])
    damaged[-5] ^= 0x40  # a payload bit: the CRC no longer matches
    assert decode_record(bytes(damaged), now_ns=NOW_NS) == "decode_error"
    assert decode_record(recs[1][:-3], now_ns=NOW_NS) == "truncated"
    assert decode_record(recs[1] + b"\x00", now_ns=NOW_NS) == "bad_reclen"


def test_serve_reads_mseed3_input(tmp_path) -> None:
    from quakemon.tools.serve_records import load_records

    data = np.arange(2000, dtype=np.int32)
    path = tmp_path / "a.ms3"
    path.write_bytes(b"".join(_mseed3_records(data, 4096)))
    recs = load_records([path])
    assert {r.seed_id for r in recs} == {"BW.RJOB..EHZ"} and all(len(r.raw) == 512 for r in recs)
    decoded = [decode_record(r.raw, now_ns=NOW_NS) for r in recs]
    assert np.array_equal(np.concatenate([t.data for t in decoded]), data)
