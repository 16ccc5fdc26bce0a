"""CURVE + ZAP with real sockets on 127.0.0.1, key file modes, and the publisher's peer-hygiene options."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from quakemon.base.errors import ConfigError
from quakemon.service.config import PublishConfig
from quakemon.wire.publisher import Publisher
from quakemon.wire.security import (
    HandshakeMonitor,
    curve_server_configurator,
    keygen,
    make_curve_client,
    make_curve_server,
)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def bind_random(sock: zmq.Socket) -> str:
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return f"tcp://127.0.0.1:{port}"


def test_keygen_secret_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        public, secret = keygen(tmp_path / "keys", "server")
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert public.name == "server.key" and secret.name == "server.key_secret"
    assert b"secret-key" in secret.read_bytes() and b"secret-key" not in public.read_bytes()


def _server_and_clients(tmp_path: Path) -> tuple[Path, Path, Path, Path, Path]:
    """Server keys, alice (in the allow-list directory) and mallory (not): (server public, server secret,
    alice secret, mallory secret, allow-list directory)."""
    server_public, server_secret = keygen(tmp_path / "server", "server")
    alice_public, alice_secret = keygen(tmp_path / "alice", "alice")
    _, mallory_secret = keygen(tmp_path / "mallory", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(alice_public.read_bytes())
    return server_public, server_secret, alice_secret, mallory_secret, allowed


def test_curve_admits_only_allowed_keys(tmp_path: Path, ctx: zmq.Context) -> None:
    """RELIABILITY 20, on a raw PUB socket: allowed key receives; unknown key and NULL get 0; AUTH failure seen."""
    server_public, server_secret, alice_secret, mallory_secret, allowed = _server_and_clients(tmp_path)

    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    auth = make_curve_server(pub, server_secret, allowed, ctx)
    monitor = HandshakeMonitor(pub)
    endpoint = bind_random(pub)
    try:
        received = deliveries(ctx, endpoint, server_public, alice_secret, mallory_secret,
                              lambda: pub.send_multipart([b"detection.BW.RJOB", b"{}"]))
        assert received["alice"] >= 3, received
        assert received["mallory"] == 0 and received["plain"] == 0, received
        deadline = time.monotonic() + 5.0
        while monitor.count("HANDSHAKE_FAILED_AUTH") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.count("HANDSHAKE_FAILED_AUTH") >= 1, monitor.counts
        assert monitor.count("HANDSHAKE_SUCCEEDED") >= 1, monitor.counts
    finally:
        monitor.stop()
        pub.close(linger=0)
        auth.stop()


def test_publisher_with_curve_configurator(tmp_path: Path) -> None:
    """The daemon's path: Publisher.from_config + curve_server_configurator; stop() lets the context terminate."""
    server_public, server_secret, alice_secret, mallory_secret, allowed = _server_and_clients(tmp_path)
    ctx = zmq.Context()
    configure = curve_server_configurator(server_secret, allowed)
    pub = Publisher.from_config(PublishConfig(endpoint="tcp://127.0.0.1:0", linger_s=0.0), context=ctx,
                                configure_socket=configure)
    try:
        received = deliveries(ctx, pub.endpoint, server_public, alice_secret, mallory_secret,
                              lambda: pub.publish_heartbeat({"stations": 1}))
        assert received["alice"] >= 3 and received["mallory"] == 0 and received["plain"] == 0, received
    finally:
        pub.close(linger_ms=0)
        configure.stop()
        done = threading.Event()
        threading.Thread(target=lambda: (ctx.term(), done.set()), daemon=True).start()
        assert done.wait(10.0), "context.term() blocked: an authenticator socket is still open"


