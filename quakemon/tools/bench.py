"""`quakemon bench`: capacity and throughput on this machine, measured side by side in one run.

(a) roof    the bare HybridViT forward (inference_mode, the engine's precision and device), windows/s at each
            batch size; the best one is the roof. Measured before and after (b), since the machine may be shared.
(b) replay  archived MiniSEED through the replay path (`quakemon.pipeline.runner.DetectionRunner` on an `ArchiveSource`,
            exactly what `quakemon replay` runs, minus writing JSON Lines): MiniSEED decode, station buffers,
            windows, preprocessing, inference, trigger. windows/s, station-hours of data per second, the ratio
            to (a), and where the time goes (perf_counter sections around the runner's stages).
(c) live    N synthetic 3-component 100 Hz stations served by `quakemon serve` (`python -m
            quakemon.tools.serve --loop --retime-now`, a subprocess) at `speed` x real time into `quakemon
            run` (a subprocess, its own config), N growing until the daemon falls behind. Measured over a
            steady interval after the first windows: windows/s published by inference (heartbeat
            `windows_out`), drops, growth of the ingest lag, daemon CPU and memory (all its processes, from
            /proc), and latency. Latency: the daemon's own `latency_s` (the window's last sample reaching the
            ingest stage -> PUB send) of every published detection, plus the PUB -> subscriber hop measured on
            heartbeats (their `time` stamp vs. receipt). To publish many detections, the live model is the
            bench model with its head rescaled so that p(trigger label) spreads around 0.5 on these data, and
            trigger on = off = 0.5, min_duration = 0: every window that crosses 0.5 publishes a message. The
            compute per window is that of the unmodified model.

Synthetic stations: white + microseismic noise with one synthetic local earthquake per station per minute
(`quakemon.data.synthetic.synthesize_event_trace`), int32 counts, 512-byte STEIM2 MiniSEED, one file per station.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.tools.bench_live import (  # noqa: F401 - re-exported API
    LiveStep,
    bench_live,
    daemon_config,
    live_step,
    proc_usage,
)

log = structlog.get_logger(__name__)

NETWORK = "XB"
START = "2024-01-01T00:00:00"
CHANNELS = ("HHZ", "HHN", "HHE")


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run. `quick()` finishes in about a minute on an idle 2-core machine."""

    device: str = "auto"
    precision: str = "auto"
    stride_s: float = 1.0
    roof_batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512)
    threads: tuple[int, ...] = ()  # torch threads the roof tries; () = 1 and torch's default (the core count)
    # torch threads per process for the replay and the daemon's stages. 1, because on a CPU shared with other
    # processes (the daemon alone runs 3) OpenMP threads spin while their cores run someone else: measured here
    # under load, 2 threads gave 3-40 windows/s at small batches against 200-800 with 1 (see the roof table).
    run_threads: int = 1
    roof_min_s: float = 1.5
    replay_stations: int = 40
    replay_seconds: float = 300.0
    # torch threads of the replay, one process alone: None = torch's default (the core count), which is what
    # `quakemon replay` runs with
    replay_threads: int | None = None
    replay_batch: int | None = None  # None: REPLAY_BATCH, what `quakemon replay` runs with
    # replays, each between two roofs at its own threads and batch; the ratio is the median of
    # replay / mean(roof before, roof after): this machine's speed drifts by tens of % within minutes, and twelve
    # back-to-back 1 s roofs at one setting spread over 1,438-2,033 windows/s
    replay_repeats: int = 5
    # seconds each of those roofs runs: several, so that one sample of the drift does not decide a ratio
    replay_roof_s: float = 4.0
    live_stations: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 1000)
    live_speed: float = 1.0
    live_archive_s: float = 120.0
    live_measure_s: float = 30.0
    live_batch: int = 64
    # pipeline.queue_hwm for the daemon, as seconds of windows: max(100, live_queue_s * N * speed / stride).
    # Windows on the absolute grid complete in bursts (every station at once), so the default 100 windows drops
    # at a few hundred stations although the throughput suffices. None = the daemon's default.
    live_queue_s: float | None = 10.0
    live_timeout_s: float = 120.0
    lag_growth_limit_s: float = 2.0
    # a step counts as watched in real time only if the p99 latency (window's last sample in -> published)
    # stays within this: a daemon that keeps pace seconds behind is not what an observatory runs
    latency_p99_limit_s: float = 1.0
    parts: tuple[str, ...] = ("roof", "replay", "live")

    @classmethod
    def quick(cls, **kw: Any) -> BenchPlan:
        base = dict(roof_batches=(64, 256), roof_min_s=0.5, replay_stations=6, replay_seconds=100.0, replay_repeats=1,
                    replay_roof_s=0.5,
                    live_stations=(5,), live_speed=2.0, live_archive_s=60.0, live_measure_s=6.0, live_timeout_s=90.0)
        return cls(**{**base, **kw})


