"""The inference stage: PULL spectra (binds pipeline.spectra_endpoint) -> micro-batches -> HybridViT -> trigger
-> P picks -> PUB.

The spectra come with the windows' samples (preprocess stage), so a window that opens a detection is picked here
(`quakemon.pipeline.detect.DetectionStage`, the code the replay runs).

Screen and refine (`[model] screen_every` > 1, `quakemon.pipeline.screen`): the workers forward a quiet station's
screen windows only, and the stage's own thread forwards the windows the screen asks for when it decides. Windows
held for a screen window live only in this process: a killed stage loses them like the windows queued in it, and
the rewind sends them again (it must reach back (screen_every - 1) windows further per station). Held windows of a
station silent for a window length are forwarded and decided with the silent-station check, and at a clean stop.

A micro-batch runs when `model.batch_size` windows are queued, or when the oldest queued window has waited
`model.max_wait_ms`, whichever comes first. Once a second, the triggers of stations that went silent are
closed (`DetectionStage.expire_silent`), so a station whose data stops mid-detection still gets its "closed".
While no status of the ingest stage has arrived for UPSTREAM_QUIET_S (its process, or a preprocess process on
the way, was killed and is being restarted), nothing is closed, and that time does not count as any station's
silence (`DetectionStage.defer_silence`): the restarted ingest stage sends those windows again.

With publish.journal set, every detection and event is committed to the journal before it is sent, and a
catch-up server (publish.catchup_endpoint) answers missed seqs from it (`quakemon.wire.catchup`). A failed journal
write stops the stage (exit code 1; the supervisor restarts it): a message is never sent, or dropped, unjournaled.
A clean stop closes every open detection with close_reason "shutdown"; detections a killed run left open are
resumed or closed at start-up (`quakemon.service.stages.resume`).

With [archive] probabilities set, every decided window's class probabilities go to the probability archive
(`quakemon.pipeline.probarchive`), written before the detections of the same batch are published. A heartbeat's
`lag_s` is the processing lag (from the windows' arrival times, so archive data streamed today reads small) and
`data_age_s` how old the newest data of the worst station is.

Heartbeats report the counters of every ingest and preprocess process upstream, from the status reports that
reach this stage beside the data (the newest per process; one not heard from for SOURCE_EXPIRY_S drops out).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from quakemon.base.signals import StopFlag
from quakemon.service.config import Config
from quakemon.service.reload import ReloadableStage
from quakemon.service.stages.common import (
    EXIT_FATAL,
    DropOldestQueue,
    Every,
    Rejections,
    Stage,
    Stats,
    receive,
)
from quakemon.service.stages.faults import maybe_break_engine
from quakemon.service.stages.messages import SPECTRA, Batch, decode, max_frame_bytes

log = structlog.get_logger(__name__)

SOURCE_EXPIRY_S = 30.0  # upstream processes not heard from for this long are dropped from heartbeats
EXPIRE_INTERVAL_S = 1.0  # how often silent stations' triggers are looked for
UPSTREAM_QUIET_S = 2.0  # no ingest status for this long (it is sent every 0.5 s): the ingest path is down
# The spectra PULL socket is bound at least this long after the PUB socket: three of ZeroMQ's default 100 ms
# connect retries, so a subscriber that was already waiting has joined before the first detection.
JOIN_GRACE_S = 0.3


class InferenceStage(ReloadableStage, Stage):
    """PULL spectra -> micro-batches (batch_size, max_wait_ms) -> HybridViT -> trigger -> PUB.

    `configure_publisher` is applied to the PUB socket before it binds (CURVE keys); when it has a `stop`
    attribute (the CURVE authenticator), that is called after the socket is closed.
    """

    name = "inference"

    def __init__(self, cfg: Config, should_stop: StopFlag, control: str | None, checkpoint_path: str,
                 configure_publisher: Callable[[zmq.Socket], None] | None = None) -> None:
        super().__init__(should_stop, control)
        self.cfg = cfg
        self.checkpoint_path = checkpoint_path
        self.configure_publisher = configure_publisher
        self.publisher: Any = None
        self.events: SocketEvents | None = None
        self.pull: zmq.Socket | None = None
        self.poller = zmq.Poller()
        self.queue = DropOldestQueue(cfg.pipeline.queue_hwm)
        self.upstream = Upstream()
        self.expiry = Every(EXPIRE_INTERVAL_S)
        self.quiet_since: float | None = None  # when the ingest stage was last heard from, while it is quiet
        self.failed_batches = 0
        self.rejections = Rejections(self.name)
        self.newest_end_ns = 0
        self.batch_lag_s: float | None = None  # arrival of the oldest window of the newest batch -> its inference
        self.archive: Any = None  # quakemon.pipeline.probarchive.ProbabilityArchive, with [archive] probabilities
        self.ckpt: Any = None
        self.engine: Any = None
        self.stage: Any = None
        self.assoc: Any = None
        self.journal: Any = None
        self.catchup: Any = None
        self.published: Any = None
        self.backfill: Any = None
        self.forwards: Any = None  # `quakemon.pipeline.forward_pool.ForwardPool`, started by `loop`

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Bind PUB, load and warm up the model, then bind the spectra PULL socket.

        The PUB socket is bound before the model loads and the PULL socket at least JOIN_GRACE_S later: a
        subscriber that was already waiting (ZeroMQ retries a refused connect every 100 ms by default) has
        joined before the first detection can be published. Bound last, the backlog an upstream host queued
        while this stage was down would go out within milliseconds of the bind, before any subscription had
        arrived (ZeroMQ's slow joiner), and those detections would be lost to every subscriber.
        """
        from quakemon.models.checkpoint import load_checkpoint
        from quakemon.pipeline.associate import associator_from_config
        from quakemon.pipeline.detect import DetectionStage
        from quakemon.pipeline.engine import InferenceEngine
        from quakemon.wire.publisher import Publisher
        from quakemon.wire.security import adapt_to_write_xor_execute

        cfg = self.cfg
        self.open_journal()
        self.publisher = Publisher.from_config(cfg.publish, context=self.ctx,
                                               heartbeat_interval_s=cfg.pipeline.heartbeat_interval_s,
                                               configure_socket=self._configure_pub, journal=self.journal,
                                               catchup_endpoint=self.catchup.advertised if self.catchup else None)
        joinable_at = time.monotonic() + JOIN_GRACE_S
        adapt_to_write_xor_execute()  # under systemd's MemoryDenyWriteExecute=yes, oneDNN's JIT must be off
        self.ckpt = load_checkpoint(self.checkpoint_path)
        device = os.environ.get("QUAKEMON_FORCE_DEVICE") or cfg.model.device
        self.engine = InferenceEngine(self.ckpt, device=device, precision=cfg.model.precision,
                                      batch_size=cfg.model.batch_size,
                                      max_consecutive_failures=cfg.model.max_consecutive_failures,
                                      graph=cfg.model.graph)
        self.engine.warmup()
        maybe_break_engine(self.engine)
        t = cfg.trigger
        self.stage = DetectionStage(self.engine, trigger_label=t.label if t.label in self.ckpt.labels else None,
                                    stride_s=cfg.window.stride_s, screen_every=cfg.model.screen_every,
                                    screen_threshold=cfg.model.screen_threshold,
                                    screen_net=cfg.model.screen_net or None, **t.detection_kwargs())
        self.assoc = associator_from_config(cfg.associate)  # network events, when [associate] enabled = true
        self.open_archive()
        if self.journal is not None:
            self.resume_from_journal()
        self.start_backfill()
        self.should_stop.wait(max(0.0, joinable_at - time.monotonic()))
        self.pull = self.socket(zmq.PULL, cfg.pipeline.spectra_endpoint, bind=True,
                                max_msg_bytes=max_frame_bytes(self.ckpt.contract))
        self.poller.register(self.pull, zmq.POLLIN)
        self.status.ready = True
        log.info("stage_started", stage="inference", spectra_endpoint=cfg.pipeline.spectra_endpoint,
                 publish=self.publisher.endpoint, device=str(self.engine.device), precision=self.engine.precision)
        return True

    def open_journal(self) -> None:
        """Open publish.journal and bind the catch-up server on it (both optional, see the module docstring)."""
        from quakemon.wire.catchup import CatchupServer
        from quakemon.wire.journal import Journal

        pub = self.cfg.publish
        if not pub.journal:
            return
        self.journal = Journal(pub.journal, synchronous=pub.journal_synchronous,
                               retention_days=pub.journal_retention_days or None,
                               max_bytes=pub.journal_max_bytes or None)
        if pub.catchup_endpoint:
            self.catchup = CatchupServer(self.journal.path, pub.catchup_endpoint,
                                         curve_secret_key=pub.curve_secret_key or None,
                                         curve_allowed_keys=pub.curve_allowed_keys or None)

    def open_archive(self) -> None:
        """Open the probability archive ([archive] probabilities; off when empty)."""
        from quakemon.pipeline.probarchive import ProbabilityArchive

        arc = self.cfg.archive
        if arc.probabilities:
            self.archive = ProbabilityArchive(arc.probabilities, self.ckpt.labels, self.cfg.window.stride_s,
                                              flush_s=arc.probabilities_flush_s, model=self.ckpt.model_info)

    def _configure_pub(self, sock: zmq.Socket) -> None:
        if self.configure_publisher is not None:
            self.configure_publisher(sock)
        self.events = SocketEvents(sock)  # before bind: LISTENING counts too

    def loop(self) -> int:
        from quakemon.pipeline.engine import FatalInferenceError
        from quakemon.pipeline.forward_pool import WORKER_SWITCH_INTERVAL_S, gil_switch_interval

        self.forwards = self.start_forwards()
        try:
            with gil_switch_interval(WORKER_SWITCH_INTERVAL_S):
                while not self.should_stop.is_set():
                    self.tick()
                    self.maybe_reload()
                    self.receive()
                    self.run_batches()
                    if self.expiry.due():
                        self.expire_silent(time.monotonic())
                    self.run_backfill()
                    if self.archive is not None:
                        self.archive.maybe_flush()
                    if self.events is not None:
                        self.events.poll()
                    self.publisher.maybe_heartbeat(self.heartbeat_stats)
                    self.status.maybe_send(self.own)
                self.run_batches(final=True)  # stopping: what already arrived is still inferred and published
                self.publish_result(self.stage.release_held(final=True))  # (windows the screen still held)
            self.publish(self.stage.shutdown())  # no "new" is left without its "closed"
            if self.assoc is not None:
                for ev in self.assoc.flush():
                    self.publisher.publish_event(ev)
        except FatalInferenceError as exc:
            log.error("inference_fatal", error=str(exc), action="exit so the service manager restarts the process")
            return EXIT_FATAL
        finally:
            self.forwards.close()
        return 0

    def stop(self) -> None:
        if self.backfill is not None:
            self.backfill.close()
        if self.pull is not None:
            self.pull.close(linger=0)
        if self.events is not None:
            self.events.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.catchup is not None:
            self.catchup.close()
        if self.journal is not None:
            self.journal.close()
        if self.archive is not None:
            self.archive.close()
            log.info("probability_archive_closed", **self.archive.counters())
        stop_auth = getattr(self.configure_publisher, "stop", None)
        if stop_auth is not None:
            stop_auth()  # the CURVE authenticator's thread holds a socket: ctx.term() would wait for it forever
        super().stop()
        if self.stage is not None:
            log.info("stage_stopped", stage="inference", windows=int(self.stage.stats["windows"]))

    # -- work -----------------------------------------------------------------------------------------------------
    @property
    def max_wait_s(self) -> float:
        return self.cfg.model.max_wait_ms / 1000.0

    def receive(self) -> None:
        """Poll until the oldest queued window is due (at most 0.1 s); queue spectra, keep status reports; drop
        and count malformed messages (`Rejections`)."""
        assert self.pull is not None
        oldest = None if self.forwards.full else self.queue.oldest  # workers busy: woken when one finishes
        wait_s = 0.1 if oldest is None else min(0.1, max(0.0, oldest + self.max_wait_s - time.monotonic()))
        if not self.poller.poll(max(1, int(wait_s * 1000))):
            return
        for msg in receive(self.pull, lambda frames: decode(frames, self.ckpt.contract, SPECTRA), self.rejections):
            if isinstance(msg, Batch):
                if len(msg):
                    self.queue.put(msg)
            else:
                self.upstream.update(msg, time.monotonic())

    def expire_silent(self, now: float) -> None:
        """Close the triggers of silent stations, unless the ingest stage is quiet (module docstring)."""
        heard = self.upstream.ingest_heard
        if heard is not None and now - heard > UPSTREAM_QUIET_S:
            if self.quiet_since is None:
                self.quiet_since = heard
                log.warning("ingest_quiet", seconds=round(now - heard, 1), effect="silent stations stay open")
            return
        if self.quiet_since is not None:
            self.stage.defer_silence(now - self.quiet_since, now)
            log.info("ingest_heard_again", quiet_s=round(now - self.quiet_since, 1))
            self.quiet_since = None
        self.publish_result(self.stage.release_held(now))  # windows the screen holds for a silent station
        self.publish(self.stage.expire_silent(now))

    def start_forwards(self) -> Any:
        """The `ForwardPool` of model.inference_workers threads ("auto": one per core this process may use, up to
        4, on the CPU; one on a GPU; 0: forwards on this thread), its wake-up registered with the poller."""
        from quakemon.pipeline.forward_pool import ForwardPool, inference_pool

        workers = self.cfg.model.inference_workers
        pool, count = inference_pool(self.engine.device, None if workers == "auto" else int(workers),
                                     len(os.sched_getaffinity(0)), "inference")
        forwards = ForwardPool(self.stage, pool, count)
        if pool is not None:
            self.poller.register(forwards.fileno(), zmq.POLLIN)
        log.info("inference_workers", workers=count, forward_batch=forwards.task)
        return forwards

    def run_batches(self, final: bool = False) -> None:
        """Start micro-batches (`model.batch_size` windows, or fewer once the oldest waited `model.max_wait_ms`)
        while the workers have room, and publish the finished ones, in order. final: everything queued, waiting
        for it all."""
        forwards = self.forwards
        while self.queue.windows and (final or self.queue.windows >= self.cfg.model.batch_size
                                      or time.monotonic() - (self.queue.oldest or 0.0) >= self.max_wait_s):
            if forwards.full:
                if not final:
                    break
                self.publish_batch(forwards.next(block=True))
            self.start_batch()
        while (done := forwards.next(block=final)) is not None:
            self.publish_batch(done)

    def start_batch(self) -> None:
        """Hand up to batch_size queued windows to the forward workers."""
        metas, spectra, data = [], [], []
        while self.queue and len(metas) < self.cfg.model.batch_size:
            batch = self.queue.popleft()
            metas += batch.metas
            spectra.append(batch.arrays["spectra"])
            data.append(batch.arrays.get("data"))
        samples = np.concatenate(data) if all(d is not None for d in data) else None  # None: window picks only
        self.forwards.submit(np.concatenate(spectra), metas, samples)

    def publish_batch(self, done: Any) -> None:
        """Publish a decided micro-batch's detections (and network events); a failed one is counted and dropped
        (repeated failures become fatal in the engine)."""
        from quakemon.pipeline.engine import FatalInferenceError

        metas, result = done
        if isinstance(result, FatalInferenceError):
            raise result
        if isinstance(result, Exception):
            self.failed_batches += 1
            log.error("inference_batch_failed", windows=len(metas), error=repr(result))
            return
        self.status.progress += len(metas)
        self.publish_result(result)

    def publish_result(self, result: Any) -> None:
        """A `DetectionResult`: its windows' probabilities to the archive, its detections (and network events)
        published; the associator's clock moves to its newest window start (less the screen's delay).

        With detections to publish, the archive is written first: a restarted stage resumes an open detection
        after its last journaled window and takes the windows up to it as decided, so they must be archived
        already (screening decides a station's windows in bursts, which made the race likely)."""
        self.inferred(result.metas, result.probabilities)
        if self.archive is not None and result.detections:
            self.archive.flush()
        self.publish(result.detections)
        if self.assoc is not None and result.metas:
            newest = max(m.start_ns for m in result.metas) / 1e9 - self.stage.decision_delay_s
            for ev in self.assoc.advance(newest):
                self.publisher.publish_event(ev)

    def inferred(self, metas: list[Any], probabilities: np.ndarray) -> None:
        """Note a batch's newest window end and processing lag; hand its probabilities to the archive."""
        self.newest_end_ns = max([self.newest_end_ns] + [m.end_ns for m in metas])
        arrivals = [m.arrival for m in metas if m.arrival is not None]
        if arrivals:
            self.batch_lag_s = max(0.0, time.time() - min(arrivals))
        if self.archive is not None:
            self.archive.add(metas, probabilities)

    def publish(self, detections: list[tuple[dict[str, Any], float | None]]) -> None:
        """Publish detection bodies (with the arrival of their window's last sample) and the events they make.

        A JournalError (the journal cannot be written) propagates: the stage stops rather than send or drop a
        message unjournaled."""
        for body, arrival in detections:
            if self.published and not self.published.admit(body):
                continue
            self.publisher.publish_detection(body, arrival=arrival)
            if self.assoc is not None:
                for ev in self.assoc.add(body):
                    self.publisher.publish_event(ev)

    def start_backfill(self) -> None:
        """Start the backfill worker when [backfill] source is set (`quakemon.service.stages.backfill`)."""
        from quakemon.service.stages.backfill import backfiller_from_config

        self.backfill = backfiller_from_config(self.cfg, self.ckpt, busy=lambda: bool(self.queue))

    def run_backfill(self) -> None:
        """Hand the backfill requests the ingest stages listed to the worker; publish the detections it finished
        (to subscribers and the journal, not to the live associator)."""
        if self.backfill is None:
            return
        from quakemon.service.stages.backfill import requests_in

        self.backfill.offer(requests_in(self.upstream.current(time.monotonic())[0]))
        for body in self.backfill.take():
            if not self.published or self.published.admit(body):
                self.publisher.publish_detection(body)

    def resume_from_journal(self) -> None:
        """Resume the detections a killed run left open, and remember what was published (module docstring)."""
        from quakemon.service.stages.resume import LOOKBACK_S, Published, journaled, shutdown_body

        unclosed, seen = journaled(self.journal, time.time() - LOOKBACK_S)
        self.published = Published(seen)
        resumed = [ident for ident, body in unclosed.items() if self.stage.resume(body)]
        if unclosed:
            log.warning("detections_resumed", resumed=resumed, closed=sorted(set(unclosed) - set(resumed)))
        for ident in set(unclosed) - set(resumed):  # another trigger label or model now: it is closed
            self.publisher.publish_detection(shutdown_body(unclosed[ident]))

    # -- reload ---------------------------------------------------------------------------------------------------
    def apply_thresholds(self, cfg: Config) -> list[str]:
        """[trigger] thresholds and overrides into the running triggers (ConfigError: nothing changed); returns the
        stations whose thresholds changed."""
        t = cfg.trigger
        return self.stage.triggers.reconfigure(t.on, t.off, t.min_duration, t.retrigger_hold, t.overrides_map())

    def apply_reload(self, new: Config, changed: list[str]) -> Stats:
        """[trigger] and [associate] settings, in place: open detections, events in flight and the publisher stay."""
        from quakemon.pipeline.associate import associator_from_config

        assoc = associator_from_config(new.associate) if self.assoc is not None else None  # ConfigError first
        stations = self.apply_thresholds(new) if any(k.startswith("trigger.") for k in changed) else []
        if assoc is not None and any(k.startswith("associate.") for k in changed):
            self.assoc.retune(assoc)
        return {"stations_retuned": stations, "publisher_epoch": self.publisher.epoch}

    # -- counters -------------------------------------------------------------------------------------------------
    def calibrated_on(self) -> Stats:
        """With [trigger] calibration: {"calibrated_on": {"NET.STA.LOC/label": the on in effect}}; else {}."""
        cal = self.stage.triggers.calibration
        if cal is None:
            return {}
        return {"calibrated_on": {k: round(v["threshold"], 6) for k, v in cal.snapshot().items()}}

    def own(self) -> Stats:
        """Status counters: totals, the latest batch, detections opened per station, PUB socket events by name."""
        stats, engine = self.stage.stats, self.engine.stats
        return {"windows": int(stats["windows"]), "dropped_inference": self.queue.dropped,
                "queue_inference": self.queue.windows, "detections": int(stats["detections"]),
                "batches": engine.batches, "batch_size": engine.last_batch_size,
                "batch_seconds": engine.last_batch_seconds, "detections_opened": dict(self.stage.opened),
                "zmq_events": dict(self.events.counts) if self.events is not None else {}, **self.rejections.stats(),
                **self.calibrated_on(),
                "stage_curve_rejected": self.curve.rejections if self.curve is not None else {},
                "curve_rejected": _publisher_rejections(self.configure_publisher), **self.reload_stats(),
                **(self.backfill.stats() if self.backfill is not None else {})}

    def heartbeat_stats(self) -> Stats:
        ingest, pre = self.upstream.current(time.monotonic())
        now_s = time.time()
        ends = [float(s["oldest_end_s"]) for s in ingest if s.get("oldest_end_s") is not None]
        dropped = {"ingest": _total(ingest, "dropped_ingest"), "preprocess": _total(pre, "dropped_preprocess"),
                   "inference": self.queue.dropped}
        stats, engine = self.stage.stats, self.engine.stats
        return {
            "stations": _total(ingest, "stations"),
            "silent_stations": _total(ingest, "silent_stations"),
            "connected": _connected(ingest),
            "windows_in": _total(ingest, "windows_out"),
            "windows_out": int(stats["windows"]),
            "dropped": sum(dropped.values()),
            "dropped_by_stage": dropped,
            "queue_depths": {"ingest": _total(ingest, "queue_ingest"), "preprocess": _total(pre, "queue_preprocess"),
                             "inference": self.queue.windows},
            "lag_s": self.processing_lag_s(now_s),
            "data_age_s": round(now_s - min(ends), 3) if ends else None,
            "data_lag_s": round(max(0.0, now_s - self.newest_end_ns / 1e9), 3) if self.newest_end_ns else None,
            "detections": int(stats["detections"]),
            "events_open": self.assoc.open_events if self.assoc is not None else 0,
            "invalid_windows": int(stats["invalid"]),
            "messages_rejected": {"preprocess": _total(pre, "messages_rejected"), "inference": self.rejections.total},
            "late_windows": int(stats["late_windows"]),
            "model": self.ckpt.model_info,
            "device": str(self.engine.device),
            "precision": self.engine.precision,
            "inference": {"batches": engine.batches, "last_batch_size": engine.last_batch_size,
                          "last_batch_s": round(engine.last_batch_seconds, 4),
                          "failed_batches": self.failed_batches,
                          **{k: int(stats[k]) for k in ("forwarded", "screened_out") if k in stats}},
        }

    def processing_lag_s(self, now_s: float) -> float | None:
        """How far behind the stage is on what has arrived (wall clock, whatever the data's time stamps): the
        time from arrival (when ingest cut it) to inference of the oldest window of the newest batch, or, when
        longer, how long the oldest window queued here has waited since its arrival. None before any window."""
        first = next(iter(self.queue), None)
        waiting = [m.arrival for m in first.metas if m.arrival is not None] if first is not None else []
        lags = [lag for lag in (self.batch_lag_s, now_s - min(waiting) if waiting else None) if lag is not None]
        return round(max(0.0, *lags), 3) if lags else None


