"""A small Python API for notebooks, in the spirit of SeisBench's `annotate` / `classify`.

    from quakemon import Detector
    with Detector.from_checkpoint() as det:          # the bundled model (or a path)
        probs = det.annotate(stream)                 # ObsPy Stream of probability traces, one per station and class
        detections = det.detect(stream)              # detection bodies, exactly as the daemon would publish them

Both run the daemon's code path (`quakemon.pipeline.runner.DetectionRunner`: windower, the one preprocessing, the
inference engine, the trigger), so a notebook sees what the service would. The model is prepared once per
Detector (on first use) and reused by every call; `close()` (or leaving the `with` block) stops its worker
threads. Logs go to stderr unless the application configured structlog itself.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from obspy import Stream, Trace, UTCDateTime
from obspy.core.event import Catalog

from quakemon.base.errors import QuakemonError
from quakemon.models.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from quakemon.pipeline.runner import DetectionRunner, Inference, log_to_stderr_unless_configured
from quakemon.pipeline.settings import INFERENCE, REPLAY_BATCH_SIZE, SCREEN, TRIGGER, WINDOW


@dataclass
class Detector:
    """A loaded checkpoint plus the window and trigger settings used by `annotate` and `detect`.

    The window and trigger settings may be changed between calls. The model side (checkpoint, device,
    precision, graph, batch_size) is built on the first call and kept; changing one of those builds it again on
    the next call.
    Defaults come from `quakemon.pipeline.settings`, the same as the daemon's configuration.

    Args:
        checkpoint: the loaded checkpoint (`Detector.from_checkpoint` loads one).
        stride_s: window start grid step, s.
        on, off, min_duration_s, trigger_label: the trigger (see `quakemon.pipeline.trigger`).
        max_missing: windows missing more than this fraction of their samples are skipped (NaN in `annotate`).
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "fp32", "bf16" or "fp16".
        graph: "auto" (a frozen TorchScript graph on the CPU) or "eager".
        batch_size: windows taken from the windower together.
    """

    checkpoint: Checkpoint
    stride_s: float = WINDOW.stride_s
    on: float = TRIGGER.on
    off: float = TRIGGER.off
    min_duration_s: float = TRIGGER.min_duration_s
    device: str = INFERENCE.device
    precision: str = INFERENCE.precision
    trigger_label: str | None = TRIGGER.label
    max_missing: float = WINDOW.max_missing
    graph: str = INFERENCE.graph
    batch_size: int = REPLAY_BATCH_SIZE
    #: counters of the last `annotate` or `detect` call (windows, windows_reduced, clock_jumps, detections, ...)
    last_stats: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _inference: Inference | None = field(default=None, init=False, repr=False, compare=False)
    _inference_key: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _finalizer: weakref.finalize | None = field(default=None, init=False, repr=False, compare=False)
    _closed: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        log_to_stderr_unless_configured()

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **settings: Any) -> Detector:
        """Load a checkpoint and make a Detector of it.

        Args:
            path: a safetensors checkpoint; None for the bundled model.
            **settings: Detector fields (stride_s, on, off, min_duration_s, device, precision, ...).

        Returns:
            The Detector. Its model is prepared on the first `annotate` or `detect`.
        """
        log_to_stderr_unless_configured()
        return cls(load_checkpoint(resolve_checkpoint(path)), **settings)

    @property
    def labels(self) -> list[str]:
        """The checkpoint's class labels, in the order of the probability columns."""
        return list(self.checkpoint.labels)

    # --- the model side, built once -------------------------------------------------------------------------

    def _get_inference(self) -> Inference:
        if self._closed:
            raise QuakemonError("this Detector is closed; make a new one")
        key = (id(self.checkpoint), self.device, self.precision, self.graph, int(self.batch_size))
        if self._inference is None or key != self._inference_key:
            self._release()
            inference = Inference(self.checkpoint, device=self.device, precision=self.precision, graph=self.graph,
                                  batch_size=int(self.batch_size))
            # a Detector dropped without close() still stops its worker threads when it is collected
            self._finalizer = weakref.finalize(self, inference.close)
            self._inference, self._inference_key = inference, key
        return self._inference

    def _release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs inference.close() once
        self._inference = self._inference_key = self._finalizer = None

    def close(self) -> None:
        """Stop the worker threads and let go of the prepared model. Idempotent; the Detector cannot be used
        afterwards."""
        self._release()
        self._closed = True

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls ------------------------------------------------------------------------------------------------

    def _run(self, stream: Stream, keep_series: bool) -> tuple[DetectionRunner, list[dict[str, Any]]]:
        runner = DetectionRunner(self.checkpoint, stride_s=self.stride_s, max_missing=self.max_missing, on=self.on,
                                 off=self.off, min_duration_s=self.min_duration_s, trigger_label=self.trigger_label,
                                 batch_size=int(self.batch_size), keep_series=keep_series,
                                 inference=self._get_inference(), screen_every=1 if keep_series else SCREEN.every)
        with runner:  # (drops what is in flight if a call fails; the shared workers stay)
            # every channel cut into pieces and merged in time, as a live stream arrives: whole traces one after
            # the other would put one component of a long stream far ahead of the others
            detections = list(runner.add_stream(stream)) + runner.finish()
        self.last_stats = runner.stats
        return runner, detections

    def detect(self, stream: Stream) -> list[dict[str, Any]]:
        """Detect events in a stream, as the daemon would.

        Args:
            stream: waveforms of any number of stations (channels the checkpoint's components map onto).

        Returns:
            Detection bodies ("new" and "closed", schema quakemon.detection/2: onset is the P pick), stamped, in
            the order the daemon would publish them; triggers still open at the end of the data are closed
            ("flush").
        """
        return self._run(stream, keep_series=False)[1]

    def catalog(self, stream: Stream) -> Catalog:
        """Detect events in a stream and return them as an ObsPy Catalog (what `quakemon export` writes).

        Args:
            stream: waveforms of any number of stations.

        Returns:
            One Pick per detection (its P pick, with uncertainty and waveform id); `Detector` runs no association,
            so the picks sit in one carrier event of type "not existing" (see docs/delivery.md).
        """
        from quakemon.wire.export import to_catalog

        return to_catalog(self.detect(stream))

    def annotate(self, stream: Stream) -> Stream:
        """Class probabilities over time, per station.

        Args:
            stream: waveforms of any number of stations.

        Returns:
            One Trace per station and class, sampled every `stride_s` at window centres. The class label is in
            stats.quakemon_label; the channel is "PR<i>" for the label's column i (SEED channel codes are
            three characters). Windows that could not be inferred are NaN.
        """
        runner, _ = self._run(stream, keep_series=True)
        out = Stream()
        for station, series in sorted(runner.series.items()):
            if not series.start_ns:
                continue
            starts = np.asarray(series.start_ns, dtype=np.int64)
            stride_ns = int(round(self.stride_s * 1e9))
            slot = (starts - starts.min()) // stride_ns  # regular grid; skipped windows stay NaN
            probs = np.full((int(slot.max()) + 1, len(self.labels)), np.nan, np.float32)
            probs[slot] = np.asarray(series.probabilities)
            first = int(np.argmin(starts))
            centre = (starts[first] + series.end_ns[first]) / 2
            net, sta, loc = (station.split(".") + ["", ""])[:3]
            for i, label in enumerate(self.labels):
                tr = Trace(data=probs[:, i].copy())
                tr.stats.network, tr.stats.station, tr.stats.location = net, sta, loc
                tr.stats.channel = f"PR{i}"
                tr.stats.starttime = UTCDateTime(ns=int(centre))
                tr.stats.delta = self.stride_s
                tr.stats.quakemon_label = label
                out += tr
        return out


__all__ = ["Detector"]