def deliveries(ctx: zmq.Context, endpoint: str, server_public: Path, alice_secret: Path, mallory_secret: Path,
               send: Callable[[], object]) -> dict[str, int]:
    """Messages received by an allowed CURVE client, an unknown-key client and a plain client, in bounded time."""
    subs: dict[str, zmq.Socket] = {}
    for name, secret in (("alice", alice_secret), ("mallory", mallory_secret), ("plain", None)):
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        if secret is not None:
            make_curve_client(sub, secret, server_public)
        sub.subscribe(b"")
        sub.connect(endpoint)
        subs[name] = sub
    received = dict.fromkeys(subs, 0)
    poller = zmq.Poller()
    for sub in subs.values():
        poller.register(sub, zmq.POLLIN)
    try:
        deadline = time.monotonic() + 10.0
        extra_until = None
        while time.monotonic() < deadline and (extra_until is None or time.monotonic() < extra_until):
            send()
            for sock, _ in poller.poll(20):
                name = next(k for k, v in subs.items() if v is sock)
                sock.recv_multipart()
                received[name] += 1
            if extra_until is None and received["alice"] >= 3:
                extra_until = time.monotonic() + 0.5  # the others get the same chance for a while longer
    finally:
        for sub in subs.values():
            sub.close(linger=0)
    return received


def test_curve_errors_name_the_key_and_path(tmp_path: Path, ctx: zmq.Context) -> None:
    public, secret = keygen(tmp_path / "server", "server")
    sock = ctx.socket(zmq.PUB)
    try:
        with pytest.raises(ConfigError, match=r"publish\.curve_secret_key.*nope"):
            make_curve_server(sock, tmp_path / "nope", tmp_path, ctx)
        with pytest.raises(ConfigError, match=r"publish\.curve_secret_key.*public-only"):
            make_curve_server(sock, public, tmp_path, ctx)
        with pytest.raises(ConfigError, match=r"publish\.curve_allowed_keys.*not a directory"):
            make_curve_server(sock, secret, tmp_path / "missing", ctx)
        with pytest.raises(ConfigError, match=r"publish\.curve_secret_key.*nope"):  # checked before any socket
            curve_server_configurator(tmp_path / "nope", tmp_path)
    finally:
        sock.close(linger=0)


def test_raw_tcp_peer_that_never_handshakes_is_dropped(ctx: zmq.Context) -> None:
    """RELIABILITY 20: the production publisher, built from [publish], drops a non-ZMTP peer after handshake_ivl_s."""
    pub = Publisher.from_config(PublishConfig(endpoint="tcp://127.0.0.1:0", handshake_ivl_s=0.5), context=ctx)
    port = int(pub.endpoint.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw:
            raw.settimeout(5.0)  # libzmq's default handshake_ivl is 30 s: EOF within 5 s shows ours applies
            while raw.recv(4096):  # the server's greeting bytes, then EOF
                pass
    finally:
        pub.close(linger_ms=0)


SUBSCRIBER = """
import sys, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.linger = 0
sub.subscribe(b"")
sub.connect(sys.argv[1])
if sub.poll(20000):
    sub.recv_multipart()
    print("ready", flush=True)
sub.poll(30000)
"""


def test_stopped_subscriber_is_disconnected_by_heartbeat(ctx: zmq.Context) -> None:
    """RELIABILITY 17: a SIGSTOPped subscriber is dropped after the heartbeat timeout; publishing never blocks."""
    monitors: list[HandshakeMonitor] = []
    cfg = PublishConfig(endpoint="tcp://127.0.0.1:0", zmq_heartbeat_ivl_s=0.2, zmq_heartbeat_timeout_s=0.6, sndhwm=10)
    pub = Publisher.from_config(cfg, context=ctx, configure_socket=lambda s: monitors.append(HandshakeMonitor(s)))
    monitor = monitors[0]
    child = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, pub.endpoint], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        os.set_blocking(child.stdout.fileno(), False)
        deadline = time.monotonic() + 30.0
        line = ""
        while "ready" not in line and time.monotonic() < deadline:
            pub.publish_heartbeat({"stations": 1})
            time.sleep(0.02)
            line += child.stdout.readline() or ""
        assert "ready" in line, "subscriber never received a message"
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10.0
        sent = 0
        while monitor.count("DISCONNECTED") == 0 and time.monotonic() < deadline:
            pub.publish_heartbeat({"stations": 1})  # never blocks, whatever the subscriber does
            sent += 1
            time.sleep(0.01)
        assert monitor.count("DISCONNECTED") >= 1, monitor.counts
        assert sent > 10
    finally:
        monitor.stop()
        pub.close(linger_ms=0)
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait(timeout=10)
