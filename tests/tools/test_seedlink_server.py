"""`quakemon serve` (quakemon.tools.serve): SeedLink 3.1 and 4.0 on the wire, with ObsPy's client as a peer."""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np
import obspy
import pytest
from support.seedlink import REPO, collect, make_records, record_ids, rid, server_process, write_archive

from quakemon.base.errors import QuakemonError
from quakemon.ingest.seedlink import SeedLinkSource
from quakemon.tools.serve import Faults, SeedLinkServer
from quakemon.tools.serve_records import RECLEN, load_records, parse_record, retime_record

STATIONS = (("BW", "RJOB"), ("XX", "ABC"))


@pytest.fixture(scope="module")
def records():
    return make_records(STATIONS)


class RawClient:
    """A minimal SeedLink client on a raw socket, for checking the server's exact bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def cmd(self, line: str, eol: bytes = b"\r\n") -> bytes:
        self.sock.sendall(line.encode() + eol)
        return self.sock.recv(4096)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def packets(self, count: int) -> list[tuple[int, bytes]]:
        out = []
        for _ in range(count):
            pkt = self.read(520)
            assert pkt[:2] == b"SL", pkt[:8]
            out.append((int(pkt[2:8], 16), pkt[8:]))
        return out

    def until_end(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            head = self.read(3)
            if head == b"END":
                return out
            pkt = head + self.read(517)
            out.append((int(pkt[2:8], 16), pkt[8:]))

    def info(self, level: str) -> str:
        self.send(f"INFO {level}")
        xml = b""
        while True:
            pkt = self.read(520)
            assert pkt[:6] == b"SLINFO"
            tr = obspy.read(io.BytesIO(pkt[8:]))[0]
            xml += tr.data.tobytes()
            if pkt[6:8] == b"  ":
                return xml.decode()
            assert pkt[6:8] == b" *"

    def close(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()


@pytest.fixture
def server(records):
    srv = SeedLinkServer(records, speed=0).start()
    yield srv
    srv.stop()


def test_obspy_client_receives_served_records(server, records):
    """ObsPy 1.5.1's EasySeedLinkClient (connect bug worked around) gets exactly the selected records."""
    from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
    from obspy.clients.seedlink.easyseedlink import EasySeedLinkClient

    want = record_ids(records, lambda r: r.sta == "RJOB")
    got: list = []
    done = threading.Event()

    class Client(EasySeedLinkClient):
        def on_data(self, trace):
            got.append(trace)
            if len(got) >= len(want):
                done.set()

    client = Client(f"seedlink://127.0.0.1:{server.port}", autoconnect=False)
    # ObsPy 1.5.1: connect() calls is_connected(None) and fails; give it a finite timeout.
    client.conn.is_connected = lambda timeout=None: SeedLinkConnection.is_connected(client.conn, 5.0)
    client.connect()
    assert "multistation" in client.capabilities
    client.select_stream("BW", "RJOB", "EH?")
    t = threading.Thread(target=client.run, daemon=True)
    t.start()
    assert done.wait(20), f"ObsPy client got {len(got)} of {len(want)} records"
    client.conn.terminate()
    client.conn.socket.shutdown(socket.SHUT_RDWR)
    t.join(5)
    assert sorted(map(rid, got)) == sorted(want)
    assert ("XX", "ABC") not in {(tr.stats.network, tr.stats.station) for tr in got}


def test_hello_single_send_and_line_endings(server):
    c = RawClient(server.port)
    try:
        reply = c.cmd("HELLO", b"\r")  # ObsPy sends CR only and reads the reply with one recv
        lines = reply.split(b"\r\n")
        assert lines[0].startswith(b"SeedLink v4.0 ") and b"SLPROTO:3.1" in lines[0] and lines[2] == b"", reply
        assert c.cmd("STATION RJOB BW", b"\n") == b"OK\r\n"
        assert c.cmd("SELECT EH?", b"\r\n") == b"OK\r\n"
        assert c.cmd("SELECT EH*") == b"ERROR\r\n"  # v3 selectors: 3 or 5 characters, no '*'
        assert c.cmd("STATION NOPE BW") == b"ERROR\r\n"
        assert c.cmd("FROB") == b"ERROR\r\n"
    finally:
        c.close()


