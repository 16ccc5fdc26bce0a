"""SeedLinkSource against `quakemon serve`: protocol 4.0 negotiated, 3.1 fallback, resume across kills with
several stations processed unevenly, resume_policy, and the framing of records of any length."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from support.seedlink import (
    REPO,
    collect,
    make_records,
    record_ids,
    record_line,
    rid,
    server_process,
    wait_for_lines,
    write_archive,
)

from quakemon.base.errors import ConfigError
from quakemon.ingest.seedlink import SeedLinkSource
from quakemon.ingest.selectors import StreamSelector
from quakemon.ingest.slproto import Bad, Garbage, Packet, data_command, frame_v4, split_packets, v4_select
from quakemon.tools.serve import Faults, SeedLinkServer

FAST = {"backoff_initial": 0.1, "backoff_max": 0.5, "netto": 5.0}
STATIONS = [("XX", f"S{i}") for i in range(5)]


@pytest.fixture(scope="module")
def five():
    return make_records(STATIONS, encoding="INT32")


def run(server: SeedLinkServer, streams: list[str], want: list, **kw) -> tuple[SeedLinkSource, list]:
    src = SeedLinkSource(server.address, streams, **{**FAST, **kw})
    wanted: set = set(want)
    seen: set = set()

    def done(got: list) -> bool:
        seen.add(rid(got[-1]))
        return wanted <= seen

    try:
        got = collect(src, done, 20)
        got += collect(src, lambda g: False, 0.3)
    finally:
        src.close()
    return src, got


@pytest.mark.parametrize("max_protocol", ["4.0", "3.1"])
def test_negotiates_40_when_offered_else_31(five, max_protocol):
    want = record_ids(five, lambda r: r.sta in ("S0", "S3"))
    with SeedLinkServer(five, speed=0, max_protocol=max_protocol) as srv:
        src, got = run(srv, ["XX.S0..EH?", "XX.S3..EHZ", "XX.S3..EHN",
                             "XX.S3..EHE"], want)
        commands = [c for _, c in srv.history]
    assert Counter(rid(tr) for tr in got) == Counter(want)
    assert src.negotiated == max_protocol
    if max_protocol == "4.0":
        assert {"SLPROTO 4.0", "STATION XX_S0", "SELECT _E_H_?", "STATION XX_S3", "SELECT _E_H_Z"} <= set(commands)
    else:
        assert "SLPROTO 4.0" not in commands and "STATION S0 XX" in commands


def test_serve_protocol_flag_offers_31_only(tmp_path, free_port):
    """`python -m quakemon.tools.serve --protocol 3.1`: the client falls back to 3.1 and gets every record."""
    path = write_archive(tmp_path / "a.mseed", [("BW", "RJOB")])
    port = free_port()
    from quakemon.tools.serve_records import load_records

    want = record_ids(load_records([path]))
    with server_process([path], port, "--speed", "0", "--protocol", "3.1"):
        src = SeedLinkSource(f"127.0.0.1:{port}", ["BW.RJOB..EH?"], **FAST)
        seen: set = set()
        try:
            collect(src, lambda g: seen.add(rid(g[-1])) or set(want) <= seen, 15)
        finally:
            src.close()
    assert src.negotiated == "3.1" and set(want) <= seen


def test_protocol_40_required_but_not_offered(five):
    with SeedLinkServer(five, speed=0, max_protocol="3.1") as srv:
        src = SeedLinkSource(srv.address, ["XX.S0..EHZ"], protocol="4.0", **FAST)
        got = collect(src, lambda g: True, 1.5)
        src.close()
    assert not got and src.stats["reconnects"] >= 2 and src.negotiated is None


def test_v4_cut_mid_record_resumes_with_decimal_seq(five):
    want = record_ids(five)
    faults = Faults(cut_after_packets=40, cut_bytes=200, connections=2)
    with SeedLinkServer(five, speed=0, faults=faults) as srv:
        src, got = run(srv, [f"{n}.{s}..EH?" for n, s in STATIONS], want)
        data = [c for _, c in srv.history if c.startswith("DATA")]
    assert Counter(rid(tr) for tr in got) == Counter(want)
    assert src.negotiated == "4.0" and src.stats["reconnects"] == 2
    assert data[:5] == ["DATA"] * 5  # decimal, then an ISO time; at most 40, the packets cut after
    assert re.fullmatch(r"DATA (\d+) \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data[5]) and int(data[5].split()[1]) <= 40
    assert all(c.split()[:2] == data[5].split()[:2] for c in data[5:10])  # one position for all stations


def test_five_stations_sigkilled_client_against_serve(five, tmp_path):
    """The 5-station SIGKILL test against `quakemon serve`: uneven processing, 5 kills, nothing lost."""
    want = [record_line(tr) for tr in _decoded(five)]
    state, out = tmp_path / "seedlink.state", tmp_path / "out.txt"
    rng = random.Random(5)
    with SeedLinkServer(five, speed=4, loop=True) as srv:
        cmd = [sys.executable, str(REPO / "tests" / "support" / "seedlink.py"), "worker", srv.address,
               ",".join(f"{n}.{s}..EH?" for n, s in STATIONS), str(state), str(out), "-", "4"]
        proc = subprocess.Popen(cmd, cwd=REPO)
        try:
            for _ in range(5):
                time.sleep(rng.uniform(1.0, 2.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = subprocess.Popen(cmd, cwd=REPO)
            wait_for_lines(proc, out, want, 30)
        finally:
            proc.kill()
            proc.wait(10)
    got = out.read_text().splitlines()
    lost = set(want) - set(got)
    assert not lost, f"{len(lost)} of {len(want)} records lost, e.g. {sorted(lost)[:3]}"
    per_stream: dict[str, list[int]] = {}
    for line in dict.fromkeys(got):
        sid, ns, _ = line.split()
        per_stream.setdefault(sid, []).append(int(ns))
    assert all(v == sorted(v) for v in per_stream.values())


def test_restart_resumes_a_station_without_processed_records_from_its_first(five, tmp_path):
    """The consumer processed (committed) XX.S0's records only, then stopped while it held XX.S1's, which came
    earlier: the restarted source gets every one of XX.S1's records again, although XX.S0's position is past
    them (`quakemon serve` numbers all stations in one series, so both resume from one position)."""
    state = tmp_path / "seedlink.state"
    streams = ["XX.S0..EHZ", "XX.S1..EHZ"]
    with SeedLinkServer(five, speed=0) as srv:
        src = SeedLinkSource(srv.address, streams, state, auto_commit=False, **FAST)
        first = collect(src, lambda g: len(g) >= 8, 10)
        for tr in first:
            if tr.stats.station == "S0":
                src.commit(tr)
        src.close()
        held = {record_line(tr) for tr in first if tr.stats.station == "S1"}
        assert len(held) == 4 and max(tr.stats.seedlink_seq for tr in first if tr.stats.station == "S0") > min(
            tr.stats.seedlink_seq for tr in first if tr.stats.station == "S1")
        src = SeedLinkSource(srv.address, streams, state, **FAST)
        seen: set[str] = set()
        try:
            collect(src, lambda g: seen.add(record_line(g[-1])) or held <= seen, 20)
        finally:
            src.close()
    assert held <= seen, f"{len(held - seen)} of XX.S1's {len(held)} held records lost"


def test_a_lagging_resume_re_sends_what_was_processed_without_a_false_gap(five, tmp_path):
    """A restart that resumes every station from the one furthest behind re-sends records the consumer already
    processed for the others: the newest of them is dropped as a duplicate, the older ones come again, and the
    stream's continuity check must not take the dropped duplicate for missing data (no `seedlink_gap`)."""
    state = tmp_path / "seedlink.state"
    streams = ["XX.S0..EHZ", "XX.S1..EHZ"]
    with SeedLinkServer(five, speed=0) as srv:
        src = SeedLinkSource(srv.address, streams, state, auto_commit=False, **FAST)
        first = collect(src, lambda g: len(g) >= 8, 10)
        s0 = [tr for tr in first if tr.stats.station == "S0"]
        for tr in s0:
            src.commit(tr)
        src.close()
        src = SeedLinkSource(srv.address, streams, state, **FAST)
        after = s0[-1].stats.endtime
        try:
            again = collect(src, lambda g: sum(tr.stats.station == "S0" and tr.stats.starttime >= after
                                               for tr in g) >= 2, 20)
            stats = dict(src.stats)
        finally:
            src.close()
    assert any(tr.stats.station == "S0" and tr.stats.starttime < s0[-1].stats.starttime for tr in again), \
        "the restart did not re-send any processed record: nothing was tested"
    assert stats["duplicates"] >= 1 and stats["gaps"] == 0, stats