# ---------------------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------------------

REPLAY_BATCH = 256  # `quakemon replay`'s inference batch (cli: max(model.batch_size, 256))


def station_code(i: int) -> str:
    return f"S{i:04d}"


def write_synthetic_archive(directory: str | os.PathLike, n_stations: int, duration_s: float, *, seed: int = 0,
                            sampling_rate: float = 100.0, event_every_s: float = 60.0, first: int = 0,
                            layout: str = "channel") -> list[Path]:
    """Stations XB.Sxxxx..HH? (first .. first + n_stations - 1): noise plus one local event per `event_every_s`.

    layout "channel": one file per channel (as in an SDS archive); "station": one file per station with its three
    channels one after the other (as `Stream.write` makes it). Returns the files.
    """
    from obspy import Stream, Trace, UTCDateTime

    from quakemon.data.synthetic import synthesize_event_trace

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, first])
    n = int(round(duration_s * sampling_rate))
    t = np.arange(n) / sampling_rate
    files = []
    for i in range(first, first + n_stations):
        noise = rng.normal(0.0, 60.0, (3, n))
        phase = rng.uniform(0, 2 * np.pi, (3, 1))
        noise += 200.0 * np.sin(2 * np.pi * 0.18 * t + phase)  # microseism
        for start in np.arange(0.0, duration_s - 30.0, event_every_s):
            a = int((start + rng.uniform(0, max(1.0, min(event_every_s, duration_s) - 40.0))) * sampling_rate)
            seg = noise[:, a : a + int(30 * sampling_rate)]
            noise[:, a : a + seg.shape[1]] = synthesize_event_trace(
                seg, 3 * sampling_rate, magnitude=float(rng.uniform(1.5, 3.0)),
                distance_km=float(rng.uniform(10, 80)), rng=rng, sampling_rate=sampling_rate)
        st = Stream()
        for c, cha in enumerate(CHANNELS):
            header = {"network": NETWORK, "station": station_code(i), "location": "", "channel": cha,
                      "sampling_rate": sampling_rate, "starttime": UTCDateTime(START)}
            st += Trace(np.round(noise[c]).astype(np.int32), header=header)
        parts = [(f"{NETWORK}.{station_code(i)}.mseed", st)] if layout == "station" else [
            (f"{NETWORK}.{station_code(i)}..{tr.stats.channel}.mseed", Stream([tr])) for tr in st]
        for name, part in parts:
            part.write(str(out / name), format="MSEED", reclen=512, encoding="STEIM2")
            files.append(out / name)
    return files


def bench_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The bundled model if present (what operators run), else a random HybridViT TINY depth 4 written to `path`."""
    from quakemon.models.checkpoint import resolve_checkpoint

    try:
        bundled = resolve_checkpoint(None)
        if bundled.is_file():
            return bundled
    except Exception:  # noqa: BLE001 - no bundled model: fall back to random weights
        pass
    if path is None:
        raise ValueError("no bundled model; give a path for a random test checkpoint")
    return random_checkpoint(path)


def random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random HybridViT (TINY, depth 4) with the default InputContract; compute cost as the bundled model."""
    import torch

    from quakemon.models import HybridViT, save_checkpoint
    from quakemon.models.contract import InputContract

    torch.manual_seed(seed)
    model = HybridViT("TINY", depth=4).eval()
    save_checkpoint(path, model, ["noise", "earthquake"], InputContract(), name="bench-random",
                    provenance={"note": "random weights for benchmarks"})
    return Path(path)


