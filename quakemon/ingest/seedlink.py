"""Live SeedLink source (protocol 4.0 or 3.1): a reconnecting reader of packets that yields validated Traces.

Why not ObsPy's SeedLinkConnection (1.5.1): it notices a closed connection only after its network timeout,
its run() dies when the server is still down at reconnect, keepalives never fire while it blocks in recv,
terminate() from the data callback is ignored, its state file is rewritten non-atomically after every
packet (a truncated one crashes it), and it speaks 3.1 with 512-byte records only. The protocol needed here is
small (`quakemon.ingest.slproto`), so this module speaks it on its own socket and decodes each record by itself
(`quakemon.ingest.validate.decode_record`: miniSEED 2 through ObsPy's libmseed, miniSEED 3 through pymseed).

Behaviour:
- Protocol: 4.0 when the server's HELLO offers it (``SLPROTO 4.0``), else 3.1 (`protocol` forces one).
  Records of any length are cut by the length in their header (3.1) or the packet header (4.0).
- Streams are stream selectors (`quakemon.ingest.selectors`): per station one STATION command and the SELECT
  patterns of its selectors; records outside the selectors are dropped and counted as `unselected`.
- Reconnects forever with capped exponential backoff (`backoff_initial` .. `backoff_max`, default 1 .. 30 s);
  a FIN/RST is noticed at once (recv returns b"" or fails), a stalled peer after `netto` seconds without a
  byte. Keepalive `INFO ID` requests every `keepalive` seconds let a quiet but live server answer.
- Resume: per station the last sequence number seen and the start time of that record; a reconnect sends
  ``DATA <seq+1> <time>``, so a server that no longer has that packet (a ring renumbered after a crash) positions
  by time instead (resume_policy "earliest"; "now" sends no time and takes what the server gives). A server that
  numbers all stations in one series (ringserver, `quakemon serve`; detected from the packets, assumed until
  then, and kept in the state file) resumes a multi-station connection from one position, and ringserver takes
  the newest of the per-station numbers: so every station is then asked from the position of the station
  furthest behind, and the records the others already have come again (see Duplicates below).
  A station with no processed record yet resumes from the first record the source handed on for it (kept in the
  state file, written before that record reaches the consumer), so a consumer killed while it held a station's
  first records gets them again; with no state at all (a first start) the client asks for new data only.
  The state file holds what the consumer has *processed* (a Trace counts as processed when the consumer asks
  for the next one, or when it calls `commit(trace)` with auto_commit=False), saved atomically every
  `state_interval` seconds and on close, so a crash re-delivers at most one interval of records
  (at-least-once), never loses any the server still has. Each Trace carries its sequence number as
  `trace.stats.seedlink_seq`.
- Gaps: a record that starts later than the previous record of its stream ended (plus half a sample) is a gap:
  the server could not supply the data (it was gone from its buffer, or never arrived). Each gap is logged
  (`seedlink_gap`, with the stream, the missing span and the resume policy) and counted in `stats["gaps"]` and
  per station in `gaps_by_station`; the newest 1,024 spans (stream, from, to) stay in `gap_spans` for backfill.
- Duplicates (server replays, resumed overlaps) are dropped per stream by record start time: a record that
  starts at the same time (within half a sample) as one of the last 8 delivered records of its NET.STA.LOC.CHA
  (after a restart: the last processed one) is counted in `duplicates`. (Comparing with the last one only would
  let a single corrupt-but-plausible record with a future time suppress the genuine records after it.) Older
  re-sent records, which a resume from the station furthest behind brings, are handed on again: the windows
  downstream drop what they already hold. A dropped duplicate still moves the stream's continuity point, so the
  record after it is not taken for a gap.
- Corrupt records are skipped, counted per reason and logged with the station; the connection goes on.
- The reader never blocks on the consumer: a bounded queue drops the oldest record when full (`dropped`).
"""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog
from obspy import Trace, UTCDateTime

