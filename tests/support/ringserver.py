"""EarthScope's ringserver as the independent SeedLink server of the tests.

`ringserver_binary(tmp_path)` finds it (environment variable QUAKEMON_RINGSERVER, else `ringserver` on PATH) and
copies it into the test's folder with the run bit set; without one the test fails when CI is set, else it is
skipped. `RingServer` runs it on 127.0.0.1 only (an `AcceptIP`/`ListenPort` config on a free port) with a ring in
a temporary folder, fed by writing miniSEED files into its `MSeedScan` folder; `stop`, `kill` (SIGKILL),
`start` and `wipe_ring` make crashes and renumbered rings; leaving the `with` block always stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

ENV = "QUAKEMON_RINGSERVER"


def ringserver_binary(tmp_path: Path) -> Path:
    """A runnable copy of the ringserver binary in `tmp_path` (fail under CI, else skip, when there is none)."""
    found = os.environ.get(ENV) or shutil.which("ringserver")
    if not found or not Path(found).is_file():
        msg = (f"ringserver not found: set {ENV} to the ringserver binary (EarthScope ringserver 4.x) or put "
               f"`ringserver` on PATH ({ENV}={os.environ.get(ENV)!r})")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    copy = tmp_path / "ringserver-bin"
    if not copy.exists():
        shutil.copyfile(found, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    return copy


class RingServer:
    """One ringserver process on 127.0.0.1:`port` with its ring in `workdir`/ring, fed from `workdir`/scan."""

    def __init__(self, binary: Path, workdir: Path, port: int, max_packet: int = 4096) -> None:
        self.binary, self.workdir, self.port, self.max_packet = binary, workdir, port, max_packet
        self.ring, self.scan = workdir / "ring", workdir / "scan"
        self.ring.mkdir(parents=True, exist_ok=True)
        self.scan.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._fed = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self, port: int) -> Path:
        conf = self.workdir / f"ring-{port}.conf"
        conf.write_text(
            # relative to the server's working directory (workdir): ringserver refuses config lines over 200
            # characters, which absolute paths under a deep temporary folder exceed
            f"RingDirectory {self.ring.name}\nRingSize 16M\nMaxPacketSize {self.max_packet}\n"
            f"ListenPort {port} SeedLink DataLink IPv4\nAcceptIP 127.0.0.1\nVerbosity 1\n"
            f"MSeedScan {self.scan.name}/ StateFile={self.ring.name}/scan.state Match=.*\\.mseed$\n")
        return conf

    def start(self, port: int | None = None, timeout: float = 15.0) -> RingServer:
        """Start it (on `port`, default its own) and wait until it accepts connections."""
        port = port or self.port
        self.ring.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "ringserver.log", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen([str(self.binary), str(self._config(port))], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringserver exited with {self.proc.returncode}; see {self.workdir}/ringserver.log")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"ringserver did not listen on {port} within {timeout} s") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown keeps the ring), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def wipe_ring(self) -> None:
        """Delete the ring (and the scan state in it): the next start numbers packets anew."""
        shutil.rmtree(self.ring, ignore_errors=True)

    def feed(self, data: bytes, name: str | None = None) -> Path:
        """Write miniSEED bytes as a new file in the scan folder (renamed into place: read whole)."""
        self._fed += 1
        path = self.scan / (name or f"feed{self._fed:04d}.mseed")
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def count_packets(self, at_least: int, timeout: float = 10.0, port: int | None = None) -> int:
        """How many data packets the ring holds (stops counting at `at_least` or after `timeout`).

        Counted by asking for everything from 1970 on (3.1 ``TIME``); ringserver 4.5.3 positions by time just
        after the oldest packet of its ring, so that one is not counted when it was there before the request.
        """
        from quakemon.ingest.slproto import Packet, split_packets

        deadline = time.monotonic() + timeout
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=2) as s:
            s.sendall(b"TIME 1970,01,01,00,00,00\r\n")
            buf, n = b"", 0
            s.settimeout(0.2)
            while n < at_least and time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                items, used = split_packets(buf + chunk, False)
                buf = (buf + chunk)[used:]
                n += sum(1 for it in items if isinstance(it, Packet) and it.is_data)
        return n

    def __enter__(self) -> RingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.kill()
