"""Publisher over real loopback sockets: stamping, heartbeats, never blocking on slow or stopped subscribers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from quakemon.base.errors import QuakemonError
from quakemon.pipeline.trigger import TriggerEvent
from quakemon.wire.publisher import HeartbeatTimer, Publisher
from quakemon.wire.schema import parse_body

T0 = 1_251_072_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def detection(station="BW.RJOB.", k=0):
    ev = TriggerEvent(station=station, state="new", label="earthquake", probability=0.9,
                      probabilities={"noise": 0.1, "earthquake": 0.9}, onset=T0 + 10 * k,
                      window_start=T0 + 10 * k, window_end=T0 + 10 * k + 20, peak_probability=0.9)
    return ev.to_body(MODEL)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def subscriber(ctx, endpoint, rcvhwm=1000, rcvbuf=-1):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, rcvhwm)
    if rcvbuf > 0:
        sub.setsockopt(zmq.RCVBUF, rcvbuf)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def join(pub, sub, timeout_s=10.0):
    """Publish heartbeats until the subscriber gets one (the subscription has reached the publisher)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.publish_heartbeat({})
        if sub.poll(50):
            return sub.recv_multipart()
    raise AssertionError("subscriber never joined")


def test_detection_and_heartbeat_are_stamped_and_received(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, epoch="epoch-test", linger_ms=0)
    sub = subscriber(ctx, pub.endpoint)
    try:
        topic, raw = join(pub, sub)
        assert topic == b"heartbeat"
        first = parse_body(raw)
        assert first["epoch"] == "epoch-test" and first["schema"] == "quakemon.heartbeat/1"
        seq = pub.publish_detection(detection(), arrival=time.time() - 0.5)
        pub.publish_heartbeat({"stations": 1, "windows_in": 5, "queue_depths": {"inference": 2}})
        got = []
        while len(got) < 2 and sub.poll(5000):
            frames = sub.recv_multipart()
            if frames[0] != b"heartbeat" or got:
                got.append(frames)
        (t1, b1), (t2, b2) = got
        det, hb = parse_body(b1), parse_body(b2)
        assert t1 == b"detection.BW.RJOB" and det["seq"] == seq and det["epoch"] == "epoch-test"
        assert det["topic_seq"] == 1 and 0.5 <= det["latency_s"] < 60
        # data_age_s: publication time minus the window's end (years ago here), beside latency_s
        assert 0 <= time.time() - (T0 + 20) - det["data_age_s"] < 60 and det["data_age_s"] > det["latency_s"]
        assert t2 == b"heartbeat" and hb["seq"] == seq + 1 and hb["seq_last"] == seq
        assert hb["stations"] == 1 and hb["queue_depths"] == {"inference": 2}
        assert pub.recent(2) == [(t1, b1), (t2, b2)]
    finally:
        sub.close(0)
        pub.close()


