"""The preprocess stage: PULL windows (connects pipeline.windows_endpoint) -> the one batched transform -> PUSH
spectra (connects pipeline.spectra_endpoint). Several workers may share the work; each drops the oldest spectra
when inference lags.

Status reports arriving from ingest are passed on downstream (the newest per process), beside this stage's own.

Reset (`RESET_SIGNAL`, sent by the supervisor when it restarts the inference stage, only where it rewinds the
ingest stage next): the spectra not yet delivered are dropped, and so is every window batch that the ingest
process sent before that rewind, though it arrives after the reset (still in the socket, or sent while the
rewind was on its way): the rewind sends those windows again, after older ones, and the new inference process
would drop the older ones as late (decided after newer windows of their station). A batch is known to be from
before the rewind by its sender stamp (`messages.Sender`): the same ingest process with no more rewinds than the
newest batch of that process received before the reset. A batch of another ingest process (one restarted
meanwhile) passes.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import structlog
import zmq

from quakemon.base.signals import StopFlag, set_on_signals
from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import WindowMeta
from quakemon.service.config import Config
from quakemon.service.stages.common import (
    DropOldestQueue,
    Rejections,
    Stage,
    Stats,
    StatusRelay,
    drain_to,
    receive,
)
from quakemon.service.stages.messages import SPECTRA, WINDOWS, Batch, decode, max_frame_bytes

log = structlog.get_logger(__name__)

MAX_BATCH = 512  # windows per transform call
MAX_SENDERS = 16  # ingest processes whose rewind count is remembered (one feeds a process; more while restarting)
RESET_SIGNAL = signal.SIGUSR2  # the supervisor restarted the inference stage: drop the undelivered spectra


class PreprocessStage(Stage):
    """PULL windows -> preprocess_windows -> PUSH spectra; everything received in one round is transformed
    together, in calls of up to `max_batch` windows."""

    name = "preprocess"

    def __init__(self, cfg: Config, contract: InputContract, should_stop: StopFlag, control: str | None,
                 max_batch: int = MAX_BATCH) -> None:
        super().__init__(should_stop, control)
        self.cfg = cfg
        self.contract = contract
        self.max_batch = max_batch
        self.pull: zmq.Socket | None = None
        self.push: zmq.Socket | None = None
        self.poller = zmq.Poller()
        self.queue = DropOldestQueue(cfg.pipeline.queue_hwm)
        self.relay = StatusRelay()
        self.rejections = Rejections(self.name)
        self.device: Any = None
        self.windows = 0
        self.reset = threading.Event()
        set_on_signals(self.reset, [RESET_SIGNAL])  # (main thread only)
        self.resets = 0
        self.discarded = 0
        self.senders: dict[str, int] = {}  # ingest process -> the most rewinds a batch of it was sent after
        self.stale: dict[str, int] = {}  # since the last reset: batches of these with no more rewinds are dropped

    def start(self) -> bool:
        from quakemon.pipeline.detect import warm_up_preprocess

        self.pull = self.socket(zmq.PULL, self.cfg.pipeline.windows_endpoint, bind=False,
                                max_msg_bytes=max_frame_bytes(self.contract))
        self.push = self.socket(zmq.PUSH, self.cfg.pipeline.spectra_endpoint, bind=False)
        self.poller.register(self.pull, zmq.POLLIN)
        self.device = preprocess_device(self.cfg)
        if self.device is not None:  # torch is loaded for the GPU; its CPU threads as for the CPU passes
            from quakemon.pipeline.threads import torch_threads

            torch_threads(self.cfg.pipeline.torch_threads)
        warm_up_preprocess(self.contract, self.device)
        self.status.ready = True
        log.info("stage_started", stage="preprocess", windows_endpoint=self.cfg.pipeline.windows_endpoint,
                 spectra_endpoint=self.cfg.pipeline.spectra_endpoint, device=str(self.device or "cpu"))
        return True

    def loop(self) -> int:
        while not self.should_stop.is_set():
            self.step()
        return 0

    def step(self) -> None:
        """One round: a pending reset, what arrived within the poll transformed and queued, status and spectra
        sent without blocking."""
        assert self.push is not None
        self.tick()
        if self.reset.is_set():
            self.discard_output()
        self.transform(self.receive())
        sent = self.status.maybe_send(self.own)
        if sent is not None:
            self.relay.put(sent)
        # status reports go ahead of the spectra: a backlog of spectra (a late or slow inference stage)
        # must not hold back the upstream counters that the heartbeat reports
        self.relay.send(self.push)
        drain_to(self.push, self.queue)

    def stop(self) -> None:
        for sock in (self.pull, self.push):
            if sock is not None:
                sock.close(linger=0)
        super().stop()
        if self.status.ready:
            log.info("stage_stopped", stage="preprocess", windows=self.windows, dropped=self.queue.dropped)

    def discard_output(self) -> None:
        """The supervisor restarted the inference stage (`RESET_SIGNAL`): drop the spectra not yet delivered (the
        queue and the PUSH socket's pipe), and from now on the window batches sent before the ingest stage's
        rewind (module docstring, "Reset"); the ingest stage sends their windows again once this stage reports
        the reset (status `resets`), so they reach the new process in window order."""
        assert self.push is not None
        self.reset.clear()
        self.stale = dict(self.senders)
        self.discarded += self.queue.windows
        self.queue = DropOldestQueue(self.cfg.pipeline.queue_hwm)
        self.push.close(linger=0)
        self.push = self.socket(zmq.PUSH, self.cfg.pipeline.spectra_endpoint, bind=False)
        self.resets += 1
        log.info("preprocess_output_discarded", resets=self.resets, windows_discarded=self.discarded)
        sent = self.status.maybe_send(self.own, force=True)
        if sent is not None:
            self.relay.put(sent)

    def receive(self) -> list[Batch]:
        """The window batches that arrived within this round's poll; status reports go to the relay; malformed
        messages are dropped and counted (`Rejections`)."""
        assert self.pull is not None
        batches: list[Batch] = []
        if self.poller.poll(100 if not self.queue else 10):
            for msg in receive(self.pull, lambda frames: decode(frames, self.contract, WINDOWS), self.rejections):
                if not isinstance(msg, Batch):
                    self.relay.put(msg)
                elif self.sent_before_rewind(msg):
                    self.discarded += len(msg)
                else:
                    batches.append(msg)
        return batches

    def sent_before_rewind(self, batch: Batch) -> bool:
        """Note the batch's sender; whether it was sent before the rewind that follows the last reset."""
        sender = batch.sender
        if sender is None:
            return False
        if sender.source not in self.senders and len(self.senders) >= MAX_SENDERS:
            del self.senders[next(iter(self.senders))]  # the longest known: a process restarted long ago
        self.senders[sender.source] = max(sender.rewinds, self.senders.get(sender.source, 0))
        stale = self.stale.get(sender.source)
        if stale is not None and sender.rewinds > stale:
            del self.stale[sender.source]
            log.info("preprocess_rewind_reached", ingest=sender.source, resets=self.resets,
                     windows_discarded=self.discarded)
        return stale is not None and sender.rewinds <= stale

    def transform(self, batches: list[Batch]) -> None:
        from quakemon.pipeline.detect import preprocess_windows

        for metas, data in coalesce(batches, self.max_batch):
            spectra, done = preprocess_windows(data, metas, self.contract, device=self.device)
            self.windows += len(done)
            self.status.progress += len(done)
            # the samples go on beside the spectra: the inference stage picks the windows that open detections
            self.queue.put(Batch(SPECTRA, tuple(done), {"spectra": spectra, "data": data}))

    def own(self) -> Stats:
        return {"preprocessed": self.windows, "dropped_preprocess": self.queue.dropped,
                "queue_preprocess": self.queue.windows, "resets": self.resets, "windows_discarded": self.discarded,
                **self.rejections.stats()}


def preprocess_device(cfg: Config) -> Any:
    """The torch device the preprocessing workers use, or None for the CPU ([pipeline] preprocess_device).

    torch is imported only when a GPU may be used: the CPU transform is numpy, and a process without torch is
    much smaller (docs/performance.md, Memory). "auto" on a host without a GPU driver is the CPU without asking
    torch (CUDA cannot be available without the NVIDIA driver, nor ROCm without /dev/kfd).
    """
    wanted = cfg.pipeline.preprocess_device
    if wanted == "auto":
        wanted = os.environ.get("QUAKEMON_FORCE_DEVICE") or cfg.model.device
    if wanted == "cpu" or (wanted == "auto" and not gpu_driver_present()):
        return None
    from quakemon.pipeline.engine import pick_device

    device = pick_device(wanted)
    return device if device.type != "cpu" else None


GPU_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def gpu_driver_present() -> bool:
    """Whether a GPU driver that torch could use is loaded on this host (NVIDIA/CUDA or AMD/ROCm)."""
    return any(os.path.exists(path) for path in GPU_DRIVER_PATHS)


def coalesce(batches: Sequence[Batch], max_batch: int) -> Iterator[tuple[list[WindowMeta], np.ndarray]]:
    """(metas, data) runs of at most max_batch windows over the received window batches, in arrival order."""
    metas: list[WindowMeta] = []
    parts: list[np.ndarray] = []
    for batch in batches:
        windows, data = batch.metas, batch.arrays["data"]
        start = 0
        while start < len(windows):
            take = min(max_batch - len(metas), len(windows) - start)
            metas += windows[start : start + take]
            parts.append(data[start : start + take])
            start += take
            if len(metas) == max_batch:
                yield metas, np.concatenate(parts) if len(parts) > 1 else parts[0]
                metas, parts = [], []
    if metas:
        yield metas, np.concatenate(parts) if len(parts) > 1 else parts[0]
