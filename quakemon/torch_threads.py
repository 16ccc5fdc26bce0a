"""Worker threads that run torch single-threaded, beside a caller that keeps its own torch thread count.

`torch.set_num_threads(1)` called in a thread sets that thread's OpenMP/MKL count, but it also becomes torch's
default for threads started later (and what `torch.get_num_threads()` reports): `single_threaded_pool` puts
the default back once its workers are set up.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


def single_threaded_pool(workers: int, thread_name_prefix: str) -> ThreadPoolExecutor:
    """A pool of `workers` threads, all started now, each running torch ops on one thread (torch releases the
    GIL in its ops, so they run in parallel)."""
    default = in_new_thread(torch.get_num_threads)  # the intra-op count torch gives a new thread
    executor = ThreadPoolExecutor(workers, thread_name_prefix=thread_name_prefix, initializer=one_torch_thread)
    started = threading.Barrier(workers)
    for future in [executor.submit(started.wait, 60) for _ in range(workers)]:
        future.result()  # every worker thread exists and is initialised
    in_new_thread(torch.set_num_threads, default)
    return executor


def one_torch_thread() -> None:
    torch.get_num_threads()  # torch initialises a thread's count lazily, at its first call: do that first
    torch.set_num_threads(1)  # this thread's OpenMP and MKL count


def in_new_thread(fn: Any, *args: Any) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]
