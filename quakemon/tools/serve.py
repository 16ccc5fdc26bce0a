"""`quakemon serve`: a small SeedLink v3 server that streams archived MiniSEED (tests, demos, replays).

The archive is re-packed into 512-byte MiniSEED 2 records (the only size ObsPy's SeedLink client reads),
sorted by start time, and each record gets a fixed sequence number: its place in the archive (plus an
optional `first_seq`, modulo 2**24). `DATA <seq>` therefore resumes exactly, also across server restarts.
Plain `DATA` streams the archive from its start, paced from the moment the transfer starts (`speed` times
real time; 0 or inf = as fast as the client reads). With `loop` the archive repeats and each pass is
shifted forward by the archive's span (record start times are rewritten in the header), so time never
runs backwards and sequence numbers keep increasing. `retime_now` shifts the whole archive so that it
starts when the server starts (fixed for the server's life, so a sequence number always means the same
record). Protocol notes: /work/shared/SEEDLINK.md; supported: HELLO, STATION, SELECT, DATA, FETCH, TIME,
END, INFO ID|CAPABILITIES|STATIONS|STREAMS, BYE.

`Faults` injects network failures for tests: cut a connection after N packets (optionally mid-record,
FIN or RST), stall it (socket open, no data), duplicate packets, or mutate the bytes of records on the wire.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import functools
import io
import math
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from quakemon.base.errors import QuakemonError
from quakemon.ingest.seqstate import SEQ_MASK

log = structlog.get_logger(__name__)

RECLEN = 512
TICKS = 10_000  # BTIME resolution: 1e-4 s
HELLO_ID = "SeedLink v3.1 (quakemon serve) :: SLPROTO:3.1 NSWILDCARD"
_POLL_S = 0.2
_EPOCH = dt.datetime(1970, 1, 1)
_STATION_RE = re.compile(r"^[A-Z0-9?*]{1,5}$")
_NETWORK_RE = re.compile(r"^[A-Z0-9?*]{1,2}$")
_SELECT_RE = re.compile(r"^(!?)([A-Z0-9?\-]{2})?([A-Z0-9?]{3})(\.[A-Z?])?$")


@dataclass(frozen=True)
class Record:
    """One 512-byte MiniSEED 2 record of the archive with the header fields the server needs."""

    raw: bytes
    net: str
    sta: str
    loc: str
    cha: str
    start: float  # POSIX seconds (BTIME + unapplied time correction)
    end: float  # start + numsamples / rate
    little_endian: bool

    @property
    def seed_id(self) -> str:
        return f"{self.net}.{self.sta}.{self.loc}.{self.cha}"


def _rate(factor: int, mult: int) -> float:
    if factor == 0 or mult == 0:
        return 0.0
    if factor > 0:
        return factor * mult if mult > 0 else -factor / mult
    return -mult / factor if mult > 0 else 1.0 / (factor * mult)


def _btime_ticks(raw: bytes, little: bool) -> int:
    year, doy, hour, minute, sec, _, fract = struct.unpack_from("<HHBBBBH" if little else ">HHBBBBH", raw, 20)
    days = (dt.datetime(year, 1, 1) - _EPOCH).days + doy - 1
    return ((days * 24 + hour) * 60 + minute) * 60 * TICKS + sec * TICKS + fract


def parse_record(raw: bytes) -> Record:
    """Read the fixed header of a 512-byte MiniSEED 2 record (ValueError if it is not plausible)."""
    if len(raw) != RECLEN:
        raise ValueError(f"record is {len(raw)} bytes, expected {RECLEN}")
    little = not 1900 <= struct.unpack_from(">H", raw, 20)[0] <= 2100
    fmt = "<" if little else ">"
    year, doy = struct.unpack_from(fmt + "HH", raw, 20)
    if not (1900 <= year <= 2100 and 1 <= doy <= 366):
        raise ValueError(f"implausible record start year={year} day={doy}")
    nsamp, factor, mult = struct.unpack_from(fmt + "Hhh", raw, 30)
    flags = raw[36]
    corr = struct.unpack_from(fmt + "i", raw, 40)[0]
    ticks = _btime_ticks(raw, little) + (0 if flags & 0x02 else corr)
    rate = _rate(factor, mult)
    start = ticks / TICKS
    end = start + (nsamp / rate if rate > 0 else 0.0)

    def text(a: int, b: int) -> str:
        return raw[a:b].decode("ascii", "replace").strip()

    return Record(raw, text(18, 20), text(8, 13), text(13, 15), text(15, 18), start, end, little)


def retime_record(raw: bytes, shift_ticks: int, little_endian: bool) -> bytes:
    """Shift the BTIME start of a record by `shift_ticks` x 1e-4 s (everything else unchanged)."""
    if shift_ticks == 0:
        return raw
    ticks = _btime_ticks(raw, little_endian) + shift_ticks
    t = _EPOCH + dt.timedelta(microseconds=(ticks // TICKS) * 1_000_000)
    doy = t.timetuple().tm_yday
    btime = struct.pack("<HHBBBBH" if little_endian else ">HHBBBBH", t.year, doy, t.hour, t.minute, t.second, 0,
                        ticks % TICKS)
    return raw[:20] + btime + raw[30:]


def pack_records(stream) -> list[bytes]:
    """Re-pack an ObsPy Stream into 512-byte MiniSEED 2 records (one write per trace, split)."""
    out: list[bytes] = []
    for tr in stream:
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=RECLEN)
        data = buf.getvalue()
        out.extend(data[i:i + RECLEN] for i in range(0, len(data), RECLEN))
    return out


def load_records(paths: Sequence[str | Path]) -> list[Record]:
    """Read MiniSEED (or anything ObsPy reads) from files/directories; 512-byte records sorted by start time."""
    import obspy

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise QuakemonError(f"serve: archive path {p} does not exist (expected a MiniSEED file or directory)")
    records: list[Record] = []
    for f in files:
        try:
            st = obspy.read(str(f))
        except Exception as exc:  # ObsPy raises many types for unreadable files
            raise QuakemonError(f"serve: cannot read {f} as waveform data: {exc}") from exc
        records.extend(parse_record(r) for r in pack_records(st))
    if not records:
        raise QuakemonError(f"serve: no waveform records found in {', '.join(map(str, paths))}")
    return sort_records(records)


def sort_records(records: Sequence[Record]) -> list[Record]:
    """Archive order: start time, then stream id (stable)."""
    return sorted(records, key=lambda r: (r.start, r.seed_id))


@functools.lru_cache(maxsize=4096)
def _wild_rx(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def _wild(pattern: str, value: str) -> bool:
    """SeedLink wildcard match: '?' any one character, '*' any run."""
    return _wild_rx(pattern).fullmatch(value) is not None


@dataclass
class Selector:
    """One SELECT pattern `[!][LL]CCC[.T]`: '?' wildcard, '-' for a blank location character."""

    negate: bool
    loc: str | None
    cha: str
    dtype: str | None

    @classmethod
    def parse(cls, text: str) -> Selector | None:
        m = _SELECT_RE.match(text.upper())
        if not m:
            return None
        loc = m.group(2).replace("-", " ") if m.group(2) else None
        return cls(bool(m.group(1)), loc, m.group(3), m.group(4)[1:] if m.group(4) else None)

    def matches(self, rec: Record) -> bool:
        if self.dtype not in (None, "D", "?"):
            return False
        if self.loc is not None and not _wild(self.loc, rec.loc.ljust(2)):
            return False
        return _wild(self.cha, rec.cha)


def selected(selectors: Sequence[Selector], rec: Record) -> bool:
    """Selected when it matches any positive selector (or there is none) and no negative one."""
    pos = [s for s in selectors if not s.negate]
    if pos and not any(s.matches(rec) for s in pos):
        return False
    return not any(s.matches(rec) for s in selectors if s.negate)


@dataclass
class Faults:
    """Failure injection for tests; cut/stall apply to the first `connections` data transfers."""

    cut_after_packets: int | None = None  # close after this many data packets ...
    cut_bytes: int = 0  # ... having sent this many bytes of the next packet (0 = at a packet boundary)
    reset: bool = False  # close with RST (SO_LINGER 0) instead of FIN
    stall_after_packets: int | None = None  # stop sending, keep the socket open (half-open peer)
    duplicate_every: int | None = None  # send every n-th packet twice (all connections)
    mutate: Callable[[int, bytes], bytes] | None = None  # (seq, record) -> bytes to send (all connections)
    connections: int = 1


@dataclass
class _Sub:
    """What one STATION (or the uni-station default) asked for."""

    net: str
    sta: str
    selectors: list[Selector]
    mode: str = ""  # "data", "fetch", "time"
    pos: int = 0  # first archive position (absolute, for data/fetch)
    t0: float = -math.inf
    t1: float = math.inf

    def wants(self, rec: Record) -> bool:
        return _wild(self.sta, rec.sta) and _wild(self.net, rec.net) and selected(self.selectors, rec)


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
        max_clients: int = 32,
        faults: Faults | None = None,
        organization: str = "quakemon archive replay",
    ) -> None:
        if not records:
            raise QuakemonError("serve: no records to serve")
        self.records = list(records)
        self.host, self._req_port = host, port
        self.speed = 0.0 if speed is None or math.isinf(speed) or speed <= 0 else float(speed)
        self.loop = loop
        self.first_seq = first_seq & SEQ_MASK
        self.max_clients = max_clients
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
        self._sessions: dict[threading.Thread, socket.socket] = {}
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
        sock.listen(16)
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
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
            with self._lock:
                full = len(self._sessions) >= self.max_clients
            if full:
                log.warning("seedlink_server_full", peer=f"{addr[0]}:{addr[1]}", max_clients=self.max_clients)
                conn.close()
                continue
            self.connections += 1
            t = threading.Thread(target=self._session, args=(conn, addr), name=f"seedlink-{addr[1]}", daemon=True)
            with self._lock:
                self._sessions[t] = conn
            t.start()
        if self._sock is not None:
            self._sock.close()

    def _session(self, conn: socket.socket, addr: tuple) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        log.info("seedlink_client_connected", peer=peer)
        try:
            _Session(self, conn, peer).run()
        except _Closed:
            pass
        except OSError as exc:
            log.debug("seedlink_client_error", peer=peer, error=str(exc))
        except Exception:
            log.exception("seedlink_session_failed", peer=peer)
        finally:
            try:
                conn.close()
            except OSError:
                pass
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
    def info_packets(self, level: str) -> bytes:
        """The XML answer to INFO `level`, as SLINFO-framed 512-byte ASCII MiniSEED records."""
        level = level.upper()
        if level not in self._info_cache:
            self._info_cache[level] = _frame_info(self._info_xml(level))
        return self._info_cache[level]

    def _info_xml(self, level: str) -> str:
        head = (f'<?xml version="1.0"?>\n<seedlink software="quakemon serve" organization="{self.organization}"'
                f' started="{self.started:%Y/%m/%d %H:%M:%S}.0000">')
        if level == "ID":
            return head + "</seedlink>"
        if level == "CAPABILITIES":
            caps = ["dialup", "multistation", "window-extraction", "info:id", "info:capabilities",
                    "info:stations", "info:streams"]
            return head + "".join(f'<capability name="{c}"/>' for c in caps) + "</seedlink>"
        if level not in ("STATIONS", "STREAMS"):
            return head + f'<error message="INFO level {level} not supported"/></seedlink>'
        by_sta: dict[tuple[str, str], dict[tuple[str, str], list[int]]] = {}
        for i, r in enumerate(self.records):
            by_sta.setdefault((r.net, r.sta), {}).setdefault((r.loc, r.cha), []).append(i)
        parts = [head]
        for (net, sta), streams in sorted(by_sta.items()):
            idx = sorted(i for v in streams.values() for i in v)
            parts.append(f'<station name="{sta}" network="{net}" description="" begin_seq="{self.seq_of(idx[0]):06X}"'
                         f' end_seq="{self.seq_of(idx[-1] + 1):06X}" stream_check="enabled"')
            if level == "STATIONS":
                parts.append("/>")
                continue
            parts.append(">")
            for (loc, cha), ids in sorted(streams.items()):
                b = _sl_time(self.records[ids[0]].start + self.retime_ticks / TICKS)
                e = _sl_time(self.records[ids[-1]].end + self.retime_ticks / TICKS)
                parts.append(f'<stream location="{loc}" seedname="{cha}" type="D" begin_time="{b}" end_time="{e}"'
                             ' begin_recno="0" end_recno="0" gap_check="disabled" gap_treshold="0"/>')
            parts.append("</station>")
        return "".join(parts) + "</seedlink>"


def _sl_time(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return f"{d:%Y/%m/%d %H:%M:%S}.{d.microsecond // 100:04d}"


def _frame_info(xml: str) -> bytes:
    """Pack XML into ASCII MiniSEED records framed `SLINFO *` (more follow) / `SLINFO  ` (last)."""
    from obspy import Trace

    tr = Trace(np.frombuffer(xml.encode("ascii", "replace"), dtype="S1").copy())
    tr.stats.network, tr.stats.station, tr.stats.channel = "XX", "INFO", "LOG"
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", encoding="ASCII", reclen=RECLEN)
    data = buf.getvalue()
    recs = [data[i:i + RECLEN] for i in range(0, len(data), RECLEN)]
    return b"".join((b"SLINFO *" if i < len(recs) - 1 else b"SLINFO  ") + r for i, r in enumerate(recs))


def _parse_sl_time(text: str) -> float:
    parts = [p for p in text.split(",") if p != ""]
    if not 3 <= len(parts) <= 7:
        raise ValueError(f"bad SeedLink time {text!r}")
    nums = [int(p) for p in parts[:5]] + [0] * (5 - min(5, len(parts)))
    sec = float(parts[5]) if len(parts) > 5 else 0.0
    return (dt.datetime(*nums[:5], tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() + sec


class _Session:
    """One client connection: command phase, then the transfer (paced DATA, or FETCH/TIME then END)."""

    def __init__(self, server: SeedLinkServer, conn: socket.socket, peer: str) -> None:
        self.srv, self.conn, self.peer = server, conn, peer
        self.buf = b""
        self.uni = _Sub("*", "*", [])
        self.subs: list[_Sub] = []
        self.cur: _Sub | None = None
        self.sent = 0
        conn.setblocking(False)

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
        while not self.srv._stop.is_set():
            for line in self._read_lines(_POLL_S):
                if self._command(line):
                    self._transfer()
                    self._idle()
                    return
        raise _Closed

    def _command(self, line: str) -> bool:
        """Handle one command; True when it starts a transfer."""
        words = line.split()
        verb, args = words[0].upper(), words[1:]
        log.debug("seedlink_command", peer=self.peer, command=line)
        self.srv.history.append((self.peer, line))
        ok, err = b"OK\r\n", b"ERROR\r\n"
        if verb == "HELLO":
            self._send(f"{HELLO_ID}\r\n{self.srv.organization}\r\n".encode())
        elif verb == "BYE":
            raise _Closed
        elif verb == "INFO":
            self._send(self.srv.info_packets(args[0] if args else "ID"))
        elif verb == "STATION":
            if not args or not _STATION_RE.match(args[0].upper()):
                self._send(err)
                return False
            sta, net = args[0].upper(), (args[1].upper() if len(args) > 1 else "*")
            if not _NETWORK_RE.match(net) or not any(
                    _wild(sta, r.sta) and _wild(net, r.net) for r in self.srv.records):
                self.cur = None
                self._send(err)
                return False
            self.cur = _Sub(net, sta, [])
            self._send(ok)
        elif verb == "SELECT":
            sel = Selector.parse(args[0]) if len(args) == 1 else None
            if sel is None:
                self._send(err)
                return False
            (self.cur or self.uni).selectors.append(sel)
            self._send(ok)
        elif verb in ("DATA", "FETCH", "TIME"):
            sub = self.cur or self.uni
            try:
                self._set_start(sub, verb, args)
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
        elif verb == "END":
            if not self.subs:
                self._send(err)
                return False
            return True
        else:
            self._send(err)
        return False

    def _set_start(self, sub: _Sub, verb: str, args: list[str]) -> None:
        sub.mode = verb.lower()
        if verb == "TIME":
            if not args:
                raise ValueError("TIME needs a begin time")
            sub.t0 = _parse_sl_time(args[0])
            sub.t1 = _parse_sl_time(args[1]) if len(args) > 1 else math.inf
        elif args:
            seq = int(args[0], 16)
            if not 0 <= seq <= SEQ_MASK:
                raise ValueError(f"sequence number {args[0]} outside 000000..FFFFFF")
            sub.pos = (seq - self.srv.first_seq) & SEQ_MASK

    # transfer ----------------------------------------------------------------------------------------------
    def _transfer(self) -> None:
        srv, n = self.srv, len(self.srv.records)
        self.__dict__.pop("_wants", None)  # the subscriptions may have changed since the last transfer
        realtime = any(s.mode == "data" for s in self.subs)
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
                packet = b"SL%06X" % seq + raw
                if faulted and self._fault(packet, batch):
                    return
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

    def _wanted(self, rec: Record, pos: int, shift: int, n: int) -> bool:
        key = (rec.net, rec.sta, rec.loc, rec.cha)
        cache = self.__dict__.setdefault("_wants", {})  # the subscriptions are fixed during a transfer
        subs = cache.get(key)
        if subs is None:
            subs = cache[key] = [s for s in self.subs if s.wants(rec)]
        for s in subs:
            if s.mode == "data" and pos >= s.pos:
                return True
            if s.mode == "fetch" and s.pos <= pos < n:
                return True
            if s.mode == "time" and pos < n:
                t0, t1 = rec.start + shift / TICKS, rec.end + shift / TICKS
                if t1 > s.t0 and t0 < s.t1:
                    return True
        return False

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
                self._send(self.srv.info_packets(words[1] if len(words) > 1 else "ID"))

    def _idle(self) -> None:
        while not self.srv._stop.is_set():
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
) -> int:
    """Serve the archive until `stop` is set or SIGINT/SIGTERM arrives (main thread); returns exit code 0."""
    records = load_records(paths)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    srv = SeedLinkServer(records, host=host, port=port, speed=speed, loop=loop, retime_now=retime,
                         first_seq=first_seq).start()
    try:
        if port_file is not None:
            tmp = Path(f"{port_file}.tmp")
            tmp.write_text(f"{srv.port}\n")
            tmp.replace(port_file)
        while not stop.wait(0.5):
            pass
    finally:
        srv.stop()
        log.info("seedlink_server_stopped", connections=srv.connections, packets=srv.packets_sent)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m quakemon.tools.serve PATH... [--host H] [--port N] [--speed X] [--loop] [--retime-now]`."""
    from quakemon.base.logs import configure_logging

    p = argparse.ArgumentParser(prog="quakemon serve", description="SeedLink v3 server streaming archived MiniSEED")
    p.add_argument("paths", nargs="+", help="MiniSEED files or directories")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000, help="TCP port (0 = any free port; see --port-file)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time; 0 or inf = as fast as the client reads")
    p.add_argument("--loop", action="store_true", help="repeat the archive, each pass shifted by its span")
    p.add_argument("--retime-now", action="store_true", help="shift the archive so that it starts now")
    p.add_argument("--first-seq", type=lambda s: int(s, 16), default=0, help="sequence number of record 0 (hex)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return serve(args.paths, args.host, args.port, args.speed, args.loop, args.retime_now, args.first_seq,
                     args.port_file)
    except QuakemonError as exc:
        log.error("serve_failed", error=str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
