"""``quakemon listen``: subscribe to a quakemon publisher, print detections and events, report what was missed.

Events (``quakemon.event/1``, topic ``event.<id>``, from the association stage in the daemon or from
``quakemon associate``) print as one line per state change: ``EVENT new|updated|closed``, the number of
stations, the coincidence sum, the first onset and each station with its onset and probability.

Reports (stderr, or JSON lines with ``"kind": "listen"`` on stdout with ``--json``):

* ``seq_gap``: messages missed, e.g. ``seq gap: 12 -> 20, 7 messages missed``. Subscribed to everything
  (no ``--topic``), the publisher-wide ``seq`` is checked; with a topic prefix, the per-topic ``topic_seq`` of
  each topic seen, since other topics' messages are filtered out on purpose.
* ``epoch_change``: the publisher restarted (new ``epoch``); seq tracking starts over.
* ``silence`` / ``resumed``: nothing (not even a heartbeat) for more than ``silence_s``, and its end.
  Heartbeats are always subscribed internally, so silence is detected whatever the topic prefix; they are
  printed only with ``show_heartbeats``.
* ``malformed``: a message that does not follow the wire schema (printed, then ignored).

No completeness guarantee for late joiners: the first message of an epoch (or of a topic) seen sets the baseline.

With ``--resume FILE`` (a publisher with a journal, see docs/delivery.md) nothing is missed: messages come from a
:class:`quakemon.client.Subscriber` that stitches the live stream with the publisher's catch-up server and keeps
its position in FILE. A FILE that does not exist yet starts from the oldest message the journal holds; an
existing one continues after the last message printed. Each message is printed and flushed, then acknowledged,
so a listen that is killed prints every message once, in seq order, except that the one being printed at that
instant may print again after the restart (its ``seq`` tells). Output formats are the same; the only reports
are ``epoch_change`` (seq gaps are filled, not reported; heartbeats, used internally, are never printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import zmq

from quakemon.base.errors import ConfigError, QuakemonError
from quakemon.base.signals import stop_on_signals
from quakemon.client.subscriber import Subscriber
from quakemon.wire.schema import (
    DETECTION_SCHEMA,
    EVENT_SCHEMA,
    HEARTBEAT_TOPIC,
    MessageError,
    iso_utc,
    json_bytes,
    parse_body,
)
from quakemon.wire.security import make_curve_client

LISTEN_SCHEMA = "quakemon.tools.listen/1"
_POLL_MS = 100


class SeqTracker:
    """Finds seq gaps, epoch changes and silences in the messages of one publisher endpoint."""

    def __init__(self, per_topic: bool, silence_s: float, now: float) -> None:
        self.per_topic = per_topic
        self.silence_s = silence_s
        self.epoch: str | None = None
        self._last: dict[str, int] = {}
        self._last_rx = now
        self._silent_since: float | None = None
        self.missed = 0

    def observe(self, topic: str, body: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Reports caused by one received message (monotonic time `now`)."""
        reports: list[dict[str, Any]] = []
        if self._silent_since is not None:
            reports.append({"event": "resumed", "silent_s": round(now - self._last_rx, 3)})
            self._silent_since = None
        self._last_rx = now
        epoch = body["epoch"]
        if epoch != self.epoch:
            if self.epoch is not None:
                reports.append({"event": "epoch_change", "old_epoch": self.epoch, "new_epoch": epoch})
            self.epoch = epoch
            self._last.clear()
        key, seq = (topic, body["topic_seq"]) if self.per_topic else ("", body["seq"])
        last = self._last.get(key)
        if last is not None and seq != last + 1:
            if seq > last + 1:
                self.missed += seq - last - 1
                reports.append({"event": "seq_gap", "topic": topic if self.per_topic else None,
                                "from_seq": last, "to_seq": seq, "missed": seq - last - 1})
            else:
                reports.append({"event": "seq_backwards", "topic": topic if self.per_topic else None,
                                "from_seq": last, "to_seq": seq})
        self._last[key] = seq
        return reports

    def check_silence(self, now: float) -> list[dict[str, Any]]:
        """A ``silence`` report, once, when nothing arrived for more than silence_s."""
        if self._silent_since is None and now - self._last_rx > self.silence_s:
            self._silent_since = now
            return [{"event": "silence", "silent_s": round(now - self._last_rx, 3), "epoch": self.epoch,
                     "last_seq": self._last.get("") if not self.per_topic else None}]
        return []