def spread_checkpoint(base: Path, out: Path, files: Sequence[Path], label: str = "earthquake",
                      target_std: float = 1.5) -> Path:
    """`base` with its head rescaled so that the logit difference for `label` has median 0 and std `target_std`
    on `files`: about half of the windows cross p = 0.5, so live triggers fire often (latency samples)."""
    import threading as _t

    import torch

    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models import save_checkpoint
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import DetectionRunner

    ckpt = load_checkpoint(base)
    runner = DetectionRunner(ckpt, device="cpu", keep_series=True, trigger_label=None)
    source = ArchiveSource([str(p) for p in files])
    try:
        for _ in runner.add_samples(source.samples(_t.Event())):
            pass
        runner.finish()
    finally:
        source.close()
    i = ckpt.labels.index(label)
    p = np.concatenate([np.asarray(s.probabilities, np.float64) for s in runner.series.values()])
    p = np.clip(p, 1e-12, 1.0)
    diff = np.log(p[:, i]) - np.log(np.delete(p, i, axis=1).sum(axis=1))
    gain = target_std / max(float(np.std(diff)), 1e-6)
    centre = float(np.median(diff))
    head = ckpt.model.head
    with torch.no_grad():
        head.weight.mul_(gain)
        head.bias.mul_(gain)
        head.bias[i] -= gain * centre
    save_checkpoint(out, ckpt.model.eval(), list(ckpt.labels), ckpt.contract, name="bench-live",
                    provenance={"note": f"{base.name} with head x{gain:.3g}, centred, for latency sampling"})
    return out


# ---------------------------------------------------------------------------------------------------------------
# (a) roof
# ---------------------------------------------------------------------------------------------------------------

def bench_roof(checkpoint: Path, *, device: str = "auto", precision: str = "auto",
               batch_sizes: Sequence[int] = (64, 256), min_s: float = 1.0, streams: int = 0,
               stream_threads: int = 1, graph: str = "auto") -> dict[str, Any]:
    """Bare model forward (no preprocessing, no softmax) on random spectrograms: windows/s per batch size,
    with the current torch thread count, or with `streams` > 0: that many threads each running forwards of its
    own batch on `stream_threads` torch threads, at once (the replay's inference workers; the figure is their
    sum). The model and its input are prepared as the inference engine prepares them (folded stem, channels_last
    weights, on the CPU the frozen TorchScript graph; `model_input`), so the roof is the fastest forward quakemon
    knows, not a slower strawman."""
    import torch

    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.engine import (
        autocast,
        freeze_graph,
        graph_kind,
        model_input,
        pick_device,
        prepare_for_inference,
        resolve_precision,
    )
    from quakemon.pipeline.runner import REPLAY_SWITCH_INTERVAL_S, gil_switch_interval
    from quakemon.pipeline.threads import torch_worker_pool

    ckpt = load_checkpoint(checkpoint)
    dev = pick_device(device)
    prec = resolve_precision(precision, dev)
    shape = (ckpt.args.in_channels, *ckpt.args.img_size)
    model = prepare_for_inference(ckpt.model, dev)
    if graph == "auto":
        model = freeze_graph(model, prec, dev, shape)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    per_batch: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)

    def forwards(x: torch.Tensor, start: float, ready: threading.Barrier | None = None) -> tuple[int, float]:
        """Forwards of x until min_s has passed (and at least two): (windows, seconds since start)."""
        b, n = x.shape[0], 0
        with torch.inference_mode(), autocast(prec, dev):
            model(x)  # warm-up (lazy init, oneDNN kernel selection)
            sync()
            if ready is not None:
                ready.wait()
                start = time.perf_counter()
            while True:
                model(x)
                n += b
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= min_s and n >= 2 * b:
                    return n, elapsed

    pool = torch_worker_pool(streams, "roof-stream", stream_threads) if streams else None
    try:
        for b in batch_sizes:
            x = model_input(model, torch.rand((b, *shape), generator=gen).to(dev))
            if pool is None:
                n, elapsed = forwards(x, time.perf_counter())
                per_batch[str(b)] = n / elapsed
            else:  # at the replay's GIL switch interval, which the streams' Python between ops gains from too
                ready = threading.Barrier(streams)
                with gil_switch_interval(REPLAY_SWITCH_INTERVAL_S):
                    futures = [pool.submit(forwards, x.clone(), 0.0, ready) for _ in range(streams)]
                    runs = [f.result() for f in futures]
                per_batch[str(b)] = sum(n / elapsed for n, elapsed in runs)
    finally:
        if pool is not None:
            pool.shutdown()
    best = max(per_batch, key=per_batch.__getitem__)
    threads = stream_threads if streams else torch.get_num_threads()
    return {"device": str(dev), "precision": prec, "graph": graph_kind(model), "torch_threads": threads,
            "streams": streams, "windows_per_s": per_batch, "best_batch": int(best),
            "best_windows_per_s": per_batch[best]}


