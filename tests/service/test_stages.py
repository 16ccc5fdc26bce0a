"""Unit tests of the stage plumbing that needs no processes: messages at the stage boundary, coalescing, the
drop-oldest queue, the status path (relay, upstream counters), the stop flag."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import zmq

from quakemon.base.signals import StopFlag
from quakemon.pipeline.detect import WindowMeta
from quakemon.service.stages.common import DropOldestQueue, Every, StatusRelay
from quakemon.service.stages.inference import Upstream, _connected, _publisher_rejections
from quakemon.service.stages.messages import SPECTRA, WINDOWS, Batch, InvalidMessage, Sender, decode, status_frames
from quakemon.service.stages.preprocess import coalesce
from quakemon.wire.schema import MessageError, pack_arrays

# the window metadata of a "windows" message, as the stages have always sent it
WIRE_KEYS = ["station", "instrument", "start_ns", "end_ns", "arrival", "missing_fraction", "constant"]


def _meta(i: int, station: str = "", **kw) -> WindowMeta:
    return WindowMeta(station or f"S{i}", i * 10**9, i * 10**9 + 20 * 10**9, **kw)


def _batch(first: int, n: int) -> Batch:
    data = np.arange(first, first + n, dtype=np.float32)[:, None, None] * np.ones((1, 3, 4), np.float32)
    return Batch(WINDOWS, tuple(_meta(first + i) for i in range(n)), {"data": data})


def test_coalesce_joins_batches_in_order_and_caps_each_run() -> None:
    batches = [_batch(0, 3), _batch(3, 0), _batch(3, 5), _batch(8, 1)]
    runs = list(coalesce(batches, max_batch=4))
    assert [len(metas) for metas, _ in runs] == [4, 4, 1]
    stations = [m.station for metas, _ in runs for m in metas]
    assert stations == [f"S{i}" for i in range(9)]
    for metas, data in runs:  # every window keeps its own samples
        assert data.shape == (len(metas), 3, 4)
        assert [int(row[0, 0]) for row in data] == [int(m.station[1:]) for m in metas]


def test_coalesce_of_nothing_yields_nothing() -> None:
    assert list(coalesce([], 8)) == []
    assert list(coalesce([_batch(0, 0)], 8)) == []


def test_every_is_due_once_per_interval() -> None:
    clock = Every(3600.0)
    assert clock.due() and not clock.due()
    assert Every(0.0).due() and Every(0.0).due()


def test_window_batches_keep_their_wire_format_and_come_back_equal() -> None:
    metas = (_meta(1, instrument="EH", arrival=12.5, missing_fraction=0.25, constant=("N",), station="XX.S1."),
             _meta(2, station="XX.S2."))
    batch = Batch(WINDOWS, metas, {"data": np.ones((2, 3, 4), np.float32)})
    frames = batch.frames()
    header = json.loads(bytes(frames[0]))["header"]
    assert header["kind"] == "windows" and [list(w) for w in header["windows"]] == [WIRE_KEYS, WIRE_KEYS]
    assert "stats" not in header  # counters travel on the status path, never on data messages
    back = decode([bytes(f) for f in frames])
    assert isinstance(back, Batch) and back.metas == metas and back.arrays["data"].shape == (2, 3, 4)
    assert back.sender is None
    stamped = decode([bytes(f) for f in batch.frames(Sender("h:1", 2))])  # (the ingest stage's stamp, when sent)
    assert isinstance(stamped, Batch) and stamped.sender == Sender("h:1", 2) and stamped.metas == metas
    for bad in ({"source": "h:1", "rewinds": -1}, {"source": "", "rewinds": 0}, {"rewinds": 1}, "h:1"):
        header = {"kind": "windows", "windows": [m.to_wire() for m in metas], "sender": bad}
        with pytest.raises(InvalidMessage, match="sender"):
            decode([bytes(f) for f in pack_arrays(header, batch.arrays)])


def test_spectra_metas_carry_the_transform_verdict() -> None:
    done = dataclasses.replace(_meta(1), station="XX.S1.", valid=False, dead=("E", "N"))
    wire = done.to_wire()
    assert list(wire) == [*WIRE_KEYS, "valid", "dead"] and wire["valid"] is False and wire["dead"] == ["E", "N"]
    back = decode([bytes(f) for f in Batch(SPECTRA, (done,), {"spectra": np.zeros((1, 1), np.float32)}).frames()])
    assert back.metas == (done,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.valid = True  # type: ignore[misc]


def test_status_reports_and_malformed_messages() -> None:
    body = {"stage": "ingest", "source": "h:1", "stats": {"windows_out": 3}}
    assert decode([bytes(f) for f in status_frames(body)]) == body
    with pytest.raises(MessageError, match="kind"):
        decode([bytes(f) for f in pack_arrays({"kind": "gossip"}, {})])
    with pytest.raises(MessageError, match="window metadata"):
        decode([bytes(f) for f in pack_arrays({"kind": "windows", "windows": [{"station": "S"}]}, {})])


def test_drop_oldest_queue_drops_whole_oldest_batches_and_counts_them() -> None:
    q = DropOldestQueue(5)
    for i in range(4):
        q.put(_batch(2 * i, 2), queued_at=float(i))
    assert q.windows == 4 and q.dropped == 4 and len(q) == 2
    assert q.oldest == 2.0
    assert [m.station for m in q.popleft().metas] == ["S4", "S5"] and q.windows == 2


def test_status_relay_sends_the_newest_report_per_process_without_blocking() -> None:
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        for s in (push, pull):
            s.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 1)
        pull.setsockopt(zmq.RCVHWM, 1)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        relay = StatusRelay()
        relay.put({"stage": "ingest", "source": "a", "stats": {"windows_out": 1}})
        relay.put({"stage": "ingest", "source": "a", "stats": {"windows_out": 2}})  # replaces the first
        relay.put({"stage": "preprocess", "source": "p", "stats": {}})
        relay.send(push)  # not connected yet: nothing can go, nothing blocks
        assert len(relay.pending) == 2
        push.connect(f"tcp://127.0.0.1:{port}")
        got = []
        for _ in range(100):
            relay.send(push)
            if pull.poll(50):
                got.append(decode(pull.recv_multipart()))
            if len(got) == 2:
                break
        assert sorted((b["stage"], b["stats"].get("windows_out")) for b in got) == [("ingest", 2), ("preprocess", None)]
        assert relay.pending == {}
    finally:
        push.close()
        pull.close()
        ctx.term()


def test_upstream_keeps_the_newest_counters_per_process_and_forgets_silent_ones() -> None:
    up = Upstream()
    up.update({"stage": "ingest", "source": "a", "stats": {"windows_out": 3}}, now=0.0)
    up.update({"stage": "preprocess", "source": "p", "stats": {"preprocessed": 3}}, now=0.0)
    up.update({"stage": "ingest", "source": "a", "stats": {"windows_out": 5}}, now=1.0)
    up.update({"stage": "ingest", "source": "b", "stats": {"windows_out": 7}}, now=1.0)
    up.update({"stage": "inference", "source": "x", "stats": {}}, now=1.0)  # not upstream: ignored
    ingest, pre = up.current(now=2.0)
    assert sorted(s["windows_out"] for s in ingest) == [5, 7] and pre == [{"preprocessed": 3}]
    ingest, pre = up.current(now=31.0)  # "p" last heard at 0 s: gone after 30 s
    assert len(ingest) == 2 and pre == []


def test_stop_flag_stops_when_the_supervisor_is_gone() -> None:
    stop = StopFlag()
    assert not stop.is_set()
    stop.watch_parent(os.getppid())
    assert not stop.is_set()
    stop.watch_parent(os.getppid() + 123456)  # we are not that process's child (any more)
    assert stop.is_set() and stop.wait(0)


def test_heartbeat_tells_connected_and_idle_from_disconnected_and_from_no_report() -> None:
    assert _connected([]) is None  # no ingest process has reported
    assert _connected([{"connected": True, "silent_stations": 3}]) is True
    assert _connected([{"connected": True}, {"connected": False}]) is False
    body = {"stage": "ingest", "source": "h:1", "stats": {"stations": 3, "silent_stations": 3, "connected": True}}
    assert decode([bytes(f) for f in status_frames(body)]) == body  # the ingest totals travel as they are
    bad = {"stage": "ingest", "source": "h:1", "stats": {"silent_stations": -1}}
    with pytest.raises(MessageError, match="silent_stations"):
        decode([bytes(f) for f in status_frames(bad)])


def test_the_publishers_refused_curve_handshakes_reach_the_status(tmp_path) -> None:
    from quakemon.wire.security import curve_server_configurator, keygen

    keygen(tmp_path / "keys", "quakemon")
    configure = curve_server_configurator(tmp_path / "keys" / "quakemon.key_secret", tmp_path / "keys")
    assert _publisher_rejections(None) == {}
    assert _publisher_rejections(configure) == {}  # no authenticator yet: nothing refused
    configure._rejections["Unknown key"] += 2  # what a stopped authenticator leaves behind
    assert _publisher_rejections(configure) == {"Unknown key": 2}