from quakemon.base.errors import ConfigError
from quakemon.ingest.base import TraceSource
from quakemon.ingest.mseed3 import record_start, record_station
from quakemon.ingest.selectors import SelectorError, SelectorSet, StreamSelector
from quakemon.ingest.seqstate import SeqState, load_state, save_state, seq_diff
from quakemon.ingest.slproto import (
    V3,
    V3_SEQ_MASK,
    V4,
    V4_SEQ_MASK,
    Bad,
    Garbage,
    Packet,
    data_command,
    offered_versions,
    split_packets,
    v4_select,
    v4_station,
)
from quakemon.ingest.validate import decode_record

log = structlog.get_logger(__name__)

RESUME_POLICIES = ("earliest", "now")
PROTOCOLS = ("auto", V3, V4)
_POLL_S = 0.2
_RECENT = 8  # start times remembered per stream for duplicate detection
_SHARED_VOTES = 8  # station changes with increasing numbers before the numbering counts as one series


class _Disconnected(Exception):
    """The connection ended (FIN, RST, stall, protocol error); the reader reconnects."""


class _Reselect(_Disconnected):
    """The streams changed (`SeedLinkSource.set_streams`); the reader reconnects at once to ask for them."""


class SeedLinkSource(TraceSource):
    """Live Traces from a SeedLink server (`host:port`), resilient to drops, stalls, restarts and garbage.

    resume_policy: "earliest" (resume by sequence number, or by time when the server no longer has it) or
    "now" (by sequence number only; what the server cannot supply is a gap). protocol: "auto" (4.0 when
    offered, else 3.1), "3.1" or "4.0" (fail the connection when the server does not offer it).
    """

    def __init__(
        self,
        server: str,
        streams: Sequence[str],
        state_file: str | Path | None = None,
        *,
        netto: float = 30.0,
        keepalive: float | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        state_interval: float = 1.0,
        queue_size: int = 10_000,
        auto_commit: bool = True,
        resume_policy: str = "earliest",
        protocol: str = "auto",
    ) -> None:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"[seedlink] server: expected 'host:port', got {server!r}")
        if resume_policy not in RESUME_POLICIES:
            raise ConfigError(f"[seedlink] resume_policy: expected one of {RESUME_POLICIES}, got {resume_policy!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"[seedlink] protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        self.server = server
        self._addr = (host, int(port))
        self._cond = threading.Condition()
        self._reselect = threading.Event()
        self._select(streams)
        self.state_file = Path(state_file) if state_file else None
        self.netto, self.connect_timeout = netto, connect_timeout
        self.keepalive = netto / 2 if keepalive is None else keepalive
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.state_interval = state_interval
        self.auto_commit = auto_commit
        self.resume_policy = resume_policy
        self.protocol = protocol
        self.negotiated: str | None = None  # protocol version of the current (or last) connection
        self._queue: collections.deque[Trace] = collections.deque()
        self._queue_size = queue_size
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._counts = collections.Counter({k: 0 for k in ("records", "corrupt", "duplicates", "reconnects",
                                                           "dropped", "unselected", "connected", "gaps")})
        self.corrupt_reasons: collections.Counter[str] = collections.Counter()
        self.gaps_by_station: collections.Counter[str] = collections.Counter()
        self.gap_spans: collections.deque[tuple[str, float, float]] = collections.deque(maxlen=1024)  # (id, from, to)
        self._last_seq = -1
        self._save_lock = threading.Lock()
        self._done = self._load()
        self._rx_seq = dict(self._done.stations)
        self._rx_time = dict(self._done.station_times)
        mask = V4_SEQ_MASK if self._done.proto == V4 else V3_SEQ_MASK
        for st, first in self._done.first_seqs.items():  # as if processed up to the packet before its first
            self._rx_seq[st] = (first - 1) & mask
            if st in self._done.first_times:
                self._rx_time[st] = self._done.first_times[st]
        self._first_unsaved = False  # a station's first record was noted and the state file not written since
        self._seq_proto = self._done.proto
        self._shared = self._done.shared
        self._shared_votes = 0
        self._prev: tuple[str, int] | None = None
        self._next = dict(self._done.stream_next)
        self._recent = {k: collections.deque([t], maxlen=_RECENT) for k, t in self._done.stream_times.items()}
        self._saved_at = time.monotonic()
        self._had_data = False
        self._v4 = False
        self._buf = b""

    def _select(self, streams: Sequence[str]) -> None:
        """Parse and set the selectors (ConfigError, changing nothing, when one is invalid or there are none)."""
        if not streams:
            raise ConfigError("[seedlink] streams: at least one NET.STA.LOC.CHA selector is required")
        try:
            selectors = [StreamSelector.parse(s) for s in streams]
        except SelectorError as exc:
            raise ConfigError(f"[seedlink] streams: {exc}") from None
        stations = sorted({s.station_key for s in selectors})
        with self._cond:
            self.selectors, self.stations = selectors, stations
            self._station_set = frozenset(stations)
            self._selector_set = SelectorSet(s.text for s in selectors)

    def set_streams(self, streams: Sequence[str]) -> None:
        """Change the stream selectors of a running source (a config reload).

        A SeedLink session takes STATION and SELECT only before END, so the reader ends its session and reconnects
        at once (not counted as a reconnect, logged as `seedlink_reselect`). The stations that stay resume from the
        last sequence number the reader received, so none of their records is lost, and records the server sends
        again are dropped as duplicates (see the module docstring); a new station starts where the others resume
        (one numbering for all stations) or with new data. Records of a removed station already queued are still
        delivered.
        """
        self._select(streams)
        self._reselect.set()

    # state -----------------------------------------------------------------------------------------------------
    def _load(self) -> SeqState:
        if self.state_file is None:
            return SeqState(self.server)
        st = load_state(self.state_file)
        if st.stations and st.server != self.server:
            log.warning("seedlink_state_other_server", path=str(self.state_file), saved=st.server,
                        configured=self.server, action="sequence numbers ignored; duplicates still dropped by time")
            st.stations.clear()
            st.station_times.clear()
            st.first_seqs.clear()
            st.first_times.clear()
            st.shared = None
        st.server = self.server
        st.stations = {k: v for k, v in st.stations.items() if k in self.stations}
        st.first_seqs = {k: v for k, v in st.first_seqs.items() if k in self.stations and k not in st.stations}
        st.first_times = {k: v for k, v in st.first_times.items() if k in st.first_seqs}
        if st.stations or st.first_seqs:
            log.info("seedlink_resume", stations=st.stations, first_records=st.first_seqs, protocol=st.proto,
                     shared_numbering=st.shared, resume_policy=self.resume_policy)
        return st

    def save_state(self) -> None:
        """Write what the consumer has processed and the stations' first records (atomic). Called periodically
        from traces(), on close, and by the reader before it hands on the first record of a new station."""
        if self.state_file is None:
            return
        with self._save_lock:  # the reader saves too (`_deliver`): a newer snapshot is never overwritten by an older
            with self._cond:
                snap = self._done.copy()
            try:
                save_state(self.state_file, snap)
            except OSError as exc:
                log.error("seedlink_state_write_failed", path=str(self.state_file), error=str(exc))
            self._saved_at = time.monotonic()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: records, corrupt, duplicates, reconnects, dropped, unselected, connected, gaps, last_seq,
        queued (see the module docstring); `gaps_by_station` and `corrupt_reasons` break two of them down."""
        with self._cond:
            out = dict(self._counts)
            out["last_seq"] = self._last_seq
            out["queued"] = len(self._queue)
        return out

    # consumer side ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (traces() does this on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._reader, name="seedlink-reader", daemon=True)
            self._thread.start()

    def traces(self, stop: threading.Event) -> Iterator[Trace]:
        self.start()
        try:
            while not stop.is_set() and not self._closing.is_set():
                with self._cond:
                    if not self._queue:
                        self._cond.wait(_POLL_S)
                    item = self._queue.popleft() if self._queue else None
                if item is not None:
                    yield item
                    if self.auto_commit:  # the consumer came back: that record is processed
                        self.commit(item)
                if self.state_file is not None and time.monotonic() - self._saved_at >= self.state_interval:
                    self.save_state()
        finally:
            self.save_state()

    def commit(self, trace: Trace) -> None:
        """Mark `trace` (from traces()) as processed, so that a restart resumes after it.

        Done automatically when the consumer asks for the next Trace (auto_commit=True). A consumer that hands
        Traces to another thread or queue should pass auto_commit=False and commit once a Trace is really
        processed; otherwise a crash loses what sat in its hand-off queue.
        """
        seq = trace.stats.get("seedlink_seq")
        if seq is None:
            return
        station = f"{trace.stats.network}.{trace.stats.station}"
        start = trace.stats.starttime.timestamp
        with self._cond:
            self._done.stations[station] = seq
            self._done.station_times[station] = start
            self._done.first_seqs.pop(station, None)
            self._done.first_times.pop(station, None)
            self._done.proto = trace.stats.get("seedlink_proto", self._done.proto)
            self._done.shared = self._shared
            self._done.stream_times[trace.id] = start
            self._done.stream_next[trace.id] = start + trace.stats.npts / trace.stats.sampling_rate

    def close(self) -> None:
        """Stop the reader (within about a second) and save the state. Idempotent."""
        self._closing.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self.save_state()

    # reader side -----------------------------------------------------------------------------------------------
    def _reader(self) -> None:
        """Connect, read, and on any failure reconnect: at once after a live connection, else with backoff."""
        delay = self.backoff_initial
        attempt = 0
        while not self._closing.is_set():
            attempt += 1
            self._had_data = False
            try:
                sock = socket.create_connection(self._addr, timeout=self.connect_timeout)
            except OSError as exc:
                log.warning("seedlink_connect_failed", server=self.server, attempt=attempt, error=str(exc),
                            retry_in_s=round(delay, 2))
            else:
                self._sock = sock
                try:
                    self._session(sock)
                except _Reselect:
                    log.info("seedlink_reselect", server=self.server, stations=self.stations)
                    continue  # (after the finally below)
                except (_Disconnected, OSError) as exc:
                    if not self._closing.is_set():
                        log.warning("seedlink_disconnected", server=self.server, reason=str(exc),
                                    retry_in_s=self.backoff_initial if self._had_data else round(delay, 2))
                except Exception:  # a bug must cost a reconnect, never the reader thread
                    log.exception("seedlink_reader_error", server=self.server)
                finally:
                    self._sock = None
                    with self._cond:
                        self._counts["connected"] = 0
                    sock.close()
            if self._closing.is_set():
                break
            with self._cond:
                self._counts["reconnects"] += 1
            if self._had_data:
                delay, attempt = self.backoff_initial, 0
            if self._closing.wait(delay):
                break
            if not self._had_data:
                delay = min(delay * 2, self.backoff_max)

    def _negotiate(self, sock: socket.socket) -> bool:
        """HELLO, then SLPROTO 4.0 when offered (and allowed); True for a 4.0 session."""
        self._send(sock, b"HELLO\r\n")
        hello = [self._read_line(sock), self._read_line(sock)]
        offered = offered_versions(hello[0])
        v4 = False
        if self.protocol != V3 and V4 in offered:
            reply = self._command(sock, "SLPROTO 4.0")
            v4 = reply == "OK"
            if not v4:
                log.warning("seedlink_v4_refused", server=self.server, reply=reply)
        if self.protocol == V4 and not v4:
            raise _Disconnected(f"protocol 4.0 required, server offers {sorted(offered)}")
        self.negotiated = V4 if v4 else V3
        log.info("seedlink_connected", server=self.server, id=hello[0], organization=hello[1],
                 protocol=self.negotiated)
        if v4:
            self._command(sock, "USERAGENT quakemon")
        return v4

    def _resume_positions(self, v4: bool) -> dict[str, tuple[int | None, float | None]]:
        """(last seq, start time of that record) to resume each station from; (None, None) for new data.

        One shared numbering: every station from the station furthest behind (see the module docstring).
        """
        bits = 64 if v4 else 24
        seqs = {k: v if v4 or self._seq_proto == V3 else v & 0xFFFFFF
                for k, v in self._rx_seq.items() if k in self._station_set}
        with_time = self.resume_policy == "earliest"
        out: dict[str, tuple[int | None, float | None]] = {}
        if seqs and len(self.stations) > 1 and self._shared is not False:
            # The same (seq, time) for every station: ringserver checks each station's pair against the packet
            # before seq and takes the newest that passes, else the earliest time; one pair, one check. The time
            # is the earliest of the stations' last records, so that positioning by time misses no station.
            ref = next(iter(seqs.values()))
            low = min(seqs.values(), key=lambda v: seq_diff(v, ref, bits))
            times = [self._rx_time[k] for k in seqs if k in self._rx_time]
            t = min(times) if with_time and times else None
            return {st: (low, t) for st in self.stations}
        for st in self.stations:
            seq = seqs.get(st)
            out[st] = (seq, self._rx_time.get(st) if with_time and seq is not None else None)
        return out

    def _session(self, sock: socket.socket) -> None:
        """Negotiate, then read packets until the connection ends (always by an exception or close())."""
        self._buf = b""
        self._prev = None
        sock.settimeout(None)
        sock.setblocking(False)
        v4 = self._v4 = self._negotiate(sock)
        self._reselect.clear()
        positions = self._resume_positions(v4)
        accepted = 0
        for station in self.stations:
            net, sta = station.split(".")
            cmd = f"STATION {v4_station(net, sta)}" if v4 else f"STATION {sta} {net}"
            if self._command(sock, cmd) != "OK":
                log.warning("seedlink_station_rejected", server=self.server, station=station)
                continue
            mine = [s for s in self.selectors if s.station_key == station]
            for sel in sorted({v4_select(s) if v4 else s.seedlink_select() for s in mine}):
                if self._command(sock, f"SELECT {sel}") != "OK":
                    log.warning("seedlink_select_rejected", server=self.server, station=station, select=sel)
            seq, t = positions[station]
            reply = self._command(sock, data_command(v4, seq, t))
            if reply != "OK":
                log.warning("seedlink_data_rejected", server=self.server, station=station, reply=reply)
                continue
            accepted += 1
        if not accepted:
            raise _Disconnected(f"server accepted none of the stations {self.stations}")
        self._send(sock, b"END\r\n")
        self._seq_proto = self.negotiated or V3
        with self._cond:
            self._counts["connected"] = 1
        last_rx = last_ka = time.monotonic()
        while not self._closing.is_set():
            now = time.monotonic()
            if self._reselect.is_set():
                raise _Reselect("streams changed")
            if now - last_rx > self.netto:
                raise _Disconnected(f"no data for {self.netto:g} s (netto): stalled connection")
            if self.keepalive and now - last_ka >= self.keepalive:
                self._send(sock, b"INFO ID\r\n")
                last_ka = now
            if self._fill(sock, _POLL_S):
                last_rx = time.monotonic()
                self._packets()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        deadline = time.monotonic() + self.connect_timeout
        view = memoryview(data)
        while view:
            if self._closing.is_set():
                raise _Disconnected("source closing")
            if time.monotonic() > deadline:
                raise _Disconnected("send timed out")
            _, w, _ = select.select([], [sock], [], _POLL_S)
            if w:
                view = view[sock.send(view):]

    def _fill(self, sock: socket.socket, timeout: float) -> bool:
        """Read what is available into the buffer; False on timeout, _Disconnected on FIN/RST."""
        r, _, _ = select.select([sock], [], [], timeout)
        if not r:
            return False
        try:
            chunk = sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise _Disconnected(f"connection error: {exc}") from exc
        if not chunk:
            raise _Disconnected("connection closed by server")
        self._buf += chunk
        return True

    def _read_line(self, sock: socket.socket) -> str:
        deadline = time.monotonic() + self.connect_timeout
        while b"\r\n" not in self._buf:
            if self._closing.is_set() or time.monotonic() > deadline:
                raise _Disconnected("no reply from server")
            self._fill(sock, _POLL_S)
            if len(self._buf) > 4096:
                raise _Disconnected("server reply is not a text line")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line.decode("ascii", "replace").strip()

    def _command(self, sock: socket.socket, cmd: str) -> str:
        self._send(sock, cmd.encode("ascii") + b"\r\n")
        return self._read_line(sock)

    def _packets(self) -> None:
        """Consume complete packets from the buffer; resynchronise on garbage."""
        items, used = split_packets(self._buf, self._v4)
        self._buf = self._buf[used:]
        ready: list[Trace] = []
        for item in items:
            if isinstance(item, Packet):
                if item.is_data and (tr := self._record(item.seq, item.payload)) is not None:
                    ready.append(tr)
            elif isinstance(item, Bad):
                self._reject(item.seq, "?", item.reason)
            elif isinstance(item, Garbage):
                self._reject(-1, "?", f"desync: {item.skipped} bytes without a packet header")
        if ready:
            self._deliver(ready)

    def _deliver(self, traces: list[Trace]) -> None:
        """Queue Traces for the consumer. When one is the first of a station without a processed record, the
        state file is written before any of them is queued: a consumer killed while it holds that record (before
        the next periodic save) then resumes the station from it instead of after the other stations."""
        if self._first_unsaved:
            self._first_unsaved = False
            self.save_state()
        with self._cond:
            was_empty = not self._queue
            for tr in traces:
                self._counts["records"] += 1
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    self._counts["dropped"] += 1
                self._queue.append(tr)
            if was_empty:  # the consumer waits only on an empty queue: no wake-up per record
                self._cond.notify()

    def _reject(self, seq: int, station: str, reason: str) -> None:
        with self._cond:
            self._counts["corrupt"] += 1
            self.corrupt_reasons[reason.split(":")[0]] += 1
        log.warning("seedlink_record_rejected", server=self.server, station=station, seq=seq if seq >= 0 else None,
                    reason=reason)

    def _note_numbering(self, station: str, seq: int) -> None:
        """Learn whether the server numbers all stations in one series (see `_resume_positions`)."""
        prev, self._prev = self._prev, (station, seq)
        if prev is None or prev[0] == station or self._shared is False:
            return
        if seq_diff(seq, prev[1], 64 if self._v4 else 24) > 0:
            self._shared_votes += 1
            if self._shared is None and self._shared_votes >= _SHARED_VOTES:
                self._shared = True
                log.info("seedlink_numbering", server=self.server, shared=True)
        else:
            self._shared = False
            log.info("seedlink_numbering", server=self.server, shared=False)

    def _record(self, seq: int, rec: bytes) -> Trace | None:
        """Decode and check one data record; the Trace to hand on, or None (rejected, unselected, duplicate)."""
        self._had_data = True
        with self._cond:
            self._last_seq = seq
        ns = record_station(rec)
        station = f"{ns[0]}.{ns[1]}" if ns else "?"
        out = decode_record(rec)
        if station in self._station_set:
            self._note_numbering(station, seq)
            self._rx_seq[station] = seq  # the server has moved past this seq for the station, good or bad
            start = out.stats.starttime.timestamp if not isinstance(out, str) else record_start(rec)
            if start is not None:
                self._rx_time[station] = start
            else:
                self._rx_time.pop(station, None)
        if isinstance(out, str):
            self._reject(seq, station, out)
            return None
        tr = out
        if not self._selector_set.matches(tr.id):
            with self._cond:
                self._counts["unselected"] += 1
            return None
        t = tr.stats.starttime.timestamp
        rate = tr.stats.sampling_rate
        tol = 0.5 / rate
        recent = self._recent.get(tr.id)
        if recent is None:
            recent = self._recent[tr.id] = collections.deque(maxlen=_RECENT)
        end = t + tr.stats.npts / rate
        if recent and any(abs(t - x) < tol for x in recent):  # a re-sent record; older ones are the windower's call
            with self._cond:
                self._counts["duplicates"] += 1
            # its samples reached the consumer before: what follows it continues the stream, not a gap
            self._next[tr.id] = max(self._next.get(tr.id, end), end)
            return None
        recent.append(t)
        expected = self._next.get(tr.id)
        if expected is not None and t > expected + tol:
            with self._cond:
                self._counts["gaps"] += 1
                self.gaps_by_station[station] += 1
                self.gap_spans.append((tr.id, expected, t))
            log.warning("seedlink_gap", server=self.server, stream=tr.id, station=station,
                        expected=str(UTCDateTime(expected)), got=str(tr.stats.starttime),
                        missing_s=round(t - expected, 3), resume_policy=self.resume_policy)
        self._next[tr.id] = end
        tr.stats.seedlink_seq = seq
        tr.stats.seedlink_proto = self._seq_proto
        key = f"{tr.stats.network}.{tr.stats.station}"  # as commit() names it
        with self._cond:
            if key not in self._done.stations and key not in self._done.first_seqs:
                self._done.first_seqs[key] = seq
                self._done.first_times[key] = t
                self._done.proto = self._seq_proto  # as commit() does: the numbers saved last decide
                self._first_unsaved = True
        return tr