def test_info_levels_are_xml_in_slinfo_records(server, records):
    c = RawClient(server.port)
    try:
        caps = ET.fromstring(c.info("CAPABILITIES"))
        assert "multistation" in {n.attrib["name"] for n in caps.findall("capability")}
        assert ET.fromstring(c.info("ID")).attrib["software"] == "quakemon serve"
        stations = ET.fromstring(c.info("STATIONS")).findall("station")
        assert {(s.attrib["network"], s.attrib["name"]) for s in stations} == set(STATIONS)
        streams = ET.fromstring(c.info("STREAMS"))  # long enough to need several SLINFO records
        assert {s.attrib["seedname"] for s in streams.iter("stream")} == {"EHZ", "EHN", "EHE"}
    finally:
        c.close()


def test_data_seq_resumes_exactly_and_fetch_time_end(server, records):
    first = next(i for i, r in enumerate(records) if r.sta == "RJOB" and i >= 10)
    c = RawClient(server.port)
    try:
        for line in ("STATION RJOB BW", "SELECT EHZ", f"DATA {first:06X}"):
            assert c.cmd(line) == b"OK\r\n"
        c.send("END")
        expected = [i for i, r in enumerate(records) if i >= first and r.sta == "RJOB" and r.cha == "EHZ"]
        got = c.packets(len(expected))
        assert [s for s, _ in got] == expected
        assert all(raw == records[s].raw for s, raw in got)
    finally:
        c.close()
    c = RawClient(server.port)  # uni-station FETCH: everything selected, then END
    try:
        assert c.cmd("SELECT EHN") == b"OK\r\n"
        c.send("FETCH")
        got = c.until_end()
        assert [s for s, _ in got] == [i for i, r in enumerate(records) if r.cha == "EHN"]
    finally:
        c.close()
    t0 = obspy.UTCDateTime(records[0].start) + 10
    c = RawClient(server.port)  # TIME window (ObsPy writes it without zero padding)
    try:
        assert c.cmd("STATION ABC XX") == b"OK\r\n"
        assert c.cmd(f"TIME {t0.year},{t0.month},{t0.day},{t0.hour},{t0.minute},{t0.second} "
                     f"{t0.year},{t0.month},{t0.day},{t0.hour},{t0.minute},{t0.second + 5}") == b"OK\r\n"
        c.send("END")
        got = c.until_end()
        want = [i for i, r in enumerate(records) if r.sta == "ABC" and r.end > t0.timestamp
                and r.start < t0.timestamp + 5]
        assert [s for s, _ in got] == want and want
    finally:
        c.close()


def test_loop_shifts_time_forward_and_seq_wraps(records):
    rjob = [r for r in records if r.sta == "RJOB"]
    n = len(rjob)
    with SeedLinkServer(rjob, speed=0, loop=True, first_seq=0xFFFFFF - n + 3) as srv:
        c = RawClient(srv.port)
        try:
            c.send("DATA")
            got = c.packets(2 * n + 5)
        finally:
            c.close()
    seqs = [s for s, _ in got]
    assert seqs == [(0xFFFFFF - n + 3 + k) & 0xFFFFFF for k in range(2 * n + 5)]
    assert 0xFFFFFF in seqs and 0 in seqs
    starts = [parse_record(raw).start for _, raw in got]
    span = max(r.end for r in rjob) - min(r.start for r in rjob)
    assert starts[n:2 * n] == pytest.approx([s + span for s in starts[:n]], abs=1e-4)
    by_stream: dict[str, float] = {}
    for _, raw in got:
        rec = parse_record(raw)
        assert rec.start > by_stream.get(rec.seed_id, -1.0), "time ran backwards"
        by_stream[rec.seed_id] = rec.start
    tr = obspy.read(io.BytesIO(got[n][1]))[0]  # a re-timed record still decodes, with its data intact
    assert tr.stats.starttime.timestamp == pytest.approx(rjob[0].start + span, abs=1e-4)
    np.testing.assert_array_equal(tr.data, obspy.read(io.BytesIO(rjob[0].raw))[0].data)


