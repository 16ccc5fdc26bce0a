"""quakemon.base.net.free_port: a port (and the next) free now, outside the ephemeral range where there is room."""

from __future__ import annotations

import socket

from quakemon.base import net


def test_free_port_is_below_the_ephemeral_range_and_bindable_with_its_neighbour():
    low = net._ephemeral_low()
    for _ in range(20):
        port = net.free_port()
        if low - 10_000 >= 1024:  # Linux's default range starts at 32768: room below it
            assert low - 10_000 <= port < low - 1, (port, low)
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind((net.LOOPBACK, p))


def test_free_port_skips_a_port_a_listener_holds(monkeypatch):
    taken = socket.socket()
    taken.bind((net.LOOPBACK, 0))
    taken.listen()
    held = taken.getsockname()[1]
    picks = iter([held - 1, held, held + 5])  # held - 1: its next port is held; held: held; held + 5: free
    monkeypatch.setattr(net, "_ephemeral_low", lambda: 60_000)
    monkeypatch.setattr(net.random.SystemRandom, "randrange", lambda self, a, b: next(picks))
    try:
        assert net.free_port() == held + 5
    finally:
        taken.close()


def test_free_port_falls_back_to_the_kernel_without_room_below_the_range(monkeypatch):
    monkeypatch.setattr(net, "_ephemeral_low", lambda: 2000)
    port = net.free_port()
    with socket.socket() as s:
        s.bind((net.LOOPBACK, port))
