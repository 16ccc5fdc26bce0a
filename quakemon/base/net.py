"""Small socket helpers shared by the tools and the tests."""

from __future__ import annotations

import random
import socket

LOOPBACK = "127.0.0.1"
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
# how far below the ephemeral range free_port looks, and how many tries it gives that span
_SPAN, _TRIES = 10_000, 64


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that was free a moment ago, and the port after it too, outside the kernel's
    ephemeral range where there is room below it.

    Use it only where a port must be named before its listener exists (a child process's config, an endpoint
    handed to a subprocess); a listener of our own binds port 0 and reads its port back instead. Until the
    listener binds, another process may take the port. A port the kernel hands out for port 0 is an ephemeral
    one, of the kind every outgoing connection gets as its local port: any connection may take it in the
    meantime, a client already retrying a connection to it included (TCP can connect a socket to itself), and
    the listener then fails to bind. Below the ephemeral range only another listener can take it. The port
    after it is checked too, as the daemon's catch-up endpoint defaults to the publish port + 1.
    """
    low = _ephemeral_low()
    if low - _SPAN >= 1024:
        pick = random.SystemRandom()
        for _ in range(_TRIES):
            port = pick.randrange(low - _SPAN, low - 1)
            if _bindable(host, port) and _bindable(host, port + 1):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux); 0 where it cannot be read."""
    try:
        with open(EPHEMERAL_RANGE) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
