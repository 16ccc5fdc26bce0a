"""`data_age_s` (how old the data is) beside `latency_s` (how long since it arrived) in detection and heartbeat
bodies: computed in one place, optional for older producers, validated when present."""

from __future__ import annotations

import pytest

from quakemon.wire import schema as m
from quakemon.wire.schema import MessageError

MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def _detection(**over) -> dict:
    kw = dict(station="BW.RJOB.", state="new", label="earthquake", probability=0.91,
              probabilities={"noise": 0.09, "earthquake": 0.91}, pick_time_ns=1251072017_230000000,
              window_start=1251072000.0, window_end=1251072020.0, peak_probability=0.95, model=MODEL)
    kw.update(over)
    return m.detection_body(**kw)


def test_data_age_is_now_minus_the_window_end_and_is_not_clamped():
    assert m.data_age_s("2009-08-24T00:00:20.000000Z", now=1251072030.5) == 10.5
    assert m.data_age_s(1251072020.0, now=1251072030.5) == 10.5
    assert m.data_age_s(1251072020.0, now=1251072019.0) == -1.0  # host clock behind the data: shown, not hidden


def test_detection_bodies_carry_data_age_null_in_replays_and_validate_it():
    body = _detection()
    assert body["data_age_s"] is None and body["latency_s"] is None  # a replay: both filled at publication
    assert _detection(data_age_s=5.5, latency_s=0.2)["data_age_s"] == 5.5
    older = {k: v for k, v in body.items() if k != "data_age_s"}  # from a producer before data_age_s
    assert m.validate_detection(older, stamped=False) is older
    assert m.validate_detection({**body, "data_age_s": -2.0}, stamped=False)["data_age_s"] == -2.0
    for bad in ("10", True, [1]):
        with pytest.raises(MessageError, match="data_age_s must be a number or null"):
            m.validate_detection({**body, "data_age_s": bad}, stamped=False)
    with pytest.raises(MessageError, match="latency_s must be a number >= 0 or null"):
        m.validate_detection({**body, "latency_s": -0.1}, stamped=False)


def test_heartbeats_accept_lag_and_data_age_or_their_absence_and_refuse_other_types():
    hb = m.heartbeat_body({"lag_s": 0.4, "data_age_s": 5.0e8, "data_lag_s": 5.0e8}, uptime_s=1, seq_last=0)
    assert (hb["lag_s"], hb["data_age_s"], hb["data_lag_s"]) == (0.4, 5.0e8, 5.0e8)
    older = m.heartbeat_body({"lag_s": 3.0}, uptime_s=1, seq_last=0)  # a producer before data_age_s
    assert "data_age_s" not in older and m.validate_heartbeat(older, stamped=False) is older
    for key in ("lag_s", "data_age_s", "data_lag_s"):
        with pytest.raises(MessageError, match=f"{key} must be a number or null"):
            m.heartbeat_body({key: "slow"}, uptime_s=1, seq_last=0)
        with pytest.raises(MessageError, match=key):
            m.heartbeat_body({key: False}, uptime_s=1, seq_last=0)
