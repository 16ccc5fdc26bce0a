"""`quakemon listen` over real loopback sockets: printing, seq gaps, publisher restarts, silence."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from quakemon.pipeline.picker import Pick
from quakemon.pipeline.trigger import DetectionRef, TriggerEvent
from quakemon.tools.listen import SeqTracker, listen, main, report_text
from quakemon.wire.publisher import Publisher

T0 = 1_251_072_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def detection(station="BW.RJOB.", k=0, state="new"):
    closed = state == "closed"
    ref = DetectionRef(station, T0, T0 + 20, Pick(int(T0 + 17) * 1_000_000_000 + 230_000_000, 0.08, "aic", 12.5))
    ev = TriggerEvent(station=station, state=state, label="earthquake", probability=0.3 if closed else 0.9,
                      probabilities={"noise": 0.1, "earthquake": 0.9}, onset=T0, window_start=T0 + 10 * k,
                      window_end=T0 + 10 * k + 20, peak_probability=0.95, end=T0 + 30 if closed else None,
                      close_reason="off" if closed else None, detection=ref)
    return ev.to_body(MODEL)


class Lines(io.TextIOBase):
    """A thread-safe text sink; `delay_s` per write makes a slow reader."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self.delay_s = delay_s

    def write(self, s: str) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self._parts.append(s)
        return len(s)

    def lines(self) -> list[str]:
        with self._lock:
            return "".join(self._parts).splitlines()

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


class ListenThread:
    """Runs listen() in a thread until stopped; every wait is bounded."""

    def __init__(self, ctx, endpoint, **kwargs):
        self.out, self.err = kwargs.pop("out", Lines()), Lines()
        self.stop = threading.Event()
        self.rc = None

        def target():
            self.rc = listen(endpoint, out=self.out, err=self.err, stop=self.stop, context=ctx, timeout_s=60,
                             **kwargs)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "listen did not stop"