def report_text(report: dict[str, Any], endpoint: str) -> str:
    """One readable line for a listen report."""
    event = report["event"]
    topic = f" on {report['topic']}" if report.get("topic") else ""
    if event == "seq_gap":
        return f"seq gap{topic}: {report['from_seq']} -> {report['to_seq']}, {report['missed']} messages missed"
    if event == "seq_backwards":
        return f"seq went backwards{topic}: {report['from_seq']} -> {report['to_seq']}"
    if event == "epoch_change":
        return f"publisher restarted: epoch {report['old_epoch']} -> {report['new_epoch']}"
    if event == "silence":
        if report["epoch"] is None:
            return f"no messages from {endpoint} for {report['silent_s']:.1f} s"
        return (f"publisher silent for {report['silent_s']:.1f} s (no heartbeat; epoch {report['epoch']}, "
                f"last seq {report['last_seq']})")
    if event == "resumed":
        return f"publisher back after {report['silent_s']:.1f} s of silence"
    if event == "malformed":
        return f"malformed message on {report.get('topic')!r}: {report['error']}"
    return json.dumps(report)


def _pick_text(pick: dict[str, Any] | None) -> str:
    """``P=<time> ±<uncertainty>s <method> snr=<snr>`` of a ``pick`` object ('' without one)."""
    if not pick:
        return ""
    snr = pick.get("snr")
    return (f" {pick.get('phase', 'P')}={pick['time']} ±{pick['uncertainty_s']:.2f}s {pick['method']}"
            + (f" snr={snr:.1f}" if isinstance(snr, int | float) else ""))


def detection_text(body: dict[str, Any]) -> str:
    """One readable line for a detection: receive time, station, state, label, probability, onset (the P pick)
    with its uncertainty, method and SNR."""
    line = (f"{iso_utc(time.time())[:19]}Z {body['station']:<14} {body['state']:<6} {body['label']} "
            f"p={body['probability']:.3f} peak={body['peak_probability']:.3f} onset={body['onset']}"
            f"{_pick_text(body.get('pick'))}")
    if body["state"] == "closed":
        line += f" end={body['end']} ({body.get('close_reason')})"
    latency = body.get("latency_s")
    return line + (f" latency={latency:.2f}s" if latency is not None else "") + f" id={body['id']} seq={body['seq']}"


def event_text(body: dict[str, Any]) -> str:
    """One readable line for an event: state, stations, coincidence sum, first onset, each station's pick (its
    onset, with the pick's uncertainty where the row carries one)."""
    stations = " ".join(f"{s['station']}@{s['onset'][11:22]}"
                        + (f"±{s['pick']['uncertainty_s']:.2f}" if s.get("pick") else "")
                        + f"(p={s['probability']:.2f})" for s in body["stations"])
    line = (f"{iso_utc(time.time())[:19]}Z EVENT {body['state']:<7} {body['label']} {body['n_stations']} stations "
            f"sum={body['coincidence_sum']:g}/{body['threshold']:g} first_onset={body['first_onset']} [{stations}]")
    if body["state"] == "closed":
        line += f" ({body.get('close_reason')})"
    return line + f" id={body['id']} seq={body['seq']}"


def heartbeat_text(body: dict[str, Any]) -> str:
    """One readable line for a heartbeat."""
    lag = body.get("lag_s")
    return (f"{body['time'][:19]}Z heartbeat seq={body['seq']} uptime={body['uptime_s']:.0f}s "
            f"stations={body['stations']} windows={body['windows_in']}/{body['windows_out']} "
            f"dropped={body['dropped']} lag={'-' if lag is None else f'{lag:.2f}s'}")


