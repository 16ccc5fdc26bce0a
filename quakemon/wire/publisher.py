"""The PUB end of quakemon: detections and 1 Hz heartbeats to any number of subscribers, never blocking.

Messages are ``[topic, JSON body]`` (see :mod:`quakemon.wire.schema`). Every body is stamped with ``seq``,
``topic_seq`` and ``epoch``, so subscribers see what they missed and when the publisher restarted.

Delivery policy (ZeroMQ PUB semantics, verified in tests/wire/test_publisher.py):

* A slow, stopped or dead subscriber never blocks the publisher. When a subscriber's queue (``sndhwm``
  messages on our side, plus its own RCVHWM and the kernel buffers) is full, PUB drops that subscriber's
  messages silently; the others are unaffected. The publisher cannot count those drops; subscribers see them as
  ``seq`` gaps (``quakemon listen`` reports them).
* ZMTP heartbeats (``heartbeat_ivl_s``, ``heartbeat_timeout_s``, default 1 s / 3 s) and TCP keepalive
  disconnect a peer that stopped answering (e.g. a SIGSTOPped subscriber) and free its queue.
* Late joiners get no history: a subscriber receives only what is published after its subscription reached
  the publisher (ZeroMQ's "slow joiner"). The last ``ring_size`` messages are kept in :meth:`Publisher.recent`.
* With a ``journal`` (:class:`quakemon.wire.journal.Journal`), every detection and event is committed to it
  before it is sent, and seq continues from the journal's last seq (new epoch), so nothing a subscriber missed
  is lost: it fetches the missing seqs from the catch-up server (:mod:`quakemon.wire.catchup`), whose endpoint
  heartbeats advertise in ``catchup``. A failed journal write raises and the message is not sent.

The socket belongs to the thread that created the Publisher; call every method from that thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import zmq

from quakemon.base.errors import ConfigError, QuakemonError
from quakemon.wire.journal import Journal
from quakemon.wire.schema import (
    HEARTBEAT_TOPIC,
    Sequencer,
    data_age_s,
    detection_topic,
    event_topic,
    heartbeat_body,
    json_bytes,
    latency_s,
    validate_detection,
    validate_event,
)

log = structlog.get_logger(__name__)


class HeartbeatTimer:
    """Says when the next heartbeat is due, from a monotonic clock the owning loop passes in."""

    def __init__(self, interval_s: float = 1.0) -> None:
        if not interval_s > 0:
            raise ConfigError(f"heartbeat interval must be > 0 seconds, got {interval_s!r}")
        self.interval_s = interval_s
        self._next: float | None = None

    def due(self, now: float) -> bool:
        """True (and schedules the next one) when a heartbeat is due at monotonic time `now`."""
        if self._next is None or now >= self._next:
            # Schedule from now when late by more than one interval, so a stalled loop does not burst.
            base = now if self._next is None or now - self._next > self.interval_s else self._next
            self._next = base + self.interval_s
            return True
        return False


class Publisher:
    """A bound PUB socket that stamps, encodes and sends detection and heartbeat bodies without blocking."""

    def __init__(
        self,
        endpoint: str,
        context: zmq.Context | None = None,
        sndhwm: int = 10_000,
        epoch: str | None = None,
        *,
        linger_ms: int = 500,
        heartbeat_interval_s: float = 1.0,
        heartbeat_ivl_s: float = 1.0,
        heartbeat_timeout_s: float = 3.0,
        handshake_ivl_s: float = 5.0,
        ring_size: int = 1000,
        configure_socket: Callable[[zmq.Socket], None] | None = None,
        journal: Journal | None = None,
        catchup_endpoint: str | None = None,
    ) -> None:
        self._context = context or zmq.Context.instance()
        self.sequencer = Sequencer(epoch)
        self.journal = journal
        self.catchup_endpoint = catchup_endpoint
        if journal is not None:
            self.sequencer.seq_last = journal.seq_last
        self._timer = HeartbeatTimer(heartbeat_interval_s)
        self._started = time.monotonic()
        self._ring: deque[tuple[bytes, bytes]] = deque(maxlen=max(0, ring_size))
        self.stats = {"sent": 0, "send_errors": 0, "bytes": 0, "detections": 0, "heartbeats": 0, "events": 0}
        sock = self._context.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, int(linger_ms))
            sock.setsockopt(zmq.SNDHWM, int(sndhwm))
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_ivl_s * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout_s * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TTL, int(heartbeat_timeout_s * 1000))
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(handshake_ivl_s * 1000))
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 10)
            sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
            sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
            if configure_socket is not None:
                configure_socket(sock)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise QuakemonError(f"publish.endpoint {endpoint!r}: cannot bind PUB socket: {exc}") from exc
        self._socket = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("publisher_bound", endpoint=self.endpoint, epoch=self.epoch, sndhwm=sndhwm,
                 seq_last=self.seq_last, journal=None if journal is None else str(journal.path))

    @classmethod
    def from_config(
        cls,
        publish: Any,
        context: zmq.Context | None = None,
        epoch: str | None = None,
        heartbeat_interval_s: float = 1.0,
        configure_socket: Callable[[zmq.Socket], None] | None = None,
        journal: Journal | None = None,
        catchup_endpoint: str | None = None,
    ) -> Publisher:
        """A Publisher from the [publish] config section (endpoint, sndhwm, zmq_heartbeat_*, handshake, linger).

        CURVE keys are applied by `configure_socket` (quakemon.wire.security), called before bind. `journal` and
        `catchup_endpoint` are passed through (see the class).
        """
        return cls(
            publish.endpoint, context=context, sndhwm=publish.sndhwm, epoch=epoch,
            linger_ms=int(publish.linger_s * 1000), heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_ivl_s=publish.zmq_heartbeat_ivl_s, heartbeat_timeout_s=publish.zmq_heartbeat_timeout_s,
            handshake_ivl_s=publish.handshake_ivl_s, configure_socket=configure_socket, journal=journal,
            catchup_endpoint=catchup_endpoint,
        )

    @property
    def epoch(self) -> str:
        return self.sequencer.epoch

    @property
    def seq_last(self) -> int:
        return self.sequencer.seq_last

    def _send(self, topic: str, body: dict[str, Any]) -> int | None:
        self.sequencer.stamp(topic, body)
        frames = (topic.encode("utf-8"), json_bytes(body))
        if self.journal is not None and topic != HEARTBEAT_TOPIC:
            self.journal.append(body["seq"], self.epoch, topic, frames[1])
        self._ring.append(frames)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB drops at HWM by itself; kept as a safety net should the socket type change
            self.stats["send_errors"] += 1
            return None
        self.stats["sent"] += 1
        self.stats["bytes"] += len(frames[1])
        return body["seq"]

    def publish_detection(self, body: dict[str, Any], arrival: float | None = None) -> int | None:
        """Stamp and send a detection body (from :func:`quakemon.wire.schema.detection_body`) on its station topic.

        `arrival`: host time (``time.time()``) the window's last sample arrived; sets ``latency_s``, and
        ``data_age_s`` from the body's ``last_window_end``.
        Returns the message's seq, or None if the socket refused it.
        """
        if arrival is not None:
            body["latency_s"] = latency_s(arrival)
            body["data_age_s"] = data_age_s(body["last_window_end"])
        validate_detection(body, stamped=False)
        seq = self._send(detection_topic(body["station"]), body)
        self.stats["detections"] += 1
        log.debug("detection_published", station=body["station"], state=body["state"], seq=body["seq"],
                  id=body["id"])
        return seq

    def publish_event(self, body: dict[str, Any]) -> int | None:
        """Stamp and send an event body (from :func:`quakemon.wire.schema.event_body`) on ``event.<id>``."""
        validate_event(body, stamped=False)
        seq = self._send(event_topic(body["id"]), body)
        self.stats["events"] += 1
        log.info("event_published", id=body["id"], state=body["state"], stations=body["n_stations"],
                 first_onset=body["first_onset"], seq=body["seq"])
        return seq

    def publish_heartbeat(self, stats: Mapping[str, Any] | None = None) -> int | None:
        """Send a heartbeat with pipeline counters `stats` (see :func:`quakemon.wire.schema.heartbeat_body`)."""
        body = heartbeat_body(stats or {}, uptime_s=time.monotonic() - self._started, seq_last=self.seq_last,
                              catchup=self.catchup_endpoint)
        self.stats["heartbeats"] += 1
        return self._send(HEARTBEAT_TOPIC, body)

    def maybe_heartbeat(self, stats_fn: Callable[[], Mapping[str, Any]], now: float | None = None) -> bool:
        """Publish a heartbeat if one is due (1 Hz by default); call it from the owning loop at least that often."""
        if not self._timer.due(time.monotonic() if now is None else now):
            return False
        self.publish_heartbeat(stats_fn())
        return True

    def recent(self, n: int | None = None) -> list[tuple[bytes, bytes]]:
        """The last `n` (default all kept) published messages as (topic, body) frames, oldest first."""
        items = list(self._ring)
        return items if n is None else items[-n:] if n > 0 else []

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (waiting at most `linger_ms`, default the constructor's, for queued messages)."""
        if not self._socket.closed:
            self._socket.close(linger=linger_ms)
            log.info("publisher_closed", endpoint=self.endpoint, epoch=self.epoch, **self.stats)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
