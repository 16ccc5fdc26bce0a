"""Wire schema: array frames (round trip, zero copy, malformed input) and detection/heartbeat bodies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quakemon.wire import schema as m
from quakemon.wire.schema import MessageError, pack_arrays, unpack_arrays

MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 33, 64), (2, 0, 4), (1, 1, 1, 7)])
def test_round_trip_shapes_and_dtypes(dtype, shape):
    arr = (np.arange(int(np.prod(shape)), dtype=dtype) - 3).reshape(shape)
    header = {"station": "BW.RJOB.", "window_start": 1.5, "nested": {"k": [1, 2]}}
    frames = pack_arrays(header, {"x": arr, "y": arr * 2})
    got_header, got = unpack_arrays(frames)
    assert got_header == header
    assert list(got) == ["x", "y"]
    for name, want in (("x", arr), ("y", arr * 2)):
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_pack_is_zero_copy_for_contiguous_arrays():
    arr = np.random.default_rng(0).standard_normal((3, 33, 64)).astype(np.float32)
    frames = pack_arrays({}, {"spec": arr})
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.uint8), arr)


def test_non_contiguous_and_big_endian_arrays_are_made_wire_ready():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = base[:, ::2]  # not contiguous
    big = np.arange(5, dtype=">i8")
    _, got = unpack_arrays(pack_arrays({}, {"s": strided, "b": big}))
    np.testing.assert_array_equal(got["s"], strided)
    assert got["b"].dtype == np.dtype("<i8")
    np.testing.assert_array_equal(got["b"], big)


def test_unpack_is_zero_copy_over_real_zmq_frames():
    """PUSH/PULL over loopback with copy=False: the arrays are views onto the received frames."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        for s in (pull, push):
            s.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        arr = np.random.default_rng(1).standard_normal((8, 3, 33, 64)).astype(np.float32)
        idx = np.arange(8, dtype=np.int64)
        push.send_multipart(pack_arrays({"batch": 1}, {"spec": arr, "idx": idx}), copy=False)
        assert pull.poll(5000), "no message within 5 s"
        frames = pull.recv_multipart(copy=False)
        header, got = unpack_arrays(frames)
        assert header == {"batch": 1}
        np.testing.assert_array_equal(got["spec"], arr)
        np.testing.assert_array_equal(got["idx"], idx)
        assert np.shares_memory(got["spec"], np.frombuffer(frames[1].buffer, dtype=np.uint8))
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def _head(frames):
    return json.loads(bytes(frames[0]))


def _with_head(frames, head):
    return [json.dumps(head).encode(), *frames[1:]]


def test_malformed_frames_raise_message_error():
    arr = np.zeros((2, 3), np.float32)
    good = pack_arrays({"a": 1}, {"x": arr})
    head = _head(good)

    cases = {
        "no frames": [],
        "missing buffer": good[:1],
        "extra frame": [*good, b"junk"],
        "not json": [b"\xff{", good[1]],
        "json list": [b"[1,2]", good[1]],
        "wrong schema": _with_head(good, {**head, "schema": "quakemon.arrays/999"}),
        "object dtype": _with_head(good, {**head, "arrays": [{"name": "x", "dtype": "|O", "shape": [2, 3]}]}),
        "unicode dtype": _with_head(good, {**head, "arrays": [{"name": "x", "dtype": "<U4", "shape": [6]}]}),
        "shape mismatch": _with_head(good, {**head, "arrays": [{"name": "x", "dtype": "<f4", "shape": [3, 3]}]}),
        "negative dim": _with_head(good, {**head, "arrays": [{"name": "x", "dtype": "<f4", "shape": [-2, -3]}]}),
        "float dim": _with_head(good, {**head, "arrays": [{"name": "x", "dtype": "<f4", "shape": [2.0, 3]}]}),
        "short buffer": [good[0], bytes(good[1])[:-1]],
        "missing header": _with_head(good, {"schema": m.ARRAYS_SCHEMA, "arrays": head["arrays"]}),
    }
    for name, frames in cases.items():
        with pytest.raises(MessageError):
            unpack_arrays(frames)
            pytest.fail(f"case {name!r} was accepted")


def test_pack_refuses_object_arrays_and_bad_headers():
    with pytest.raises(MessageError, match="not allowed"):
        pack_arrays({}, {"x": np.array([object()], dtype=object)})
    with pytest.raises(MessageError, match="JSON"):
        pack_arrays({"t": object()}, {"x": np.zeros(1)})