def listen(
    endpoint: str,
    topic_prefix: str = "",
    as_json: bool = False,
    silence_s: float = 3.0,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    out: TextIO | None = None,
    curve: tuple[str, str] | None = None,
    *,
    err: TextIO | None = None,
    configure_socket: Callable[[zmq.Socket], None] | None = None,
    show_heartbeats: bool = False,
    stop: threading.Event | None = None,
    context: zmq.Context | None = None,
) -> int:
    """Subscribe to `endpoint` and print until `max_messages` were printed, `timeout_s` passed or `stop` is set
    (`main` sets it on SIGINT/SIGTERM); returns the exit code (0).

    `curve`: (client secret key file, server public key file); `configure_socket` is called on the SUB socket
    before it connects (socket options, CURVE keys).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if not silence_s > 0:
        raise ConfigError(f"listen silence must be > 0 seconds, got {silence_s!r}")
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            make_curve_client(sock, curve[0], curve[1])
        if configure_socket is not None:
            configure_socket(sock)
        sock.setsockopt_string(zmq.SUBSCRIBE, topic_prefix)
        if topic_prefix and not HEARTBEAT_TOPIC.startswith(topic_prefix):
            sock.setsockopt_string(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise ConfigError(f"listen endpoint {endpoint!r}: cannot connect: {exc}") from exc
    except BaseException:  # e.g. an unreadable CURVE key file: the socket must not outlive the call
        sock.close(linger=0)
        raise

    def emit_reports(reports: list[dict[str, Any]]) -> None:
        for report in reports:
            if as_json:
                out.write(json.dumps({"schema": LISTEN_SCHEMA, "kind": "listen", **report}) + "\n")
                out.flush()
            else:
                err.write(f"listen: {report_text(report, endpoint)}\n")
                err.flush()

    start = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    tracker = SeqTracker(per_topic=bool(topic_prefix), silence_s=silence_s, now=start)
    printed = 0
    try:
        while not (stop is not None and stop.is_set()) and (max_messages is None or printed < max_messages):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait_ms = _POLL_MS if deadline is None else max(0, min(_POLL_MS, int((deadline - now) * 1000) + 1))
            if sock.poll(wait_ms, zmq.POLLIN):
                while max_messages is None or printed < max_messages:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    printed += _handle(frames, topic_prefix, as_json, show_heartbeats, tracker, out, emit_reports)
            emit_reports(tracker.check_silence(time.monotonic()))
    finally:
        sock.close(linger=0)
    return 0


def listen_resume(
    endpoint: str,
    position_file: str,
    topic_prefix: str = "",
    as_json: bool = False,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    out: TextIO | None = None,
    curve: tuple[str, str] | None = None,
    *,
    err: TextIO | None = None,
    catchup: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """`listen` without losses: every journaled message once, in seq order, across restarts (position in
    `position_file`; see the module docstring). `catchup`: the catch-up endpoint (default: from a heartbeat)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    sub = Subscriber(endpoint, position_file, catchup=catchup, topics=(topic_prefix,), auto_ack=False,
                     curve_secret_key=curve[0] if curve else None, curve_server_key=curve[1] if curve else None)
    epoch = sub.position.epoch if sub.position is not None else None
    printed = 0
    try:
        while not (stop is not None and stop.is_set()) and (max_messages is None or printed < max_messages):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            msg = sub.get(0.2 if remaining is None else min(0.2, remaining))
            if msg is None:
                continue
            if epoch is not None and msg.epoch != epoch:
                report = {"event": "epoch_change", "old_epoch": epoch, "new_epoch": msg.epoch}
                if as_json:
                    out.write(json.dumps({"schema": LISTEN_SCHEMA, "kind": "listen", **report}) + "\n")
                else:
                    err.write(f"listen: {report_text(report, endpoint)}\n")
                    err.flush()
            epoch = msg.epoch
            if as_json:
                out.write(json_bytes(msg.body).decode("utf-8") + "\n")
            else:
                text = event_text if msg.body.get("schema") == EVENT_SCHEMA else detection_text
                out.write(text(msg.body) + "\n")
            out.flush()
            sub.ack()  # after the line is out: a kill in between prints it again, never loses it
            printed += 1
    finally:
        sub.close()
    return 0


