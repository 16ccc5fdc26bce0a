"""The detection core shared by replay, the Python API and the streaming workers.

windows -> `stack_windows` (float32 [B, C, N] + per-window metadata) -> `preprocess_windows` (the one batched
transform) -> `DetectionStage.process` (batched HybridViT + per-station trigger) -> detection bodies.

Every path (live, replay, notebook) goes through these functions in this order, so the same windows give the
same probabilities and the same detections (ids, onsets) wherever they are computed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from quakemon.models.contract import InputContract
from quakemon.pipeline import stft_kernel
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.trigger import TriggerBank
from quakemon.pipeline.windowing import Window

if TYPE_CHECKING:
    from quakemon.pipeline.engine import InferenceEngine

log = structlog.get_logger(__name__)

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class WindowMeta:
    """What travels beside a window's samples between stages: which window it is and what was found in it.

    Immutable: a later step that learns something (the transform's `valid` and `dead`) makes a new one with
    `dataclasses.replace`. `to_wire` / `from_wire` are the only (de)serialisation, used at the stage boundary.
    """

    station: str  # "NET.STA.LOC"
    start_ns: int
    end_ns: int
    instrument: str = ""  # band + instrument code, e.g. "EH"
    arrival: float | None = None  # wall-clock time the window was cut (None in replays)
    missing_fraction: float = 0.0
    constant: tuple[str, ...] = ()  # components whose samples are all equal
    valid: bool | None = None  # None until the transform ran; False: not inferred (non-finite or dead data)
    dead: tuple[str, ...] = ()  # components the transform found dead

    @classmethod
    def of(cls, w: Window, arrival: float | None = None) -> WindowMeta:
        """The metadata of a window cut by the windower."""
        return cls(station=w.station, start_ns=int(w.start_ns), end_ns=int(w.end_ns), instrument=w.instrument,
                   arrival=arrival, missing_fraction=float(w.missing_fraction), constant=tuple(w.constant))

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of this window in a stage message; `valid` and `dead` only once the transform ran."""
        out: dict[str, Any] = {"station": self.station, "instrument": self.instrument, "start_ns": self.start_ns,
                               "end_ns": self.end_ns, "arrival": self.arrival,
                               "missing_fraction": self.missing_fraction, "constant": list(self.constant)}
        if self.valid is not None:
            out["valid"] = self.valid
            out["dead"] = list(self.dead)
        return out

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> WindowMeta:
        """Inverse of `to_wire`; raises KeyError/TypeError/ValueError on a malformed object."""
        arrival = obj.get("arrival")
        valid = obj.get("valid")
        return cls(station=str(obj["station"]), start_ns=int(obj["start_ns"]), end_ns=int(obj["end_ns"]),
                   instrument=str(obj.get("instrument", "")), arrival=None if arrival is None else float(arrival),
                   missing_fraction=float(obj.get("missing_fraction", 0.0)),
                   constant=tuple(str(c) for c in obj.get("constant", ())),
                   valid=None if valid is None else bool(valid), dead=tuple(str(c) for c in obj.get("dead", ())))


def stack_windows(windows: Sequence[Window], arrivals: Sequence[float | None] | None = None, *,
                  center: bool = True) -> tuple[np.ndarray, list[WindowMeta]]:
    """Windows -> (float32 [B, C, N], metas). float32 is what travels between stages, so replay uses it too.

    center: subtract each channel's mean in float64 first, so a large DC offset (e.g. 2^24 counts) does not eat
    float32's 24-bit mantissa. Use it when the contract z-scores (the mean is removed anyway).
    Consecutive windows of one steady-state run of the windower (`Window.run`: overlapping views of one block of
    samples) are centred a run at a time, by one call of a compiled loop (`stft_kernel.centre_to_float32`).
    """
    if not windows:
        return np.zeros((0, 0, 0), np.float32), []
    data = np.empty((len(windows), *windows[0].data.shape), np.float32)
    for lo, hi, x in _runs(windows):
        if center:  # the float64 difference, rounded once to float32 (what a whole-batch float64 pass gives)
            stft_kernel.centre_to_float32(np.asarray(x, dtype=np.float64), data[lo:hi])
        else:
            data[lo:hi] = x
    arrivals = arrivals if arrivals is not None else [None] * len(windows)
    return data, [WindowMeta.of(w, a) for w, a in zip(windows, arrivals, strict=True)]


def _runs(windows: Sequence[Window]) -> list[tuple[int, int, np.ndarray]]:
    """(lo, hi, data [hi - lo, C, N]) for consecutive windows that are consecutive rows of one windower run (a
    view of the run's array, no copy); any other window is a range of its own."""
    out: list[tuple[int, int, np.ndarray]] = []
    lo = 0
    for i in range(1, len(windows) + 1):
        if i < len(windows):
            a, b = windows[i - 1].run, windows[i].run
            if a is not None and b is not None and b[0] is a[0] and b[1] == a[1] + 1:
                continue
        first = windows[lo]
        out.append((lo, i, first.run[0][first.run[1] : first.run[1] + i - lo] if first.run is not None
                    else first.data[None]))
        lo = i
    return out


def preprocess_windows(data: np.ndarray, metas: Sequence[WindowMeta], contract: InputContract,
                       device: str | torch.device | None = None,
                       keep_on_device: bool = False) -> tuple[np.ndarray | torch.Tensor, list[WindowMeta]]:
    """Apply the contract's transforms; returns the spectra and new metas with `valid` and `dead` filled in
    (the given metas are left as they are).

    device: where the transform runs (None = CPU). keep_on_device: return the spectra as a torch tensor on
    that device (replay on a GPU hands them straight to the model) instead of a float32 numpy array.
    """
    if len(metas) == 0:
        f, t = contract.spectrogram_shape
        return np.zeros((0, contract.n_channels, f, t), np.float32), []
    on_gpu = device is not None and torch.device(device).type != "cpu"
    x = torch.from_numpy(np.ascontiguousarray(data)).to(device, non_blocking=True) if on_gpu else data
    result = preprocess_batch(x, contract)
    valid = np.asarray(result.valid.cpu() if on_gpu else result.valid)
    dead = np.asarray(result.dead.cpu() if on_gpu else result.dead)
    order = contract.component_order
    out = [replace(meta, valid=bool(valid[i]), dead=tuple(order[c] for c in np.flatnonzero(dead[i])))
           for i, meta in enumerate(metas)]
    spectra = result.spectrograms
    if on_gpu and keep_on_device:
        return spectra, out
    if not isinstance(spectra, np.ndarray):
        spectra = spectra.cpu().numpy()
    return np.ascontiguousarray(spectra, dtype=np.float32), out


def warm_up_preprocess(contract: InputContract, device: str | torch.device | None = None) -> None:
    """Load the compiled CPU kernels (or on a fresh install compile them, which takes seconds): the centring
    `stack_windows` runs, and the transform, by running one float32 window (what travels between stages) through
    it, before the first real windows instead of during them."""
    stft_kernel.warm_up_centring()
    preprocess_windows(np.zeros((1, contract.n_channels, contract.window_samples), np.float32),
                       [WindowMeta("warm-up", 0, 0)], contract, device=device)


@dataclass
class DetectionResult:
    """What one batch produced: per-window probabilities (NaN rows for skipped windows) and trigger bodies."""

    metas: list[WindowMeta]
    probabilities: np.ndarray  # [B, num_classes]
    detections: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)  # (body, arrival)