class Upstream:
    """The newest status counters of every ingest and preprocess process heard from (stale ones expire; at most
    MAX_SOURCES per stage are kept, so reports under ever new names cannot grow it without bound)."""

    MAX_SOURCES = 1024

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, tuple[float, Stats]]] = {"ingest": {}, "preprocess": {}}
        self.ingest_heard: float | None = None  # when a status of an ingest process last arrived

    def update(self, body: dict[str, Any], now: float) -> None:
        """A status report {stage, source, stats, ...}; reports of other stages are ignored."""
        table = self.tables.get(str(body.get("stage")))
        stats = body.get("stats")
        if table is not None and body.get("source") and isinstance(stats, dict):
            if str(body["source"]) not in table and len(table) >= self.MAX_SOURCES:
                return
            table[str(body["source"])] = (now, stats)
            if body.get("stage") == "ingest":
                self.ingest_heard = now

    def current(self, now: float) -> tuple[list[Stats], list[Stats]]:
        """(ingest counters, preprocess counters): one dict per process heard from within SOURCE_EXPIRY_S."""
        for table in self.tables.values():
            for key in [k for k, (t, _) in table.items() if now - t > SOURCE_EXPIRY_S]:
                del table[key]
        return ([s for _, s in self.tables["ingest"].values()], [s for _, s in self.tables["preprocess"].values()])