# ---------------------------------------------------------------------------------------------------------------
# (b) replay
# ---------------------------------------------------------------------------------------------------------------

def _process_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Timer:
    """Accumulates perf_counter seconds per section."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # sections run on several threads (the replay's inference workers)

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._add(name, time.perf_counter() - start)
        return timed

    def iterate(self, name: str, it: Iterator[Any]) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self._add(name, time.perf_counter() - start)
                return
            self._add(name, time.perf_counter() - start)
            yield item


def bench_roof_threads(checkpoint: Path, threads: Sequence[int | str], **kw: Any) -> dict[str, Any]:
    """`bench_roof` for each configuration: n (or "n") is one forward at a time on n torch threads, "WxP" is W
    forwards at once on P torch threads each (`streams`); the best (configuration, batch) is the roof.
    Restores the thread count.

    On a CPU shared with other processes one thread can beat all cores by a wide margin: OpenMP threads spin
    and wait for each other while their cores run someone else.
    """
    import torch

    before = torch.get_num_threads()
    runs: dict[str, Any] = {}
    try:
        for config in map(str, threads):
            if "x" in config:
                streams, per_stream = (int(v) for v in config.split("x"))
                runs[config] = bench_roof(checkpoint, streams=streams, stream_threads=per_stream, **kw)
            else:
                torch.set_num_threads(int(config))
                runs[config] = bench_roof(checkpoint, **kw)
    finally:
        torch.set_num_threads(before)
    best = max(runs, key=lambda k: runs[k]["best_windows_per_s"])
    return {**runs[best], "config": best, "by_threads": {k: r["windows_per_s"] for k, r in runs.items()}}


def streams_config(threads: int) -> str:
    """The roof configuration of the replay's inference workers for `threads` torch threads (`worker_split`)."""
    from quakemon.pipeline.threads import worker_split

    workers, per_worker = worker_split(threads)
    return f"{workers}x{per_worker}"


def default_threads() -> tuple[int, ...]:
    import torch

    return tuple(sorted({1, torch.get_num_threads()}))


def bench_replay(paths: Sequence[Path], checkpoint: Path, *, device: str = "auto", precision: str = "auto",
                 stride_s: float = 1.0, batch_size: int = 256, station_seconds: float | None = None,
                 overlap: bool = True, forward_batch: int | None = None) -> dict[str, Any]:
    """The replay path over `paths`, timed as a whole and per section. station_seconds: data span, for
    station-hours/s (default: computed from the record headers)."""
    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline import runner as replay_module
    from quakemon.pipeline.runner import DetectionRunner

    ckpt = load_checkpoint(checkpoint)
    runner = DetectionRunner(ckpt, stride_s=stride_s, device=device, precision=precision, batch_size=batch_size,
                             overlap=overlap, forward_batch=forward_batch)
    runner.stage.engine.warmup()
    timer = _Timer()
    runner.windower.add_samples = timer.wrap("windows", runner.windower.add_samples)  # type: ignore[method-assign]
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
    sec = dict(timer.seconds)
    infer = engine.stats.seconds
    # busy seconds per section; with overlap, inference runs on worker threads beside the rest, so the sections
    # can add up to more than the elapsed time
    sections = {
        "source (read + decode)": sec.get("source (read + decode)", 0.0),
        "windows (buffers + scheduler)": sec.get("windows", 0.0),
        "stack + preprocess": sec.get("stack", 0.0) + sec.get("preprocess", 0.0),
        "inference (engine.predict)": infer,
        "trigger": sec.get("trigger", 0.0),
    }
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
        "sections_s": {k: round(v, 3) for k, v in sections.items()},
        "sections_share": {k: round(v / elapsed, 3) for k, v in sections.items()} if elapsed else {},
    }


