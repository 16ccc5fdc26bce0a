"""Refused CURVE clients are logged with their address and key and counted per reason (real sockets, ZAP)."""

from __future__ import annotations

import time
from pathlib import Path

import structlog
import zmq
import zmq.utils.z85

from quakemon.wire.security import CurveServerConfigurator, keygen, make_curve_client


def test_a_client_with_a_wrong_key_is_logged_with_its_address_and_counted(tmp_path: Path) -> None:
    server_public, server_secret = keygen(tmp_path / "server", "server")
    alice_public, alice_secret = keygen(tmp_path / "alice", "alice")
    mallory_public, mallory_secret = keygen(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(alice_public.read_bytes())
    mallory_key = zmq.auth.load_certificate(mallory_public)[0].decode()

    ctx = zmq.Context()
    configure = CurveServerConfigurator(server_secret, allowed)
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    subs = []
    try:
        with structlog.testing.capture_logs() as logs:
            configure(pub)
            port = pub.bind_to_random_port("tcp://127.0.0.1")
            for secret in (mallory_secret, mallory_secret, mallory_secret, alice_secret):
                sub = ctx.socket(zmq.SUB)
                sub.linger = 0
                make_curve_client(sub, secret, server_public)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(f"tcp://127.0.0.1:{port}")
                subs.append(sub)
            deadline = time.monotonic() + 10
            while configure.rejections.get("Unknown key", 0) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)  # three connections with mallory's key, each refusal counted
        assert configure.rejections.get("Unknown key", 0) >= 3, configure.rejections
        assert set(configure.rejections) == {"Unknown key"}  # alice is admitted, never counted
        rejected = [e for e in logs if e["event"] == "curve_client_rejected"]
        assert rejected, logs
        first = rejected[0]
        assert first["peer"] == "127.0.0.1" and first["client_key"] == mallory_key
        assert first["reason"] == "Unknown key" and first["log_level"] == "warning"
        assert len(rejected) == 1  # the same address and key again: counted, not logged again
        before = configure.rejections["Unknown key"]
        configure.stop()  # the counts outlive the authenticator (a re-bound publisher gets a new one)
        assert configure.rejections["Unknown key"] == before
    finally:
        for sub in subs:
            sub.close(linger=0)
        pub.close(linger=0)
        configure.stop()
        ctx.term()


def test_failed_handshakes_are_counted_per_reason(tmp_path: Path) -> None:
    from quakemon.wire.security import HandshakeMonitor

    server_public, server_secret = keygen(tmp_path / "server", "server")
    _, mallory_secret = keygen(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    ctx = zmq.Context()
    configure = CurveServerConfigurator(server_secret, allowed)
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    configure(pub)
    monitor = HandshakeMonitor(pub)
    socks = []
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        plain = ctx.socket(zmq.SUB)  # no CURVE at all: refused before ZAP, by the mechanism
        wrong = ctx.socket(zmq.SUB)  # CURVE with a key the server does not know: refused by ZAP
        make_curve_client(wrong, mallory_secret, server_public)
        for sock in (plain, wrong):
            sock.linger = 0
            sock.connect(f"tcp://127.0.0.1:{port}")
            socks.append(sock)
        deadline = time.monotonic() + 10
        while len(monitor.reasons) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.reasons["ZMTP_MECHANISM_MISMATCH"] >= 1, monitor.reasons
        assert monitor.reasons["ZAP_400"] >= 1, monitor.reasons
    finally:
        monitor.stop()
        for sock in socks:
            sock.close(linger=0)
        pub.close(linger=0)
        configure.stop()
        ctx.term()