def test_retime_record_roundtrip(records):
    raw = records[0].raw
    shifted = retime_record(raw, 366 * 86400 * 10_000 + 12345, little_endian=False)
    assert parse_record(shifted).start == pytest.approx(records[0].start + 366 * 86400 + 1.2345, abs=1e-6)
    assert shifted[30:] == raw[30:] and shifted[:20] == raw[:20]


def test_paced_transfer_follows_speed(records):
    """speed=20: 30 s of data take about 1.5 s; a loose lower bound only proves pacing exists."""
    rjob = [r for r in records if r.sta == "RJOB"]
    with SeedLinkServer(rjob, speed=20) as srv:
        c = RawClient(srv.port)
        try:
            t0 = time.monotonic()
            c.send("DATA")
            c.packets(len(rjob))
            elapsed = time.monotonic() - t0
        finally:
            c.close()
    span = rjob[-1].start - rjob[0].start
    assert elapsed >= 0.8 * span / 20


def test_stop_is_prompt_with_clients_and_bounded(records):
    srv = SeedLinkServer(records, speed=1, max_clients=2).start()
    clients = [RawClient(srv.port) for _ in range(2)]
    try:
        clients[0].send("DATA")
        clients[0].packets(1)
        time.sleep(0.3)
        clients.append(RawClient(srv.port))  # takes the place of the idle second client (bounded threads)
        assert clients[1].sock.recv(10) == b""
        assert clients[2].cmd("HELLO").startswith(b"SeedLink")
        clients.append(RawClient(srv.port))  # the third is idle now: the fourth replaces it, never the streamer
        assert clients[2].sock.recv(10) == b""
        clients[3].send("DATA")
        assert clients[3].packets(1) and clients[0].packets(1)
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 1.5
        # session threads notice the stop within one poll interval; on a loaded CI host the last one may still
        # be unwinding when stop() returns, so allow it a moment (it must end by itself, not linger)
        deadline = time.monotonic() + 2.0
        while [t for t in threading.enumerate() if t.name.startswith("seedlink-") and t.is_alive()] \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [t for t in threading.enumerate() if t.name.startswith("seedlink-") and t.is_alive()]
    finally:
        for c in clients:
            c.close()


def test_fault_cut_mid_record(records):
    with SeedLinkServer(records, speed=0, faults=Faults(cut_after_packets=3, cut_bytes=300)) as srv:
        c = RawClient(srv.port)
        try:
            c.send("DATA")
            c.packets(3)
            with pytest.raises(EOFError, match="closed after 300 of 520"):
                c.read(520)
        finally:
            c.close()


def test_load_records_repacks_and_reports_bad_paths(tmp_path):
    path = write_archive(tmp_path / "a.mseed", STATIONS)
    recs = load_records([tmp_path])
    assert all(len(r.raw) == RECLEN for r in recs)
    assert [r.start for r in recs] == sorted(r.start for r in recs)
    total = sum(obspy.read(io.BytesIO(r.raw))[0].stats.npts for r in recs)
    assert total == sum(tr.stats.npts for tr in obspy.read(str(path)))
    with pytest.raises(QuakemonError, match="does not exist"):
        load_records([tmp_path / "missing"])
    (tmp_path / "junk.txt").write_text("not seismic data")
    with pytest.raises(QuakemonError, match="junk.txt"):
        load_records([tmp_path / "junk.txt"])


