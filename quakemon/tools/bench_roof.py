"""`quakemon bench` part (a): the roof, the bare model forward in windows/s at each batch size and thread setting.

The roof is the fastest forward quakemon knows on this machine: the model is prepared as the inference engine
prepares it, and each thread setting is measured in turn. See `quakemon.tools.bench` for how it is used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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

