"""What every stage process shares: the Stage lifecycle, the control channel, the drop-oldest queue, sockets.

Control channel: each stage PUSHes a status message to its supervisor twice a second (liveness for the
systemd watchdog, readiness, and its counters, which the supervisor turns into Prometheus metrics). The
same messages also travel downstream, beside the data, to the inference stage, whose heartbeat reports the
counters of every process upstream, on this host or another.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import structlog
import zmq

from quakemon.base.signals import StopFlag
from quakemon.service.config import EXIT_FATAL  # noqa: F401  (re-exported for the stages)
from quakemon.service.stages.faults import HangInjector
from quakemon.service.stages.messages import Batch, InvalidMessage, Sender, status_frames
from quakemon.wire.schema import MessageError

log = structlog.get_logger(__name__)

ZMQ_HWM = 2
STATUS_INTERVAL_S = 0.5
MAX_RECV_PER_ROUND = 64

Stats = dict[str, Any]


def source_id() -> str:
    """This process's name in status messages: host:pid (pids alone repeat across hosts)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Every:
    """`due()` is True at most once per `interval_s` (the first call is due)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = -float("inf")

    def ready(self) -> bool:
        """Would `due()` be True now (without using it up)?"""
        return time.monotonic() - self.last >= self.interval_s

    def due(self) -> bool:
        if not self.ready():
            return False
        self.last = time.monotonic()
        return True


class StatusReporter:
    """The control channel of one stage: PUSHes {stage, source, pid, ready, loops, progress, stats, time} to
    the supervisor at most every STATUS_INTERVAL_S; never blocks, never raises.

    `latest` is the newest body built, for the stage to pass downstream as well.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str | None, stage: str) -> None:
        self.stage = stage
        self.source = source_id()
        self.sock: zmq.Socket | None = None
        if endpoint:
            self.sock = ctx.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 10)
            self.sock.connect(endpoint)
        self.ready = False
        self.loops = 0
        self.progress = 0
        self.latest: dict[str, Any] | None = None
        self._clock = Every(STATUS_INTERVAL_S)

    def body(self, stats: Stats) -> dict[str, Any]:
        """A status message with these counters."""
        return {"stage": self.stage, "source": self.source, "pid": os.getpid(), "ready": self.ready,
                "loops": self.loops, "progress": self.progress, "stats": stats, "time": time.time()}

    def maybe_send(self, stats: Stats | Callable[[], Stats], force: bool = False) -> dict[str, Any] | None:
        """Send when due (or now with `force`); `stats` may be a callable, computed only then. Returns the body
        sent, or None when it was not due."""
        if not (self._clock.due() or force):
            return None
        self.latest = self.body(stats() if callable(stats) else stats)
        if self.sock is not None:
            try:
                self.sock.send(json.dumps(self.latest, default=float).encode(), zmq.NOBLOCK)
            except zmq.Again:
                pass
        return self.latest

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)


class StatusRelay:
    """Status messages on their way downstream: the newest per (stage, source), sent without blocking.

    Older reports of a process that could not be sent yet are replaced by newer ones (counters are totals).
    """

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}

    def put(self, body: dict[str, Any]) -> None:
        self.pending[(str(body.get("stage")), str(body.get("source")))] = body

    def send(self, sock: zmq.Socket) -> None:
        for key in list(self.pending):
            try:
                frames = status_frames(self.pending[key])
            except MessageError as exc:  # counters that are not JSON (NaN): dropped, never fatal
                log.warning("status_not_sent", stage=key[0], error=str(exc))
                del self.pending[key]
                continue
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                return
            del self.pending[key]


class DropOldestQueue:
    """A window-counted FIFO of batches; over capacity, whole oldest batches are dropped (and counted).

    Each item remembers when it was queued (monotonic), for the micro-batch deadline.
    """

    def __init__(self, capacity_windows: int) -> None:
        self.capacity = max(1, capacity_windows)
        self.items: collections.deque[tuple[Batch, float]] = collections.deque()
        self.windows = 0
        self.dropped = 0

    def put(self, batch: Batch, queued_at: float | None = None) -> None:
        self.items.append((batch, time.monotonic() if queued_at is None else queued_at))
        self.windows += len(batch)
        while self.windows > self.capacity and len(self.items) > 1:
            old, _ = self.items.popleft()
            self.windows -= len(old)
            self.dropped += len(old)

    def popleft(self) -> Batch:
        batch, _ = self.items.popleft()
        self.windows -= len(batch)
        return batch

    def appendleft(self, batch: Batch, queued_at: float) -> None:
        self.items.appendleft((batch, queued_at))
        self.windows += len(batch)

    @property
    def oldest(self) -> float | None:
        """When the oldest queued batch was queued (monotonic), or None when empty."""
        return self.items[0][1] if self.items else None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Batch]:
        return (batch for batch, _ in self.items)