def test_module_entry_point_serves(tmp_path, free_port):
    """`python -m quakemon.tools.serve FILE --port N` works end to end (the future `quakemon serve`)."""
    path = write_archive(tmp_path / "a.mseed", STATIONS)
    port = free_port()
    with server_process([path], port, "--speed", "0") as proc:
        c = RawClient(port)
        try:
            assert c.cmd("STATION ABC XX") == b"OK\r\n"
            assert c.cmd("FETCH") == b"OK\r\n"
            c.send("END")
            got = c.until_end()
        finally:
            c.close()
        assert got and {parse_record(raw).sta for _, raw in got} == {"ABC"}
        proc.terminate()
        assert proc.wait(10) == 0


def test_retime_now_shifts_archive_to_server_start(records):
    rjob = [r for r in records if r.sta == "RJOB"]
    t_before = time.time()
    with SeedLinkServer(rjob, speed=0, retime_now=True) as srv:
        c = RawClient(srv.port)
        try:
            c.send("DATA")
            got = c.packets(len(rjob))
        finally:
            c.close()
    starts = [parse_record(raw).start for _, raw in got]
    assert starts[0] == pytest.approx(t_before, abs=2.0)
    assert [s - starts[0] for s in starts] == pytest.approx([r.start - rjob[0].start for r in rjob], abs=1e-4)


# --- protocol 4.0, resume by time, limits, loops, unreadable input --------------------------------------------------


def read_v4(c: RawClient) -> tuple[str, str, int, str, bytes]:
    """One 4.0 packet: (format, subformat, sequence number, station id, payload)."""
    head = c.read(17)
    assert head[:2] == b"SE", head
    length, seq, sid_len = struct.unpack("<IQB", head[4:17])
    sid = c.read(sid_len).decode()
    return chr(head[2]), chr(head[3]), seq, sid, c.read(length)


def test_v4_session_framing_selectors_and_json_info(server, records):
    c = RawClient(server.port)
    try:
        assert b"SLPROTO:4.0" in c.cmd("HELLO")
        assert c.cmd("SLPROTO 4.0") == b"OK\r\n"
        assert c.cmd("USERAGENT test/1") == b"OK\r\n"
        assert c.cmd("STATION XX_ABC") == b"OK\r\n"
        assert c.cmd("SELECT _E_H_Z") == b"OK\r\n"
        assert c.cmd("DATA 3") == b"OK\r\n"
        c.send("END")
        fmt, sub, seq, sid, payload = read_v4(c)
        want = [i for i, r in enumerate(records) if r.sta == "ABC" and r.cha == "EHZ" and i >= 3]
        assert (fmt, sub, seq, sid) == ("2", "D", want[0], "XX_ABC")
        assert payload == records[want[0]].raw
        assert [read_v4(c)[2] for _ in want[1:4]] == want[1:4]
    finally:
        c.close()
    c = RawClient(server.port)
    try:  # DATA ALL + ENDFETCH: everything buffered, then END
        for line in ("SLPROTO 4.0", "STATION BW_RJOB", "SELECT _E_H_Z", "DATA ALL"):
            assert c.cmd(line) == b"OK\r\n"
        c.send("ENDFETCH")
        want = [i for i, r in enumerate(records) if r.sta == "RJOB" and r.cha == "EHZ"]
        assert [read_v4(c)[2] for _ in want] == want and c.read(3) == b"END"
    finally:
        c.close()
    c = RawClient(server.port)
    try:
        c.cmd("SLPROTO 4.0")
        c.send("INFO ID")
        fmt, sub, _, _, payload = read_v4(c)
        assert (fmt, sub) == ("J", "I") and json.loads(payload)["software"] == "quakemon serve"
    finally:
        c.close()


def test_v31_only_server_refuses_slproto_40(records):
    with SeedLinkServer(records, speed=0, max_protocol="3.1") as srv:
        c = RawClient(srv.port)
        try:
            hello = c.cmd("HELLO")
            assert b"SLPROTO:4.0" not in hello and hello.startswith(b"SeedLink v3.1")
            assert c.cmd("SLPROTO 4.0").startswith(b"ERROR")
        finally:
            c.close()


