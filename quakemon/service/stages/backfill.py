"""Backfill in the inference stage: spans SeedLink could not deliver, read from an archive and run through the
replay path on a thread of their own, published with ``"backfill": true``.

The ingest stage lists the due requests (`quakemon.ingest.backfill.GapPlanner`) in its status reports
(`backfill_requests`), which reach this stage beside the data; `Backfiller.offer` takes the ones it has not seen.
The worker thread reads each span from `[backfill] source` and feeds it to a `DetectionRunner` of its own: the
windower, preprocessing, model and triggers of `quakemon replay`, with trigger state apart from the live
trigger's (a live detection open at the same station is not touched), closed at the end of the span as a replay
closes it at the end of its data (close_reason "flush"). A backfilled span therefore gives the detections, ids
and picks `quakemon replay` of the same archive span gives. Backfill detections go to subscribers only, not to
the live associator (their times are in the past of its data clock).

Priority: the thread runs at a lower scheduling priority (nice +10) and feeds no data while live windows are
queued for inference (`busy`). A read that fails (unreachable server, HTTP error, corrupt MiniSEED) is logged
(`backfill_fetch_failed`) and retried after 1 s, doubling to RETRY_MAX_S, `attempts` times in all; then the
span is given up (`backfill_failed`). Nothing a source does stops the stage.

Logs: `backfill_started` / `backfill_finished` (station, span, windows, detections). Counters (`stats`, in the
stage status): backfill_pending, backfill_done, backfill_failed, backfill_windows, backfill_detections,
backfill_rejected (malformed requests) and backfill_spans {done, failed} (for the metrics).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

from quakemon.ingest.backfill import BackfillError, BackfillRequest, Source, open_source
from quakemon.service.config import Config
from quakemon.wire.schema import iso_utc_ns

log = structlog.get_logger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
NICE = 10
BUSY_WAIT_S = 0.05
MAX_SEEN = 4096  # request keys remembered (the ingest status lists each one for a while)


class Backfiller:
    """Runs backfill requests on a thread; `take()` hands over the detection bodies to publish (main thread).

    Args:
        cfg: the daemon config ([backfill], [window], [trigger], [model], [seedlink] streams).
        checkpoint: the loaded checkpoint (shared with the live engine; the worker builds its own engine).
        source: where spans are read (`quakemon.ingest.backfill.open_source`).
        busy: True while live windows wait for inference; the worker feeds no data meanwhile.
        retry_first_s: the first retry's delay (doubling up to RETRY_MAX_S).
    """

    def __init__(self, cfg: Config, checkpoint: Any, source: Source, busy: Callable[[], bool] = lambda: False,
                 retry_first_s: float = RETRY_FIRST_S) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.source = source
        self.busy = busy
        self.retry_first_s = retry_first_s
        self.todo: collections.deque[BackfillRequest] = collections.deque()
        self.seen: dict[tuple[str, int, int], None] = {}
        self.results: collections.deque[dict[str, Any]] = collections.deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.counts = collections.Counter({k: 0 for k in ("done", "failed", "windows", "detections", "rejected")})
        self.inference: Any = None
        self.thread = threading.Thread(target=self._run, name="backfill", daemon=True)
        self.thread.start()

    # -- main thread ------------------------------------------------------------------------------------------
    def offer(self, requests: Iterable[Any]) -> int:
        """Queue the requests (wire form, untrusted) not seen before; returns how many were new."""
        new = 0
        for obj in requests:
            try:
                req = BackfillRequest.from_wire(obj)
            except ValueError:
                self.counts["rejected"] += 1
                continue
            if req.key in self.seen:
                continue
            self.seen[req.key] = None
            if len(self.seen) > MAX_SEEN:
                del self.seen[next(iter(self.seen))]
            with self.cond:
                self.todo.append(req)
                self.cond.notify()
            new += 1
        return new

    def take(self) -> list[dict[str, Any]]:
        """The detection bodies finished since the last call, in order."""
        out = []
        while self.results:
            out.append(self.results.popleft())
        return out

    def stats(self) -> dict[str, Any]:
        return {"backfill_pending": len(self.todo), **{f"backfill_{k}": v for k, v in self.counts.items()},
                "backfill_spans": {"done": self.counts["done"], "failed": self.counts["failed"]}}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (a span being run is abandoned at its next piece of data)."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        self.thread.join(timeout)
        if self.inference is not None:
            self.inference.close()

    # -- worker thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        with contextlib.suppress(OSError):  # per-thread niceness on Linux; elsewhere the thread keeps its priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while not self.stop.is_set():
            with self.cond:
                while not self.todo and not self.stop.is_set():
                    self.cond.wait(1.0)
                if self.stop.is_set():
                    return
                req = self.todo.popleft()
            try:
                self._backfill(req)
            except Exception as exc:  # a bug or a model failure must not take the live stage down with it
                self.counts["failed"] += 1
                log.error("backfill_failed", station=req.station, error=repr(exc)[:500])

    def _backfill(self, req: BackfillRequest) -> None:
        stream = self._fetch(req)
        if stream is None:
            return
        log.info("backfill_started", station=req.station, start=iso_utc_ns(req.start_ns), end=iso_utc_ns(req.end_ns),
                 span_s=req.span_s, traces=len(stream), source=str(self.source))
        runner = self._runner()
        bodies: list[dict[str, Any]] = []
        try:
            from quakemon.pipeline.runner import interleaved

            bodies += runner.add_samples(self._when_idle(interleaved(stream)))
            if self.stop.is_set():
                return
            bodies += runner.finish()
        finally:
            runner.close()
        for body in bodies:
            body["backfill"] = True
            self.results.append(body)
        self.counts["done"] += 1
        self.counts["windows"] += runner.windows
        self.counts["detections"] += sum(1 for b in bodies if b["state"] == "new")
        log.info("backfill_finished", station=req.station, start=iso_utc_ns(req.start_ns), end=iso_utc_ns(req.end_ns),
                 span_s=req.span_s, windows=runner.windows, detections=sum(1 for b in bodies if b["state"] == "new"),
                 messages=len(bodies))

    def _fetch(self, req: BackfillRequest) -> Any:
        """The span's data, retried with backoff; None when given up (or stopping)."""
        delay = self.retry_first_s
        attempts = self.cfg.backfill.attempts
        for attempt in range(1, attempts + 1):
            try:
                return self.source.fetch(req)
            except BackfillError as exc:
                last = attempt == attempts
                log.warning("backfill_fetch_failed", station=req.station, attempt=attempt, attempts=attempts,
                            error=str(exc), retry_in_s=None if last else delay)
                if last or self.stop.wait(delay):
                    break
                delay = min(delay * 2, RETRY_MAX_S)
        if not self.stop.is_set():
            self.counts["failed"] += 1
            log.error("backfill_failed", station=req.station, start=iso_utc_ns(req.start_ns),
                      end=iso_utc_ns(req.end_ns), attempts=attempts, note="the span is not backfilled")
        return None

    def _when_idle(self, pieces: Iterator[Any]) -> Iterator[Any]:
        """The pieces, each once no live window is waiting for inference; ends early when stopping."""
        for piece in pieces:
            while self.busy() and not self.stop.is_set():
                self.stop.wait(BUSY_WAIT_S)
            if self.stop.is_set():
                return
            yield piece

    def _runner(self) -> Any:
        """A DetectionRunner with the replay's settings from the config, sharing one engine across spans."""
        from quakemon.pipeline.runner import DetectionRunner, Inference

        cfg, t = self.cfg, self.cfg.trigger
        batch_size = max(cfg.model.batch_size, 256)  # as `quakemon replay`
        if self.inference is None:
            device = os.environ.get("QUAKEMON_FORCE_DEVICE") or cfg.model.device  # as the live engine's
            self.inference = Inference(self.checkpoint, device=device, precision=cfg.model.precision,
                                       graph=cfg.model.graph, batch_size=batch_size, overlap=False)
        return DetectionRunner(self.checkpoint, stride_s=cfg.window.stride_s, selectors=list(cfg.seedlink.streams),
                               max_missing=cfg.window.max_missing_fraction, trigger_label=t.label,
                               batch_size=batch_size, inference=self.inference, screen_every=cfg.model.screen_every,
                               screen_threshold=cfg.model.screen_threshold, **t.detection_kwargs())


def backfiller_from_config(cfg: Config, checkpoint: Any, busy: Callable[[], bool]) -> Backfiller | None:
    """The Backfiller `[backfill] source` asks for, or None when backfill is off."""
    source = open_source(cfg.backfill.source)
    return None if source is None else Backfiller(cfg, checkpoint, source, busy)


def requests_in(upstream_stats: Iterable[dict[str, Any]]) -> Iterator[Any]:
    """The backfill requests listed in ingest status counters (wire form, unchecked)."""
    for stats in upstream_stats:
        listed = stats.get("backfill_requests")
        if isinstance(listed, list):
            yield from listed
