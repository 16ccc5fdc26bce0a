"""CURVE between the stage processes: with [pipeline] curve on, only peers holding the stage key pair talk to a stage.

A real `quakemon run` (ingest, preprocess, inference over tcp://127.0.0.1 with pipeline.curve = "on") streams a
SeedLink archive. Peers without the stage keys (plain NULL sockets, and CURVE sockets with a key of their own)
connect to both stage endpoints: a PULL on the windows endpoint receives nothing while windows flow, and what a
PUSH sends to the inference stage never reaches it (its rejected-message counter stays 0). A peer holding the
stage key pair, sending the same garbage, is counted: so the counter does see what reaches the stage.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq
from support.pipeline import Subscriber, free_port, start_daemon, start_server, wait_for, write_archive, write_config

from quakemon.service.stages.common import leaves_host
from quakemon.wire.security import keygen, make_curve_client

START_TIMEOUT = 120.0
GARBAGE = [b"{not json", b"\x00" * 16]


def _heartbeat(sub: Subscriber) -> dict:
    beats = sub.bodies("heartbeat")
    return beats[-1] if beats else {}


def _socket(ctx: zmq.Context, kind: int, endpoint: str, secret: Path | None = None,
            server_key: Path | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if secret is not None and server_key is not None:
        make_curve_client(sock, secret, server_key)
    sock.connect(endpoint)
    return sock


def _push_for(sock: zmq.Socket, seconds: float) -> int:
    """Offer GARBAGE without blocking for `seconds`; returns how many sends ZeroMQ accepted."""
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.send_multipart(GARBAGE, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.05)
    return sent


def test_which_endpoints_leave_the_host():
    assert not leaves_host("ipc:///run/quakemon/windows")
    assert not leaves_host("tcp://127.0.0.1:5555") and not leaves_host("tcp://localhost:5555")
    assert not leaves_host("tcp://[::1]:5555")
    assert leaves_host("tcp://10.0.0.5:5555") and leaves_host("tcp://*:5555") and leaves_host("tcp://0.0.0.0:5555")
    assert leaves_host("tcp://eth0:5555") and leaves_host("tcp://inference.example.org:5555")


@pytest.mark.timeout(300)
def test_stage_sockets_admit_only_the_stage_key_pair(tmp_path: Path, tiny_checkpoint: Path):
    public, secret = keygen(tmp_path / "keys", "stages")
    _, intruder_secret = keygen(tmp_path / "intruder", "intruder")
    archive, _, _ = write_archive(tmp_path / "rjob.mseed")
    server, seedlink_port = start_server(archive, tmp_path, speed=20.0)
    windows_ep, spectra_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publish_port = free_port()
    config = write_config(tmp_path / "curve.toml", server_port=seedlink_port, checkpoint=tiny_checkpoint,
                          runtime_dir=tmp_path / "run", publish_port=publish_port, on=0.99, off=0.5,
                          extra={"pipeline": {"windows_endpoint": windows_ep, "spectra_endpoint": spectra_ep,
                                              "curve": "on", "curve_secret_key": str(secret)},
                                 "publish": {"journal": ""}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish_port}", "heartbeat")
    daemon = start_daemon(config, tmp_path, "curve")
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    try:
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        wait_for(lambda: _heartbeat(sub).get("windows_out", 0) >= 10, 90, "windows through CURVE stage sockets")
        assert daemon.events("stage_curve_enabled")
        intruders = {
            "plain": dict(),
            "unknown key": dict(secret=intruder_secret, server_key=public),
        }
        pulls = [_socket(ctx, zmq.PULL, windows_ep, **kw) for kw in intruders.values()]
        pushes = [_socket(ctx, zmq.PUSH, spectra_ep, **kw) for kw in intruders.values()]
        socks += pulls + pushes
        before = _heartbeat(sub)["windows_out"]
        for push in pushes:
            _push_for(push, 1.5)
        for pull in pulls:  # windows kept flowing meanwhile; none came to an intruder
            assert not pull.poll(500), "an unauthenticated peer received a window"
        wait_for(lambda: _heartbeat(sub)["windows_out"] >= before + 10, 60, "windows still flowing")
        time.sleep(1.5)  # a heartbeat or two after the intruders' sends
        assert _heartbeat(sub)["messages_rejected"]["inference"] == 0
        assert daemon.events("curve_client_rejected")  # the unknown key, logged by the stage's authenticator
        # the same garbage from a peer holding the stage key pair does reach the stage (and is counted)
        friend = _socket(ctx, zmq.PUSH, spectra_ep, secret=secret, server_key=public)
        socks.append(friend)
        assert wait_for(lambda: _push_for(friend, 0.2) > 0, 10, "the key holder's handshake")
        wait_for(lambda: _heartbeat(sub)["messages_rejected"]["inference"] > 0, 10, "the key holder's garbage counted")
        assert not daemon.events("stage_died"), daemon.stderr()[-3000:]
    finally:
        code = daemon.stop()
        sub.close()
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
        server.stop()
    assert code == 0, daemon.stderr()[-3000:]
