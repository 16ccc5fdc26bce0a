"""A small Python API for notebooks, in the spirit of SeisBench's `annotate` / `classify`.

    from quakemon.api import Detector
    det = Detector.from_checkpoint()            # the bundled model (or a path)
    probs = det.annotate(stream)                # ObsPy Stream of probability traces, one per station and class
    detections = det.detect(stream)             # detection bodies, exactly as the daemon would publish them

Both run the daemon's code path (`quakemon.pipeline.runner.DetectionRunner`: windower, the one preprocessing, the
inference engine, the trigger), so a notebook sees what the service would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from quakemon.models.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from quakemon.pipeline.runner import DetectionRunner


@dataclass
class Detector:
    """A loaded checkpoint plus the window and trigger settings used by `annotate` and `detect`."""

    checkpoint: Checkpoint
    stride_s: float = 1.0
    on: float = 0.7
    off: float = 0.5
    min_duration_s: float = 2.0
    device: str = "auto"
    precision: str = "auto"

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **settings: Any) -> Detector:
        """Load `path` (default: the bundled model); `settings` override stride_s, on, off, min_duration_s, ..."""
        return cls(load_checkpoint(resolve_checkpoint(path)), **settings)

    @property
    def labels(self) -> list[str]:
        return list(self.checkpoint.labels)

    def _run(self, stream: Stream, keep_series: bool) -> tuple[DetectionRunner, list[dict[str, Any]]]:
        runner = DetectionRunner(self.checkpoint, stride_s=self.stride_s, on=self.on, off=self.off,
                                 min_duration_s=self.min_duration_s, device=self.device, precision=self.precision,
                                 keep_series=keep_series)
        traces = sorted(stream.copy(), key=lambda tr: (tr.stats.starttime, tr.id))
        detections = list(runner.add_traces(traces)) + runner.finish()
        return runner, detections

    def detect(self, stream: Stream) -> list[dict[str, Any]]:
        """Detection bodies ("new" and "closed") for the stream, as the daemon publishes them."""
        return self._run(stream, keep_series=False)[1]

    def annotate(self, stream: Stream) -> Stream:
        """Probability traces: one Trace per station and class, sampled every `stride_s` at window centres.

        Channel codes are "<instrument>_<label>" shortened to fit SEED (e.g. "EH_earthquake" lives in
        stats.quakemon_label; channel is "PRB"/"PR<n>"). Windows that could not be inferred are NaN.
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
