"""The pipeline stages as processes joined by ZeroMQ PUSH/PULL: ingest, preprocess, inference.

    ingest      SeedLink source -> station windows -> PUSH (binds pipeline.windows_endpoint)
    preprocess  PULL (connects windows) -> the one batched transform -> PUSH (connects spectra)
    inference   PULL (binds pipeline.spectra_endpoint) -> micro-batches -> HybridViT -> trigger -> PUB

Queues are bounded at every hop and overflow drops the *oldest* windows, counted in `dropped_*` stats that
travel downstream to the heartbeat: a stage that falls behind never blocks the SeedLink reading loop.
ZeroMQ's own queues are kept tiny (HWM 2) so that queueing, and the drop decision, happen in our deques
(`pipeline.queue_hwm` windows per stage).

Each stage reports a status message twice a second to the supervisor's control socket (liveness for the
systemd watchdog, readiness, counters). Every socket is owned by the thread that created it. A stage started
by the supervisor stops by itself when the supervisor disappears (parent-death signal, and a parent-pid check).

Resume (ingest): a SeedLink record counts as processed, and is committed to the state file, only once no
window still to be cut needs its samples; a restart therefore re-reads at most one window length per
station (at-least-once: windows cut just before a stop may be cut again; detection ids are stable).

Test hooks (environment): QUAKEMON_INJECT_FAULT=cuda makes every forward raise a sticky CUDA error after
warm-up (RELIABILITY #15); QUAKEMON_INJECT_HANG=<stage>[:after_s] makes that stage's loop hang for good
after `after_s` seconds (default 0) without reporting status (RELIABILITY #22).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import structlog
import zmq

from quakemon.models.contract import InputContract
from quakemon.service.config import Config
from quakemon.wire.schema import pack_arrays, unpack_arrays

log = structlog.get_logger(__name__)

STAGES = ("ingest", "preprocess", "inference")
ZMQ_HWM = 2
STATUS_INTERVAL_S = 0.5
SOURCE_EXPIRY_S = 30.0  # upstream stats not refreshed for this long are dropped from heartbeats
MAX_RECV_PER_ROUND = 64
# Upstream counters ride on data messages at most this often (they grow with the station count: sending them
# on every message made the header JSON an O(stations) cost per message: about a quarter of the preprocess
# stage's profile samples at 400 stations).
STATS_INTERVAL_S = 0.25
# Ingest sends the windows cut since its last send as one message once the oldest of them has waited
# FLUSH_AGE_S, or at once when FLUSH_WINDOWS are pending: windows complete one by one as records arrive, and a
# message per window made every downstream step run on batches of ~4 windows (measured at 300 stations: 70
# transform calls/s at ~1.3 ms of fixed cost each, and a ~0.2 ms zero-copy send per message). The added
# latency is at most FLUSH_AGE_S + FEED_TICK_S.
FLUSH_WINDOWS = 256
FLUSH_AGE_S = 0.1
FEED_TICK_S = 0.05
JOIN_GRACE_S = 0.3  # PUB bound -> spectra PULL bound, at least: three of ZeroMQ's default 100 ms connect retries
EXIT_FATAL = 70  # a stage that must not be restarted in place (poisoned GPU): the daemon exits non-zero


def source_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StopFlag:
    """Set by SIGTERM/SIGINT (handlers only record the signal) or when the supervising parent is gone."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._parent: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())

    def watch_parent(self, parent: int) -> None:
        """Stop once `parent` is no longer our parent process (it exited and we were re-parented)."""
        self._parent = parent

    def is_set(self) -> bool:
        if self._parent is not None and not self.event.is_set() and os.getppid() != self._parent:
            log.warning("supervisor_gone", parent=self._parent, action="stopping")
            self.event.set()
        return self.event.is_set()


