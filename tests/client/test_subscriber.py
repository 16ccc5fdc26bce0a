"""Subscriber over real sockets, SQLite files and subprocesses: exactly once, in order, across restarts."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

from quakemon.base.errors import QuakemonError
from quakemon.client import Position, Subscriber, load_position, save_position
from quakemon.client.subscriber import resolve_endpoint
from quakemon.wire.catchup import CatchupServer
from quakemon.wire.journal import Journal, JournalReader
from quakemon.wire.publisher import Publisher
from quakemon.wire.schema import detection_body, event_body
from quakemon.wire.security import curve_server_configurator, keygen

T0 = 1_251_072_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def detection(k: int) -> dict:
    return detection_body(station=f"BW.S{k % 7}.", state="new", label="earthquake", probability=0.9,
                          probabilities={"noise": 0.1, "earthquake": 0.9}, onset=T0 + 10 * k,
                          window_start=T0 + 10 * k, window_end=T0 + 10 * k + 20, peak_probability=0.9, model=MODEL)


def event(k: int) -> dict:
    return event_body(state="new", label="earthquake", coincidence_sum=1.0, threshold=1.0, window_s=10.0,
                      stations=[{"station": f"BW.S{k % 7}.", "onset": T0 + 10 * k, "probability": 0.9,
                                 "detection_id": detection(k)["id"]}])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def journal_rows(path) -> list[tuple[int, str, str]]:
    rows, after = [], 0
    with JournalReader(path) as reader:
        while page := reader.after(after, limit=1000):
            rows += [(r.seq, r.epoch, json.loads(r.body)["id"]) for r in page]
            after = page[-1].seq
    return rows


# ------------------------------------------------------------------------------------------------ unit parts


def test_position_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "pos.json"
    assert load_position(path) is None
    save_position(path, Position(42, "ep", "jid"))
    assert load_position(path) == Position(42, "ep", "jid")
    save_position(path, Position(43, "ep", "jid"))
    assert load_position(path) == Position(43, "ep", "jid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos.json"]  # no temporary files left
    path.write_text('{"schema": "quakemon.position/1", "seq": -1, "epoch": "e", "journal": "j"}')
    with pytest.raises(QuakemonError, match="pos.json"):
        load_position(path)
    path.write_text("garbage")
    with pytest.raises(QuakemonError, match="pos.json"):
        Subscriber("tcp://127.0.0.1:1", path)


def test_resolve_endpoint_replaces_wildcard_hosts():
    assert resolve_endpoint("tcp://0.0.0.0:7001", "tcp://10.0.0.5:7000") == "tcp://10.0.0.5:7001"
    assert resolve_endpoint("tcp://*:7001", "tcp://quake.example:7000") == "tcp://quake.example:7001"
    assert resolve_endpoint("tcp://10.1.1.1:7001", "tcp://10.0.0.5:7000") == "tcp://10.1.1.1:7001"
    assert resolve_endpoint("ipc:///run/q.sock", "tcp://10.0.0.5:7000") == "ipc:///run/q.sock"


class Daemon:
    """An in-process publisher with a journal and a catch-up server, publishing from its own thread."""

    def __init__(self, tmp_path, *, sndhwm: int = 10_000, curve: tuple | None = None) -> None:
        self.ctx = zmq.Context()
        self.journal = Journal(tmp_path / "j.db", synchronous="normal")
        server_curve = {} if curve is None else {"curve_secret_key": curve[0], "curve_allowed_keys": curve[1]}
        self.catchup = CatchupServer(self.journal.path, **server_curve)
        self.configurator = None if curve is None else curve_server_configurator(*curve)
        self.pub = Publisher("tcp://127.0.0.1:0", context=self.ctx, sndhwm=sndhwm, journal=self.journal,
                             catchup_endpoint=self.catchup.advertised, heartbeat_interval_s=0.05,
                             configure_socket=self.configurator)
        self.queue: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def send(self, bodies) -> None:
        with self.lock:
            self.queue.extend(bodies)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                batch, self.queue = self.queue, []
            for body in batch:
                (self.pub.publish_event if body["schema"] == "quakemon.event/1" else self.pub.publish_detection)(body)
            self.pub.maybe_heartbeat(dict)
            time.sleep(0.002)

    def drained(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if not self.queue:
                    return
            time.sleep(0.01)
        raise AssertionError("daemon did not publish its queue")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.pub.close(linger_ms=0)
        if self.configurator is not None:
            self.configurator.stop()
        self.catchup.close()
        self.journal.close()
        self.ctx.term()


def take(sub: Subscriber, n: int, timeout_s: float = 20.0) -> list:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = sub.get(0.2)
        if msg is not None:
            out.append(msg)
    return out


def test_gaps_in_a_live_stream_are_filled_from_the_journal(tmp_path):
    """A subscriber that stops reading loses messages at its HWM; it still gets every one, in order."""
    daemon = Daemon(tmp_path, sndhwm=5)
    try:
        daemon.send([detection(k) for k in range(20)])
        with Subscriber(daemon.pub.endpoint, tmp_path / "pos.json", rcvhwm=5) as sub:
            first = take(sub, 20)
            assert [m.body["id"] for m in first] == [detection(k)["id"] for k in range(20)]
            assert first[0].source == "catchup"  # published before the subscriber existed
            daemon.send([detection(k) if k % 5 else event(k) for k in range(20, 1000)])
            daemon.drained()
            time.sleep(0.5)  # the SUB queue overflows meanwhile: PUB drops
            rest = take(sub, 980)
            rows = journal_rows(daemon.journal.path)
            assert [(m.seq, m.body["id"]) for m in first + rest] == [(s, i) for s, _, i in rows]
            assert sub.stats["fills"] >= 2 and sub.stats["catchup"] > 20 and sub.stats["live"] > 0
            sub.ack()
            assert load_position(tmp_path / "pos.json").seq == rows[-1][0]
    finally:
        daemon.close()


def test_topics_filter_and_a_resumed_subscriber_starts_after_its_position(tmp_path):
    daemon = Daemon(tmp_path)
    try:
        daemon.send([detection(k) if k % 2 else event(k) for k in range(40)])
        daemon.drained()
        with Subscriber(daemon.pub.endpoint, tmp_path / "pos.json", catchup=daemon.catchup.endpoint,
                        topics=("event",)) as sub:
            got = take(sub, 20)
            assert [m.topic.split(".")[0] for m in got] == ["event"] * 20
            sub.ack()
        daemon.send([event(k) for k in range(40, 45)])
        with Subscriber(daemon.pub.endpoint, tmp_path / "pos.json", catchup=daemon.catchup.endpoint) as sub:
            again = take(sub, 6)
            # The filtered-out detection after the last event taken was never passed, so it comes now.
            assert [m.body["id"] for m in again] == [detection(39)["id"]] + [event(k)["id"] for k in range(40, 45)]
            assert sub.get(0.3) is None
    finally:
        daemon.close()
    # A position from another journal is refused, not silently reinterpreted.
    save_position(tmp_path / "other.json", Position(3, "ep", "0123456789abcdef"))
    (tmp_path / "second").mkdir()
    daemon = Daemon(tmp_path / "second")
    try:
        with Subscriber(daemon.pub.endpoint, tmp_path / "other.json") as sub, \
                pytest.raises(QuakemonError, match="belongs to journal"):
            sub.get(1.0)
    finally:
        daemon.close()


def test_curve_subscriber_gets_everything_and_a_plain_one_nothing(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    server_public, server_secret = keygen(keys, "server")
    client_public, client_secret = keygen(keys, "client")
    (allowed / "client.key").write_bytes(client_public.read_bytes())
    daemon = Daemon(tmp_path, curve=(server_secret, allowed))
    try:
        daemon.send([detection(k) for k in range(10)])
        with Subscriber(daemon.pub.endpoint, tmp_path / "pos.json", curve_secret_key=client_secret,
                        curve_server_key=server_public) as sub:
            assert [m.body["id"] for m in take(sub, 10)] == [detection(k)["id"] for k in range(10)]
        with Subscriber(daemon.pub.endpoint, tmp_path / "plain.json", discover_timeout_s=1.5) as sub, \
                pytest.raises(QuakemonError, match="no heartbeat"):
            sub.get(0.1)
        with Subscriber(daemon.pub.endpoint, tmp_path / "plain.json", catchup=daemon.catchup.endpoint,
                        catchup_deadline_s=1.5, request_timeout_s=0.5) as sub, \
                pytest.raises(QuakemonError, match="did not answer"):
            sub.get(0.1)
        assert not (tmp_path / "plain.json").exists()
    finally:
        daemon.close()


# ------------------------------------------------------------------------------------------------ SIGKILLs

PUBLISHER = textwrap.dedent("""
    import sys, time
    from quakemon.wire.catchup import CatchupServer
    from quakemon.wire.journal import Journal
    from quakemon.wire.publisher import Publisher
    sys.path.insert(0, sys.argv[6])
    from test_subscriber import detection, event
    path, pub_port, catchup_port, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), int(sys.argv[5])
    journal = Journal(path)
    catchup = CatchupServer(path, f"tcp://127.0.0.1:{catchup_port}")
    pub = Publisher(f"tcp://127.0.0.1:{pub_port}", journal=journal, catchup_endpoint=catchup.advertised,
                    heartbeat_interval_s=0.1)
    time.sleep(0.3)
    for k in range(start, start + count):
        pub.maybe_heartbeat(dict)
        (pub.publish_event(event(k)) if k % 9 == 0 else pub.publish_detection(detection(k)))
        time.sleep(0.004)
    for _ in range(5):
        pub.maybe_heartbeat(dict)
        time.sleep(0.1)
    pub.close(linger_ms=1000)
    catchup.close()
    journal.close()
