"""Post-parse validation and record-by-record decoding (RELIABILITY scenarios 8 and 9)."""

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

from quakemon.ingest.validate import decode_record, decode_records, detect_reclen, match_selector, validate_trace

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


@pytest.mark.parametrize(
    ("seed_id", "selectors", "expected"),
    [
        ("BW.RJOB..EHZ", ["BW.RJOB..EH?"], True),
        ("BW.RJOB..EHZ", ["BW.RJOB.--.EH?"], True),
        ("BW.RJOB.00.EHZ", ["BW.RJOB..EH?"], False),
        ("BW.RJOB.00.EHZ", ["BW.RJOB.*.EH?"], True),
        ("BW.RJOB..HHZ", ["BW.RJOB..EH?"], False),
        ("BW.RJOB..EHZ", ["GR.FUR..HH?", "BW"], True),
        ("BW.RJOB..EHZ", ["BW.R*"], True),
        ("BW.RJOB..EHZ", ["BW.RJOB.?.EHZ"], False),
        ("BW.RJOB..EHZ", ["*.*..*Z"], True),
        ("bw.rjob..ehz", ["BW.RJOB..EHZ"], True),
        ("BW.RJOB..EHZ", [], False),
        ("BWRJOB", ["*"], False),
    ],
)
def test_match_selector(seed_id: str, selectors: list[str], expected: bool) -> None:
    assert match_selector(seed_id, selectors) is expected


def test_bad_selector_names_itself() -> None:
    with pytest.raises(ValueError, match="A.B.C.D.E"):
        match_selector("BW.RJOB..EHZ", ["A.B.C.D.E"])
