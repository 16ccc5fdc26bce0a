"""`quakemon serve`: a small SeedLink server (protocol 4.0 and 3.1) that streams archived MiniSEED (tests, demos).

The archive is re-packed into 512-byte MiniSEED 2 records (`quakemon.tools.serve_records`), sorted by start
time, and each record gets a fixed sequence number: its place in the archive (plus an optional `first_seq`,
modulo 2**24). `DATA <seq>` therefore resumes exactly, also across server restarts. Plain `DATA` streams the
archive from its start, paced from the moment the transfer starts (`speed` times real time; 0 or inf = as fast
as the client reads). With `loop` the archive repeats and each pass is shifted forward by the archive's span
(record start times are rewritten in the header), so time never runs backwards and sequence numbers keep
increasing. `retime_now` shifts the whole archive so that it starts when the server starts (fixed for the
server's life, so a sequence number always means the same record).

Commands: HELLO (offers 4.0 and 3.1; `max_protocol="3.1"`: 3.1 only), SLPROTO, USERAGENT, STATION, SELECT, DATA,
FETCH, TIME, END, ENDFETCH, INFO ID|CAPABILITIES|STATIONS|STREAMS, BYE; in 4.0 (`quakemon.ingest.slproto`) NET_STA
station ids, LOC_B_S_SS selectors, decimal sequence numbers, JSON INFO. ``DATA <seq> <time>`` resumes after
seq-1 when that record started at `time` (whole seconds), else from `time`; ``TIME <begin>`` without an end is
real time (and loops with `loop`). During a transfer only INFO and BYE are answered.

Limits (docs/seedlink.md): a client idle for `command_timeout` s before its transfer starts (or after a
FETCH/TIME window ended) is closed; at most `max_clients` connections and `max_per_address` per address, a new
one taking the place of the longest-idle command-phase connection (refused when all are streaming).

`Faults` injects network failures for tests: cut a connection after N packets (optionally mid-record, FIN or
RST), stall it (socket open, no data), duplicate packets, or mutate the bytes of records on the wire.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import math
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from quakemon.base.errors import QuakemonError
from quakemon.base.signals import stop_on_signals
from quakemon.ingest.selectors import (
    SelectPattern,
    is_network_pattern,
    is_station_pattern,
    seedlink_wildcard,
)
from quakemon.ingest.seqstate import SEQ_MASK
from quakemon.ingest.slproto import V3, V4, frame_v4, offered_versions
from quakemon.tools.serve_records import (
    TICKS,
    Faults,
    Record,
    Subscription,
    frame_info,
    info_json,
    info_xml,
    load_records,
    retime_record,
)

__all__ = ["Faults", "SeedLinkServer", "main", "serve"]

log = structlog.get_logger(__name__)

HELLO_V4 = "SeedLink v4.0 (quakemon serve) :: SLPROTO:4.0 SLPROTO:3.1 NSWILDCARD"
HELLO_V3 = "SeedLink v3.1 (quakemon serve) :: SLPROTO:3.1 NSWILDCARD"
_POLL_S = 0.2


class _Closed(Exception):
    """The client went away, sent BYE, or the server is stopping."""


class SeedLinkServer:
    """SeedLink v3 server over a fixed list of 512-byte records; one bounded thread per client.

    Usage: `srv = SeedLinkServer(load_records(paths), port=0, speed=0).start(); srv.port; srv.stop()`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        loop: bool = False,
        retime_now: bool = False,
        first_seq: int = 0,
        max_clients: int = 64,
        faults: Faults | None = None,
        organization: str = "quakemon archive replay",
        max_protocol: str = V4,
        command_timeout: float = 30.0,
        max_per_address: int = 16,
    ) -> None:
        if not records:
            raise QuakemonError("serve: no records to serve")
        self.records = list(records)
        self.host, self._req_port = host, port
        self.speed = 0.0 if speed is None or math.isinf(speed) or speed <= 0 else float(speed)
        self.loop = loop
        self.first_seq = first_seq & SEQ_MASK
        self.max_clients = max_clients
        if max_protocol not in (V3, V4):
            raise QuakemonError(f"serve: protocol must be {V3} or {V4}, got {max_protocol!r}")
        self.hello = HELLO_V4 if max_protocol == V4 else HELLO_V3
        self.protocols = offered_versions(self.hello)
        self.command_timeout = command_timeout
        self.max_per_address = max_per_address
        self.faults = faults or Faults()
        self.organization = organization
        t_first = min(r.start for r in self.records)
        self.span_ticks = round((max(r.end for r in self.records) - t_first) * TICKS)
        self.retime_ticks = round((time.time() - t_first) * TICKS) if retime_now else 0
        self.started = dt.datetime.now(dt.UTC)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._sessions: dict[threading.Thread, _Session] = {}
        self.evicted = 0
        self._faulted = 0
        self._info_cache: dict[str, bytes] = {}
        self.connections = 0
        self.packets_sent = 0
        self.history: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)  # (peer, command)

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> SeedLinkServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._req_port))
        except OSError as exc:
            sock.close()
            raise QuakemonError(f"serve: cannot listen on {self.host}:{self._req_port}: {exc}") from exc
        sock.listen(128)
        sock.settimeout(_POLL_S)
        self._sock = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, name="seedlink-accept", daemon=True)
        self._accept_thread.start()
        log.info("seedlink_server_listening", host=self.host, port=self.port, records=len(self.records),
                 speed=self.speed, loop=self.loop)
        return self

    @property
    def port(self) -> int:
        assert self._sock is not None, "server not started"
        return self._sock.getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 1.0) -> None:
        """Close the listener and every client; returns within about `timeout` seconds. Idempotent."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            sessions = list(self._sessions.items())
        for _, s in sessions:
            s.kick()
        for t, _ in sessions:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> SeedLinkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def seq_of(self, pos: int) -> int:
        """Sequence number of absolute archive position `pos` (pass * len(records) + index)."""
        return (self.first_seq + pos) & SEQ_MASK

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            peer = f"{addr[0]}:{addr[1]}"
            if not self._admit(addr[0]):
                log.warning("seedlink_server_full", peer=peer, max_clients=self.max_clients,
                            max_per_address=self.max_per_address)
                conn.close()
                continue
            self.connections += 1
            sess = _Session(self, conn, peer, addr[0])
            t = threading.Thread(target=self._session, args=(sess,), name=f"seedlink-{addr[1]}", daemon=True)
            with self._lock:
                self._sessions[t] = sess
            t.start()
        if self._sock is not None:
            self._sock.close()

    def _admit(self, host: str) -> bool:
        """Room for one more connection from `host`, making it by closing the longest-idle command-phase one."""
        with self._lock:
            live = [s for s in self._sessions.values() if not s.kicked]
        for pool, limit in (([s for s in live if s.host == host], self.max_per_address), (live, self.max_clients)):
            if len(pool) < limit:
                continue
            idle = [s for s in pool if not s.streaming]
            if not idle:
                return False
            victim = min(idle, key=lambda s: s.last_command)
            log.info("seedlink_client_evicted", peer=victim.peer, idle_s=round(time.monotonic() - victim.last_command,
                                                                                 1))
            victim.kick()
            self.evicted += 1
            live.remove(victim)
        return True

    def _session(self, sess: _Session) -> None:
        conn, peer = sess.conn, sess.peer
        log.info("seedlink_client_connected", peer=peer)
        try:
            sess.run()
        except _Closed:
            pass
        except OSError as exc:
            log.debug("seedlink_client_error", peer=peer, error=str(exc))
        except Exception:
            log.exception("seedlink_session_failed", peer=peer)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._sessions.pop(threading.current_thread(), None)
            log.info("seedlink_client_closed", peer=peer)

    def _take_fault(self) -> bool:
        f = self.faults
        if f.cut_after_packets is None and f.stall_after_packets is None:
            return False
        with self._lock:
            if self._faulted >= f.connections:
                return False
            self._faulted += 1
            return True

    # INFO ------------------------------------------------------------------------------------------------------
    def info_packets(self, level: str, v4: bool = False) -> bytes:
        """The answer to INFO `level`: 3.1 XML in SLINFO-framed 512-byte records, 4.0 one JSON packet."""
        level = level.upper()
        key = f"{level}/{int(v4)}"
        if key not in self._info_cache:
            if v4:
                body = info_json(self.records, level, self.organization, self.started)
                self._info_cache[key] = frame_v4(0, body, "", "J", "I")
            else:
                self._info_cache[key] = frame_info(info_xml(self.records, level, self.organization, self.started,
                                                            self.seq_of, self.retime_ticks / TICKS))
        return self._info_cache[key]


class _Session:
    """One client connection: command phase, then the transfer (paced DATA, or FETCH/TIME then END)."""

    def __init__(self, server: SeedLinkServer, conn: socket.socket, peer: str, host: str = "") -> None:
        self.srv, self.conn, self.peer, self.host = server, conn, peer, host
        self.buf = b""
        self.uni = Subscription("*", "*", [])
        self.subs: list[Subscription] = []
        self.cur: Subscription | None = None
        self.sent = 0
        self.v4 = False
        self.streaming = False
        self.kicked = False
        self.last_command = time.monotonic()
        conn.setblocking(False)

    def kick(self) -> None:
        """Close the connection from another thread (server stop, eviction); the connection's thread then ends."""
        self.kicked = True
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    # I/O ---------------------------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.srv._stop.is_set():
                raise _Closed
            _, w, _ = select.select([], [self.conn], [], _POLL_S)
            if not w:
                continue
            try:
                n = self.conn.send(view)
            except (BlockingIOError, InterruptedError):
                continue
            view = view[n:]

    def _read_lines(self, timeout: float) -> list[str]:
        """Wait up to `timeout` for input; return complete command lines (may be empty). _Closed on EOF."""
        r, _, _ = select.select([self.conn], [], [], timeout)
        if r:
            try:
                chunk = self.conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                chunk = None
            if chunk == b"":
                raise _Closed
            if chunk:
                self.buf += chunk
                if len(self.buf) > 65536:
                    raise _Closed
        lines = re.split(rb"[\r\n]", self.buf)
        self.buf = lines.pop()
        return [ln.decode("ascii", "replace").strip() for ln in lines if ln.strip()]

    # command phase -----------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.srv._stop.is_set() and not self.kicked:
            if time.monotonic() - self.last_command > self.srv.command_timeout:
                log.info("seedlink_client_timeout", peer=self.peer, command_timeout_s=self.srv.command_timeout)
                raise _Closed
            for line in self._read_lines(_POLL_S):
                self.last_command = time.monotonic()
                if self._command(line):
                    self.streaming = True
                    self.streaming = self._transfer()  # after a FETCH/TIME window: idle (timeout, evictable)
                    self.last_command = time.monotonic()
                    self._idle()
        raise _Closed

    def _command(self, line: str) -> bool:
        """Handle one command; True when it starts a transfer."""
        words = line.split()
        verb, args = words[0].upper(), words[1:]
        log.debug("seedlink_command", peer=self.peer, command=line)
        self.srv.history.append((self.peer, line))
        ok, err = b"OK\r\n", b"ERROR\r\n"
        if verb == "HELLO":
            self._send(f"{self.srv.hello}\r\n{self.srv.organization}\r\n".encode())
        elif verb == "BYE":
            raise _Closed
        elif verb == "INFO":
            self._send(self.srv.info_packets(args[0] if args else "ID", self.v4))
        elif verb == "SLPROTO":
            version = args[0] if args else ""
            if version not in self.srv.protocols:
                self._send(b"ERROR UNSUPPORTED unsupported protocol version\r\n")
                return False
            self.v4 = version == V4
            self._send(ok)
        elif verb == "USERAGENT":
            self._send(ok)
        elif verb == "STATION":
            if self.v4 and len(args) == 1 and "_" in args[0]:
                net, _, sta = args[0].upper().partition("_")
                args = [sta, net]
            if not args or not is_station_pattern(args[0]):
                self._send(err)
                return False
            sta, net = args[0].upper(), (args[1].upper() if len(args) > 1 else "*")
            if not is_network_pattern(net) or not any(
                    seedlink_wildcard(sta, r.sta) and seedlink_wildcard(net, r.net) for r in self.srv.records):
                self.cur = None
                self._send(err)
                return False
            self.cur = Subscription(net, sta, [])
            self._send(ok)
        elif verb == "SELECT":
            sub = self.cur or self.uni
            if self.v4 and len(args) == 1 and "_" in args[0]:
                sub.v4_selectors = [*(sub.v4_selectors or []), args[0].upper()]
                self._send(ok)
                return False
            sel = SelectPattern.parse(args[0]) if len(args) == 1 else None
            if sel is None:
                self._send(err)
                return False
            sub.selectors.append(sel)
            self._send(ok)
        elif verb in ("DATA", "FETCH", "TIME"):
            sub = self.cur or self.uni
            try:
                sub.set_start(verb, args, self.v4, self.srv.first_seq, self._record_started)
            except ValueError as exc:
                log.info("seedlink_bad_command", peer=self.peer, command=line, error=str(exc))
                self._send(err)
                return False
            if self.cur is None:  # uni-station mode: the action command starts the transfer
                self.subs = [sub]
                return True
            self.subs.append(sub)
            self.cur = None
            self._send(ok)
        elif verb in ("END", "ENDFETCH"):
            if not self.subs:
                self._send(err)
                return False
            if verb == "ENDFETCH":
                for sub in self.subs:
                    sub.mode = "fetch" if sub.mode == "data" else sub.mode
            return True
        else:
            self._send(err)
        return False

    def _record_started(self, pos: int, t: float) -> bool:
        """True when archive position `pos` (any pass of a loop) holds a record that started in second `t`."""
        n = len(self.srv.records)
        if pos < 0 or (pos >= n and not self.srv.loop):
            return False
        shift = self.srv.retime_ticks + (pos // n) * self.srv.span_ticks
        return math.floor(self.srv.records[pos % n].start + shift / TICKS) == math.floor(t)

    # transfer ----------------------------------------------------------------------------------------------
    def _transfer(self) -> bool:
        """Send what the subscriptions ask for; True while real time (DATA, open TIME) goes on, False after END."""
        srv, n = self.srv, len(self.srv.records)
        self.__dict__.pop("_wants", None)  # the subscriptions may have changed since the last transfer
        realtime = any(s.mode == "data" or (s.mode == "time" and math.isinf(s.t1)) for s in self.subs)
        faulted = realtime and srv._take_fault()
        starts = [s.pos for s in self.subs if s.mode in ("data", "fetch")] + ([0] if any(
            s.mode == "time" for s in self.subs) else [])
        pos = min(starts)
        origin: tuple[float, float] | None = None
        batch: list[bytes] = []
        while not srv._stop.is_set():
            if pos >= n and not (srv.loop and realtime):
                break
            rec = srv.records[pos % n]
            shift = srv.retime_ticks + (pos // n) * srv.span_ticks
            if self._wanted(rec, pos, shift, n):
                if realtime and srv.speed:
                    t = rec.start + shift / TICKS
                    if origin is None:
                        origin = (time.monotonic(), t)
                    due = origin[0] + (t - origin[1]) / srv.speed
                    if batch:
                        self._send(b"".join(batch))
                        batch.clear()
                    self._wait(due)
                seq = srv.seq_of(pos)
                raw = retime_record(rec.raw, shift, rec.little_endian)
                if srv.faults.mutate is not None:
                    raw = srv.faults.mutate(seq, raw)
                if self.v4:
                    packet = frame_v4(srv.first_seq + pos, raw, f"{rec.net}_{rec.sta}")
                else:
                    packet = b"SL%06X" % seq + raw
                if faulted and self._fault(packet, batch):
                    return True
                batch.append(packet)
                self.sent += 1
                srv.packets_sent += 1
                dup = srv.faults.duplicate_every
                if dup and self.sent % dup == 0:
                    batch.append(packet)
                if len(batch) >= 64:
                    self._send(b"".join(batch))
                    batch.clear()
                    self._serve_input(0.0)
            pos += 1
        if batch:
            self._send(b"".join(batch))
        if not realtime:
            self._send(b"END")
        return realtime

    def _wanted(self, rec: Record, pos: int, shift: int, n: int) -> bool:
        key = (rec.net, rec.sta, rec.loc, rec.cha)
        cache = self.__dict__.setdefault("_wants", {})  # the subscriptions are fixed during a transfer
        subs = cache.get(key)
        if subs is None:
            subs = cache[key] = [s for s in self.subs if s.wants(rec)]
        return any(s.takes(rec, pos, shift, n) for s in subs)

    def _fault(self, packet: bytes, batch: list[bytes]) -> bool:
        """Apply a cut or stall at this packet; True when the transfer must end."""
        f = self.srv.faults
        if f.cut_after_packets is not None and self.sent >= f.cut_after_packets:
            self._send(b"".join(batch) + packet[:f.cut_bytes])
            log.info("seedlink_fault_cut", peer=self.peer, packets=self.sent, extra_bytes=f.cut_bytes, rst=f.reset)
            if f.reset:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.conn.shutdown(socket.SHUT_RDWR)
            raise _Closed
        if f.stall_after_packets is not None and self.sent >= f.stall_after_packets:
            self._send(b"".join(batch))
            log.info("seedlink_fault_stall", peer=self.peer, packets=self.sent)
            while not self.srv._stop.is_set():  # half-open: read and discard until the client leaves
                r, _, _ = select.select([self.conn], [], [], _POLL_S)
                if r and self.conn.recv(4096) == b"":
                    raise _Closed
            raise _Closed
        return False

    def _wait(self, due: float) -> None:
        while not self.srv._stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return
            self._serve_input(min(left, _POLL_S))
        raise _Closed

    def _serve_input(self, timeout: float) -> None:
        """During a transfer only INFO (answered) and BYE (close) are meaningful; the rest is ignored."""
        for line in self._read_lines(timeout):
            verb = line.split()[0].upper()
            if verb == "BYE":
                raise _Closed
            if verb == "INFO":
                words = line.split()
                self._send(self.srv.info_packets(words[1] if len(words) > 1 else "ID", self.v4))

    def _idle(self) -> None:
        while not self.srv._stop.is_set():
            if not self.streaming and time.monotonic() - self.last_command > self.srv.command_timeout:
                raise _Closed
            self._serve_input(_POLL_S)
        raise _Closed


def serve(
    paths: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 18000,
    speed: float = 1.0,
    loop: bool = False,
    retime: bool = False,
    first_seq: int = 0,
    port_file: str | Path | None = None,
    stop: threading.Event | None = None,
    **server_kw: object,
) -> int:
    """Serve the archive until `stop` is set or SIGINT/SIGTERM arrives; returns exit code 0.

    The signal handlers (`stop_on_signals`, main thread only) are in place while the server runs and the previous
    ones come back afterwards. `port_file` receives the bound port (atomically) once the server listens.
    `server_kw`: further `SeedLinkServer` arguments (max_protocol, command_timeout, max_clients, max_per_address).
    """
    records = load_records(paths)
    with stop_on_signals(stop or threading.Event()) as stopping:
        srv = SeedLinkServer(records, host=host, port=port, speed=speed, loop=loop, retime_now=retime,
                             first_seq=first_seq, **server_kw).start()  # type: ignore[arg-type]
        try:
            if port_file is not None:
                tmp = Path(f"{port_file}.tmp")
                tmp.write_text(f"{srv.port}\n")
                tmp.replace(port_file)
            while not stopping.wait(0.5):
                pass
        finally:
            srv.stop()
            log.info("seedlink_server_stopped", connections=srv.connections, packets=srv.packets_sent)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m quakemon.tools.serve PATH... [--host H] [--port N] [--speed X] [--loop] [--retime-now]`."""
    from quakemon.base.logs import configure_logging

    p = argparse.ArgumentParser(prog="quakemon serve",
                                description="SeedLink 4.0/3.1 server streaming archived MiniSEED")
    p.add_argument("paths", nargs="+", help="MiniSEED files or directories")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000, help="TCP port (0 = any free port; see --port-file)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time; 0 or inf = as fast as the client reads")
    p.add_argument("--loop", action="store_true", help="repeat the archive, each pass shifted by its span")
    p.add_argument("--retime-now", action="store_true", help="shift the archive so that it starts now")
    p.add_argument("--first-seq", type=lambda s: int(s, 16), default=0, help="sequence number of record 0 (hex)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--protocol", choices=[V4, V3], default=V4, help="highest protocol offered (3.1: 3.1 only)")
    p.add_argument("--command-timeout", type=float, default=30.0,
                   help="close a client that sends no command for this many seconds before its transfer starts")
    p.add_argument("--max-clients", type=int, default=64, help="connections in all")
    p.add_argument("--max-per-address", type=int, default=16, help="connections per client address")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return serve(args.paths, args.host, args.port, args.speed, args.loop, args.retime_now, args.first_seq,
                     args.port_file, max_protocol=args.protocol, command_timeout=args.command_timeout,
                     max_clients=args.max_clients, max_per_address=args.max_per_address)
    except QuakemonError as exc:
        log.error("serve_failed", error=str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