def drain_to(sock: zmq.Socket, queue: DropOldestQueue, kept: DropOldestQueue | None = None,
             sender: Sender | None = None) -> int:
    """Send queued batches without blocking; return how many were sent. `kept`: every sent batch is also put
    there (the ingest stage's resend ring). `sender`: stamped on every batch sent (`Batch.frames`)."""
    sent = 0
    while queue:
        queued_at = queue.oldest or 0.0
        batch = queue.popleft()
        try:
            sock.send_multipart(batch.frames(sender), zmq.NOBLOCK, copy=False)
            sent += 1
        except zmq.Again:
            queue.appendleft(batch, queued_at)
            break
        if kept is not None:
            kept.put(batch)
    return sent


def receive(sock: zmq.Socket, decode_frames: Callable[[list[Any]], Any], rejections: Rejections) -> Iterator[Any]:
    """The messages waiting on `sock` (at most MAX_RECV_PER_ROUND), decoded; malformed ones are counted in
    `rejections` and skipped, never raised."""
    for _ in range(MAX_RECV_PER_ROUND):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            yield decode_frames(frames)
        except InvalidMessage as exc:
            rejections.add(exc)


class Rejections:
    """Received messages dropped as malformed (`InvalidMessage`), counted by reason.

    Logs `stage_message_rejected` for the first rejection and then at most once per LOG_INTERVAL_S (with the
    count since the previous line), so a peer sending garbage cannot flood the log.
    """

    LOG_INTERVAL_S = 10.0

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.total = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self._unlogged = 0
        self._clock = Every(self.LOG_INTERVAL_S)

    def add(self, exc: InvalidMessage) -> None:
        self.total += 1
        self.reasons[exc.reason] += 1
        self._unlogged += 1
        if self._clock.due():
            log.warning("stage_message_rejected", stage=self.stage, reason=exc.reason, error=str(exc)[:300],
                        rejected_since_last_log=self._unlogged, rejected_total=self.total)
            self._unlogged = 0

    def stats(self) -> Stats:
        """The status counters: messages_rejected (total) and messages_rejected_reasons {reason: total}."""
        return {"messages_rejected": self.total, "messages_rejected_reasons": dict(self.reasons)}


def zmq_socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool, max_msg_bytes: int | None = None,
               configure: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    """A PUSH or PULL socket with a tiny HWM (queueing happens in our DropOldestQueue) and no linger.

    max_msg_bytes: ZeroMQ drops (and disconnects) a peer that sends a larger frame, before it is buffered.
    configure: applied before bind/connect (CURVE keys).
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, ZMQ_HWM)
    if max_msg_bytes:
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
    if configure is not None:
        configure(sock)
    if endpoint.startswith("ipc://"):
        os.makedirs(os.path.dirname(endpoint[len("ipc://"):]) or ".", exist_ok=True)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def leaves_host(endpoint: str) -> bool:
    """True for a tcp:// endpoint whose host is not a loopback address (a wildcard or interface name counts as
    leaving the host: other hosts can reach it)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if ";" in host:  # "source;destination": the destination decides
        host = host.rpartition(";")[2]
    return not (host.startswith("127.") or host in LOOPBACK_HOSTS)


