"""Journal on real SQLite files: pages, seq continuity, retention, refusals, and SIGKILLed writers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from quakemon.wire.journal import Journal, JournalError, JournalReader
from quakemon.wire.publisher import Publisher
from quakemon.wire.schema import detection_body, parse_body

T0 = 1_251_072_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def detection(k: int, station: str = "BW.RJOB.") -> dict:
    return detection_body(station=station, state="new", label="earthquake", probability=0.9,
                          probabilities={"noise": 0.1, "earthquake": 0.9}, onset=T0 + 10 * k,
                          window_start=T0 + 10 * k, window_end=T0 + 10 * k + 20, peak_probability=0.9, model=MODEL)


def fill(journal: Journal, n: int, start: int = 1, t0: float = 1000.0) -> None:
    for seq in range(start, start + n):
        journal.append(seq, "ep", "detection.BW.RJOB", json.dumps({"seq": seq}), t=t0 + seq)


def test_pages_after_and_since_are_bounded_and_ordered(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        fill(journal, 25)
        assert journal.bounds() == (1, 25)
        page = journal.after(0, limit=10)
        assert [r.seq for r in page] == list(range(1, 11))
        assert [r.seq for r in journal.after(10, limit=10)] == list(range(11, 21))
        assert [r.seq for r in journal.after(20, limit=10)] == list(range(21, 26))
        assert journal.after(25) == []
        assert [r.seq for r in journal.after(3, limit=100, before=7)] == [4, 5, 6]
        assert [r.seq for r in journal.since(1000.0 + 20, limit=3)] == [20, 21, 22]
        assert journal.since(5000.0) == []
        assert json.loads(page[0].body) == {"seq": 1} and page[0].topic == "detection.BW.RJOB"
        # Pages are capped even when a caller asks for more.
        assert len(journal.after(0, limit=10**9)) == 25


def test_seq_continues_across_reopen_and_must_grow(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        fill(journal, 5)
        journal_id = journal.journal_id
    with Journal(path) as journal:
        assert journal.seq_last == 5 and journal.journal_id == journal_id
        with pytest.raises(JournalError, match="not after the last seq 5"):
            journal.append(5, "ep2", "t", "{}")
        journal.append(9, "ep2", "t", "{}")  # a hole (a heartbeat's seq) is fine
        assert journal.seq_last == 9
    with JournalReader(path) as reader:
        assert reader.bounds() == (1, 9) and reader.journal_id == journal_id


def test_publisher_journals_before_sending_and_continues_seq_with_a_new_epoch(tmp_path):
    ctx = zmq.Context()
    path = tmp_path / "j.db"
    try:
        with Journal(path) as journal:
            pub = Publisher("tcp://127.0.0.1:0", context=ctx, journal=journal, catchup_endpoint="tcp://h:1")
            pub.publish_detection(detection(0))
            pub.publish_heartbeat({})
            pub.publish_detection(detection(1))
            first_epoch = pub.epoch
            hb = parse_body(pub.recent()[1][1])
            assert hb["catchup"] == "tcp://h:1" and hb["seq"] == 2
            pub.close()
            assert [r.seq for r in journal.after(0)] == [1, 3]  # heartbeats are not journaled
        with Journal(path) as journal:
            pub = Publisher("tcp://127.0.0.1:0", context=ctx, journal=journal)
            assert pub.seq_last == 3 and pub.epoch != first_epoch
            pub.publish_detection(detection(2))
            pub.publish_heartbeat({})
            assert "catchup" not in parse_body(pub.recent()[-1][1])
            pub.close()
            records = journal.after(0)
            assert [(r.seq, r.epoch) for r in records] == [(1, first_epoch), (3, first_epoch), (4, pub.epoch)]
            assert [parse_body(r.body.encode())["id"] for r in records] == [detection(k)["id"] for k in range(3)]
    finally:
        ctx.term()


def test_retention_by_days_and_by_size_keeps_the_newest(tmp_path):
    now = 10 * 86400.0
    with Journal(tmp_path / "days.db", retention_days=2) as journal:
        for seq, age_days in enumerate([5, 4, 3, 1.5, 0.5], start=1):
            journal.append(seq, "ep", "t", "{}", t=now - age_days * 86400)
        assert journal.prune(now=now) == 3
        assert journal.bounds() == (4, 5)
        assert journal.prune(now=now + 30 * 86400) == 1  # all expired: the newest stays, seq keeps growing
        assert journal.bounds() == (5, 5)
    with Journal(tmp_path / "days.db") as journal:
        assert journal.seq_last == 5
    with Journal(tmp_path / "size.db", max_bytes=200_000, prune_every=50, synchronous="normal") as journal:
        for seq in range(1, 2001):
            journal.append(seq, "ep", "t", json.dumps({"pad": "x" * 500, "seq": seq}))
        journal.prune()
        first, last = journal.bounds()
        assert last == 2000 and first > 1000
        assert journal.live_bytes() <= 200_000
        assert [r.seq for r in journal.after(first - 1, limit=5)] == list(range(first, first + 5))


def test_refuses_files_that_are_not_journals(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(JournalError, match="notes.txt.*not an SQLite file"):
        Journal(text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE stations (code TEXT)")
    with pytest.raises(JournalError, match="other.db.*not a quakemon journal"):
        Journal(other)
    with pytest.raises(JournalError, match="other.db.*not a quakemon journal"):
        JournalReader(other)
    with pytest.raises(JournalError, match="is a directory"):
        Journal(tmp_path)
    with pytest.raises(JournalError, match="does not exist"):
        JournalReader(tmp_path / "missing.db")
    with pytest.raises(JournalError, match="cannot be created"):
        Journal(tmp_path / "no" / "such" / "dir" / "j.db")
    with pytest.raises(JournalError, match="synchronous"):
        Journal(tmp_path / "j.db", synchronous="off")


def test_refuses_a_corrupt_journal(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path, synchronous="normal") as journal:
        for seq in range(1, 3001):
            journal.append(seq, "ep", "t", json.dumps({"pad": "y" * 200}))
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # scribble over pages in the middle, leaving the header intact
        fh.seek(size // 3)
        fh.write(os.urandom(size // 3))
    with pytest.raises(JournalError, match="j.db.*corrupt"):
        Journal(path)


def test_refuses_a_read_only_journal(tmp_path):
    """A file the daemon cannot write is refused; as root (who writes any mode) the file is made immutable."""
    path = tmp_path / "j.db"
    Journal(path).close()
    path.chmod(0o444)
    immutable = os.geteuid() == 0
    if immutable:
        chattr = shutil.which("chattr")
        assert chattr, "chattr (e2fsprogs) is needed to make a file read-only for root"
        subprocess.run([chattr, "+i", str(path)], check=True)
    try:
        with pytest.raises(JournalError, match="j.db.*not writable"):
            Journal(path)
    finally:
        if immutable:
            subprocess.run([chattr, "-i", str(path)], check=False)


# A zygote that imports once and forks one writer per line on stdin, so 100 kills fit in the time box. Each
# writer opens the journal, prints "open <pid>", then appends as fast as it can, printing every acknowledged seq.
WRITER = textwrap.dedent("""
    import os, sys
    from quakemon.wire.journal import Journal
    body = '{"schema":"quakemon.detection/1","pad":"' + 'z' * 300 + '"}'
    out = sys.stdout.fileno()
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            journal = Journal(sys.argv[1], synchronous=line.strip(), check=False)
            seq = journal.seq_last
            os.write(out, b"open %d\\n" % os.getpid())
            while True:
                seq += 1
                journal.append(seq, "ep", "detection.BW.RJOB", body)
                os.write(out, b"%d\\n" % seq)
        os.waitpid(pid, 0)
        os.write(out, b"dead\\n")