def wait_until(predicate, timeout_s=10.0, tick=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_seq_tracker_gaps_epochs_silence():
    tr = SeqTracker(per_topic=False, silence_s=1.0, now=0.0)
    assert tr.observe("heartbeat", {"epoch": "a", "seq": 5, "topic_seq": 1}, 0.1) == []  # baseline
    assert tr.observe("detection.BW.RJOB", {"epoch": "a", "seq": 6, "topic_seq": 1}, 0.2) == []
    gap = tr.observe("heartbeat", {"epoch": "a", "seq": 13, "topic_seq": 2}, 0.3)
    assert gap == [{"event": "seq_gap", "topic": None, "from_seq": 6, "to_seq": 13, "missed": 6}]
    assert report_text(gap[0], "x") == "seq gap: 6 -> 13, 6 messages missed"
    assert tr.check_silence(1.2) == []
    silence = tr.check_silence(1.4)
    assert [r["event"] for r in silence] == ["silence"] and silence[0]["last_seq"] == 13
    assert tr.check_silence(5.0) == []  # reported once
    restart = tr.observe("heartbeat", {"epoch": "b", "seq": 1, "topic_seq": 1}, 6.0)
    assert [r["event"] for r in restart] == ["resumed", "epoch_change"]
    assert restart[1]["old_epoch"] == "a" and restart[1]["new_epoch"] == "b"
    assert tr.observe("heartbeat", {"epoch": "b", "seq": 2, "topic_seq": 2}, 6.1) == []
    assert tr.missed == 6
    # Per topic: other topics' seq numbers do not count as gaps.
    tp = SeqTracker(per_topic=True, silence_s=1.0, now=0.0)
    assert tp.observe("detection.BW.RJOB", {"epoch": "a", "seq": 3, "topic_seq": 1}, 0) == []
    assert tp.observe("detection.BW.RJOB", {"epoch": "a", "seq": 9, "topic_seq": 2}, 0) == []
    gap = tp.observe("detection.BW.RJOB", {"epoch": "a", "seq": 20, "topic_seq": 5}, 0)
    assert gap[0]["missed"] == 2 and gap[0]["topic"] == "detection.BW.RJOB"


def test_prints_detections_filters_topics_and_hides_heartbeats(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    # Heartbeats are subscribed internally but not printed; the topic filter keeps GR.FUR out.
    lt = ListenThread(ctx, pub.endpoint, topic_prefix="detection.BW", show_heartbeats=False)
    try:
        # The first detection is printed only once the subscription has reached the publisher.
        assert wait_until(lambda: lt.out.lines(), tick=lambda: pub.publish_detection(detection()))
        pub.publish_detection(detection("GR.FUR.", k=1))
        pub.publish_detection(detection(k=2, state="closed"))
        assert wait_until(lambda: any(" closed " in line for line in lt.out.lines()))
    finally:
        lt.close()
        pub.close()
    lines = lt.out.lines()
    assert all("BW.RJOB." in line for line in lines) and not any("heartbeat" in line for line in lines)
    new_line = lines[0]
    for part in ("BW.RJOB.", "new", "earthquake", "p=0.900", "onset=2009-08-24T00:00:17.230000Z",
                 "P=2009-08-24T00:00:17.230000Z ±0.08s aic snr=12.5"):
        assert part in new_line
    assert "end=2009-08-24T00:00:30.000000Z (off)" in lines[-1]
    assert lt.rc == 0


def test_listen_reports_every_seq_gap_of_a_slow_subscriber(ctx):
    """A slow listener with a tiny RCVHWM loses messages; every loss is reported."""

    def small_buffers(sock):
        sock.setsockopt(zmq.RCVHWM, 10)
        sock.setsockopt(zmq.RCVBUF, 4096)

    pub = Publisher("tcp://127.0.0.1:0", context=ctx, sndhwm=10, linger_ms=0,
                    configure_socket=lambda s: s.setsockopt(zmq.SNDBUF, 4096))
    lt = ListenThread(ctx, pub.endpoint, as_json=True, show_heartbeats=True, configure_socket=small_buffers,
                      out=Lines(delay_s=0.001))
    try:
        assert wait_until(lambda: lt.out.lines(), tick=lambda: pub.publish_heartbeat({}))
        for k in range(20_000):
            pub.publish_detection(detection(k=k))

        def tail_seen():
            bodies = [x for x in lt.out.json_lines() if "seq" in x]
            return bodies and bodies[-1]["seq"] >= pub.seq_last - 1

        assert wait_until(tail_seen, timeout_s=60, tick=lambda: pub.publish_heartbeat({}))
    finally:
        lt.close()
        pub.close()
    records = lt.out.json_lines()
    seqs = [r["seq"] for r in records if r.get("schema", "").startswith(("quakemon.detection", "quakemon.heartbeat"))]
    gaps = [r for r in records if r.get("kind") == "listen" and r["event"] == "seq_gap"]
    assert gaps, "no seq gap reported although messages were dropped"
    missed_really = (seqs[-1] - seqs[0] + 1) - len(seqs)
    assert missed_really > 0
    assert sum(g["missed"] for g in gaps) == missed_really
    print(f"received {len(seqs)} of {seqs[-1] - seqs[0] + 1}, {len(gaps)} gaps reported, {missed_really} missed")


def test_listen_reports_publisher_death_and_restart_as_epoch_change(ctx):
    """Publisher death -> silence report; restart on the same endpoint -> epoch change."""
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    endpoint, old_epoch = pub.endpoint, pub.epoch
    lt = ListenThread(ctx, endpoint, silence_s=0.5)
    pub2 = None
    try:
        assert wait_until(lambda: lt.out.lines(), tick=lambda: pub.publish_detection(detection()))
        pub.close(linger_ms=0)
        assert wait_until(lambda: any("publisher silent" in line for line in lt.err.lines()), timeout_s=5)
        pub2 = Publisher(endpoint, context=ctx, linger_ms=0)
        assert pub2.epoch != old_epoch
        assert wait_until(lambda: any("restarted" in line for line in lt.err.lines()), timeout_s=15,
                          tick=lambda: pub2.publish_heartbeat({}))
    finally:
        lt.close()
        if pub2 is not None:
            pub2.close()
    reports = lt.err.lines()
    assert [line.split(":")[1].split()[0:2] for line in reports] == [
        ["publisher", "silent"], ["publisher", "back"], ["publisher", "restarted"]]
    assert reports[-1] == f"listen: publisher restarted: epoch {old_epoch} -> {pub2.epoch}"
    assert f"epoch {old_epoch}, last seq " in reports[0]


def test_listen_reports_silence_and_recovery(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    lt = ListenThread(ctx, pub.endpoint, as_json=True, silence_s=0.5, show_heartbeats=True)
    try:
        assert wait_until(lambda: lt.out.lines(), tick=lambda: pub.publish_heartbeat({}))
        # The publisher goes quiet (stalled): no heartbeats for more than silence_s.
        assert wait_until(lambda: any(r.get("event") == "silence" for r in lt.out.json_lines()), timeout_s=5)
        assert wait_until(lambda: any(r.get("event") == "resumed" for r in lt.out.json_lines()),
                          tick=lambda: pub.publish_heartbeat({}))
    finally:
        lt.close()
        pub.close()
    silence = next(r for r in lt.out.json_lines() if r.get("event") == "silence")
    assert silence["kind"] == "listen" and silence["schema"] == "quakemon.tools.listen/1"
    assert silence["silent_s"] >= 0.5 and silence["epoch"] == pub.epoch


def test_listen_without_publisher_reports_no_messages_and_stops_on_timeout(ctx):
    with zmq.Context() as tmp:  # a free port nobody listens on
        s = tmp.socket(zmq.PUB)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close(0)
    out, err = Lines(), Lines()
    start = time.monotonic()
    rc = listen(f"tcp://127.0.0.1:{port}", silence_s=0.3, timeout_s=1.0, out=out, err=err, context=ctx)
    assert rc == 0 and time.monotonic() - start < 10
    assert out.lines() == []
    assert err.lines() == [f"listen: no messages from tcp://127.0.0.1:{port} for 0.3 s"]


def test_listen_reports_malformed_messages(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    lt = ListenThread(ctx, f"tcp://127.0.0.1:{port}", silence_s=30.0)
    try:
        assert wait_until(lambda: lt.err.lines(), tick=lambda: pub.send_multipart([b"detection.X.Y", b"{nope"]))
        pub.send_multipart([b"heartbeat", b'{"schema": "quakemon.heartbeat/1"}'])
        assert wait_until(lambda: any("heartbeat body" in line for line in lt.err.lines()))
    finally:
        lt.close()
        pub.close(0)
    assert lt.err.lines()[0].startswith("listen: malformed message on 'detection.X.Y': body is not valid JSON")
    assert lt.out.lines() == []


def test_main_parses_flags_and_reports_usage_errors(ctx, capsys):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    try:
        assert main([pub.endpoint, "--topic", "detection.BW", "--json", "--timeout", "0.3", "--silence", "5"]) == 0
        assert main(["not-an-endpoint", "--timeout", "0.3"]) == 2
        assert "listen endpoint 'not-an-endpoint'" in capsys.readouterr().err
        assert main([pub.endpoint, "--curve-secret", "x.key_secret", "--timeout", "0.1"]) == 2
        with pytest.raises(SystemExit) as exc:
            main([pub.endpoint, "--count", "many"])
        assert exc.value.code == 2
    finally:
        pub.close()


def test_cli_prints_heartbeats_and_stops_cleanly_on_sigint(ctx):
    """`quakemon listen ENDPOINT --heartbeats` in a subprocess: readable heartbeat lines, SIGINT -> exit 0."""
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    code = "import sys; from quakemon.tools.listen import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, pub.endpoint, "--heartbeats", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: first, timeout_s=30, tick=lambda: pub.publish_heartbeat({"stations": 4}))
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        pub.close()
    assert rc == 0
    assert " heartbeat seq=" in first[0] and "stations=4" in first[0]


def event(state="new"):
    from quakemon.wire.schema import event_body, iso_utc, pick_body

    stations = [{"station": s, "onset": iso_utc(T0 + i), "probability": 0.9, "weight": 1.0, "detection_id": f"d{i}",
                 "pick": pick_body(int(T0 + i) * 1_000_000_000, 0.05 * (i + 1), "aic", 10.0)}
                for i, s in enumerate(["BW.UH1.", "BW.UH2.", "BW.UH3."])]
    return event_body(state=state, label="earthquake", stations=stations, coincidence_sum=3.0, threshold=3.0,
                      window_s=10.0, close_reason="window" if state == "closed" else None)


def test_prints_events_and_filters_them_by_topic(ctx):
    pub = Publisher("tcp://127.0.0.1:0", context=ctx, linger_ms=0)
    lt = ListenThread(ctx, pub.endpoint, topic_prefix="event")
    lj = ListenThread(ctx, pub.endpoint, as_json=True)
    try:
        assert wait_until(lambda: lt.out.lines() and lj.out.lines(), tick=lambda: pub.publish_event(event()))
        pub.publish_detection(detection())  # not an event: filtered out by the "event" prefix
        pub.publish_event(event("closed"))
        assert wait_until(lambda: any("closed" in line for line in lt.out.lines()))
        assert wait_until(lambda: any(b.get("state") == "closed" and "n_stations" in b for b in lj.out.json_lines()))
    finally:
        lt.close()
        lj.close()
        pub.close()
    lines = lt.out.lines()
    assert all(" EVENT " in line for line in lines)
    for part in ("EVENT new", "3 stations", "sum=3/3", "first_onset=2009-08-24T00:00:00.000000Z",
                 "BW.UH2.@00:00:01.00±0.10"):
        assert part in lines[0]
    assert lines[-1].count("EVENT closed") == 1 and "(window)" in lines[-1]
    assert any(b.get("schema") == "quakemon.detection/2" for b in lj.out.json_lines())  # --json shows everything