class SocketEvents:
    """Counts a socket's monitor events by name (LISTENING, ACCEPTED, HANDSHAKE_SUCCEEDED, HANDSHAKE_FAILED_AUTH,
    DISCONNECTED, ...); a failed handshake is logged the first time each kind happens."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.monitor = sock.get_monitor_socket()
        self.counts: collections.Counter[str] = collections.Counter()

    def poll(self) -> None:
        """Count the events that arrived, without blocking."""
        while True:
            try:
                msg = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                name = zmq.Event(msg["event"]).name
            except ValueError:
                name = str(msg["event"])
            self.counts[name] += 1
            if name.startswith("HANDSHAKE_FAILED") and self.counts[name] == 1:
                endpoint = msg.get("endpoint")
                log.warning("publish_handshake_failed", event=name,
                            endpoint=endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else endpoint)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


def _total(items: list[Stats], key: str) -> int:
    return sum(int(s.get(key, 0) or 0) for s in items)


def _publisher_rejections(configure: Any) -> dict[str, int]:
    """CURVE handshakes the publisher's authenticator refused, by reason ({} without CURVE)."""
    rejections = getattr(configure, "rejections", None)
    if callable(rejections):
        rejections = rejections()
    return {str(k): int(v) for k, v in dict(rejections or {}).items()}


def _connected(ingest: list[Stats]) -> bool | None:
    """Whether every ingest process upstream holds its SeedLink connection; None when none has reported.

    With `stations` and `silent_stations` beside it, a heartbeat tells "connected and idle" (connected, stations
    silent) from "no stations" (stations 0) and from "disconnected"."""
    flags = [s["connected"] for s in ingest if isinstance(s.get("connected"), bool)]
    return all(flags) if flags else None