class StatusReporter:
    """PUSHes {stage, pid, ready, loops, progress, stats} to the supervisor; never blocks, never raises."""

    def __init__(self, ctx: zmq.Context, endpoint: str | None, stage: str) -> None:
        self.stage = stage
        self.sock = None
        if endpoint:
            self.sock = ctx.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 10)
            self.sock.connect(endpoint)
        self.ready = False
        self.loops = 0
        self.progress = 0
        self._sent = 0.0

    def maybe_send(self, stats: dict[str, Any] | Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Send at most every STATUS_INTERVAL_S (or now with `force`); `stats` may be a callable (computed lazily)."""
        now = time.monotonic()
        if self.sock is None or (not force and now - self._sent < STATUS_INTERVAL_S):
            return
        self._sent = now
        body = {"stage": self.stage, "pid": os.getpid(), "ready": self.ready, "loops": self.loops,
                "progress": self.progress, "stats": stats() if callable(stats) else stats, "time": time.time()}
        try:
            self.sock.send(json.dumps(body, default=float).encode(), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)


class DropOldestQueue:
    """A window-counted FIFO of (header, arrays) batches; over capacity, whole oldest batches are dropped.

    Each item remembers when it was queued (monotonic), for the micro-batch deadline.
    """

    def __init__(self, capacity_windows: int) -> None:
        self.capacity = max(1, capacity_windows)
        self.items: collections.deque[tuple[dict, dict, float]] = collections.deque()
        self.windows = 0
        self.dropped = 0

    def put(self, header: dict, arrays: dict, queued_at: float | None = None) -> None:
        self.items.append((header, arrays, time.monotonic() if queued_at is None else queued_at))
        self.windows += len(header["windows"])
        while self.windows > self.capacity and len(self.items) > 1:
            old, _, _ = self.items.popleft()
            self.windows -= len(old["windows"])
            self.dropped += len(old["windows"])

    def popleft(self) -> tuple[dict, dict]:
        header, arrays, _ = self.items.popleft()
        self.windows -= len(header["windows"])
        return header, arrays

    def appendleft(self, header: dict, arrays: dict, queued_at: float) -> None:
        self.items.appendleft((header, arrays, queued_at))
        self.windows += len(header["windows"])

    @property
    def oldest(self) -> float | None:
        """When the oldest queued batch was queued (monotonic), or None when empty."""
        return self.items[0][2] if self.items else None

    def __len__(self) -> int:
        return len(self.items)


def _drain_to(sock: zmq.Socket, queue: DropOldestQueue) -> int:
    """Send queued batches without blocking; return how many were sent."""
    sent = 0
    while queue:
        queued_at = queue.oldest or 0.0
        header, arrays = queue.popleft()
        try:
            sock.send_multipart(pack_arrays(header, arrays), zmq.NOBLOCK, copy=False)
            sent += 1
        except zmq.Again:
            queue.appendleft(header, arrays, queued_at)
            break
    return sent


def _socket(ctx: zmq.Context, kind: int, endpoint: str, bind: bool) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM if kind == zmq.PUSH else zmq.RCVHWM, ZMQ_HWM)
    if endpoint.startswith("ipc://"):
        os.makedirs(os.path.dirname(endpoint[len("ipc://"):]) or ".", exist_ok=True)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


class _Every:
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


class _HangInjector:
    """QUAKEMON_INJECT_HANG=<stage>[:after_s]: the test hook for a stuck stage (no status, no progress).

    The clock starts at the stage's first unit of work, so the hang comes after start-up (and READY).
    """

    def __init__(self, stage: str) -> None:
        name, _, after = os.environ.get("QUAKEMON_INJECT_HANG", "").partition(":")
        self.enabled = name == stage
        self.after = float(after or 0)
        self.at: float | None = None

    def check(self, progress: int) -> None:
        if not self.enabled or progress == 0:
            return
        now = time.monotonic()
        if self.at is None:
            self.at = now + self.after
        if now >= self.at:
            log.warning("inject_hang", note="test hook: this stage now hangs for good")
            while True:
                time.sleep(3600)


# ---------------------------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------------------------

def run_ingest(cfg: Config, contract: InputContract, stop: StopFlag, control: str | None,
               source_factory: Callable[[], Any] | None = None, go: threading.Event | None = None) -> int:
    """SeedLink -> windows -> PUSH. The reading loop only appends to a bounded deque; sends never block.

    `go`: when given, the stage reports ready at once but connects to SeedLink only once it is set.
    """
    from quakemon.ingest.seedlink import SeedLinkSource
    from quakemon.pipeline import stft_kernel
    from quakemon.pipeline.detect import stack_windows
    from quakemon.pipeline.windowing import StationWindower

    stft_kernel.warm_up_centring()  # the compiled centring that stack_windows runs, before the first window
    ctx = zmq.Context()
    status = StatusReporter(ctx, control, "ingest")
    push = _socket(ctx, zmq.PUSH, cfg.pipeline.windows_endpoint, bind=True)
    sl = cfg.seedlink
    if go is not None and not go.is_set():
        status.ready = True
        log.info("ingest_holding", note="waiting for the downstream stages before reading SeedLink")
        while not go.wait(0.1) and not stop.is_set():
            status.loops += 1
            status.maybe_send({})
        if stop.is_set():
            push.close(linger=0)
            status.close()
            ctx.term()
            return 0
    source = source_factory() if source_factory else SeedLinkSource(
        sl.server, sl.streams, sl.state_file or None, netto=sl.netto, backoff_max=sl.reconnect_backoff_max,
        connect_timeout=sl.connect_timeout, auto_commit=False)
    windower = StationWindower(contract, cfg.window.stride_s, list(sl.streams),
                               max_missing=cfg.window.max_missing_fraction)
    committer = _Committer(source, windower)
    queue = DropOldestQueue(cfg.pipeline.queue_hwm)
    hang = _HangInjector("ingest")
    sid = source_id()
    newest_end: dict[str, int] = {}
    counters: collections.Counter[str] = collections.Counter()

    counted = [-1, 0]  # schedulers seen, stations among them (recounted only when a scheduler is added)

    def station_count() -> int:
        if counted[0] != len(windower.schedulers):
            counted[:] = [len(windower.schedulers), len({key[0] for key in windower.schedulers})]
        return counted[1]

    def stats(ends: bool = True) -> dict[str, Any]:
        """Travels downstream with each batch. The newest data end per station (so lag is computed when used)
        grows with the station count, so it rides along at most every STATS_INTERVAL_S (`ends`)."""
        out: dict[str, Any] = {"source": sid, "stations": station_count(),
                               "windows_out": counters["windows"], "dropped_ingest": queue.dropped,
                               "queue_ingest": queue.windows}
        if ends:
            out["newest_end_s"] = {st: end / 1e9 for st, end in newest_end.items()}
        return out

    def full_stats() -> dict[str, Any]:
        now_ns = time.time_ns()
        lag = {st: round(max(0.0, (now_ns - end) / 1e9), 3) for st, end in newest_end.items()}
        return {**stats(ends=False), "lag_s": lag,
                **{f"source_{k}": v for k, v in source.stats.items()},
                **{f"windower_{k}": v for k, v in windower.counters().items()}}

    center = "ZSCORE" in contract.transforms
    pending: list[Any] = []  # windows cut since the last message, with their arrival times
    arrivals: list[float] = []
    ends_clock = _Every(STATS_INTERVAL_S)
    ends_sent = True  # newest_end has not changed since it last travelled

    def flush() -> None:
        """Send the pending windows with the counters (possibly no windows: then the newest ends, when due)."""
        nonlocal ends_sent
        ends = ends_clock.due()
        ends_sent = ends_sent or ends
        data, metas = stack_windows(pending, arrivals, center=center)
        queue.put({"kind": "windows", "windows": metas, "stats": stats(ends)}, {"data": data})
        pending.clear()
        arrivals.clear()

    status.ready = True
    log.info("stage_started", stage="ingest", server=sl.server, streams=list(sl.streams),
             windows_endpoint=cfg.pipeline.windows_endpoint)
    feed = _IdleFeed(source, stop, tick_s=FEED_TICK_S)
    try:
        for tr in feed:
            hang.check(status.progress)
            status.loops += 1
            if tr is not None:
                windows = windower.add_trace(tr)
                if windows:
                    now = time.time()
                    for w in windows:
                        newest_end[w.station] = max(newest_end.get(w.station, 0), w.end_ns)
                    ends_sent = False
                    counters["windows"] += len(windows)
                    status.progress += len(windows)
                    pending += windows
                    arrivals += [now] * len(windows)
                committer.add(tr)
            if pending and (len(pending) >= FLUSH_WINDOWS or time.time() - arrivals[0] >= FLUSH_AGE_S):
                flush()
            elif tr is None and not ends_sent and ends_clock.ready():
                flush()  # quiet: the final data ends still reach the heartbeat
            _drain_to(push, queue)
            status.maybe_send(full_stats)
            if stop.is_set():
                break
    finally:
        stop.event.set()  # the feed's pump thread and the source's generator end with it
        if pending:
            flush()
            _drain_to(push, queue)
        feed.close()
        source.close()
        status.maybe_send(full_stats, force=True)
        push.close(linger=0)
        status.close()
        ctx.term()
    log.info("stage_stopped", stage="ingest", **{k: v for k, v in full_stats().items() if k != "lag_s"})
    return 0


class _Committer:
    """Commits records to the source's resume state once no window still to be cut needs their samples.

    Records are committed per station in arrival (= sequence) order; a record stays pending while it ends
    after the start of its station's next undecided window (minus the resampling margin).
    """

    def __init__(self, source: Any, windower: Any) -> None:
        self.source = source
        self.windower = windower
        self.pending: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def add(self, tr: Any) -> None:
        if not hasattr(self.source, "commit"):
            return
        from quakemon.base.timegrid import split_seed_id

        parts = split_seed_id(tr.id)
        key = parts[0] if parts else tr.id
        pending = self.pending[key]
        pending.append(tr)
        sched = self.windower.schedulers.get((parts[0], parts[1])) if parts else None
        if sched is None:  # not windowed (unselected, unsupported): nothing waits for it
            needed_from = None
        elif sched.next_k is None:
            return  # no window decided yet: everything is still needed
        else:
            margin_ns = int(sched.margin / float(sched.rate) * 1e9) + 1
            needed_from = sched.next_k * sched.stride_ns - margin_ns
        while pending:
            head = pending[0]
            if needed_from is not None and head.stats.endtime.ns >= needed_from:
                break
            self.source.commit(pending.popleft())


class _IdleFeed:
    """Iterates the source's traces, yielding None at least every `tick_s` while the source is quiet.

    The source generator runs on a helper thread that hands traces over through a bounded deque, so the
    consuming loop keeps running (status, sends, watchdog liveness) while the upstream is quiet or down.
    When the consumer lags, the pump waits and the source's own bounded queue absorbs (and counts) overflow.
    """

    def __init__(self, source: Any, stop: StopFlag, tick_s: float = 0.2, max_items: int = 1000) -> None:
        self.stop = stop
        self.tick_s = tick_s
        self.max_items = max_items
        self.handoff: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._pump, args=(source,), name="ingest-source", daemon=True)
        self.thread.start()

    def _pump(self, source: Any) -> None:
        try:
            for tr in source.traces(self.stop.event):
                with self.cond:
                    while len(self.handoff) >= self.max_items and not self.stop.event.is_set():
                        self.cond.wait(0.1)
                    self.handoff.append(tr)
                    if len(self.handoff) == 1:  # the consumer waits only while the hand-off is empty
                        self.cond.notify_all()
                if self.stop.event.is_set():
                    break
        except BaseException as exc:  # surfaced in the consuming thread
            self.error = exc
        finally:
            self.done.set()
            with self.cond:
                self.cond.notify_all()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self.cond:
                if not self.handoff and not self.done.is_set():
                    self.cond.wait(self.tick_s)
                items = list(self.handoff)
                self.handoff.clear()
                if len(items) >= self.max_items:  # the pump waits only on a full hand-off
                    self.cond.notify_all()
            yield from items
            if not items and self.done.is_set():
                if self.error is not None:
                    raise self.error
                return
            yield None  # caught up (or quiet for tick_s): the consumer sends what it has

    def close(self, timeout: float = 2.0) -> None:
        self.thread.join(timeout)


# ---------------------------------------------------------------------------------------------------------------
# preprocess
# ---------------------------------------------------------------------------------------------------------------

def run_preprocess(cfg: Config, contract: InputContract, stop: StopFlag, control: str | None,
                   max_batch: int = 512) -> int:
    """PULL windows -> preprocess_batch -> PUSH spectra; drops the oldest spectra when inference lags."""
    from quakemon.pipeline.detect import preprocess_windows, warm_up_preprocess

    ctx = zmq.Context()
    status = StatusReporter(ctx, control, "preprocess")
    pull = _socket(ctx, zmq.PULL, cfg.pipeline.windows_endpoint, bind=False)
    push = _socket(ctx, zmq.PUSH, cfg.pipeline.spectra_endpoint, bind=False)
    queue = DropOldestQueue(cfg.pipeline.queue_hwm)
    hang = _HangInjector("preprocess")
    sid = source_id()
    counters: collections.Counter[str] = collections.Counter()

    def own() -> dict[str, Any]:
        return {"source": sid, "preprocessed": counters["windows"], "dropped_preprocess": queue.dropped,
                "queue_preprocess": queue.windows}

    device = preprocess_device(cfg)
    warm_up_preprocess(contract, device)
    status.ready = True
    log.info("stage_started", stage="preprocess", windows_endpoint=cfg.pipeline.windows_endpoint,
             spectra_endpoint=cfg.pipeline.spectra_endpoint, device=str(device or "cpu"))
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    try:
        while not stop.is_set():
            hang.check(status.progress)
            status.loops += 1
            batches = []
            if poller.poll(100 if not queue else 10):
                while len(batches) < MAX_RECV_PER_ROUND:
                    try:
                        batches.append(unpack_arrays(pull.recv_multipart(zmq.NOBLOCK, copy=False)))
                    except zmq.Again:
                        break
            # the newest counters of each ingest process this round travel on with the first output message
            ingest_stats: dict[str, dict[str, Any]] = {}
            for header, _ in batches:
                upstream = header.get("stats")
                if isinstance(upstream, dict) and upstream.get("source"):
                    src = str(upstream["source"])
                    ingest_stats[src] = {**ingest_stats.get(src, {}), **upstream}
            # everything received this round is transformed together, in calls of up to max_batch windows
            for metas, data in _coalesce(batches, max_batch):
                spectra, part = preprocess_windows(data, metas, contract, device=device)
                counters["windows"] += len(part)
                status.progress += len(part)
                stats = {"ingest": list(ingest_stats.values()), "preprocess": own()}
                queue.put({"kind": "spectra", "windows": part, "stats": stats}, {"spectra": spectra})
                ingest_stats = {}
            if ingest_stats:  # counters without windows (an ingest message with only the newest data ends)
                stats = {"ingest": list(ingest_stats.values()), "preprocess": own()}
                queue.put({"kind": "spectra", "windows": [], "stats": stats},
                          {"spectra": np.zeros((0, 0, 0, 0), np.float32)})
            _drain_to(push, queue)
            status.maybe_send(own)
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        status.close()
        ctx.term()
    log.info("stage_stopped", stage="preprocess", windows=counters["windows"], dropped=queue.dropped)
    return 0


def preprocess_device(cfg: Config) -> Any:
    """The torch device the preprocessing workers use, or None for the CPU ([pipeline] preprocess_device)."""
    from quakemon.pipeline.engine import pick_device

    wanted = cfg.pipeline.preprocess_device
    if wanted == "auto":
        wanted = os.environ.get("QUAKEMON_FORCE_DEVICE") or cfg.model.device
    device = pick_device(wanted)
    return device if device.type != "cpu" else None


def _coalesce(batches: list[tuple[dict, dict]], max_batch: int) -> Iterator[tuple[list[dict], np.ndarray]]:
    """(metas, data) runs of at most max_batch windows over the received window batches, in arrival order."""
    metas: list[dict] = []
    parts: list[np.ndarray] = []
    for header, arrays in batches:
        windows, data = header["windows"], arrays["data"]
        start = 0
        while start < len(windows):
            take = min(max_batch - len(metas), len(windows) - start)
            metas += windows[start : start + take]
            parts.append(data[start : start + take])
            start += take
            if len(metas) == max_batch:
                yield metas, np.concatenate(parts) if len(parts) > 1 else parts[0]
                metas, parts = [], []
    if metas:
        yield metas, np.concatenate(parts) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------------------------

class _Upstream:
    """Latest stats of every ingest and preprocess process seen in spectra headers (stale ones expire)."""

    def __init__(self) -> None:
        self.ingest: dict[str, tuple[float, dict[str, Any]]] = {}
        self.preprocess: dict[str, tuple[float, dict[str, Any]]] = {}

    def update(self, stats: dict[str, Any], now: float) -> None:
        """stats: {"ingest": one dict or a list of them, "preprocess": dict}; each dict names its "source"."""
        for name, table in (("ingest", self.ingest), ("preprocess", self.preprocess)):
            part = stats.get(name)
            for item in part if isinstance(part, list) else [part]:
                if isinstance(item, dict) and item.get("source"):
                    # merged: the per-station data ends ride along only every STATS_INTERVAL_S
                    key = str(item["source"])
                    table[key] = (now, {**table.get(key, (now, {}))[1], **item})

    def current(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        for table in (self.ingest, self.preprocess):
            for key in [k for k, (t, _) in table.items() if now - t > SOURCE_EXPIRY_S]:
                del table[key]
        return [s for _, s in self.ingest.values()], [s for _, s in self.preprocess.values()]


def _total(items: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0) or 0) for s in items)


def run_inference(cfg: Config, stop: StopFlag, control: str | None, checkpoint_path: str,
                  configure_publisher: Callable[[zmq.Socket], None] | None = None) -> int:
    """PULL spectra -> micro-batches (batch_size, max_wait_ms) -> HybridViT -> trigger -> PUB.

    A micro-batch runs when `model.batch_size` windows are queued, or when the oldest queued window has
    waited `model.max_wait_ms`, whichever comes first.
    """
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.detect import DetectionStage
    from quakemon.pipeline.engine import FatalInferenceError, InferenceEngine
    from quakemon.wire.publisher import Publisher

    ctx = zmq.Context()
    status = StatusReporter(ctx, control, "inference")
    # The PUB socket is bound before the model loads, and the spectra PULL socket at least JOIN_GRACE_S later
    # (after the warm-up): a subscriber that was already waiting (ZeroMQ retries a refused connect every 100 ms
    # by default) has joined before the first detection can be published. Bound last, the backlog an upstream
    # host queued while this stage was down went out within milliseconds of the bind, before any subscription
    # had arrived (ZeroMQ's slow joiner), and those detections were lost to every subscriber.
    publisher = Publisher.from_config(cfg.publish, context=ctx, heartbeat_interval_s=cfg.pipeline.heartbeat_interval_s,
                                      configure_socket=configure_publisher)
    joinable_at = time.monotonic() + JOIN_GRACE_S
    device = os.environ.get("QUAKEMON_FORCE_DEVICE") or cfg.model.device
    from quakemon.wire.security import adapt_to_write_xor_execute

    adapt_to_write_xor_execute()  # under systemd's MemoryDenyWriteExecute=yes, oneDNN's JIT must be off
    try:
        ckpt = load_checkpoint(checkpoint_path)
        engine = InferenceEngine(ckpt, device=device, precision=cfg.model.precision, batch_size=cfg.model.batch_size,
                                 max_consecutive_failures=cfg.model.max_consecutive_failures,
                                 graph=cfg.model.graph)
        engine.warmup()
    except BaseException:  # a bad checkpoint or a failed warm-up: let go of the bound socket before leaving
        _close_publisher(publisher, configure_publisher)
        status.close()
        ctx.term()
        raise
    _maybe_inject_fault(engine)
    hang = _HangInjector("inference")
    t = cfg.trigger
    stage = DetectionStage(engine, t.on, t.off, t.min_duration, t.label if t.label in ckpt.labels else None)
    stop.event.wait(max(0.0, joinable_at - time.monotonic()))
    pull = _socket(ctx, zmq.PULL, cfg.pipeline.spectra_endpoint, bind=True)
    queue = DropOldestQueue(cfg.pipeline.queue_hwm)
    upstream = _Upstream()
    newest_end_ns = 0
    max_wait = cfg.model.max_wait_ms / 1000.0
    batch_size = cfg.model.batch_size
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)

    def heartbeat_stats() -> dict[str, Any]:
        ingest, pre = upstream.current(time.monotonic())
        now_s = time.time()
        lags = [max(0.0, now_s - float(end)) for s in ingest for end in (s.get("newest_end_s") or {}).values()]
        dropped = {"ingest": _total(ingest, "dropped_ingest"), "preprocess": _total(pre, "dropped_preprocess"),
                   "inference": queue.dropped}
        return {
            "stations": _total(ingest, "stations"),
            "windows_in": _total(ingest, "windows_out"),
            "windows_out": int(stage.stats["windows"]),
            "dropped": sum(dropped.values()),
            "dropped_by_stage": dropped,
            "queue_depths": {"ingest": _total(ingest, "queue_ingest"), "preprocess": _total(pre, "queue_preprocess"),
                             "inference": queue.windows},
            "lag_s": round(max(lags), 3) if lags else None,
            "data_lag_s": round(max(0.0, time.time() - newest_end_ns / 1e9), 3) if newest_end_ns else None,
            "detections": int(stage.stats["detections"]),
            "events_open": assoc.open_events if assoc is not None else 0,
            "invalid_windows": int(stage.stats["invalid"]),
            "late_windows": int(stage.stats["late_windows"]),
            "model": ckpt.model_info,
            "device": str(engine.device),
            "precision": engine.precision,
            "inference": {"batches": engine.stats.batches, "last_batch_size": engine.stats.last_batch_size,
                          "last_batch_s": round(engine.stats.last_batch_seconds, 4),
                          "failed_batches": int(stage_failures["batches"])},
        }

    def run_batch() -> None:
        nonlocal newest_end_ns
        metas, spectra = [], []
        while queue and len(metas) < batch_size:
            header, arrays = queue.popleft()
            metas += header["windows"]
            spectra.append(arrays["spectra"])
        try:
            result = stage.process(np.concatenate(spectra), metas)
        except FatalInferenceError:
            raise
        except Exception as exc:  # one bad batch is dropped; repeated failures become fatal in the engine
            stage_failures["batches"] += 1
            log.error("inference_batch_failed", windows=len(metas), error=repr(exc))
            return
        status.progress += len(metas)
        newest_end_ns = max([newest_end_ns] + [m["end_ns"] for m in metas])
        for body, arrival in result.detections:
            publisher.publish_detection(body, arrival=arrival)
            if assoc is not None:
                for ev in assoc.add(body):
                    publisher.publish_event(ev)
        if assoc is not None and metas:
            for ev in assoc.advance(max(m["start_ns"] for m in metas) / 1e9):
                publisher.publish_event(ev)

    from quakemon.pipeline.associate import associator_from_config

    assoc = associator_from_config(cfg.associate)  # network events, when [associate] enabled = true
    stage_failures: collections.Counter[str] = collections.Counter()
    status.ready = True
    log.info("stage_started", stage="inference", spectra_endpoint=cfg.pipeline.spectra_endpoint,
             publish=publisher.endpoint, device=str(engine.device), precision=engine.precision)
    code = 0
    try:
        while not stop.is_set():
            hang.check(status.progress)
            status.loops += 1
            oldest = queue.oldest
            wait_s = 0.1 if oldest is None else min(0.1, max(0.0, oldest + max_wait - time.monotonic()))
            if poller.poll(max(1, int(wait_s * 1000))):
                for _ in range(MAX_RECV_PER_ROUND):
                    try:
                        header, arrays = unpack_arrays(pull.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
                    upstream.update(header.get("stats") or {}, time.monotonic())
                    if header["windows"]:
                        queue.put(header, arrays)
            while queue.windows and (queue.windows >= batch_size
                                     or time.monotonic() - (queue.oldest or 0.0) >= max_wait):
                run_batch()
            publisher.maybe_heartbeat(heartbeat_stats)
            status.maybe_send(lambda: {"windows": int(stage.stats["windows"]), "dropped_inference": queue.dropped,
                                       "queue_inference": queue.windows,
                                       "detections": int(stage.stats["detections"]),
                                       "batches": engine.stats.batches,
                                       "batch_size": engine.stats.last_batch_size,
                                       "batch_seconds": engine.stats.last_batch_seconds})
        while queue:  # stopping: what already arrived is still inferred and published
            run_batch()
        if assoc is not None:
            for ev in assoc.flush():
                publisher.publish_event(ev)
    except FatalInferenceError as exc:
        log.error("inference_fatal", error=str(exc), action="exit so the service manager restarts the process")
        code = EXIT_FATAL
    finally:
        pull.close(linger=0)
        _close_publisher(publisher, configure_publisher)
        status.close()
        ctx.term()
    log.info("stage_stopped", stage="inference", windows=int(stage.stats["windows"]), code=code)
    return code


def _close_publisher(publisher: Any, configure_publisher: Callable[[zmq.Socket], None] | None) -> None:
    """Close the PUB socket, then stop the CURVE authenticator if `configure_publisher` started one."""
    publisher.close()
    stop_auth = getattr(configure_publisher, "stop", None)
    if stop_auth is not None:
        stop_auth()  # the CURVE authenticator's thread holds a socket: ctx.term() would wait for it forever


def _maybe_inject_fault(engine) -> None:
    """Test hook (RELIABILITY #15): QUAKEMON_INJECT_FAULT=cuda makes every forward raise a sticky CUDA error."""
    if os.environ.get("QUAKEMON_INJECT_FAULT") != "cuda":
        return
    log.warning("inject_fault", fault="cuda", note="test hook: every forward now fails")

    def broken(*_a, **_k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    engine.model = broken