def test_data_seq_and_time_resumes_by_time_when_seq_does_not_match(server, records):
    """`DATA <seq> <time>`: exact when record seq-1 started in that second, else by time (a renumbered archive)."""
    rjob = [i for i, r in enumerate(records) if r.sta == "RJOB" and r.cha == "EHZ"]
    assert len(rjob) >= 4
    last = records[rjob[2]]  # the client's last record
    t = dt.datetime.fromtimestamp(last.start, dt.UTC).strftime("%Y,%m,%d,%H,%M,%S")
    for seq, first in ((rjob[2] + 1, rjob[3]), (0x500, rjob[2])):  # right number; one of another numbering
        c = RawClient(server.port)
        try:
            c.cmd("STATION RJOB BW")
            c.cmd("SELECT EHZ")
            assert c.cmd(f"DATA {seq:06X} {t}") == b"OK\r\n"
            c.send("END")
            assert c.packets(1)[0][0] == first
        finally:
            c.close()


def test_idle_crowd_does_not_lock_out_a_real_client(records):
    """100 idle connections from one address: each new one takes the place of the longest idle; a real client
    that then connects is served in full."""
    rjob = [r for r in records if r.sta == "RJOB"]
    with SeedLinkServer(records, speed=0) as srv:
        crowd = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(100)]
        try:
            src = SeedLinkSource(srv.address, ["BW.RJOB..EH?"], backoff_initial=0.1, backoff_max=0.5, netto=5)
            try:
                got = collect(src, lambda g: len(g) >= len(rjob), 10)
            finally:
                src.close()
            assert [rid(tr) for tr in got] == record_ids(rjob)
            assert srv.evicted >= 100 - srv.max_per_address
        finally:
            for s in crowd:
                s.close()


def test_command_phase_timeout_closes_idle_client(records):
    with SeedLinkServer(records, speed=0, command_timeout=0.5) as srv:
        c = RawClient(srv.port)
        try:
            assert c.cmd("HELLO").startswith(b"SeedLink")
            t0 = time.monotonic()
            c.sock.settimeout(5)
            assert c.sock.recv(10) == b""
            assert 0.3 < time.monotonic() - t0 < 2.0
        finally:
            c.close()
        c = RawClient(srv.port)  # a finished FETCH leaves the client idle again: the same timeout applies
        try:
            assert c.cmd("STATION RJOB BW") == b"OK\r\n" and c.cmd("FETCH") == b"OK\r\n"
            c.send("END")
            assert c.until_end()
            c.sock.settimeout(5)
            assert c.sock.recv(10) == b""
        finally:
            c.close()


def test_open_ended_time_follows_loop(records):
    """`TIME <begin>` without an end is real time: with --loop it goes on past the archive's end, time forward."""
    rjob = [r for r in records if r.sta == "RJOB" and r.cha == "EHZ"]
    with SeedLinkServer(rjob, speed=0, loop=True) as srv:
        c = RawClient(srv.port)
        try:
            c.send("TIME 2009,08,24,00,20,10")
            got = c.packets(2 * len(rjob))
        finally:
            c.close()
    starts = [parse_record(raw).start for _, raw in got]
    assert starts == sorted(starts) and starts[-1] > rjob[-1].end


def test_unreadable_input_is_reported_in_one_line(tmp_path):
    path = write_archive(tmp_path / "a.mseed", STATIONS)
    raw = bytearray(path.read_bytes()[:4096])
    raw[8:13] = b"\xff\xfe\xfd\xfc\xfb"  # a station code that is not text, no blockettes
    raw[46:48] = b"\x00\x00"
    path.write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, "-m", "quakemon.tools.serve", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Exception ignored" not in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1 and "cannot read" in out, out