def _handle(frames: list[bytes], topic_prefix: str, as_json: bool, show_heartbeats: bool, tracker: SeqTracker,
            out: TextIO, emit_reports: Callable[[list[dict[str, Any]]], None]) -> int:
    """Process one message; returns 1 if it was printed."""
    topic = frames[0].decode("utf-8", "replace") if frames else ""
    try:
        if len(frames) != 2:
            raise MessageError(f"expected 2 frames [topic, body], got {len(frames)}")
        body = parse_body(frames[1])
    except MessageError as exc:
        emit_reports([{"event": "malformed", "topic": topic, "error": str(exc)}])
        return 0
    emit_reports(tracker.observe(topic, body, time.monotonic()))
    schema = body["schema"]
    if not (topic.startswith(topic_prefix) if schema in (DETECTION_SCHEMA, EVENT_SCHEMA) else show_heartbeats):
        return 0
    if as_json:
        out.write(frames[1].decode("utf-8") + "\n")  # the body exactly as published
    else:
        text = {DETECTION_SCHEMA: detection_text, EVENT_SCHEMA: event_text}.get(schema, heartbeat_text)(body)
        out.write(text + "\n")
    out.flush()
    return 1


def build_parser() -> argparse.ArgumentParser:
    """The ``quakemon listen`` arguments."""
    parser = argparse.ArgumentParser(prog="quakemon listen", description="Subscribe to quakemon detections and events; "
                                     "report seq gaps, publisher restarts and silence.")
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5557")
    parser.add_argument("--topic", default="", help="topic prefix, e.g. detection.BW (default: everything)")
    parser.add_argument("--json", action="store_true", help="print raw JSON bodies and JSON reports, one a line")
    parser.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
    parser.add_argument("--silence", type=float, default=3.0, metavar="S",
                        help="report the publisher silent after S seconds without messages (default 3)")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N printed messages")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--curve-secret", metavar="FILE", help="client secret key file (CURVE)")
    parser.add_argument("--curve-server-public", metavar="FILE", help="server public key file (CURVE)")
    parser.add_argument("--resume", metavar="FILE", help="lossless: stitch in missed messages from the publisher's "
                        "journal and keep the position in FILE (a new FILE starts from the oldest message held)")
    parser.add_argument("--catchup", metavar="EP", help="with --resume: the catch-up endpoint (default: the one "
                        "the publisher's heartbeats advertise)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``quakemon listen``; SIGINT/SIGTERM stop it cleanly. Returns the exit code."""
    args = build_parser().parse_args(argv)
    if bool(args.curve_secret) != bool(args.curve_server_public):
        print("quakemon listen: error: --curve-secret and --curve-server-public go together", file=sys.stderr)
        return 2
    try:
        with stop_on_signals(threading.Event()) as stop:
            if args.resume:
                return listen_resume(
                    args.endpoint, args.resume, topic_prefix=args.topic, as_json=args.json,
                    max_messages=args.count, timeout_s=args.timeout,
                    curve=(args.curve_secret, args.curve_server_public) if args.curve_secret else None,
                    catchup=args.catchup, stop=stop,
                )
            if args.catchup:
                raise ConfigError("--catchup needs --resume")
            return listen(
                args.endpoint, topic_prefix=args.topic, as_json=args.json, silence_s=args.silence,
                max_messages=args.count, timeout_s=args.timeout,
                curve=(args.curve_secret, args.curve_server_public) if args.curve_secret else None,
                show_heartbeats=args.heartbeats, stop=stop,
            )
    except QuakemonError as exc:
        print(f"quakemon listen: error: {exc}", file=sys.stderr)
        return exc.exit_code