def test_slow_subscriber_never_blocks_publisher_and_pub_drops(ctx):
    """A subscriber that stops reading (tiny RCVHWM and buffers): 20k publishes still complete; PUB drops."""
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, sndhwm=10, linger_ms=0,
                    configure_socket=lambda s: s.setsockopt(zmq.SNDBUF, 4096))
    sub = subscriber(ctx, pub.endpoint, rcvhwm=1, rcvbuf=4096)
    try:
        join(pub, sub)
        bodies = [detection(k=k) for k in range(20_000)]
        done = threading.Event()

        def burst():
            for body in bodies:
                pub.publish_detection(body)
            done.set()

        worker = threading.Thread(target=burst, daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert done.is_set(), "publisher blocked on a subscriber that does not read"
        assert pub.stats["detections"] == 20_000 and pub.stats["sent"] == pub.seq_last
        received = 0
        while sub.poll(500):
            sub.recv_multipart()
            received += 1
        assert received < 20_000, "nothing was dropped: the test did not fill the subscriber's queue"
    finally:
        sub.close(0)
        pub.close()


_STOPPABLE_SUB = textwrap.dedent("""
    import sys, time, zmq
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(sys.argv[1])
    if sub.poll(20000):
        sub.recv_multipart()
        print("ready", flush=True)
    time.sleep(60)
""")


def test_sigstopped_subscriber_is_disconnected_by_zmtp_heartbeat(ctx):
    """A SIGSTOPped subscriber is disconnected after the heartbeat timeout (3 s)."""
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0, heartbeat_ivl_s=0.5, heartbeat_timeout_s=3.0)
    monitor = pub._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    child = subprocess.Popen([sys.executable, "-c", _STOPPABLE_SUB, pub.endpoint], stdout=subprocess.PIPE)
    ready = threading.Event()
    threading.Thread(target=lambda: child.stdout.readline() and ready.set(), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not ready.is_set() and time.monotonic() < deadline:
            pub.publish_heartbeat({})
            ready.wait(0.1)
        assert ready.is_set(), "child subscriber never received a message"
        os.kill(child.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        disconnected_after = None
        while time.monotonic() < stopped_at + 15:
            pub.publish_heartbeat({})  # keeps publishing; must never block
            if monitor.poll(100):
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    disconnected_after = time.monotonic() - stopped_at
                    break
        assert disconnected_after is not None, "stopped subscriber was never disconnected"
        assert disconnected_after < 10.0, "disconnect took far longer than heartbeat ivl + timeout (3.5 s)"
        print(f"SIGSTOPped subscriber disconnected after {disconnected_after:.2f} s")
    finally:
        child.kill()
        child.wait(timeout=10)
        monitor.close(0)
        pub.close()


def test_heartbeat_timer_and_maybe_heartbeat(ctx):
    timer = HeartbeatTimer(1.0)
    assert timer.due(100.0) and not timer.due(100.5) and timer.due(101.0) and not timer.due(101.9)
    assert timer.due(105.0)  # late: scheduled from now, no burst of catch-up heartbeats
    assert not timer.due(105.5) and timer.due(106.0)
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    try:
        calls = []

        def stats():
            calls.append(1)
            return {"stations": 3}

        sent = [pub.maybe_heartbeat(stats, now=t) for t in (0.0, 0.2, 0.99, 1.0, 1.5, 2.0)]
        assert sent == [True, False, False, True, False, True] and len(calls) == 3
        assert pub.seq_last == 3 and parse_body(pub.recent(1)[0][1])["stations"] == 3
    finally:
        pub.close()


def test_bind_failure_names_the_endpoint(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    try:
        with pytest.raises(QuakemonError, match="publish.endpoint.*127.0.0.1"):
            Publisher(pub.endpoint, context=ctx)
    finally:
        pub.close()


def test_ring_keeps_the_last_n_messages(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0, ring_size=3)
    try:
        for k in range(5):
            pub.publish_detection(detection(k=k))
        assert [parse_body(body)["seq"] for _, body in pub.recent()] == [3, 4, 5]
        assert pub.recent(0) == []
    finally:
        pub.close()


def test_from_config_maps_the_publish_section(ctx):
    from quakemon.service.config import PublishConfig

    cfg = PublishConfig(endpoint="tcp://127.0.0.1:0", sndhwm=123, linger_s=0.0)
    pub = Publisher.from_config(cfg, context=ctx, epoch="e-cfg")
    try:
        assert pub.epoch == "e-cfg" and pub.endpoint.startswith("tcp://127.0.0.1:")
        assert pub._socket.getsockopt(zmq.SNDHWM) == 123
        assert pub._socket.getsockopt(zmq.HEARTBEAT_TIMEOUT) == int(cfg.zmq_heartbeat_timeout_s * 1000)
        assert pub._socket.getsockopt(zmq.HANDSHAKE_IVL) == int(cfg.handshake_ivl_s * 1000)
    finally:
        pub.close()
