"""Worker threads that run torch single-threaded, beside a caller that keeps its own torch thread count.

`torch.set_num_threads(1)` called in a thread sets that thread's OpenMP/MKL count, but it also becomes torch's
default for threads started later (and what `torch.get_num_threads()` reports): `torch_worker_pool` puts
the default back once its workers are set up.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


def torch_worker_pool(workers: int, thread_name_prefix: str, threads_per_worker: int = 1) -> ThreadPoolExecutor:
    """A pool of `workers` threads, all started now, each running torch ops on `threads_per_worker` threads (torch
    releases the GIL in its ops, so the workers run in parallel)."""
    default = in_new_thread(torch.get_num_threads)  # the intra-op count torch gives a new thread
    executor = ThreadPoolExecutor(workers, thread_name_prefix=thread_name_prefix, initializer=torch_threads,
                                  initargs=(threads_per_worker,))
    started = threading.Barrier(workers)
    for future in [executor.submit(started.wait, 60) for _ in range(workers)]:
        future.result()  # every worker thread exists and is initialised
    in_new_thread(torch.set_num_threads, default)
    return executor


def worker_split(threads: int, max_workers: int = 4) -> tuple[int, int]:
    """(workers, torch threads each) for `threads` cores: single-threaded workers up to `max_workers`, then at most
    that many workers with an equal share of the threads each (16 -> 4 x 4, 6 -> 3 x 2, 2 -> 2 x 1; a remainder
    stays unused: 5 -> 2 x 2), so that a many-core server does not run dozens of batches at once. The split has
    been benchmarked on 2 cores only."""
    threads = max(1, int(threads))
    per_worker = -(-threads // max_workers)
    return threads // per_worker, per_worker


def torch_threads(count: int) -> None:
    torch.get_num_threads()  # torch initialises a thread's count lazily, at its first call: do that first
    torch.set_num_threads(count)  # this thread's OpenMP and MKL count


def in_new_thread(fn: Any, *args: Any) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]
