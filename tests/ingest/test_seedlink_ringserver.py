"""SeedLinkSource against EarthScope's ringserver: SIGKILLed clients, a crashed and renumbered ring, records of
4096 bytes and miniSEED 3, protocol 4.0 and 3.1."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from support.ringserver import RingServer, ringserver_binary
from support.seedlink import REPO, collect, record_line, wait_for_lines

from quakemon.ingest.seedlink import SeedLinkSource
from quakemon.ingest.validate import decode_record

T0_NS = 1_704_067_200 * 10**9  # 2024-01-01
FAST = {"backoff_initial": 0.1, "backoff_max": 0.5, "netto": 10.0}


def synth(stations: list[str], seconds: float, reclen: int = 512, mseed3: bool = False) -> list[bytes]:
    """Records of one HHZ channel per station "NET.STA" (random-walk int32, Steim-2), sorted by start time."""
    import io

    import obspy

    rng = np.random.default_rng(len(stations) * 1000 + reclen)
    out: list[tuple[int, str, bytes]] = []
    for key in stations:
        net, sta = key.split(".")
        data = np.cumsum(rng.integers(-400, 400, int(seconds * 100))).astype(np.int32)
        if mseed3:
            from pymseed import DataEncoding, MS3Record

            msr = MS3Record(reclen=reclen, encoding=DataEncoding.STEIM2)
            msr.sourceid, msr.samprate, msr.starttime = f"FDSN:{net}_{sta}__H_H_Z", 100.0, T0_NS
            recs = list(msr.generate(data, "i"))
        else:
            tr = obspy.Trace(data, {"network": net, "station": sta, "channel": "HHZ", "sampling_rate": 100.0,
                                    "starttime": obspy.UTCDateTime(ns=T0_NS)})
            buf = io.BytesIO()
            tr.write(buf, format="MSEED", reclen=reclen, encoding="STEIM2")
            raw = buf.getvalue()
            recs = [raw[i:i + reclen] for i in range(0, len(raw), reclen)]
        for rec in recs:
            tr = decode_record(rec)
            assert not isinstance(tr, str), tr
            out.append((int(tr.stats.starttime.ns), tr.id, rec))
    return [rec for _, _, rec in sorted(out)]


def lines_of(records: list[bytes]) -> list[str]:
    return [record_line(decode_record(r)) for r in records]


def chunked(records: list[bytes], n: int) -> list[bytes]:
    size = -(-len(records) // n)
    return [b"".join(records[i:i + size]) for i in range(0, len(records), size)]


def wait_connected(rs: RingServer, count: int, timeout: float = 20.0) -> None:
    """Until ringserver logged `count` configured SeedLink clients (their DATA/END was processed)."""
    log = rs.workdir / "ringserver.log"
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Configured ring parameters") < count:
        assert time.monotonic() < deadline, "client never configured its SeedLink connection"
        time.sleep(0.05)


def collect_all(src: SeedLinkSource, want: set[str], timeout: float) -> list:
    seen: set[str] = set()

    def done(got: list) -> bool:
        seen.add(record_line(got[-1]))
        return want <= seen

    got = collect(src, done, timeout)
    return got + collect(src, lambda g: False, 0.3)


@pytest.fixture
def ring(tmp_path, free_port):
    with RingServer(ringserver_binary(tmp_path), tmp_path / "rs", free_port()) as rs:
        yield rs


def test_five_stations_sigkilled_client_loses_nothing(ring, tmp_path):
    """A worker process reading 5 stations is SIGKILLed 5 times at random points and restarted from its state
    file while records keep arriving: every record arrives, none is lost, each with its samples intact.

    The worker processes the stations unevenly (it holds 1 to 4 records per station before processing them), so
    at each kill some stations' positions lag behind others; ringserver resumes a connection from the newest
    position it is given, so the client must ask every station from the oldest one."""
    stations = [f"XX.ST{i}" for i in range(5)]
    everything = synth(stations, 55)
    records = everything[:len(everything) * 40 // 55]
    tail = everything[len(records):]  # fed last, so that the worker processes what it still holds of `records`
    want = lines_of(records)
    state, out = tmp_path / "seedlink.state", tmp_path / "out.txt"
    cmd = [sys.executable, str(REPO / "tests" / "support" / "seedlink.py"), "worker", ring.address,
           ",".join(f"{s}..HH?" for s in stations), str(state), str(out), "-", "4"]
    rng = random.Random(11)
    chunks = chunked(records, 12)
    kill_after = set(rng.sample(range(len(chunks) - 1), 5))
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        wait_connected(ring, 1)
        for i, chunk in enumerate(chunks):
            ring.feed(chunk)
            time.sleep(rng.uniform(0.2, 0.9))
            if i in kill_after:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = subprocess.Popen(cmd, cwd=REPO)
        ring.feed(b"".join(tail))
        wait_for_lines(proc, out, want, 25)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait(10)
    got = out.read_text().splitlines()
    lost = set(want) - set(got)
    assert not lost, f"{len(lost)} of {len(want)} records lost, e.g. {sorted(lost)[:3]}"
    assert set(got) <= set(want) | set(lines_of(tail)), f"unexpected lines {sorted(set(got) - set(want))[:3]}"
    repeats = sum(n - 1 for n in Counter(got).values())
    assert repeats <= 5 * 40, f"{repeats} re-deliveries: more than a few per kill"


def wait_until(what: str, cond, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "worker died"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("processed", ["nothing", "other_station"])
def test_killed_while_holding_a_stations_first_record(ring, tmp_path, processed):
    """The worker processes XX.AA's records one by one and XX.BB's two at a time. It is SIGKILLed while it holds
    XX.BB's first record: before it has processed anything ("nothing": no processed position at all, which a
    restart used to treat as a first start and ask for new data only), or after it has processed and saved
    XX.AA's records that came after that one ("other_station": the restart used to resume both stations after
    XX.AA's). The restarted worker gets XX.BB's first record again and loses nothing."""
    aa, bb = (synth([s], 20) for s in ("XX.AA", "XX.BB"))
    state, out, seen = tmp_path / "seedlink.state", tmp_path / "out.txt", tmp_path / "seen.txt"
    cmd = [sys.executable, str(REPO / "tests" / "support" / "seedlink.py"), "worker", ring.address,
           "XX.AA..HHZ,XX.BB..HHZ", str(state), str(out), "-", "2", str(seen)]
    first = bb[:1] + (aa[:2] if processed == "other_station" else [])
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        wait_connected(ring, 1)
        # In this order: XX.BB's first record has the lowest sequence number of the worker's records, but is not
        # the ring's oldest packet, which ringserver cannot send again to a resumed client (docs/seedlink.md).
        ring.feed(b"".join(synth(["ZZ.OTHER"], 3)[:1] + first))
        wait_until("the first records", lambda: set(lines_of(first)) <= set(seen.read_text().splitlines())
                   if seen.exists() else False, proc)
        if processed == "other_station":
            aa_done = decode_record(aa[1]).stats.starttime.timestamp
            wait_until("XX.AA's saved position", lambda: state.exists() and json.loads(state.read_text())
                       ["stations"].get("XX.AA", {}).get("time") == aa_done, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert lines_of(bb[:1])[0] not in out.read_text().splitlines()  # it was held, not processed
        proc = subprocess.Popen(cmd, cwd=REPO)
        wait_connected(ring, 2)
        rest = aa[len(first) - 1:] + bb[1:]
        ring.feed(b"".join(rest))
        want = lines_of(aa + bb[:len(bb) // 2 * 2])  # XX.BB's last record stays held when it has an odd count
        wait_for_lines(proc, out, want, 20)
    finally:
        proc.kill()
        proc.wait(10)
    got = out.read_text().splitlines()
    lost = [w for w in want if w not in got]
    assert not lost, f"{len(lost)} of {len(want)} records lost, e.g. {lost[:3]}"


@pytest.mark.parametrize("policy", ["earliest", "now"])
def test_ringserver_crash_with_renumbered_ring(ring, free_port, tmp_path, policy):
    """ringserver is SIGKILLed mid-stream, its ring deleted; it comes back numbering packets anew with the rest of
    the data already in it before the client can reconnect: no packet matches the client's sequence number, so
    it positions by time and gets all of it. With resume_policy "now" (a bare `DATA <seq>`) it gets none of it,
    and each station's missing span is logged and counted as a gap."""
    stations = ["XX.AA", "XX.BB", "YY.CC"]
    records = synth(stations, 30)
    half = 2 * len(records) // 3  # the new ring holds fewer packets than the client's position: none matches
    want = lines_of(records)
    src = SeedLinkSource(ring.address, [f"{s}..HHZ" for s in stations], resume_policy=policy, **FAST)
    try:
        src.start()
        wait_connected(ring, 1)
        first = [ring.feed(c) for c in chunked(records[:half], 3)]
        got = collect_all(src, set(want[:half]), 20)
        ring.kill()
        ring.wipe_ring()
        for path in first:
            path.unlink()
        side_port = free_port()  # refill the new ring where the client cannot see it yet
        ring.start(port=side_port)
        other = synth(["ZZ.OTHER"], 5)  # the new ring starts with another station's data
        ring.feed(b"".join(other + records[half:]))
        n_new = len(other) + len(records) - half
        assert ring.count_packets(n_new - 1, port=side_port) >= n_new - 1  # the oldest one is not counted
        ring.stop()
        ring.start()
        if policy == "earliest":
            got += collect_all(src, set(want[half:]), 20)
        else:
            wait_connected(ring, 3)
            ring.feed(b"".join(synth(stations, 40)[len(records):]))  # new data after the reconnect
            got += collect(src, lambda g: len(g) >= 3, 20)
    finally:
        src.close()
    lines = [record_line(tr) for tr in got]
    if policy == "now":
        assert not set(want[half:]) & set(lines)
        assert src.stats["gaps"] == 3 and set(src.gaps_by_station) == set(stations), src.stats
        return
    assert Counter(lines) == Counter(want), f"missing {sorted(set(want) - set(lines))[:3]}"
    assert src.stats["gaps"] == 0 and src.stats["reconnects"] >= 1, src.stats