""")

CONSUMER = textwrap.dedent("""
    import os, sys
    from quakemon.client import Subscriber
    endpoint, position, output, raw = sys.argv[1:5]
    # The consumer's own record: the last seq it finished. A message redelivered after a crash between
    # "processed" and "acknowledged" is recognised by its seq and not processed twice.
    done = 0
    if os.path.exists(output):
        lines = open(output).read().split("\\n")
        done = max([int(line.split()[0]) for line in lines if line.strip()] or [0])
    out = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    rawfd = os.open(raw, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    sub = Subscriber(endpoint, position, discover_timeout_s=60)
    for msg in sub.messages():
        os.write(rawfd, b"%d %s %s\\n" % (msg.seq, msg.body["id"].encode(), msg.source.encode()))
        if msg.seq > done:
            os.write(out, b"%d %s %s\\n" % (msg.seq, msg.epoch.encode(), msg.body["id"].encode()))
            done = msg.seq
""")


def test_sigkilled_subscriber_and_restarted_publisher_deliver_exactly_once(tmp_path):
    """3 subscriber SIGKILLs at random points and a publisher restart (new epoch) over 1,200 messages."""
    here = os.path.dirname(os.path.abspath(__file__))
    (tmp_path / "publisher.py").write_text(PUBLISHER)
    (tmp_path / "consumer.py").write_text(CONSUMER)
    journal, position = tmp_path / "j.db", tmp_path / "pos.json"
    output, raw = tmp_path / "out.txt", tmp_path / "raw.txt"
    pub_port, catchup_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{pub_port}"
    rng = random.Random(7)
    log = open(tmp_path / "stderr.txt", "ab")
    procs: list[subprocess.Popen] = []

    def start(args):
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.DEVNULL, stderr=log)
        procs.append(proc)
        return proc

    def consumer():
        return start([tmp_path / "consumer.py", endpoint, position, output, raw])

    try:
        publisher = start([tmp_path / "publisher.py", journal, pub_port, catchup_port, 0, 600, here])
        sub = consumer()
        runs, kills, t0 = 1, 0, time.monotonic()
        kill_at = t0 + rng.uniform(1.0, 2.5)
        deadline = t0 + 90
        while (runs < 2 or publisher.poll() is None or kills < 3) and time.monotonic() < deadline:
            if publisher.poll() is not None and runs < 2:
                assert publisher.returncode == 0, "first publisher run failed"
                publisher = start([tmp_path / "publisher.py", journal, pub_port, catchup_port, 600, 600, here])
                runs += 1
            if kills < 3 and time.monotonic() >= kill_at:
                sub.send_signal(signal.SIGKILL)
                sub.wait(10)
                kills += 1
                time.sleep(rng.uniform(0.0, 0.5))
                sub = consumer()
                kill_at = time.monotonic() + rng.uniform(1.0, 2.5)
            time.sleep(0.02)
        assert publisher.wait(30) == 0 and runs == 2 and kills == 3
        rows = journal_rows(journal)
        assert len(rows) == 1200 and len({epoch for _, epoch, _ in rows}) == 2
        expected = [f"{seq} {epoch} {id_}" for seq, epoch, id_ in rows]
        while time.monotonic() < deadline:
            lines = output.read_text().splitlines() if output.exists() else []
            if len(lines) >= len(expected):
                break
            time.sleep(0.1)
        assert output.read_text().splitlines() == expected
        # The library itself: every message in order; a repeat only right after a restart (the message the
        # killed consumer had taken but not acknowledged), at most one per kill.
        raw_lines = [line.split() for line in raw.read_text().splitlines()]
        seqs = [int(line[0]) for line in raw_lines]
        repeats = [i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]]
        assert len(repeats) <= 3
        assert all(seqs[i] == seqs[i - 1] for i in repeats)
        assert sorted(set(seqs)) == [row[0] for row in rows]
        sources = {line[2] for line in raw_lines}
        assert sources == {"live", "catchup"}
        assert load_position(position).seq in (rows[-1][0], rows[-2][0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        log.close()
