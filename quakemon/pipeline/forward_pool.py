"""Model forwards on worker threads, decided in order on the caller's thread (the live inference stage).

`ForwardPool` takes micro-batches (spectra, metas, samples), cuts each into forward-sized tasks and runs
`DetectionStage.infer` on them on a pool of torch worker threads (torch releases the GIL in its ops, so two
forwards run at once on two cores), while the caller's thread goes on receiving. The caller takes the results
back with `next`: whole micro-batches, strictly in the order they were submitted, each decided there
(`DetectionStage.decide`, which keeps the trigger state) over all its windows at once, exactly as
`DetectionStage.process` decides one micro-batch, so the detections and their order do not depend on the pool.

`inference_pool` is the worker scheme the replay (`quakemon.pipeline.runner.Inference`) and the live stage share.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from quakemon.pipeline.detect import DetectionResult, DetectionStage, WindowMeta
from quakemon.pipeline.threads import torch_worker_pool, worker_split

#: While worker threads run forwards, the thread that feeds them and they all want the GIL between their numpy
#: and torch calls; at Python's default 5 ms switch interval a worker back from a torch op can wait that long
#: for it (docs/performance.md, "Design measurements").
WORKER_SWITCH_INTERVAL_S = 1e-4


def inference_pool(device: torch.device, workers: int | None, threads: int,
                   name: str) -> tuple[ThreadPoolExecutor | None, int]:
    """(pool, worker count) for inference on `device`.

    workers None ("auto"): on the CPU, `worker_split` of `threads` (one single-threaded worker per thread, up to
    4: two independent forwards beat one forward on two OpenMP threads on 2 cores); on a GPU, one worker. An
    explicit count: that many single-threaded workers. 0: no pool (None); the caller runs its forwards itself.
    """
    cpu = device.type == "cpu"
    if workers is None:
        workers, each = worker_split(threads) if cpu else (1, 1)
    else:
        workers, each = max(0, int(workers)), 1
    if not workers:
        return None, 0
    return (torch_worker_pool(workers, name, each) if cpu else ThreadPoolExecutor(1, name)), workers


@contextlib.contextmanager
def gil_switch_interval(seconds: float) -> Iterator[None]:
    """sys.setswitchinterval(seconds) for the duration, then the previous value."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@dataclass
class _MicroBatch:
    metas: list[WindowMeta]
    data: np.ndarray | None
    tasks: list[Future]
    spectra: np.ndarray | torch.Tensor | None = None  # for `decide`, which may forward windows itself


class ForwardPool:
    """Micro-batches in, decided `DetectionResult`s out in submission order (module docstring).

    Args:
        stage: the detection stage; only its `infer` runs on the workers, its `decide` in `next`.
        pool: the worker threads (`inference_pool`); None runs each forward in `submit`, one at a time.
        workers: the pool's worker count.
        task: valid windows per forward task (default: the engine's batch size, so that each task is one of the
            forwards `DetectionStage.process` would run on the micro-batch: the same windows in the same forward,
            hence the same probabilities to the last bit; with screening, the windows the stage forwards itself
            in `decide` go through other forwards, see `quakemon.pipeline.screen`).

    `full` tells when no more should be submitted: every worker has a task running and one waiting, so that
    a worker never waits for the caller, while windows not yet submitted stay in the caller's queue, where the
    newest can still replace the oldest. With a pool, `fileno()` becomes readable when a task finishes (for a
    poller: the caller sleeps until data or a result comes). Not thread-safe: one caller thread.
    """

    def __init__(self, stage: DetectionStage, pool: ThreadPoolExecutor | None, workers: int,
                 task: int | None = None) -> None:
        self.stage = stage
        self.pool = pool
        self.task = max(1, task or stage.engine.batch_size)
        self.max_tasks = 2 * max(1, workers)
        self._batches: deque[_MicroBatch] = deque()
        self._running = 0  # tasks submitted and not yet taken back by `next`
        self._wake_r, self._wake_w = os.pipe() if pool is not None else (-1, -1)
        if pool is not None:
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)

    @property
    def full(self) -> bool:
        """Whether to hold further micro-batches back (never without a pool: `submit` ran their forwards)."""
        return self.pool is not None and self._running >= self.max_tasks

    @property
    def windows(self) -> int:
        """Windows submitted and not yet taken back."""
        return sum(len(b.metas) for b in self._batches)

    def __len__(self) -> int:
        """Micro-batches submitted and not yet taken back."""
        return len(self._batches)

    def fileno(self) -> int:
        return self._wake_r

    def submit(self, spectra: np.ndarray | torch.Tensor, metas: Sequence[WindowMeta],
               data: np.ndarray | None = None) -> None:
        """Start the forwards of one micro-batch (data: its samples for the picks, see `DetectionStage.decide`)."""
        metas = list(metas)
        tasks = []
        cuts = self._cuts(metas)
        for i, j in zip(cuts, cuts[1:], strict=False):
            chunk = (spectra[i:j], metas[i:j])
            if self.pool is None:
                tasks.append(_run_now(self.stage.infer, *chunk))
            else:
                future = self.pool.submit(self.stage.infer, *chunk)
                future.add_done_callback(self._wake)
                tasks.append(future)
        self._running += len(tasks)
        self._batches.append(_MicroBatch(metas, data, tasks, spectra))

    def _cuts(self, metas: list[WindowMeta]) -> list[int]:
        """Task boundaries: every `task` valid windows (invalid ones are not inferred), as `InferenceEngine.predict`
        cuts the valid windows of a whole micro-batch."""
        counts = np.cumsum([m.valid is not False for m in metas])
        inner = np.searchsorted(counts, np.arange(self.task, counts[-1] if len(metas) else 0, self.task)) + 1
        return [0, *inner.tolist(), len(metas)]

    def next(self, block: bool = False) -> tuple[list[WindowMeta], DetectionResult | Exception] | None:
        """The oldest micro-batch, decided, once all its forwards have finished (block: wait for them); None when
        there is none or it is still running. A forward that raised gives (metas, the exception) and the
        micro-batch is dropped: nothing of it reaches the triggers."""
        self._clear_wakeups()
        if not self._batches or not (block or all(t.done() for t in self._batches[0].tasks)):
            return None
        batch = self._batches.popleft()
        wait(batch.tasks)  # all of them, even after one failed: a forward still running holds a worker
        self._running -= len(batch.tasks)
        try:
            probs = np.concatenate([t.result() for t in batch.tasks])
            return batch.metas, self.stage.decide(batch.metas, probs, batch.data, batch.spectra)
        except Exception as exc:  # the caller decides what a failed forward means (fatal or one dropped batch)
            return batch.metas, exc

    def close(self) -> None:
        """Drop what has not started, wait for the running forwards, stop the workers. Idempotent."""
        for batch in self._batches:
            for t in batch.tasks:
                t.cancel()
        self._batches.clear()
        self._running = 0
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake(self, _future: Future) -> None:
        with contextlib.suppress(OSError):  # a full pipe is readable already; a closed one has no reader left
            os.write(self._wake_w, b"\0")

    def _clear_wakeups(self) -> None:
        if self._wake_r >= 0:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass


def _run_now(fn, *args) -> Future:  # noqa: ANN001 - a Future already done, with fn's result or exception
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future