def _decoded(records):
    from quakemon.ingest.validate import decode_record

    return [decode_record(r.raw) for r in records]


def test_resume_policy_is_validated():
    with pytest.raises(ConfigError, match="resume_policy"):
        SeedLinkSource("127.0.0.1:1", ["XX.S0..EHZ"], resume_policy="latest")
    with pytest.raises(ConfigError, match="protocol"):
        SeedLinkSource("127.0.0.1:1", ["XX.S0..EHZ"], protocol="5.0")


def test_framing_cuts_records_by_their_own_length(five):
    """3.1 packets of 512 and 4096 bytes and miniSEED 3, 4.0 packets, INFO, END and garbage, in one buffer."""
    import io

    import obspy

    tr = obspy.read()[0]
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", reclen=4096)
    big = buf.getvalue()[:4096]
    small = five[0].raw
    stream = (b"SL000001" + small + b"SL000002" + big + b"junk!" + b"SL000003" + small + b"END")
    items, used = split_packets(stream, False)
    assert used == len(stream)
    kinds = [(type(i).__name__, getattr(i, "seq", None), len(getattr(i, "payload", b""))) for i in items]
    assert kinds[:2] == [("Packet", 1, 512), ("Packet", 2, 4096)] and ("Packet", 3, 512) in kinds
    assert any(isinstance(i, Garbage) for i in items) and items[-1] == "END"
    v4 = frame_v4(7, big, "BW_RJOB") + frame_v4(0, b"{}", "", "J", "I")
    items, used = split_packets(v4[:-1], True)  # the last packet is incomplete: left in the buffer
    assert [(i.seq, i.fmt, i.station) for i in items] == [(7, "2", "BW_RJOB")] and used == len(v4) - 19
    items, _ = split_packets(b"SL000009" + b"\x00" * 300 + b"SL00000A" + small, False)
    assert isinstance(items[0], Bad) and isinstance(items[-1], Packet) and items[-1].seq == 10
    sel = StreamSelector.parse("BW.RJOB..EH*")
    assert v4_select(sel) == "_E_H_?" and v4_select(StreamSelector.parse("BW.RJOB.*.BHZ")) == "*_B_H_Z"
    assert data_command(True, 41, 1704067200.7) == "DATA 42 2024-01-01T00:00:00Z"
    assert data_command(False, 0xFFFFFF, None) == "DATA 000000"


@pytest.mark.parametrize("v4", [False, True])
def test_framing_does_not_depend_on_where_reads_end(five, v4):
    """The same packets whatever the read boundaries (a header cut in two must wait for its rest)."""
    import io

    import obspy

    tr = obspy.read()[0]
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", reclen=4096)
    big = buf.getvalue()[:4096]
    raws = [r.raw if i % 5 else big for i, r in enumerate(five[:60])]
    if v4:
        stream = b"".join(frame_v4(i, raw, "XX_S0") for i, raw in enumerate(raws))
    else:
        stream = b"".join(b"SL%06X" % i + raw for i, raw in enumerate(raws)) + b"END"
    whole, used = split_packets(stream, v4)
    assert used == len(stream) and len(whole) == len(raws) + (0 if v4 else 1)
    for trial in range(100):
        rng, pending, got, pos = random.Random(trial), b"", [], 0
        while pos < len(stream):
            k = rng.randint(1, 700)
            pending, pos = pending + stream[pos:pos + k], pos + k
            items, used = split_packets(pending, v4)
            pending, got = pending[used:], got + items
        assert got == whole and not pending, trial
