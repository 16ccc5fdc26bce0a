"""A subscriber that delivers every journaled message once, in seq order, across restarts on either side.

:class:`Subscriber` joins the live PUB stream and the publisher's catch-up server (:mod:`quakemon.wire.catchup`)
and stitches them:

1. It subscribes first and buffers what arrives live, learning the catch-up endpoint from a heartbeat's
   ``catchup`` field unless one was given.
2. It fetches, page by page, everything after its stored position (or, with no position file yet, from the
   oldest message the journal holds).
3. For each live message it drops what it already queued (seq at or below its position) and, whenever the live
   stream is not contiguous (a seq gap, a publisher restart with a new epoch, a heartbeat whose ``seq_last``
   it has not seen), it first fetches the missing seqs from the catch-up server. The publisher commits each
   message to the journal before sending it, so everything before a live seq is always there to fetch.

Delivery and acknowledgement: :meth:`Subscriber.get` (and iteration) returns one message at a time. The position
file (``{"seq", "epoch", "journal"}``) is replaced atomically (temporary file, fsync, rename, fsync of the
directory) when a message is acknowledged: explicitly with :meth:`ack`, or, with ``auto_ack=True`` (default), by
asking for the next message. A consumer that processes a message and then acknowledges it sees every message
exactly once, except the one message it was processing when it crashed, which comes again after the restart
(at-least-once at that boundary); consumers that must not repeat it compare ``message.seq`` with their own
record of the last seq they finished. Messages are never skipped unless the journal's retention deleted them
before the subscriber fetched them (logged as ``catchup_pruned``).

Heartbeats are consumed internally, never returned. `topics` filters by topic prefix after stitching; the
position still advances over filtered-out messages. Use one Subscriber from one thread.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
import zmq

from quakemon.base.errors import QuakemonError
from quakemon.base.files import atomic_write
from quakemon.wire.catchup import CATCHUP_SCHEMA
from quakemon.wire.schema import HEARTBEAT_TOPIC
from quakemon.wire.security import make_curve_client

log = structlog.get_logger(__name__)

POSITION_SCHEMA = "quakemon.position/1"


@dataclass(frozen=True)
class Message:
    """One delivered message: the published body and where it came from ("live" or "catchup")."""

    seq: int
    epoch: str
    topic: str
    body: dict[str, Any]
    source: str


@dataclass(frozen=True)
class Position:
    """The last acknowledged message: its seq and epoch, and the id of the journal it came from."""

    seq: int
    epoch: str
    journal: str


def load_position(path: str | Path) -> Position | None:
    """The position stored in `path`, or None if the file does not exist; raises QuakemonError if unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != POSITION_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {POSITION_SCHEMA!r}")
        seq, epoch, journal = data["seq"], data["epoch"], data["journal"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"seq must be an int >= 0, got {seq!r}")
        if not isinstance(epoch, str) or not isinstance(journal, str):
            raise ValueError("epoch and journal must be strings")
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise QuakemonError(f"position file {str(path)!r} is not a quakemon position: {exc}") from None
    return Position(seq, epoch, journal)


def save_position(path: str | Path, position: Position) -> None:
    """Replace `path` atomically with `position`: temporary file, fsync, rename, fsync of the directory."""
    path = Path(path)
    text = json.dumps({"schema": POSITION_SCHEMA, "seq": position.seq, "epoch": position.epoch,
                       "journal": position.journal})
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def resolve_endpoint(advertised: str, pub_endpoint: str) -> str:
    """`advertised` with a wildcard host (``*``, ``0.0.0.0``, ``[::]``) replaced by the PUB endpoint's host."""
    adv, pub = urlsplit(advertised), urlsplit(pub_endpoint)
    host = adv.netloc.rsplit(":", 1)[0]
    if adv.scheme == "tcp" and host in ("*", "0.0.0.0", "[::]") and pub.hostname:
        pub_host = pub.netloc.rsplit(":", 1)[0]
        return f"tcp://{pub_host}:{adv.netloc.rsplit(':', 1)[1]}"
    return advertised