class DetectionStage:
    """Batched inference and per-station triggers: spectra + metas in, detection bodies out.

    stats: windows, inferred, invalid, late_windows, detections (bodies of both states); `opened` counts the
    "new" detections per station.
    """

    def __init__(self, engine: InferenceEngine, on: float, off: float, min_duration_s: float,
                 trigger_label: str | None = None, max_gap_s: float | None = None) -> None:
        self.engine = engine
        self.labels = list(engine.labels)
        self.model_info = engine.checkpoint.model_info
        trigger_labels = [trigger_label] if trigger_label else None
        self.triggers = TriggerBank(on, off, min_duration_s, self.labels, trigger_labels, max_gap_s)
        self.stats: Counter[str] = Counter()
        self.opened: Counter[str] = Counter()
        self._last_start: dict[str, int] = {}
        self._decided_at: dict[str, float] = {}  # station -> monotonic time its newest window was decided

    def process(self, spectra: np.ndarray | torch.Tensor, metas: Sequence[WindowMeta]) -> DetectionResult:
        """Infer the valid windows, then feed every station's trigger in window-start order.

        spectra: numpy, or a torch tensor already on the engine's device (see `preprocess_windows`).
        """
        return self.decide(metas, self.infer(spectra, metas))

    def infer(self, spectra: np.ndarray | torch.Tensor, metas: Sequence[WindowMeta]) -> np.ndarray:
        """Class probabilities [B, num_classes] of the valid windows (NaN rows for invalid ones). Touches no
        trigger state, so batches may be inferred on several threads at once; `decide` must then take them in
        order."""
        probs = np.full((len(metas), len(self.labels)), np.nan, np.float32)
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        if valid.all():
            probs[:] = self.engine.predict(spectra)
        elif valid.any():
            mask = torch.from_numpy(valid).to(spectra.device) if isinstance(spectra, torch.Tensor) else valid
            probs[valid] = self.engine.predict(spectra[mask])
        return probs

    def decide(self, metas: Sequence[WindowMeta], probs: np.ndarray) -> DetectionResult:
        """Feed every station's trigger with a batch's probabilities (from `infer`), in window-start order."""
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        self.stats["windows"] += len(metas)
        self.stats["inferred"] += int(valid.sum())
        self.stats["invalid"] += int((~valid).sum())
        result = DetectionResult(list(metas), probs)
        rows = probs.tolist()
        now = time.monotonic()
        for i in sorted(range(len(metas)), key=lambda j: (metas[j].start_ns, metas[j].station)):
            meta = metas[i]
            station = meta.station
            if not valid[i]:
                continue
            if meta.start_ns <= self._last_start.get(station, -1):
                self.stats["late_windows"] += 1  # reordered across workers or duplicated: never re-triggered
                continue
            self._last_start[station] = meta.start_ns
            self._decided_at[station] = now
            events = self.triggers.update(station, meta.start_ns / _NS, meta.end_ns / _NS, rows[i])
            for ev in events:
                result.detections.append((ev.to_body(self.model_info), meta.arrival))
                if ev.state == "new":
                    self.opened[station] += 1
        self.stats["detections"] += len(result.detections)
        return result

    def expire_silent(self, now: float | None = None) -> list[tuple[dict[str, Any], float | None]]:
        """Close the open triggers of stations that went silent (live streams; replays use `flush`).

        Silent means: no window of the station was decided for longer than the trigger's maximum gap (by
        default one window length) of wall clock, measured on the monotonic clock `now` (default: now). The
        station's data clock is taken to have run on at real time since its newest window, and
        `TriggerBank.expire` closes its triggers exactly as a window arriving that late would have
        (close_reason "gap"). Only the station's own silence counts: a station whose data arrives late but
        steadily keeps its triggers, and a station that stops is closed even when every other station stopped
        too. Should its windows come back after all, its trigger opens anew (a new onset, a new id).
        """
        now = time.monotonic() if now is None else now
        out: list[tuple[dict[str, Any], float | None]] = []
        for station, decided_at in self._decided_at.items():
            data_time = self._last_start[station] / _NS + max(0.0, now - decided_at)
            for ev in self.triggers.expire(data_time, station=station):
                out.append((ev.to_body(self.model_info), None))
        self.stats["detections"] += len(out)
        return out

    def flush(self) -> list[tuple[dict[str, Any], float | None]]:
        """Close every open trigger (end of a replay)."""
        return [(ev.to_body(self.model_info), None) for ev in self.triggers.flush()]
