"""`quakemon replay`: archived MiniSEED -> detections (JSON Lines), through the very code the daemon runs.

The archive source feeds the same station windower, the same batched preprocessing, the same inference
engine and the same triggers as the live stages; only the ZeroMQ hops between processes are left out, so a
replay runs as fast as the machine allows and gives the detections a live run of the same data gives.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import structlog
import torch
from obspy import Trace

from quakemon.ingest.base import Samples
from quakemon.models.checkpoint import Checkpoint
from quakemon.models.contract import InputContract
from quakemon.pipeline.associate import Associator
from quakemon.pipeline.detect import (
    DetectionResult,
    DetectionStage,
    preprocess_windows,
    stack_windows,
    warm_up_preprocess,
)
from quakemon.pipeline.engine import CPU_FORWARD_BATCH, InferenceEngine, pick_device
from quakemon.pipeline.threads import torch_worker_pool, worker_split
from quakemon.pipeline.windowing import StationWindower, Window
from quakemon.wire.schema import DETECTION_SCHEMA, Sequencer, detection_topic, event_topic

log = structlog.get_logger(__name__)


@dataclass
class ProbabilitySeries:
    """Per-station class probabilities over time (window start and end in ns), for plots and the API."""

    start_ns: list[int] = field(default_factory=list)
    end_ns: list[int] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)


@dataclass
class ReplayResult:
    detections: list[dict[str, Any]]  # detection bodies (schema quakemon.detection/1)
    series: dict[str, ProbabilitySeries]
    windows: int
    stats: dict[str, int]
    labels: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # network events (quakemon.event/1), if associating


class DetectionRunner:
    """Traces in, stamped detection bodies out: windower -> preprocess -> inference -> trigger, in batches."""

    def __init__(self, checkpoint: Checkpoint, *, stride_s: float = 1.0, selectors: list[str] | None = None,
                 max_missing: float = 0.1, on: float = 0.7, off: float = 0.5, min_duration_s: float = 2.0,
                 trigger_label: str | None = "earthquake", device: str = "auto", precision: str = "auto",
                 batch_size: int = 256, keep_series: bool = False, associator: Associator | None = None,
                 overlap: bool = True, inference_workers: int | None = None,
                 forward_batch: int | None = None, graph: str = "auto") -> None:
        self.contract: InputContract = checkpoint.contract
        self.windower = StationWindower(self.contract, stride_s, selectors, max_missing=max_missing)
        # `batch_size` windows are taken from the windower together; the model sees them in forwards of
        # `forward_batch` (default: CPU_FORWARD_BATCH on the CPU, the whole batch on a GPU), and the CPU workers
        # in tasks of that size (below)
        chunk = forward_batch or (min(batch_size, CPU_FORWARD_BATCH) if pick_device(device).type == "cpu"
                                  else batch_size)
        engine = InferenceEngine(checkpoint, device=device, precision=precision, batch_size=chunk, graph=graph)
        label = trigger_label if trigger_label in checkpoint.labels else None
        self.stage = DetectionStage(engine, on, off, min_duration_s, label)
        # on a GPU the transform runs there too and the spectra never leave the device
        self._preprocess_device = engine.device if engine.device.type != "cpu" else None
        warm_up_preprocess(self.contract, self._preprocess_device)
        self.batch_size = batch_size
        self.sequencer = Sequencer()
        self.keep_series = keep_series
        self.series: dict[str, ProbabilitySeries] = {}
        self.windows = 0
        self._pending: list[Window] = []
        self.associator = associator
        # overlap: batches are preprocessed and inferred on worker threads (torch releases the GIL) while this
        # thread decodes and windows the next ones; the triggers take the results here, strictly in batch order, so
        # the detections are the same as without overlap, each yielded a batch or two later. On the CPU the torch
        # threads are split into workers (`worker_split`: one single-threaded worker per thread up to 4): two
        # independent forwards measured 1,580-1,800 windows/s on this 2-core machine against 960-1,010 for one
        # forward on two OpenMP threads, and the cores this thread takes for decoding slow one worker instead of
        # stalling an OpenMP barrier. On a GPU, one worker.
        threads_each = 1
        if inference_workers is None:
            inference_workers, threads_each = (worker_split(torch.get_num_threads()) if engine.device.type == "cpu"
                                               else (1, 1))
        self.inference_workers = max(1, int(inference_workers)) if overlap else 0
        self._worker: ThreadPoolExecutor | None = None
        if self.inference_workers:
            self._worker = (torch_worker_pool(self.inference_workers, "replay-infer", threads_each)
                            if engine.device.type == "cpu" else ThreadPoolExecutor(1, "replay-infer"))
        self._inflight: deque[Future] = deque()
        # Work goes to the CPU workers in forward-sized tasks (a batch is cut into several), so that at the end of a
        # replay no worker is left alone with a whole batch while the others have finished (a 256-window batch is
        # ~0.2 s of one core here); as many tasks as make a batch may wait in the queue, so this thread still runs
        # ahead by a batch and wakes about once per batch.
        self._task = chunk if self._worker is not None and engine.device.type == "cpu" else max(1, batch_size)
        self._max_inflight = self.inference_workers + -(-max(1, batch_size) // self._task)

    def _run_batch(self, count: int | None = None) -> list[dict[str, Any]]:
        """Start the preprocessing and inference of the pending windows (the first `count` of them); return what
        finished batches produced."""
        count = len(self._pending) if count is None else count
        batch, self._pending = self._pending[:count], self._pending[count:]
        return self._submit(batch)

    def _submit(self, batch: list[Window]) -> list[dict[str, Any]]:
        if not batch:
            return []
        if self._worker is None:
            return self._collect(self.stage.process(*self._preprocess(batch)))
        out: list[dict[str, Any]] = []
        for i in range(0, len(batch), self._task):
            while len(self._inflight) >= self._max_inflight:  # every worker busy, a batch's worth queued: wait
                out += self._decide_oldest()
            self._start(batch[i : i + self._task])
        return out

    def _start(self, task: list[Window]) -> None:
        self._inflight.append(self._worker.submit(self._infer, task))

    def _preprocess(self, batch: list[Window]) -> tuple[Any, list[dict[str, Any]]]:
        data, metas = stack_windows(batch, center="ZSCORE" in self.contract.transforms)
        return preprocess_windows(data, metas, self.contract, device=self._preprocess_device, keep_on_device=True)

    def _infer(self, batch: list[Window]) -> tuple[list[dict[str, Any]], np.ndarray]:
        """On an inference worker: stack, preprocess (on the worker's one thread, or the GPU) and infer a batch.
        The transform runs here rather than in the thread that decodes and windows, which keeps that thread's
        share of the cores small."""
        spectra, metas = self._preprocess(batch)
        return metas, self.stage.infer(spectra, metas)

    def _decide_oldest(self) -> list[dict[str, Any]]:
        metas, probs = self._inflight.popleft().result()
        return self._collect(self.stage.decide(metas, probs))

    def _drain(self) -> list[dict[str, Any]]:
        """Wait for the batches in flight and return their detections, in order."""
        out: list[dict[str, Any]] = []
        while self._inflight:
            out += self._decide_oldest()
        return out

    def _collect(self, result: DetectionResult) -> list[dict[str, Any]]:
        self.windows += len(result.metas)
        if self.keep_series:
            for meta, p in zip(result.metas, result.probabilities, strict=True):
                s = self.series.setdefault(meta["station"], ProbabilitySeries())
                s.start_ns.append(meta["start_ns"])
                s.end_ns.append(meta["end_ns"])
                s.probabilities.append(p)
        return self._emit([body for body, _ in result.detections])

    def _emit(self, bodies: list[dict[str, Any]], final: bool = False) -> list[dict[str, Any]]:
        """Stamp detection bodies; each is followed by the event bodies it caused (stamped too)."""
        out: list[dict[str, Any]] = []
        for body in bodies:
            out.append(self._stamp(body))
            if self.associator is not None:
                out += [self._stamp(ev) for ev in self.associator.add(body)]
        if final and self.associator is not None:
            out += [self._stamp(ev) for ev in self.associator.flush()]
        return out

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        topic = detection_topic(body["station"]) if body["schema"] == DETECTION_SCHEMA else event_topic(body["id"])
        return self.sequencer.stamp(topic, body)

    def add_traces(self, traces: Iterable[Trace]) -> Iterator[dict[str, Any]]:
        """Feed traces; yield detection bodies as soon as their batch has run (see `add_samples`)."""
        return self.add_samples(Samples.from_trace(tr) for tr in traces)

    def add_samples(self, pieces: Iterable[Samples]) -> Iterator[dict[str, Any]]:
        """Feed pieces of channels (`ArchiveSource.samples`); yield detection bodies as soon as their batch has run.

        A batch starts at `batch_size` windows, or at one forward's worth while a worker is idle: at the start
        of a replay (the first windows need a window length of every station's data) and whenever the source is
        slower than the workers, they do not wait for a full batch."""
        forward = self.stage.engine.batch_size
        for piece in pieces:
            self._pending += self.windower.add_samples(piece)
            pending = len(self._pending)
            if pending >= self.batch_size:
                yield from self._run_batch()
            elif pending >= forward and self._worker_idle():  # whole forwards only; the rest waits for more
                yield from self._run_batch(pending - pending % forward)

    def _worker_idle(self) -> bool:
        return self._worker is not None and sum(not f.done() for f in self._inflight) < self.inference_workers

    def finish(self) -> list[dict[str, Any]]:
        """Emit the windows still buffered, run them, and close open triggers."""
        self._pending += self.windower.flush()
        out = self._run_batch()  # (in forward-sized tasks on the CPU, shared out among the workers)
        out += self._drain()
        return out + self._emit([body for body, _ in self.stage.flush()], final=True)

    @property
    def stats(self) -> dict[str, int]:
        return {**self.windower.counters(), **dict(self.stage.stats), "windows": self.windows}


def replay(paths: list[str], checkpoint: Checkpoint, *, output: TextIO | None = None, stride_s: float = 1.0,
           selectors: list[str] | None = None, trigger: dict[str, Any] | None = None, device: str = "auto",
           precision: str = "auto", batch_size: int = 256, progress: bool = True, keep_series: bool = False,
           on_detection: Callable[[dict[str, Any]], None] | None = None,
           associator: Associator | None = None, graph: str = "auto") -> ReplayResult:
    """Run archived MiniSEED through the detection path; write JSON Lines to `output` as they come."""
    from quakemon.ingest.archive import ArchiveSource

    trigger = trigger or {}
    runner = DetectionRunner(checkpoint, stride_s=stride_s, selectors=selectors, device=device, precision=precision,
                             batch_size=batch_size, keep_series=keep_series, associator=associator, graph=graph,
                             **trigger)
    source = ArchiveSource(paths, selectors)
    detections: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    bar = _progress(progress)

    def emit(body: dict[str, Any]) -> None:
        (detections if body["schema"] == DETECTION_SCHEMA else events).append(body)
        if output is not None:
            output.write(json.dumps(body, separators=(",", ":")) + "\n")
            output.flush()
        if on_detection is not None:
            on_detection(body)

    stop = threading.Event()
    try:
        last = 0
        with gil_switch_interval(REPLAY_SWITCH_INTERVAL_S):
            for body in runner.add_samples(_counting(source.samples(stop), bar)):
                emit(body)
                if bar is not None and runner.windows != last:
                    bar.set_postfix(windows=runner.windows, detections=len(detections), refresh=False)
                    last = runner.windows
            for body in runner.finish():
                emit(body)
    finally:
        source.close()
        if bar is not None:
            bar.close()
    stats = {**runner.stats, **{f"source_{k}": v for k, v in source.stats.items()}}
    log.info("replay_done", published=len(detections), **stats)
    return ReplayResult(detections, runner.series, runner.windows, stats, list(checkpoint.labels), events)


# While a replay runs, the thread that decodes and windows and the inference workers all want the GIL between
# their numpy/torch calls; at Python's default 5 ms switch interval a worker back from a torch op can wait that
# long for it. 0.1 ms: 1,322-1,446 windows/s against 1,221-1,262 at 5 ms, in 4 alternating pairs of replays of
# 40 stations x 300 s on this 2-core machine (0.5 ms: 1,110-1,419).
REPLAY_SWITCH_INTERVAL_S = 1e-4


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """sys.setswitchinterval(seconds) for the duration, then the previous value."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" rec", file=sys.stderr, dynamic_ncols=True, mininterval=0.5, desc="replay")


def _counting(pieces: Iterator[Samples], bar) -> Iterator[Samples]:
    for piece in pieces:
        if bar is not None:
            bar.update(1)
        yield piece