class StageCurve:
    """CURVE on the stage PUSH/PULL sockets ([pipeline] curve, curve_secret_key, curve_allowed_keys).

    Every stage host holds the same stage key pair. A binding socket is a CURVE server whose authenticator
    (`quakemon.wire.security.make_curve_server`, as for the publisher) admits only the public keys in
    curve_allowed_keys; a connecting socket is a CURVE client with the pair, trusting the pair's public key.
    A peer without an admitted key completes no handshake: it can neither send to nor receive from the stage.

    Binding sockets live on a context of their own: one ZeroMQ context holds one ZAP authenticator, and the
    inference stage's context may hold the publisher's. `close()` after the stage closed its sockets.
    """

    def __init__(self, mode: str, secret_key_file: str, allowed_keys_dir: str) -> None:
        self.mode = mode
        self.secret_key_file = secret_key_file
        self.allowed_keys_dir = allowed_keys_dir or (os.path.dirname(secret_key_file) or ".")
        self.ctx: zmq.Context | None = None
        self.auth: Any = None

    def wanted(self, endpoint: str) -> bool:
        """Does this endpoint use CURVE? ("on": every one; "auto": those that leave the host)."""
        return self.mode == "on" or (self.mode == "auto" and leaves_host(endpoint))

    def socket(self, ctx: zmq.Context, kind: int, endpoint: str, bind: bool,
               max_msg_bytes: int | None = None) -> zmq.Socket:
        """`zmq_socket`, with CURVE when `wanted(endpoint)`; raises ConfigError when CURVE is wanted without keys."""
        from quakemon.base.errors import ConfigError
        from quakemon.wire.security import make_curve_client, make_curve_server

        if not self.wanted(endpoint):
            return zmq_socket(ctx, kind, endpoint, bind, max_msg_bytes)
        if not self.secret_key_file:
            raise ConfigError(f"pipeline.curve_secret_key: the stage endpoint {endpoint} leaves this host "
                              f'(pipeline.curve = "{self.mode}"): expected a key pair from `quakemon keygen DIR --name '
                              'stages` on every stage host, or pipeline.curve = "off" to send windows in clear')
        if not bind:
            return zmq_socket(ctx, kind, endpoint, bind, max_msg_bytes, configure=lambda sock: make_curve_client(
                sock, self.secret_key_file, self.secret_key_file))
        if self.ctx is None:
            self.ctx = zmq.Context()

        def server(sock: zmq.Socket) -> None:
            self.auth = make_curve_server(sock, self.secret_key_file, self.allowed_keys_dir, sock.context,
                                          section="pipeline")

        sock = zmq_socket(self.ctx, kind, endpoint, bind, max_msg_bytes, configure=server)
        log.info("stage_curve_enabled", endpoint=endpoint, allowed_keys=self.allowed_keys_dir)
        return sock

    @property
    def rejections(self) -> dict[str, int]:
        """Peers refused by the binding socket's authenticator, by reason."""
        return dict(self.auth.rejections) if self.auth is not None else {}

    def close(self) -> None:
        """Stop the authenticator and end the binding sockets' context (their sockets must be closed)."""
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None


class Stage:
    """One stage process: startup -> main loop -> shutdown, steered by a stop flag (as uvicorn's Server is).

    `run()` calls `start()` (False: stopped before the loop began), then `loop()` until `should_stop` is set,
    and always `stop()`, which must cope with a `start()` that failed half way. Each subclass owns a ZeroMQ
    context, a StatusReporter (`status`), and the sockets it creates, all used from the thread that runs it.
    """

    name: ClassVar[str]

    def __init__(self, should_stop: StopFlag, control: str | None) -> None:
        self.should_stop = should_stop
        self.ctx = zmq.Context()
        self.status = StatusReporter(self.ctx, control, self.name)
        self.hang = HangInjector(self.name)
        self.curve: StageCurve | None = None

    def socket(self, kind: int, endpoint: str, bind: bool, max_msg_bytes: int | None = None) -> zmq.Socket:
        """A stage PUSH/PULL socket (`zmq_socket`), with CURVE where [pipeline] curve wants it (`StageCurve`)."""
        if self.curve is None:
            pipeline = self.cfg.pipeline  # type: ignore[attr-defined]  (every stage has its Config)
            self.curve = StageCurve(pipeline.curve, pipeline.curve_secret_key, pipeline.curve_allowed_keys)
        return self.curve.socket(self.ctx, kind, endpoint, bind, max_msg_bytes)

    def run(self) -> int:
        """Run the stage to the end; returns the process exit code."""
        try:
            if not self.start():
                return 0
            return self.loop()
        finally:
            self.stop()

    def start(self) -> bool:
        raise NotImplementedError

    def loop(self) -> int:
        raise NotImplementedError

    def tick(self) -> None:
        """Bookkeeping at the top of every round of the main loop: liveness and the hang test hook."""
        self.hang.check(self.status.progress)
        self.status.loops += 1

    def stop(self) -> None:
        """Close the status socket, the CURVE authenticator and the contexts; subclasses close their own sockets
        first."""
        self.status.close()
        if self.curve is not None:
            self.curve.close()
        self.ctx.term()