""")


class LineReader:
    """Lines from a pipe with a deadline, so a stuck writer fails the test instead of hanging it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def until(self, predicate, timeout_s: float = 20.0) -> list[bytes]:
        lines: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                lines.append(line)
                if predicate(line):
                    return lines
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no expected line within {timeout_s} s; got {lines[-3:]}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"writer exited; last lines {lines[-3:]}"
                self.buf += chunk


def test_sigkilled_writer_loses_no_acknowledged_message(tmp_path):
    """100 SIGKILLs at random moments: the file always opens, passes integrity_check, holds every acked seq."""
    path = tmp_path / "j.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(1234)
    acked_all: set[int] = set()
    started = time.monotonic()
    zygote = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    reader = LineReader(zygote.stdout.fileno())
    pid = None
    try:
        for i in range(100):
            zygote.stdin.write(("full", "normal")[i % 2].encode() + b"\n")
            zygote.stdin.flush()
            opened = reader.until(lambda line: line.startswith(b"open "))
            pid = int(opened[-1].split()[1])
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(pid, signal.SIGKILL)
            lines = reader.until(lambda line: line == b"dead")
            acked_all.update(int(line) for line in lines if line.isdigit())
            with sqlite3.connect(path) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            with Journal(path) as journal:  # quick_check and the meta table on open
                last = journal.seq_last
                present: set[int] = set()
                after = 0
                while page := journal.after(after, limit=10_000):
                    present.update(r.seq for r in page)
                    after = page[-1].seq
            assert acked_all <= present, f"kill {i}: acknowledged seqs missing: {sorted(acked_all - present)[:10]}"
            assert present == set(range(1, last + 1)), f"kill {i}: seqs are not 1..{last}"
    finally:
        if pid is not None:  # a writer still running after a failure must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        zygote.kill()
        zygote.wait(timeout=10)
        zygote.stdin.close()
        zygote.stdout.close()
    assert len(acked_all) > 100, "the writer hardly wrote anything; the kills tested nothing"
    assert time.monotonic() - started < 90