@settings(max_examples=60, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int64, np.int16, np.uint8, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_round_trip_property(arr):
    _, got = unpack_arrays(pack_arrays({"n": 1}, {"a": arr}))
    np.testing.assert_array_equal(got["a"], arr)
    assert got["a"].dtype == arr.dtype.newbyteorder("<") or got["a"].dtype == arr.dtype


@settings(max_examples=200, deadline=None)
@given(head=st.binary(max_size=200), bufs=st.lists(st.binary(max_size=64), max_size=3))
def test_garbage_frames_only_ever_raise_message_error(head, bufs):
    try:
        unpack_arrays([head, *bufs])
    except MessageError:
        pass


def _detection(**over):
    kw = dict(
        station="BW.RJOB.", state="new", label="earthquake", probability=0.91,
        probabilities={"noise": 0.09, "earthquake": 0.91}, pick_time_ns=1251072017_230000000,
        pick_uncertainty_s=0.05, pick_method="aic", pick_snr=12.5, window_start=1251072000.0,
        window_end=1251072020.0, last_window_start=1251072002.0, last_window_end=1251072022.0,
        peak_probability=0.95, model=MODEL, latency_s=0.25,
    )
    kw.update(over)
    return m.detection_body(**kw)


def test_detection_body_fields_and_stable_id():
    body = _detection()
    assert body["schema"] == "quakemon.detection/2"
    assert body["onset"] == body["pick"]["time"] == "2009-08-24T00:00:17.230000Z"
    assert body["pick"] == {"time": "2009-08-24T00:00:17.230000Z", "uncertainty_s": 0.05, "phase": "P",
                            "method": "aic", "snr": 12.5}
    assert body["window_start"] == "2009-08-24T00:00:00.000000Z"  # the first window over on (/1's onset)
    assert body["last_window_end"] == "2009-08-24T00:00:22.000000Z"
    assert body["end"] is None
    assert body["id"] == m.detection_id("BW.RJOB.", "2009-08-24T00:00:17.230000Z", MODEL["sha256"])
    # Same station + pick time + model -> same id, whatever the window or state.
    closed = _detection(state="closed", last_window_start=1251072050.0, last_window_end=1251072070.0,
                        end=1251072060.0, close_reason="off")
    assert closed["id"] == body["id"]
    assert _detection(window_start=1251071999.0)["id"] == body["id"]
    assert _detection(pick_time_ns=1251072017_240000000)["id"] != body["id"]  # one sample later
    assert _detection(model={"name": "x", "sha256": "cd" * 32})["id"] != body["id"]
    assert _detection(station="BW.RJOB.00")["id"] != body["id"]
    assert _detection(pick_snr=float("nan"), pick_method="window")["pick"]["snr"] is None
    encoded = m.json_bytes(m.Sequencer("e1").stamp("detection.BW.RJOB", body))
    assert b" " not in encoded.replace(b"hybridvit-test", b"")
    assert m.parse_body(encoded) == body


def test_old_detection_schema_is_named_in_the_error():
    with pytest.raises(MessageError, match="no longer published"):
        m.parse_body(b'{"schema": "quakemon.detection/1"}')


def test_detection_validation_errors():
    with pytest.raises(MessageError, match="state"):
        _detection(state="open")
    with pytest.raises(MessageError, match="probability"):
        _detection(probability=1.5)
    with pytest.raises(MessageError, match="end"):
        _detection(state="closed", close_reason="off")  # closed needs end
    with pytest.raises(MessageError, match="close_reason"):
        _detection(state="closed", end=1251072060.0)
    with pytest.raises(MessageError, match="NET.STA.LOC"):
        _detection(station="RJOB")
    with pytest.raises(MessageError, match="uncertainty_s"):
        _detection(pick_uncertainty_s=-1.0)
    body = _detection()
    with pytest.raises(MessageError, match="pick time"):
        m.validate_detection({**body, "onset": body["window_start"]}, stamped=False)
    with pytest.raises(MessageError, match="pick"):
        m.validate_detection({k: v for k, v in body.items() if k != "pick"}, stamped=False)
    with pytest.raises(MessageError, match="seq"):
        m.validate_detection(dict(body))  # not stamped
    stamped = m.Sequencer("e1").stamp("detection.BW.RJOB", dict(body))
    del stamped["label"]
    with pytest.raises(MessageError, match="label"):
        m.validate_detection(stamped)
    with pytest.raises(MessageError, match="schema"):
        m.parse_body(b'{"schema": "quakemon.other/1"}')
    with pytest.raises(MessageError, match="JSON"):
        m.parse_body(b"{nope")


def test_sequencer_counts_globally_and_per_topic():
    seq = m.Sequencer("epoch-a")
    stamps = [seq.stamp(t, {}) for t in ("detection.BW.RJOB", "heartbeat", "detection.BW.RJOB", "detection.GR.FUR")]
    assert [s["seq"] for s in stamps] == [1, 2, 3, 4]
    assert [s["topic_seq"] for s in stamps] == [1, 1, 2, 1]
    assert {s["epoch"] for s in stamps} == {"epoch-a"}
    assert m.Sequencer().epoch != m.Sequencer().epoch


def test_heartbeat_body():
    hb = m.heartbeat_body({"stations": 2, "windows_in": 10, "queue_depths": {"preprocess": 3}, "extra": "x"},
                          uptime_s=12.3456, seq_last=41, now=1251072000.0)
    assert hb["schema"] == "quakemon.heartbeat/1" and hb["seq_last"] == 41 and hb["uptime_s"] == 12.346
    assert hb["time"] == "2009-08-24T00:00:00.000000Z" and hb["extra"] == "x" and hb["dropped"] == 0
    with pytest.raises(MessageError, match="dropped"):
        m.heartbeat_body({"dropped": -1}, uptime_s=1, seq_last=0)
    with pytest.raises(MessageError, match="queue_depths"):
        m.heartbeat_body({"queue_depths": {"a": "many"}}, uptime_s=1, seq_last=0)


def test_topics_times_and_latency():
    assert m.detection_topic("BW.RJOB.") == "detection.BW.RJOB"
    assert m.detection_topic("GR.FUR.00") == "detection.GR.FUR"
    assert m.HEARTBEAT_TOPIC == "heartbeat" and m.EVENT_TOPIC == "event" and m.EVENT_SCHEMA == "quakemon.event/1"
    assert m.iso_utc(0.1234567) == "1970-01-01T00:00:00.123457Z"
    assert m.parse_iso_utc(m.iso_utc(1251072000.25)) == 1251072000.25
    from obspy import UTCDateTime

    assert m.iso_utc(UTCDateTime("2009-08-24T00:20:03.5")) == "2009-08-24T00:20:03.500000Z"
    assert m.latency_s(100.0, now=100.75) == 0.75
    assert m.latency_s(100.0, now=99.0) == 0.0  # host clock stepped back: clamped
    with pytest.raises(MessageError):
        m.iso_utc(float("nan"))


def test_event_body_fields_topic_and_validation():
    stations = [{"station": "BW.UH2.", "onset": 1.5e9 + 2, "probability": 0.8, "weight": 1.0, "detection_id": "b"},
                {"station": "BW.UH1.", "onset": 1.5e9, "probability": 0.9, "weight": 2.0, "detection_id": "a",
                 "end": 1.5e9 + 30}]
    body = m.event_body(state="new", label="earthquake", stations=stations, coincidence_sum=3, threshold=3,
                        window_s=10)
    assert [s["station"] for s in body["stations"]] == ["BW.UH1.", "BW.UH2."]  # sorted by onset
    assert body["first_onset"] == m.iso_utc(1.5e9) and body["last_onset"] == m.iso_utc(1.5e9 + 2)
    assert body["id"] == m.event_id("earthquake", "BW.UH1.", m.iso_utc(1.5e9)) and body["n_stations"] == 2
    assert body["end"] == m.iso_utc(1.5e9 + 30)
    assert m.event_topic(body["id"]) == f"event.{body['id']}"
    stamped = m.Sequencer("e").stamp(m.event_topic(body["id"]), dict(body))
    assert m.parse_body(m.json_bytes(stamped)) == stamped
    with pytest.raises(MessageError, match="seq"):
        m.validate_event(dict(body))  # not stamped
    for key, value, match in [("state", "open", "state"), ("n_stations", 3, "n_stations"),
                              ("first_onset", "yesterday", "ISO"), ("stations", [], "empty")]:
        with pytest.raises(MessageError, match=match):
            m.validate_event({**body, key: value}, stamped=False)
    with pytest.raises(MessageError, match="twice"):
        m.validate_event({**body, "stations": [body["stations"][0]] * 2, "n_stations": 2}, stamped=False)
    with pytest.raises(MessageError, match="close_reason"):
        m.validate_event({**body, "state": "closed"}, stamped=False)
    with pytest.raises(MessageError, match="without dots"):
        m.event_topic("a.b")