@pytest.mark.parametrize("protocol", ["auto", "3.1"])
def test_4096_byte_and_mseed3_records_through_ringserver(ring, protocol):
    """4096-byte miniSEED 2 and miniSEED 3 records cross ringserver (MaxPacketSize 4096) and decode sample for
    sample, over SeedLink 4.0 (negotiated: ringserver offers it) and 3.1."""
    big = synth(["XX.BIG"], 120, reclen=4096)
    ms3 = synth(["XX.MS3"], 60, reclen=4096, mseed3=True)
    assert {len(r) for r in big} == {4096} and all(r[:3] == b"MS\x03" for r in ms3)
    assert max(len(r) for r in ms3) > 512
    want = lines_of(big) + lines_of(ms3)
    src = SeedLinkSource(ring.address, ["XX.BIG..HHZ", "XX.MS3..HHZ"], protocol=protocol, **FAST)
    try:
        src.start()
        wait_connected(ring, 1)
        ring.feed(b"".join(big))
        ring.feed(b"".join(ms3))
        got = collect_all(src, set(want), 20)
    finally:
        src.close()
    assert src.negotiated == ("4.0" if protocol == "auto" else "3.1")
    assert Counter(record_line(tr) for tr in got) == Counter(want)
    assert src.stats["corrupt"] == 0, src.corrupt_reasons