# ---------------------------------------------------------------------------------------------------------------
# the whole bench
# ---------------------------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def run_bench(plan: BenchPlan, workdir: Path | None = None,
              progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the parts of `plan`; returns the report (JSON-able).

    The live daemon runs with `plan.run_threads` torch threads per process (its stage processes get it through
    OMP_NUM_THREADS). The replay, one process alone, runs with `plan.replay_threads` (default: torch's, as
    `quakemon replay` does), `plan.replay_repeats` times, each between two roofs at its own thread count and
    batch; its ratio to the roof is the median over the repeats. The roof is measured at every thread count
    for the table.
    """
    import torch

    own = workdir is None
    tmp = Path(tempfile.mkdtemp(prefix="qmb-")) if own else Path(workdir)
    threads_before = torch.get_num_threads()
    threads = plan.run_threads
    replay_threads = plan.replay_threads or threads_before
    try:
        report: dict[str, Any] = {"plan": asdict(plan), "machine_before": machine_info()}
        ckpt = bench_checkpoint(tmp / "random.safetensors")
        report["checkpoint"] = str(ckpt)
        # the replay's inference: on the CPU one single-threaded worker per torch thread (DetectionRunner)
        from quakemon.pipeline.engine import pick_device

        on_cpu = pick_device(plan.device).type == "cpu"
        replay_config = streams_config(replay_threads) if on_cpu and replay_threads > 1 else str(replay_threads)
        if "roof" in plan.parts:
            progress("roof: bare model forward")
            sweep = [str(n) for n in sorted(set(plan.threads or default_threads()) | {threads, replay_threads})]
            if replay_config not in sweep:
                sweep.append(replay_config)
            roof = bench_roof_threads(ckpt, sweep, device=plan.device, precision=plan.precision,
                                      batch_sizes=plan.roof_batches, min_s=plan.roof_min_s)
            report["roof"] = roof
        replay_batch = plan.replay_batch or REPLAY_BATCH
        if "replay" in plan.parts:
            progress(f"replay: writing {plan.replay_stations} stations x {plan.replay_seconds:g} s")
            files = write_synthetic_archive(tmp / "replay", plan.replay_stations, plan.replay_seconds)
            torch.set_num_threads(replay_threads)
            # Around each replay: the roof at the replay's configuration, at its batch and at the sweep's best batch
            # for that configuration (the best of the two is the roof of the moment). The sweep ran minutes earlier,
            # and the same setting measured 30-40 % apart from one minute to the next here.
            around_batches = [replay_batch]
            if "roof" in report and replay_config in report["roof"]["by_threads"]:
                sweep_best = report["roof"]["by_threads"][replay_config]
                around_batches.append(int(max(sweep_best, key=sweep_best.__getitem__)))
            around_batches = sorted(set(around_batches))

            def roof_at_replay_setting() -> float:
                return bench_roof_threads(ckpt, [replay_config], device=plan.device, precision=plan.precision,
                                          batch_sizes=tuple(around_batches),
                                          min_s=plan.replay_roof_s)["best_windows_per_s"]

            if "roof" in report:  # before the first replay, then after each
                progress("roof: at the replay's setting, before the first replay")
                report["roof"]["replay_threads"] = {"threads": replay_config, "batch": replay_batch,
                                                    "batches": around_batches, "seconds_each": plan.replay_roof_s,
                                                    "windows_per_s_around": [roof_at_replay_setting()]}
            runs = []
            for i in range(max(1, plan.replay_repeats)):
                progress(f"replay: run {i + 1} of {plan.replay_repeats} ({replay_threads} torch threads, "
                         f"batch {replay_batch})")
                runs.append(bench_replay(files, ckpt, device=plan.device, precision=plan.precision,
                                         stride_s=plan.stride_s, batch_size=replay_batch))
                if "roof" in report:  # again, so that each replay's ratio uses the roofs measured around it
                    progress("roof: again, after the replay")
                    report["roof"]["replay_threads"]["windows_per_s_around"].append(roof_at_replay_setting())
            # the median run by windows/s is the one reported, with its sections
            order = sorted(range(len(runs)), key=lambda j: runs[j]["windows_per_s"])
            median = order[len(order) // 2]
            rep = {**runs[median], "torch_threads": replay_threads, "roof_config": replay_config, "repeats": len(runs),
                   "windows_per_s_runs": [r["windows_per_s"] for r in runs]}
            if "roof" in report:
                around = report["roof"]["replay_threads"]["windows_per_s_around"]
                ratios = [r["windows_per_s"] / float(np.mean(around[j : j + 2])) for j, r in enumerate(runs)]
                rep["ratio_to_roof_runs"] = ratios
                rep["ratio_to_roof"] = float(np.median(ratios))
                rep["ratio_to_best_roof"] = rep["windows_per_s"] / float(report["roof"]["best_windows_per_s"])
            rep["overhead_cpu_share_runs"] = [r["overhead_cpu_share"] for r in runs]
            rep["overhead_cpu_share"] = float(np.median(rep["overhead_cpu_share_runs"]))
            report["replay"] = rep
        torch.set_num_threads(threads)
        if "live" in plan.parts:
            report["live"] = bench_live(tmp / "live-archive", ckpt, plan, tmp / "live", progress,
                                        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        report["machine_after"] = machine_info()
        return report
    finally:
        torch.set_num_threads(threads_before)
        if own:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _config_text(config: Any) -> str:
    text = str(config)
    if "x" in text:
        streams, per_stream = text.split("x")
        each = "single-threaded" if per_stream == "1" else f"{per_stream}-thread"
        return f"{streams} {each} forwards at once"
    return f"{text} torch thread(s)"


def _f(v: Any, fmt: str = ".0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = []
    m = report.get("machine_before", {})
    lines.append(f"quakemon bench: {m.get('cpus')} CPUs, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
                 f"load average before {m.get('loadavg')}, after {report.get('machine_after', {}).get('loadavg')}")
    lines.append(f"model: {report.get('checkpoint')}")
    roof = report.get("roof")
    if roof:
        per = ", ".join(f"{b}: {v:.0f}" for b, v in roof["windows_per_s"].items())
        lines.append(f"(a) roof  bare forward on {roof['device']} {roof['precision']} ({roof.get('graph', 'eager')} "
                     f"graph): best "
                     f"{roof['best_windows_per_s']:.0f} windows/s at batch {roof['best_batch']}, "
                     f"{_config_text(roof.get('config', roof['torch_threads']))}  [batch: windows/s  {per}]")
        for th, per_b in roof.get("by_threads", {}).items():
            lines.append(f"          {_config_text(th)}: " + ", ".join(f"{b}: {v:.0f}" for b, v in per_b.items()))
        run = roof.get("replay_threads")
        if run and len(run["windows_per_s_around"]) > 1:
            batches = " and ".join(str(b) for b in run.get("batches", [run["batch"]]))
            lines.append(f"          roof at {_config_text(run['threads'])} (the replay's setting), best of batch "
                         f"{batches}, before, between and after the replays: "
                         + " / ".join(f"{v:.0f}" for v in run["windows_per_s_around"]))
    rep = report.get("replay")
    if rep:
        lines.append(f"(b) replay  {rep['windows']} windows, {rep['station_hours']:.2f} station-hours in "
                     f"{rep['seconds']:.1f} s: {rep['windows_per_s']:.0f} windows/s, "
                     f"{rep['station_hours_per_s']:.2f} station-hours/s, "
                     f"ratio to roof {_f(rep.get('ratio_to_roof'), '.2f')} (to the best roof at any thread count "
                     f"{_f(rep.get('ratio_to_best_roof'), '.2f')})  ({rep.get('torch_threads')} torch threads, "
                     f"batch {rep['batch_size']}, {rep['precision']}"
                     + (f", inference on {rep.get('inference_workers')} worker thread(s) beside the rest: sections are "
                        "busy time summed over threads" if rep.get("overlap") else "") + ")")
        if rep.get("repeats", 1) > 1:
            lines.append(f"          {rep['repeats']} runs (median shown): windows/s "
                         + ", ".join(f"{v:.0f}" for v in rep["windows_per_s_runs"]) + "; ratio to the roofs around "
                         "each: " + ", ".join(f"{v:.2f}" for v in rep.get("ratio_to_roof_runs", [])))
        if "overhead_cpu_share" in rep:
            lines.append(f"          CPU time outside the model forward (engine.predict): "
                         f"{100 * rep['overhead_cpu_share']:.1f} % of the process's CPU time (median; runs: "
                         + ", ".join(f"{100 * v:.1f}" for v in rep["overhead_cpu_share_runs"]) + " %); "
                         f"{rep['cpu_seconds'] / rep['seconds']:.2f} cores busy on average")
        for k, v in rep["sections_s"].items():
            lines.append(f"          {k:<32} {v:7.2f} s  {100 * rep['sections_share'].get(k, 0):5.1f} %")
    live = report.get("live")
    if live:
        lines.append(f"(c) live  {live['speed']:g}x real time, stride {live['stride_s']:g} s: largest N sustained "
                     f"{live['max_stations_sustained']}, p99 latency there {_f(live['latency_p99_at_max_s'], '.3f')} s"
                     f"  (daemon env {live.get('env')}, pipeline.queue_hwm = {live.get('queue_s')} s of windows)")
        lines.append("          N  ok   win/s (exp)   drop  lag+ s  lat n  p50 s  p99 s  max s  hop p99  cpu cores"
                     "  cpu/sta   PSS MB  MB/sta  start s  note")
        for s in live["steps"]:
            lines.append(
                f"      {s['stations']:5d}  {'yes' if s['ok'] else 'no ':3}  {s['windows_per_s']:6.0f} "
                f"({s['expected_windows_per_s']:5.0f})  {s['dropped']:5d}  {_f(s['lag_growth_s'], '6.2f'):>6}  "
                f"{s['latency_n']:5d}  {_f(s['latency_p50_s'], '.3f'):>5}  {_f(s['latency_p99_s'], '.3f'):>5}  "
                f"{_f(s['latency_max_s'], '.3f'):>5}  {_f(s['hop_p99_s'], '.4f'):>7}  {s['cpu_cores']:9.2f}  "
                f"{s['cpu_per_station']:7.4f}  {s['mem_mb']:7.0f}  {s['mem_mb_per_station']:6.2f}  "
                f"{s['startup_s']:7.1f}  {s['reason']}")
        for m in live.get("marginal", []):
            lines.append(f"          marginal cost {m['from']} -> {m['to']} stations: "
                         f"{m['cpu_cores_per_station']:.4f} cores and {m['mem_mb_per_station']:.2f} MB per station")
    return "\n".join(lines)


def bench_main(args: argparse.Namespace) -> int:
    """`quakemon bench [--quick] [--json FILE] [--device D]`: print the table, optionally write JSON."""
    from quakemon.base.logs import configure_logging

    configure_logging("warning", "console")
    kw: dict[str, Any] = {"device": getattr(args, "device", "auto") or "auto"}
    for key in ("precision", "stride_s"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if getattr(args, "parts", None):
        parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
        unknown = sorted(set(parts) - {"roof", "replay", "live"})
        if unknown:
            raise SystemExit(f"quakemon bench: --parts: unknown part(s) {unknown}; choose from roof, replay, live")
        kw["parts"] = parts
    for key in ("live_stations", "roof_batches"):
        text = getattr(args, key, None)
        if text:
            try:
                kw[key] = tuple(int(n) for n in text.split(","))
            except ValueError:
                flag = "--" + key.replace("_", "-")
                raise SystemExit(f"quakemon bench: {flag}: expected integers like 64,256,1024, got {text!r}") from None
    for key in ("replay_stations", "replay_batch", "replay_threads", "replay_repeats", "live_batch"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    plan = BenchPlan.quick(**kw) if getattr(args, "quick", False) else BenchPlan(**kw)

    def progress(text: str) -> None:
        print(f"  ... {text}", file=sys.stderr, flush=True)

    report = run_bench(plan, progress=progress)
    print(format_report(report))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0
