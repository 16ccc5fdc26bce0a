"""`quakemon bench` part (b): the replay path over an archive, timed as a whole and per section.

See `quakemon.tools.bench` for what is measured and how it compares with the roof.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from quakemon.pipeline.settings import SCREEN


def _process_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Timer:
    """Accumulates perf_counter seconds per section."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}  # thread CPU time (time.thread_time) of the same sections
        self._lock = threading.Lock()  # sections run on several threads (the replay's inference workers)

    def _add(self, name: str, seconds: float, cpu: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                self._add(name, time.perf_counter() - start, time.thread_time() - cpu)
        return timed

    def iterate(self, name: str, it: Iterator[Any]) -> Iterator[Any]:
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                item = next(it)
            except StopIteration:
                self._add(name, time.perf_counter() - start, time.thread_time() - cpu)
                return
            self._add(name, time.perf_counter() - start, time.thread_time() - cpu)
            yield item



def bench_replay(paths: Sequence[Path], checkpoint: Path, *, device: str = "auto", precision: str = "auto",
                 stride_s: float = 1.0, batch_size: int = 256, station_seconds: float | None = None,
                 overlap: bool = True, forward_batch: int | None = None, screen_every: int = 1,
                 screen_threshold: float = SCREEN.threshold,
                 runner_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The replay path over `paths`, timed as a whole and per section. station_seconds: data span, for
    station-hours/s (default: computed from the record headers). screen_every, screen_threshold: screen and
    refine (`quakemon.pipeline.screen`); the default 1 forwards every window, so that windows/s compares with the
    bare forward (the roof). With screening, the forwards `decide` runs count under inference, not trigger.
    runner_options: further `DetectionRunner` keywords."""
    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline import runner as replay_module
    from quakemon.pipeline.runner import DetectionRunner

    ckpt = load_checkpoint(checkpoint)
    runner = DetectionRunner(ckpt, stride_s=stride_s, device=device, precision=precision, batch_size=batch_size,
                             overlap=overlap, forward_batch=forward_batch, screen_every=screen_every,
                             screen_threshold=screen_threshold, **dict(runner_options or {}))
    runner.stage.engine.warmup()
    timer = _Timer()
    runner.windower.add_samples = timer.wrap("windows", runner.windower.add_samples)  # type: ignore[method-assign]
    refine = runner.stage._refine
    in_decide = [0.0, 0.0]  # wall and thread CPU seconds of the forwards decide runs itself (screening)

    def refine_counted(*args: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return refine(*args)
        finally:
            in_decide[0] += time.perf_counter() - t0
            in_decide[1] += time.thread_time() - c0

    runner.stage._refine = refine_counted  # type: ignore[method-assign]
    runner.stage.decide = timer.wrap("trigger", runner.stage.decide)  # type: ignore[method-assign]
    saved = replay_module.stack_windows, replay_module.preprocess_windows
    replay_module.stack_windows = timer.wrap("stack", saved[0])  # type: ignore[assignment]
    replay_module.preprocess_windows = timer.wrap("preprocess", saved[1])  # type: ignore[assignment]
    source = ArchiveSource([str(p) for p in paths])
    stop = threading.Event()
    spans: dict[str, list[int]] = {}
    records = 0

    def counted(pieces: Iterator[Any]) -> Iterator[Any]:
        nonlocal records
        for piece in pieces:
            records += 1
            s = spans.setdefault(piece.seed_id, [piece.start_ns, piece.end_ns])
            s[0], s[1] = min(s[0], piece.start_ns), max(s[1], piece.end_ns)
            yield piece

    detections = 0
    engine = runner.stage.engine
    start, cpu_start = time.perf_counter(), _process_cpu_s()
    try:
        with replay_module.gil_switch_interval(replay_module.REPLAY_SWITCH_INTERVAL_S):  # as `replay` runs
            for _ in runner.add_samples(counted(timer.iterate("source (read + decode)", source.samples(stop)))):
                detections += 1
            detections += len(runner.finish())
    finally:
        source.close()
        replay_module.stack_windows, replay_module.preprocess_windows = saved
    elapsed, cpu = time.perf_counter() - start, _process_cpu_s() - cpu_start
    runner.close()  # (its worker threads: a caller may run many replays in one process)
    sec = dict(timer.seconds)
    infer = engine.stats.seconds
    # busy seconds per section; with overlap, inference runs on worker threads beside the rest, so the sections
    # can add up to more than the elapsed time
    sections = {
        "source (read + decode)": sec.get("source (read + decode)", 0.0),
        "windows (buffers + scheduler)": sec.get("windows", 0.0),
        "stack (windows -> float32)": sec.get("stack", 0.0),
        "preprocess (spectra)": sec.get("preprocess", 0.0),
        "inference (engine.predict)": infer,
        "trigger": max(0.0, sec.get("trigger", 0.0) - in_decide[0]),
    }
    # CPU seconds of the same sections (thread_time of the thread each ran on); what none of them holds is the
    # glue: the runner's own Python, thread hand-offs, waiting for the GIL, the interpreter's housekeeping
    tcpu = dict(timer.cpu_seconds)
    sections_cpu = {
        "source (read + decode)": tcpu.get("source (read + decode)", 0.0),
        "windows (buffers + scheduler)": tcpu.get("windows", 0.0),
        "stack (windows -> float32)": tcpu.get("stack", 0.0),
        "preprocess (spectra)": tcpu.get("preprocess", 0.0),
        "inference (engine.predict)": engine.stats.cpu_seconds,
        "trigger": max(0.0, tcpu.get("trigger", 0.0) - in_decide[1]),
    }
    sections_cpu["other"] = max(0.0, cpu - sum(sections_cpu.values()))
    if station_seconds is None:
        by_station: dict[str, float] = {}
        for sid, (a, b) in spans.items():
            key = sid.rsplit(".", 1)[0]
            by_station[key] = max(by_station.get(key, 0.0), (b - a) / 1e9)
        station_seconds = sum(by_station.values())
    windows = runner.windows
    return {
        "windows": windows, "records": records, "detections": detections, "seconds": elapsed,
        "windows_per_s": windows / elapsed if elapsed else float("nan"),
        "station_hours": station_seconds / 3600.0,
        "station_hours_per_s": station_seconds / 3600.0 / elapsed if elapsed else float("nan"),
        "batch_size": batch_size, "forward_batch": engine.batch_size, "graph": engine.graph,
        "device": str(engine.device), "precision": engine.precision,
        "inference_batches": engine.stats.batches, "overlap": overlap, "inference_workers": runner.inference_workers,
        # CPU time, all threads, and the part inside the model forward: the pipeline's own cost, measured at the
        # same moments as the model's (so not moved by the machine's drift, unlike a ratio of two runs). Exact
        # when each inference worker runs torch on one thread (2 cores: 2 workers x 1); with intra-op threads
        # (or a GPU) thread_time misses the forward's other threads, and the share reads high.
        "cpu_seconds": cpu, "model_cpu_seconds": engine.stats.cpu_seconds,
        "overhead_cpu_share": 1.0 - engine.stats.cpu_seconds / cpu if cpu > 0 else float("nan"),
        "outside_forward_cpu_seconds": cpu - engine.stats.cpu_seconds,
        "sections_s": {k: round(v, 3) for k, v in sections.items()},
        "sections_cpu_s": {k: round(v, 3) for k, v in sections_cpu.items()},
        "sections_share": {k: round(v / elapsed, 3) for k, v in sections.items()} if elapsed else {},
    }