class CatchupClient:
    """Request/reply with a catch-up server over a DEALER; reconnects and resends when a reply is late."""

    def __init__(self, context: zmq.Context, endpoint: str, *, request_timeout_s: float = 5.0,
                 curve: tuple[str | Path, str | Path] | None = None) -> None:
        self.context, self.endpoint, self.curve = context, endpoint, curve
        self.request_timeout_s = request_timeout_s
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                make_curve_client(sock, *self.curve)
            sock.connect(self.endpoint)
            self._socket = sock
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def request(self, op: str, deadline_s: float, **fields: Any) -> dict[str, Any]:
        """One request; retries (new connection) every `request_timeout_s` until `deadline_s` seconds passed."""
        req_id = next(self._ids)
        payload = json.dumps({"schema": CATCHUP_SCHEMA, "op": op, "id": req_id, **fields}).encode()
        deadline = time.monotonic() + deadline_s
        while True:
            sock = self._connect()
            sock.send_multipart([b"", payload])
            wait_until = min(deadline, time.monotonic() + self.request_timeout_s)
            while (remaining := wait_until - time.monotonic()) > 0:
                if not sock.poll(int(remaining * 1000) + 1):
                    continue
                frames = sock.recv_multipart()
                try:
                    reply = json.loads(frames[-1])
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if not isinstance(reply, dict) or reply.get("id") != req_id:
                    continue  # the answer to an earlier, resent request
                if not reply.get("ok"):
                    raise QuakemonError(f"catch-up server {self.endpoint}: {reply.get('error')}")
                return reply
            self._reset()
            if time.monotonic() >= deadline:
                raise QuakemonError(f"catch-up server {self.endpoint} did not answer {op!r} within {deadline_s} s")
            log.info("catchup_retry", endpoint=self.endpoint, op=op)

    def close(self) -> None:
        self._reset()


