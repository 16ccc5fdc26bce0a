"""Small socket helpers shared by the tools and the tests."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` that was free a moment ago: bound to port 0 by the kernel, then released.

    Another process may take the port before the caller binds it. Use it only where a port must be named before
    its listener exists (a child process's config, an endpoint handed to a subprocess); a listener of our own
    binds port 0 and reads its port back instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
