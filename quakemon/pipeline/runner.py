"""`quakemon replay`: archived MiniSEED -> detections (JSON Lines), through the very code the daemon runs.

The archive source feeds the same station windower, the same batched preprocessing, the same inference
engine and the same triggers as the live stages, and the associator is driven as the live inference stage
drives it (each detection as it comes, then the clock advanced to the batch's newest window start); only the
ZeroMQ hops between processes are left out, so a replay runs as fast as the machine allows and gives the
detections and events a live run of the same data gives.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from quakemon.pipeline.cascade import CascadeScreen, Gather
from quakemon.pipeline.detect import (
    DetectionResult,
    DetectionStage,
    WindowMeta,
    preprocess_windows,
    stack_windows,
    warm_up_preprocess,
)
from quakemon.pipeline.engine import CPU_FORWARD_BATCH, InferenceEngine, pick_device
from quakemon.pipeline.forward_pool import WORKER_SWITCH_INTERVAL_S, gil_switch_interval, inference_pool
from quakemon.pipeline.probarchive import ProbabilityArchive
from quakemon.pipeline.settings import INFERENCE, REPLAY_BATCH_SIZE, SCREEN, TRIGGER, WINDOW, CalibrationSettings
from quakemon.pipeline.windowing import StationWindower, Window
from quakemon.wire.schema import DETECTION_SCHEMA, Sequencer, detection_topic, event_topic

log = structlog.get_logger(__name__)

#: `Gather`: a task with fewer windows to forward than this leaves them to a forward gathered across tasks, which
#: runs once the held tasks have this many, or make a pipeline batch (docs/performance.md, "Cascade screen": the
#: forward of a window or two costs more per window than one of this many).
GATHER_WINDOWS = 16

#: Longest piece `interleaved` cuts a trace into, s: the archive source's piece length, well inside the
#: windower's `max_skew_s` (30 s), so no channel runs further ahead of another than a live stream would let it.
INTERLEAVE_CHUNK_S = 20.0


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of writing (notebooks and test harnesses swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def log_to_stderr_unless_configured() -> None:
    """Point structlog's output at stderr when nobody has configured structlog yet.

    Unconfigured, structlog prints to stdout, which belongs to the program that uses the library (a notebook
    cell's output, a script's JSON). An application that configures structlog itself, before or after, keeps
    its own configuration; only the output stream of the defaults is changed here.
    """
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()))


def interleaved(traces: Iterable[Trace], chunk_s: float = INTERLEAVE_CHUNK_S) -> Iterator[Samples]:
    """Traces as pieces of at most `chunk_s` seconds, every channel's pieces merged in start-time order.

    The windower expects channels interleaved in time, as a live stream or `ArchiveSource.samples` delivers
    them (no component more than `max_skew_s` ahead of another). A Stream of whole traces fed one after the
    other (an hour of Z, then an hour of N) breaks that: the horizontals arrive an hour late, the station is
    taken for vertical-only and then reset (`clock_jump`). Pieces share the traces' data (no copy); windows
    do not depend on how the data is cut.
    """
    if not chunk_s > 0:
        raise ValueError(f"chunk_s must be > 0, got {chunk_s}")

    def pieces(number: int, trace: Trace) -> Iterator[tuple[int, int, int, Samples]]:
        whole = Samples.from_trace(trace)
        step = max(1, round(chunk_s * whole.sampling_rate))
        for i in range(0, len(whole.data), step):
            start_ns = whole.start_ns + round(i * 1e9 / whole.sampling_rate)
            yield start_ns, number, i, Samples(whole.seed_id, whole.sampling_rate, start_ns, whole.data[i : i + step])

    merged = heapq.merge(*(pieces(n, tr) for n, tr in enumerate(traces)))
    return (piece for *_, piece in merged)


@dataclass
class ProbabilitySeries:
    """Per-station class probabilities over time (window start and end in ns), for plots and the API."""

    start_ns: list[int] = field(default_factory=list)
    end_ns: list[int] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)


@dataclass
class ReplayResult:
    detections: list[dict[str, Any]]  # detection bodies (schema quakemon.detection/2)
    series: dict[str, ProbabilitySeries]
    windows: int
    stats: dict[str, int]
    labels: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # network events (quakemon.event/1), if associating


class Inference:
    """The model side of a `DetectionRunner`: one inference engine, warmed up, and its worker threads.

    Building it copies and arranges the model, freezes its graph on the CPU and starts the workers, which
    costs far more than a short run; several runners, one after another, may share one (the Python API's
    `Detector` does). It is not shared by runners at the same time. `close()` stops the worker threads.

    Args:
        checkpoint: the loaded checkpoint whose model runs.
        device, precision, graph: see `InferenceEngine` (defaults: `quakemon.pipeline.settings.INFERENCE`).
        batch_size: windows per pipeline batch of the runners; caps the forward size.
        forward_batch: windows per model forward (default: `CPU_FORWARD_BATCH` on the CPU, the whole batch on a
            GPU). The CPU workers take tasks of this size.
        overlap: preprocess and infer on worker threads while the caller windows the next batches.
        inference_workers: worker threads (default: `worker_split` of torch's threads on the CPU, one on a GPU).
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str = INFERENCE.device,
                 precision: str = INFERENCE.precision, graph: str = INFERENCE.graph,
                 batch_size: int = REPLAY_BATCH_SIZE, forward_batch: int | None = None, overlap: bool = True,
                 inference_workers: int | None = None) -> None:
        chunk = forward_batch or (min(batch_size, CPU_FORWARD_BATCH) if pick_device(device).type == "cpu"
                                  else batch_size)
        self.engine = InferenceEngine(checkpoint, device=device, precision=precision, batch_size=chunk, graph=graph)
        # on a GPU the transform runs there too and the spectra never leave the device
        self.preprocess_device = self.engine.device if self.engine.device.type != "cpu" else None
        warm_up_preprocess(checkpoint.contract, self.preprocess_device)
        # overlap: batches are preprocessed and inferred on worker threads (torch releases the GIL) while the
        # runner's thread decodes and windows the next ones. On the CPU the torch threads are split into workers
        # (`inference_pool`: one single-threaded worker per thread up to 4): independent forwards outrun one
        # forward on several OpenMP threads (docs/performance.md, "Design measurements"), and the cores the
        # decoding thread takes slow one worker instead of stalling an OpenMP barrier. On a GPU, one worker.
        self.pool: ThreadPoolExecutor | None = None
        self.workers = 0
        if overlap:
            workers = None if inference_workers is None else max(1, int(inference_workers))
            self.pool, self.workers = inference_pool(self.engine.device, workers, torch.get_num_threads(),
                                                     "replay-infer")

    @property
    def checkpoint(self) -> Checkpoint:
        return self.engine.checkpoint

    def close(self) -> None:
        """Stop the worker threads (tasks not yet started are cancelled). Idempotent."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Inference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DetectionRunner:
    """Traces in, stamped detection bodies out: windower -> preprocess -> inference -> trigger, in batches.

    A runner holds one run's state (station buffers, triggers, sequence numbers); its `Inference` (the model and
    the worker threads) is built here unless one is passed in to share. Use it as a context manager, or call
    `close()`, to stop the worker threads it built.

    Args:
        checkpoint: the loaded checkpoint.
        stride_s, max_missing: the window grid (defaults: `quakemon.pipeline.settings.WINDOW`).
        selectors: NET.STA.LOC.CHA selectors of the channels to use (default: all).
        on, off, min_duration_s, trigger_label, retrigger_hold_s, split_on_new_p: the trigger (defaults:
            `quakemon.pipeline.settings.TRIGGER`); a label the checkpoint does not know triggers on every class
            but noise. overrides, calibration: per-network/station thresholds and per-station calibration (see
            `DetectionStage`; the daemon's `[trigger]` keys).
        device, precision, graph, forward_batch, overlap, inference_workers: see `Inference` (ignored when
            `inference` is given).
        batch_size: windows taken from the windower together.
        keep_series: keep every window's probabilities in `series` (plots, `Detector.annotate`).
        associator: network association of the detections; its event bodies follow the detections.
        inference: a shared `Inference` (not closed by this runner).
        archive: every window's probabilities also go to this probability archive (not closed by this runner).
        screen_every, screen_threshold: screen and refine (`quakemon.pipeline.screen`; defaults:
            `quakemon.pipeline.settings.SCREEN`; screen_every 1 forwards every window).
        screen_net: the cascade screen instead (`quakemon.pipeline.cascade`; a screen checkpoint path or a loaded
            `quakemon.models.screen_net.Screen`), with screen_every 1. On the CPU workers its few windows to forward
            are gathered across tasks (`cascade.Gather`): a decision may wait for up to a batch more.
    """

    def __init__(self, checkpoint: Checkpoint, *, stride_s: float = WINDOW.stride_s,
                 selectors: list[str] | None = None, max_missing: float = WINDOW.max_missing,
                 on: float = TRIGGER.on, off: float = TRIGGER.off, min_duration_s: float = TRIGGER.min_duration_s,
                 trigger_label: str | None = TRIGGER.label, device: str = INFERENCE.device,
                 precision: str = INFERENCE.precision, batch_size: int = REPLAY_BATCH_SIZE,
                 keep_series: bool = False, associator: Associator | None = None, overlap: bool = True,
                 inference_workers: int | None = None, forward_batch: int | None = None,
                 graph: str = INFERENCE.graph, inference: Inference | None = None,
                 retrigger_hold_s: float = TRIGGER.retrigger_hold_s, archive: ProbabilityArchive | None = None,
                 screen_every: int = SCREEN.every, screen_threshold: float = SCREEN.threshold,
                 split_on_new_p: bool = TRIGGER.split_on_new_p, screen_net: Any = None,
                 overrides: Mapping[str, Mapping[str, float]] | None = None,
                 calibration: CalibrationSettings | None = None) -> None:
        log_to_stderr_unless_configured()
        if inference is not None and inference.checkpoint is not checkpoint:
            raise ValueError("inference was built for another checkpoint")
        self.contract: InputContract = checkpoint.contract
        self.windower = StationWindower(self.contract, stride_s, selectors, max_missing=max_missing)
        self._owns_inference = inference is None
        if inference is None:
            inference = Inference(checkpoint, device=device, precision=precision, graph=graph, batch_size=batch_size,
                                  forward_batch=forward_batch, overlap=overlap, inference_workers=inference_workers)
        self.inference = inference
        engine = inference.engine
        label = trigger_label if trigger_label in checkpoint.labels else None
        self.stage = DetectionStage(engine, on, off, min_duration_s, label, retrigger_hold_s=retrigger_hold_s,
                                    stride_s=stride_s, screen_every=screen_every, screen_threshold=screen_threshold,
                                    split_on_new_p=split_on_new_p, screen_net=screen_net, overrides=overrides,
                                    calibration=calibration)
        if inference.pool is not None and engine.device.type == "cpu":
            self.stage.refine_threads = 1  # (screening: beside the single-threaded workers)
        self._preprocess_device = inference.preprocess_device
        self.batch_size = batch_size
        self.sequencer = Sequencer()
        self.keep_series = keep_series
        self.series: dict[str, ProbabilitySeries] = {}
        self.windows = 0
        self._pending: list[Window] = []
        self.associator = associator
        self.archive = archive
        # the triggers take the workers' results here, strictly in batch order, so the detections are the same as
        # without overlap, each yielded a batch or two later
        self.inference_workers = inference.workers
        self._worker = inference.pool
        self._inflight: deque[Future] = deque()
        # Work goes to the CPU workers in forward-sized tasks (a batch is cut into several), so that at the end of a
        # replay no worker is left alone with a whole batch while the others have finished (a 256-window batch is
        # ~0.2 s of one core here); as many tasks as make a batch may wait in the queue, so this thread still runs
        # ahead by a batch and wakes about once per batch.
        self._task = (engine.batch_size if self._worker is not None and engine.device.type == "cpu"
                      else max(1, batch_size))
        tasks = -(-max(1, batch_size) // self._task)  # forward-sized tasks per pipeline batch
        self._max_inflight = self.inference_workers + tasks
        # the cascade on the CPU workers: the few windows a task passes are forwarded together with those of the
        # next tasks (`Gather`), whose decisions wait for it meanwhile in `_held`, a batch's worth at most
        self._gather: Gather | None = None
        if isinstance(self.stage.screen, CascadeScreen) and self._worker is not None and engine.device.type == "cpu" \
                and tasks > 1:
            self._gather = Gather(self.stage, GATHER_WINDOWS, tasks)
        self._held: deque[tuple[Any, ...]] = deque()

    def close(self) -> None:
        """Drop the batches in flight and stop the worker threads, if this runner built them. Idempotent."""
        for future in self._inflight:
            future.cancel()
        for future in self._inflight:
            with contextlib.suppress(Exception):
                future.result()  # a task already running finishes before the pool may go
        self._inflight.clear()
        self._held.clear()
        if self._owns_inference:
            self.inference.close()

    def __enter__(self) -> DetectionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            spectra, metas, data = self._preprocess(batch)
            return self._collect(self.stage.process(spectra, metas, data))
        out: list[dict[str, Any]] = []
        for i in range(0, len(batch), self._task):
            while len(self._inflight) >= self._max_inflight:  # every worker busy, a batch's worth queued: wait
                out += self._decide_oldest()
            self._start(batch[i : i + self._task])
        return out

    def _start(self, task: list[Window]) -> None:
        self._inflight.append(self._worker.submit(self._infer, task))

    def _preprocess(self, batch: list[Window]) -> tuple[Any, list[WindowMeta], np.ndarray]:
        """(spectra, metas, the stacked float32 windows the picks are made on): what the live stages pass on."""
        data, metas = stack_windows(batch, center="ZSCORE" in self.contract.transforms)
        spectra, metas = preprocess_windows(data, metas, self.contract, device=self._preprocess_device,
                                            keep_on_device=True)
        return spectra, metas, data

    def _infer(self, batch: list[Window]) -> tuple[list[WindowMeta], np.ndarray, np.ndarray, Any, Any]:
        """On an inference worker: stack, preprocess (on the worker's one thread, or the GPU) and infer a batch.
        The transform runs here rather than in the thread that decodes and windows, which keeps that thread's
        share of the cores small. The last item: the windows left for `Gather` to forward (None without it)."""
        spectra, metas, data = self._preprocess(batch)
        if self._gather is not None:
            probs, left = self._gather.infer(spectra, metas)
            return metas, probs, data, spectra, left
        return metas, self.stage.infer(spectra, metas), data, spectra, None

    def _decide_oldest(self) -> list[dict[str, Any]]:
        task = self._inflight.popleft().result()
        if self._gather is None:
            return self._decide(task)
        self._held.append(task)
        return self._decide_held()

    def _decide(self, task: tuple[Any, ...]) -> list[dict[str, Any]]:
        metas, probs, data, spectra, _ = task
        return self._collect(self.stage.decide(metas, probs, data, spectra))

    def _decide_held(self, final: bool = False) -> list[dict[str, Any]]:
        """Decide the held tasks, in order, as far as they need no gathered forward; forward the gathered windows
        first when `Gather` says so or `final` (the data ended), and then decide them all."""
        out: list[dict[str, Any]] = []
        held = self._held
        while held and not held[0][4].any():
            out += self._decide(held.popleft())
        if held and (final or self._gather.ready([task[4] for task in held])):
            self._gather.forward([(task[3], task[1], task[4]) for task in held])
            while held:
                out += self._decide(held.popleft())
        return out

    def _drain(self) -> list[dict[str, Any]]:
        """Wait for the batches in flight and return their detections, in order."""
        out: list[dict[str, Any]] = []
        while self._inflight:
            out += self._decide_oldest()
        if self._held:
            out += self._decide_held(final=True)
        return out

    def _collect(self, result: DetectionResult) -> list[dict[str, Any]]:
        self.windows += len(result.metas)
        if self.archive is not None:
            self.archive.add(result.metas, result.probabilities)
        if self.keep_series:
            for meta, p in zip(result.metas, result.probabilities, strict=True):
                s = self.series.setdefault(meta.station, ProbabilitySeries())
                s.start_ns.append(meta.start_ns)
                s.end_ns.append(meta.end_ns)
                s.probabilities.append(p)
        out = self._emit([body for body, _ in result.detections])
        if self.associator is not None and result.metas:
            # as the live inference stage does after each micro-batch: the associator's clock moves to the batch's
            # newest window start, so events close while the data goes on, not only when detections come
            newest = max(m.start_ns for m in result.metas) / 1e9 - self.stage.decision_delay_s
            out += [self._stamp(ev) for ev in self.associator.advance(newest)]
        return out

    def _emit(self, bodies: list[dict[str, Any]], final: bool = False) -> list[dict[str, Any]]:
        """Stamp detection bodies; each is followed by the event bodies it caused (stamped too). final: then
        decide every pick and close every open event (the end of the data)."""
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
        """Feed traces in the given order, e.g. records as a live stream delivers them; yield detection bodies as
        soon as their batch has run (see `add_samples`). Whole traces of a Stream go through `add_stream`."""
        return self.add_samples(Samples.from_trace(tr) for tr in traces)

    def add_stream(self, traces: Iterable[Trace], chunk_s: float = INTERLEAVE_CHUNK_S) -> Iterator[dict[str, Any]]:
        """Feed whole traces (an ObsPy Stream, a day file) cut into pieces and merged in time (`interleaved`), so
        that no component of a long trace runs ahead of the others; yield detection bodies as `add_samples`."""
        return self.add_samples(interleaved(traces, chunk_s))

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
        out += self._collect(self.stage.release_held(final=True))  # (screening: windows still held)
        return out + self._emit([body for body, _ in self.stage.flush()], final=True)

    @property
    def stats(self) -> dict[str, int]:
        return {**self.windower.counters(), **dict(self.stage.stats), "windows": self.windows}


def replay(paths: list[str], checkpoint: Checkpoint, *, output: TextIO | None = None,
           stride_s: float = WINDOW.stride_s, selectors: list[str] | None = None,
           trigger: dict[str, Any] | None = None, device: str = INFERENCE.device,
           precision: str = INFERENCE.precision, batch_size: int = REPLAY_BATCH_SIZE, progress: bool = True,
           keep_series: bool = False, on_detection: Callable[[dict[str, Any]], None] | None = None,
           associator: Associator | None = None, graph: str = INFERENCE.graph,
           probabilities: str | None = None, screen_every: int = SCREEN.every,
           screen_threshold: float = SCREEN.threshold, screen_net: Any = None) -> ReplayResult:
    """Run archived MiniSEED through the detection path; write JSON Lines to `output` as they come.

    Args:
        paths: MiniSEED files, directories or SDS archives (`quakemon.ingest.archive.ArchiveSource`).
        checkpoint: the loaded checkpoint.
        output: where each detection and event body goes as one JSON line (None: nowhere).
        stride_s, selectors, device, precision, batch_size, keep_series, associator, graph: see
            `DetectionRunner` (defaults: `quakemon.pipeline.settings`).
        trigger: further `DetectionRunner` keywords (on, off, min_duration_s, trigger_label, max_missing,
            retrigger_hold_s, split_on_new_p, overrides, calibration).
        progress: show a progress bar on stderr.
        on_detection: called with each body (detection or event) as it comes.
        probabilities: a folder for the probability archive (`quakemon.pipeline.probarchive`), or None.
        screen_every, screen_threshold, screen_net: screen and refine or the cascade screen, see
            `DetectionRunner`.

    Returns:
        The detections, the events, the probability series (with `keep_series`), the window count and counters.
    """
    from quakemon.ingest.archive import ArchiveSource

    trigger = trigger or {}
    archive = None if probabilities is None else ProbabilityArchive(
        probabilities, checkpoint.labels, stride_s, model=checkpoint.model_info, key="--probabilities")
    runner = DetectionRunner(checkpoint, stride_s=stride_s, selectors=selectors, device=device, precision=precision,
                             batch_size=batch_size, keep_series=keep_series, associator=associator, graph=graph,
                             archive=archive, screen_every=screen_every, screen_threshold=screen_threshold,
                             screen_net=screen_net,
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
        runner.close()
        source.close()
        if archive is not None:
            archive.close()
        if bar is not None:
            bar.close()
    stats = {**runner.stats, **{f"source_{k}": v for k, v in source.stats.items()}}
    log.info("replay_done", published=len(detections), **stats)
    return ReplayResult(detections, runner.series, runner.windows, stats, list(checkpoint.labels), events)


# While a replay runs, the thread that decodes and windows and the inference workers all want the GIL between
# their numpy/torch calls; at Python's default 5 ms switch interval a worker back from a torch op can wait that
# long for it. A 0.1 ms interval gives the replay more windows/s (docs/performance.md, "Design measurements").
REPLAY_SWITCH_INTERVAL_S = WORKER_SWITCH_INTERVAL_S


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