class Subscriber:
    """Exactly-once, in-order delivery of journaled messages from one publisher (see the module docstring)."""

    def __init__(self, endpoint: str, position_file: str | Path, *, catchup: str | None = None,
                 topics: Sequence[str] = ("",), auto_ack: bool = True, page: int = 500,
                 curve_secret_key: str | Path | None = None, curve_server_key: str | Path | None = None,
                 request_timeout_s: float = 5.0, catchup_deadline_s: float = 60.0,
                 discover_timeout_s: float = 30.0, rcvhwm: int = 100_000,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.position_file = Path(position_file)
        self.topics = tuple(topics)
        self.auto_ack = auto_ack
        self.page = int(page)
        self.catchup_deadline_s = catchup_deadline_s
        self.discover_timeout_s = discover_timeout_s
        self.request_timeout_s = request_timeout_s
        self._curve = None
        if curve_secret_key is not None or curve_server_key is not None:
            if curve_secret_key is None or curve_server_key is None:
                raise QuakemonError("subscriber CURVE needs both the client secret key and the server public key")
            self._curve = (curve_secret_key, curve_server_key)
        self._catchup_endpoint = catchup
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._rcvhwm = rcvhwm
        self.position = load_position(self.position_file)
        self.stats = {"live": 0, "catchup": 0, "duplicates": 0, "fills": 0, "delivered": 0, "pruned": 0}
        self._sub: zmq.Socket | None = None
        self._client: CatchupClient | None = None
        self._journal: str | None = None
        self._ready: deque[Message] = deque()
        self._queued = 0
        self._live_epoch: str | None = None
        self._live_last: int | None = None
        self._taken: Position | None = None

    # ---------------------------------------------------------------------------------------------- start-up
    def _start(self) -> None:
        if self._sub is not None:
            return
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self._rcvhwm)
        if self._curve is not None:
            make_curve_client(sub, *self._curve)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.endpoint)
        self._sub = sub
        early: list[list[bytes]] = []
        if self._catchup_endpoint is None:
            deadline = time.monotonic() + self.discover_timeout_s
            while self._catchup_endpoint is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QuakemonError(f"no heartbeat with a 'catchup' endpoint from {self.endpoint} within "
                                        f"{self.discover_timeout_s} s; pass catchup= explicitly")
                if sub.poll(int(min(remaining, 0.2) * 1000) + 1):
                    frames = sub.recv_multipart()
                    early.append(frames)
                    body = self._decode(frames)
                    if body is not None and frames[0] == HEARTBEAT_TOPIC.encode() and body.get("catchup"):
                        self._catchup_endpoint = resolve_endpoint(body["catchup"], self.endpoint)
        self._client = CatchupClient(self._context, self._catchup_endpoint,
                                     request_timeout_s=self.request_timeout_s, curve=self._curve)
        info = self._client.request("info", self.catchup_deadline_s)
        self._journal = info["journal"]
        if self.position is None:
            self._queued = max(0, int(info["first_seq"]) - 1)
        else:
            if self.position.journal != self._journal:
                raise QuakemonError(f"position file {str(self.position_file)!r} belongs to journal "
                                    f"{self.position.journal!r}, the server has journal {self._journal!r}")
            if self.position.seq > int(info["last_seq"]):
                raise QuakemonError(f"position file {str(self.position_file)!r} is at seq {self.position.seq}, "
                                    f"after the journal's last seq {info['last_seq']}")
            self._queued = self.position.seq
        log.info("subscriber_started", endpoint=self.endpoint, catchup=self._catchup_endpoint,
                 journal=self._journal, resume_after=self._queued)
        self._fill(None)
        for frames in early:
            self._on_live(frames)

    # ---------------------------------------------------------------------------------------------- stitching
    @staticmethod
    def _decode(frames: list[bytes]) -> dict[str, Any] | None:
        if len(frames) != 2:
            return None
        try:
            body = json.loads(frames[1])
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("seq"), int) or not isinstance(
                body.get("epoch"), str):
            return None
        return body

    def _enqueue(self, seq: int, epoch: str, topic: str, body: dict[str, Any], source: str) -> None:
        self._ready.append(Message(seq, epoch, topic, body, source))
        self._queued = seq
        self.stats[source] += 1

    def _fill(self, before: int | None) -> None:
        """Queue every journaled message after the queued position (and before `before`), page by page."""
        assert self._client is not None
        self.stats["fills"] += 1
        first_page = True
        while True:
            fields: dict[str, Any] = {"seq": self._queued, "limit": self.page}
            if before is not None:
                fields["before"] = before
            reply = self._client.request("after", self.catchup_deadline_s, **fields)
            if reply["journal"] != self._journal:
                raise QuakemonError(f"catch-up server {self._client.endpoint} now serves journal "
                                    f"{reply['journal']!r}, not {self._journal!r}")
            if first_page and int(reply["first_seq"]) > self._queued + 1 and self._queued > 0:
                self.stats["pruned"] += 1
                log.warning("catchup_pruned", after=self._queued, first_seq=reply["first_seq"],
                            effect="messages between them were deleted by retention before they were fetched")
            first_page = False
            for item in reply["messages"]:
                if item["seq"] > self._queued:
                    self._enqueue(item["seq"], item["epoch"], item["topic"], item["body"], "catchup")
            if not reply["more"]:
                return

    def _on_live(self, frames: list[bytes]) -> None:
        body = self._decode(frames)
        if body is None:
            log.warning("subscriber_bad_message", frames=len(frames))
            return
        topic = frames[0].decode("utf-8", "replace")
        seq, epoch = body["seq"], body["epoch"]
        if epoch != self._live_epoch:
            if self._live_epoch is not None:
                log.info("publisher_restarted", epoch=epoch, previous=self._live_epoch, seq=seq)
            self._live_epoch, self._live_last = epoch, None
        elif self._live_last is not None and seq <= self._live_last:
            self.stats["duplicates"] += 1
            return
        contiguous = self._live_last is not None and seq == self._live_last + 1
        self._live_last = seq
        if topic == HEARTBEAT_TOPIC:
            seq_last = body.get("seq_last")
            if not contiguous and isinstance(seq_last, int) and seq_last > self._queued:
                self._fill(seq)
            return
        if seq <= self._queued:
            self.stats["duplicates"] += 1
            return
        if not contiguous and seq > self._queued + 1:
            self._fill(seq)
        self._enqueue(seq, epoch, topic, body, "live")

    def _pump(self, timeout_s: float) -> None:
        """Take what the SUB socket has (waiting at most `timeout_s` for the first frame) into the queue."""
        assert self._sub is not None
        if not self._sub.poll(int(max(0.0, timeout_s) * 1000)):
            return
        for _ in range(10_000):
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_live(frames)

    # ---------------------------------------------------------------------------------------------- delivery
    def _wanted(self, topic: str) -> bool:
        return any(topic.startswith(prefix) for prefix in self.topics)

    def get(self, timeout_s: float = 1.0) -> Message | None:
        """The next message, or None if none came within `timeout_s` (catch-up requests may take longer).

        With ``auto_ack`` the message returned by the previous call is acknowledged first.
        """
        self._start()
        if self.auto_ack:
            self.ack()
        deadline = time.monotonic() + timeout_s
        while True:
            while self._ready:
                msg = self._ready.popleft()
                self._taken = Position(msg.seq, msg.epoch, self._journal or "")
                if self._wanted(msg.topic):
                    self.stats["delivered"] += 1
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(min(remaining, 0.2))

    def ack(self) -> None:
        """Acknowledge the last message returned: store its position (atomically) so it is not delivered again."""
        if self._taken is not None:
            save_position(self.position_file, self._taken)
            self.position, self._taken = self._taken, None

    def messages(self, idle_timeout_s: float | None = None) -> Iterator[Message]:
        """Messages until `idle_timeout_s` passes without one (forever when None); see :meth:`get` for acks."""
        while True:
            msg = self.get(1.0 if idle_timeout_s is None else idle_timeout_s)
            if msg is None:
                if idle_timeout_s is not None:
                    return
                continue
            yield msg

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def close(self) -> None:
        """Close the sockets. The last message returned stays unacknowledged unless :meth:`ack` was called."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        if self._own_context:
            self._context.term()
        log.info("subscriber_closed", endpoint=self.endpoint, position=self.position, **self.stats)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
