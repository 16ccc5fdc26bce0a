"""The detection core shared by replay, the Python API and the streaming workers.

windows -> `stack_windows` (float32 [B, C, N] + per-window metadata) -> `preprocess_windows` (the one batched
transform) -> `DetectionStage.process` (batched HybridViT + per-station trigger + P picks) -> detection bodies.

Every path (live, replay, notebook) goes through these functions in this order, so the same windows give the
same probabilities and the same detections (ids, picks) wherever they are computed. The stage gets the stacked
float32 windows beside the spectra: the window that opens a detection is picked (`PickContext`).
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from quakemon.models.contract import InputContract
from quakemon.pipeline import stft_kernel
from quakemon.pipeline.pick_context import PICK_LEAD_S as PICK_LEAD_S
from quakemon.pipeline.pick_context import BatchComponents, PickContext
from quakemon.pipeline.picker import Pick, PickerConfig, is_new_p, pick_every_row
from quakemon.pipeline.screen import Screen, ScreenItem, check_screen, stack_rows
from quakemon.pipeline.settings import SCREEN, TRIGGER, WINDOW, CalibrationSettings
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.trigger import DetectionRef, TriggerBank, TriggerEvent
from quakemon.pipeline.windowing import Window
from quakemon.wire.schema import parse_iso_utc

if TYPE_CHECKING:
    import torch

    from quakemon.pipeline.cascade import CascadeScreen
    from quakemon.pipeline.engine import InferenceEngine

log = structlog.get_logger(__name__)

_NS = 1_000_000_000
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


@dataclass(frozen=True, slots=True)
class WindowMeta:
    """What travels beside a window's samples between stages: which window it is and what was found in it.

    Immutable: a later step that learns something (the transform's `valid` and `dead`) makes a new one
    (`transformed`). `to_wire` / `from_wire` are the only (de)serialisation, used at the stage boundary.
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

    def transformed(self, valid: bool, dead: tuple[str, ...]) -> WindowMeta:
        """This window's metadata with the transform's findings (`dataclasses.replace` without its per-call
        field introspection, which costs more than the rest of a window's bookkeeping)."""
        return WindowMeta(self.station, self.start_ns, self.end_ns, self.instrument, self.arrival,
                          self.missing_fraction, self.constant, valid, dead)

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


def _iso_ns(text: str) -> int:
    """Integer ns since the epoch of an ISO 8601 UTC time (microsecond text, exact: no float on the way)."""
    value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (value - _EPOCH) // _dt.timedelta(microseconds=1) * 1000


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
    on_gpu = device is not None and str(getattr(device, "type", device)).split(":")[0] != "cpu"
    if on_gpu:  # (on the CPU, torch is never imported here)
        import torch

        x = torch.from_numpy(np.ascontiguousarray(data)).to(device, non_blocking=True)
    else:
        x = data
    result = preprocess_batch(x, contract)
    valid = np.asarray(result.valid.cpu() if on_gpu else result.valid)
    dead = np.asarray(result.dead.cpu() if on_gpu else result.dead)
    order = contract.component_order
    letters: dict[tuple[bool, ...], tuple[str, ...]] = {}  # a batch has a few distinct dead patterns
    out = []
    for meta, ok, row in zip(metas, valid.tolist(), map(tuple, dead.tolist()), strict=True):
        names = letters.get(row)
        if names is None:
            names = letters[row] = tuple(c for c, d in zip(order, row, strict=True) if d)
        out.append(meta.transformed(ok, names))
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
    """What one batch produced: per-window probabilities (NaN rows for skipped windows) and trigger bodies.

    With screening (`quakemon.pipeline.screen`), the windows are those decided by this call: windows held from
    earlier batches, not those still held; a window the screen did not forward has the probabilities of the
    screen window that let it pass (`forwarded` False)."""

    metas: list[WindowMeta]
    probabilities: np.ndarray  # [B, num_classes]
    detections: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)  # (body, arrival)
    forwarded: np.ndarray | None = None  # [B] bool, with screening: which windows went through the model


class DetectionStage:
    """Batched inference, per-station triggers and P picks: spectra + metas (+ the windows' samples) in,
    detection bodies out.

    stats: windows, inferred, invalid, late_windows, detections (bodies of both states), picks (by method);
    with screening, forwarded (windows through the model) and screened_out (windows the screen let pass);
    `opened` counts the "new" detections per station.

    screen_every, screen_threshold: screen and refine (`quakemon.pipeline.screen`; 1, the default here: every
    window is forwarded; the replay and the daemon pass `quakemon.pipeline.settings.SCREEN` or their config) on
    the window grid of `stride_s`. With screening, `infer` forwards the screen windows and the windows of dense
    stations only, `decide` needs the batch's spectra (it forwards the rest it needs itself, on its own thread),
    and held windows are decided with a later batch or by `release_held`. screen_net: the cascade screen instead
    (`quakemon.pipeline.cascade`: a checkpoint path or a loaded screen; needs screen_every 1). overrides: on, off,
    min_duration per network or station (`[trigger] overrides`); calibration: per-station thresholds
    (`quakemon.pipeline.calibration`; None or mode "off": none). Both go to the `TriggerBank`.
    """

    def __init__(self, engine: InferenceEngine, on: float, off: float, min_duration_s: float,
                 trigger_label: str | None = None, max_gap_s: float | None = None,
                 retrigger_hold_s: float = TRIGGER.retrigger_hold_s, picker: PickerConfig | None = None,
                 new_pick_after_s: float = TRIGGER.new_pick_after_s, *, stride_s: float = WINDOW.stride_s,
                 screen_every: int = 1, screen_threshold: float = SCREEN.threshold,
                 split_on_new_p: bool = TRIGGER.split_on_new_p, screen_net: Any = None,
                 overrides: Mapping[str, Mapping[str, float]] | None = None,
                 calibration: CalibrationSettings | None = None) -> None:
        self.engine = engine
        self.labels = list(engine.labels)
        self.model_info = engine.checkpoint.model_info
        trigger_labels = [trigger_label] if trigger_label else None
        self.triggers = TriggerBank(on, off, min_duration_s, self.labels, trigger_labels, max_gap_s,
                                    retrigger_hold_s, overrides, calibration, split_on_new_p=split_on_new_p)
        self.picker = picker or PickerConfig()
        self.new_pick_after_s = float(new_pick_after_s)
        self._unpicked: dict[int, tuple[int, np.ndarray]] = {}  # id(ref) -> span, detections opened this batch
        contract = engine.checkpoint.contract
        self.sampling_rate = float(contract.sampling_rate)
        self.context = PickContext(self.sampling_rate)
        self.stats: Counter[str] = Counter()
        self.opened: Counter[str] = Counter()
        self._last_start: dict[str, int] = {}
        self._decided_at: dict[str, float] = {}  # station -> monotonic time its newest window was decided
        self.window_s = float(contract.window_seconds)
        #: torch threads of the forwards `decide` runs itself (screening), None: the calling thread's count. The
        #: replay sets 1 beside its single-threaded workers: an OpenMP team there would wait spinning for cores.
        self.refine_threads: int | None = None
        self.screen: Screen | CascadeScreen | None = None
        check_screen(screen_every, screen_threshold)
        if screen_every > 1:
            if off <= screen_threshold:
                log.warning("screen_inactive", screen_threshold=screen_threshold, off=off,
                            effect="every window is forwarded where trigger.off is at or below the threshold")
            columns = [self.labels.index(label) for label in self.triggers.trigger_labels]
            self.screen = Screen(screen_every, screen_threshold, stride_s, self.window_s, columns, busy=self._busy)
        if screen_net is not None:  # the cascade screen (`quakemon.pipeline.cascade`; it imports torch)
            from quakemon.pipeline.cascade import CascadeScreen

            self.screen = CascadeScreen.for_stage(screen_net, engine.checkpoint, self.triggers, screen_every,
                                                  self._busy)

    def process(self, spectra: np.ndarray | torch.Tensor, metas: Sequence[WindowMeta],
                data: np.ndarray | None = None) -> DetectionResult:
        """Infer the valid windows, then feed every station's trigger in window-start order.

        spectra: numpy, or a torch tensor already on the engine's device (see `preprocess_windows`).
        data: the windows' samples (float32 [B, C, N], `stack_windows`), for the picks; without them a
        detection gets `quakemon.pipeline.trigger.window_pick`.
        """
        return self.decide(metas, self.infer(spectra, metas), data, spectra)

    def infer(self, spectra: np.ndarray | torch.Tensor, metas: Sequence[WindowMeta]) -> np.ndarray:
        """Class probabilities [B, num_classes] of the valid windows (NaN rows for invalid ones and, with
        screening, for the windows not forwarded yet: `Screen.wanted`). Touches no trigger state, so batches may
        be inferred on several threads at once; `decide` must then take them in order."""
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        if self.screen is not None:
            valid &= self.screen.wanted(metas, spectra)
        return self._forward(spectra, valid)

    def _forward(self, spectra: np.ndarray | torch.Tensor, valid: np.ndarray) -> np.ndarray:
        probs = np.full((len(valid), len(self.labels)), np.nan, np.float32)
        if valid.all():
            probs[:] = self.engine.predict(spectra)
        elif valid.any():
            torch = sys.modules.get("torch")  # (a tensor exists only once torch is imported)
            on_device = torch is not None and isinstance(spectra, torch.Tensor)
            mask = torch.from_numpy(valid).to(spectra.device) if on_device else valid
            probs[valid] = self.engine.predict(spectra[mask])
        return probs

    def decide(self, metas: Sequence[WindowMeta], probs: np.ndarray, data: np.ndarray | None = None,
               spectra: np.ndarray | torch.Tensor | None = None) -> DetectionResult:
        """Feed every station's trigger with a batch's probabilities (from `infer`), in window-start order; pick
        the windows that opened detections, all in one `pick_every_row` call per span length; then build the
        bodies. data: the windows' samples (float32 [B, C, N]); None: no picks (`window_pick`), and a re-trigger
        inside a hold always extends. spectra: the batch's spectra, required with screening (the windows `infer`
        did not forward may be needed)."""
        if self.screen is not None:
            return self._decide_screened(metas, probs, data, spectra)
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        self.stats["windows"] += len(metas)
        self.stats["inferred"] += int(valid.sum())
        self.stats["invalid"] += int((~valid).sum())
        result = DetectionResult(list(metas), probs)
        rows = probs.tolist()
        now = time.monotonic()
        events: list[tuple[TriggerEvent, float | None]] = []
        to_pick: list[tuple[list[DetectionRef], int, np.ndarray]] = []
        self._unpicked.clear()
        comps = self.context.components(data) if data is not None and len(metas) else None
        for i in sorted(range(len(metas)), key=lambda j: (metas[j].start_ns, metas[j].station)):
            if valid[i]:
                self._feed(metas[i], rows[i], None if comps is None else data[i], now, events, to_pick,
                           None if comps is None else comps[i])
        return self._finish(result, events, to_pick)

    def _feed(self, meta: WindowMeta, row: list[float], window: np.ndarray | None, now: float,
              events: list[tuple[TriggerEvent, float | None]],
              to_pick: list[tuple[list[DetectionRef], int, np.ndarray]], comp: int | None = None) -> None:
        """Feed one valid window to its station's trigger (windows of a station in time order) and keep its
        picked component (comp, when known: `PickContext.components`) for the picks; a window not after the
        station's newest decided one is dropped."""
        station = meta.station
        if meta.start_ns <= self._last_start.get(station, -1):
            self.stats["late_windows"] += 1  # reordered across workers or duplicated: never re-triggered
            return
        self._last_start[station] = meta.start_ns
        self._decided_at[station] = now
        check = (lambda ref, w=window, m=meta: self._new_phase(ref, m, w)) if window is not None else None
        events += [(ev, meta.arrival) for ev in
                   self.triggers.update(station, meta.start_ns / _NS, meta.end_ns / _NS, row, new_phase=check)]
        if window is None:
            return
        opened = self.triggers.take_opened(station)
        if opened:
            to_pick.append((opened, *self.context.span(station, meta.start_ns, window, comp)))
            self._unpicked.update((id(ref), to_pick[-1][1:]) for ref in opened)
        self.context.add(station, meta.start_ns, window, comp)

    def _finish(self, result: DetectionResult, events: list[tuple[TriggerEvent, float | None]],
                to_pick: list[tuple[list[DetectionRef], int, np.ndarray]]) -> DetectionResult:
        """Pick the opened detections and build the bodies of the transitions, in order."""
        self._pick(to_pick)
        for ev, arrival in events:
            result.detections.append((ev.to_body(self.model_info), arrival))
            if ev.state == "new":
                self.opened[ev.station] += 1
        self.stats["detections"] += len(result.detections)
        return result

    # -- screen and refine (`quakemon.pipeline.screen`) ------------------------------------------------------
    @property
    def decision_delay_s(self) -> float:
        """How much later than at full stride a window may be decided: (K - 1) strides with screening, else 0.
        Callers that advance a clock on the newest window of a batch (the associator) hold it back by this."""
        return 0.0 if self.screen is None else (self.screen.every - 1) * self.screen.stride_ns / _NS

    def _busy(self, station: str) -> bool:
        """Whether the screen must forward every window of `station`: a trigger is not idle, or the station's off
        is not above the screen threshold."""
        assert self.screen is not None
        if self.triggers.thresholds(station)[1] <= self.screen.threshold:
            return True
        return any(self.triggers.trigger(station, label).state != "idle" for label in self.triggers.trigger_labels)

    def _decide_screened(self, metas: Sequence[WindowMeta], probs: np.ndarray, data: np.ndarray | None,
                         spectra: np.ndarray | torch.Tensor | None) -> DetectionResult:
        """`decide` with screening: queue the batch's windows in the screen, then decide what it lets go."""
        assert self.screen is not None
        if spectra is None and len(metas):
            raise ValueError("screening needs the batch's spectra in decide (windows may have to be forwarded)")
        now = time.monotonic()
        comps = BatchComponents(data) if data is not None else None  # (found for the windows that need them)
        finite = np.isfinite(probs).all(axis=1).tolist() if len(metas) else []
        keys = [(m.start_ns, m.station) for m in metas]
        offer, last_start = self.screen.offer, self._last_start
        for i in sorted(range(len(metas)), key=keys.__getitem__):
            meta = metas[i]
            known = meta.valid is False or finite[i]
            item = ScreenItem(meta, (spectra, i, None if data is None else data[i], comps), probs[i] if known else None)
            if meta.start_ns <= last_start.get(meta.station, -1) or not offer(item, now):
                self.stats["windows"] += 1
                self.stats["late_windows"] += 1  # a duplicate or reordered window: never decided
        return self._run_screen(self.screen.advance, now)

    def release_held(self, now: float | None = None, final: bool = False) -> DetectionResult:
        """With screening, decide the windows held for a screen window that has not come: every station's (final:
        the data ended) or those of stations with no window for longer than a window length (of the monotonic
        clock `now`, default now: silent). They are forwarded, having no screen window to vouch for them. An
        empty result without screening or held windows."""
        now = time.monotonic() if now is None else now
        if self.screen is None or not self.screen.held():
            return DetectionResult([], np.zeros((0, len(self.labels)), np.float32), forwarded=np.zeros(0, bool))
        older = None if final else self.window_s
        return self._run_screen(lambda feed, **kw: self.screen.release(feed, older_than=older, now=now, **kw), now)

    def _refine(self, spectra: np.ndarray | torch.Tensor) -> np.ndarray:
        """`forward_rows`, for the windows `decide` forwards itself."""
        return self.forward_rows(spectra)

    def forward_rows(self, spectra: np.ndarray | torch.Tensor) -> np.ndarray:
        """Forward every window of `spectra` on this thread, on `refine_threads` torch threads when set."""
        every = np.ones(len(spectra), bool)
        if self.refine_threads is None:
            return self._forward(spectra, every)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.refine_threads)
        try:
            return self._forward(spectra, every)
        finally:
            torch.set_num_threads(before)

    def _run_screen(self, step: Callable[..., list[ScreenItem]], now: float) -> DetectionResult:
        """Run the screen's `step` (advance or release), forwarding what it asks for, until it asks no more; the
        windows it lets go are fed to the triggers (each station in time order) and make the result. With the
        cascade, the windows it does not forward are fed a run per station (`QuietRuns`, `_feed_quiet`)."""
        items: list[ScreenItem] = []
        blocks: list[np.ndarray] = []  # the rows of `items`, in their order: one row each, or a quiet run's
        fwd: list[bool] = []
        events: list[tuple[TriggerEvent, float | None]] = []
        keyed: list[tuple[int, str, int]] = []
        to_pick: list[tuple[list[DetectionRef], int, np.ndarray]] = []
        self._unpicked.clear()

        def feed_one(item: ScreenItem, row: np.ndarray) -> None:
            before = len(events)
            window, comps = item.payload[2], item.payload[3]
            self._feed(item.meta, row.tolist(), window, now, events, to_pick,
                       None if window is None else comps[item.payload[1]])
            keyed.extend((item.meta.start_ns, item.meta.station, k) for k in range(before, len(events)))

        def feed(item: ScreenItem, row: np.ndarray, forwarded: bool) -> None:
            items.append(item)
            blocks.append(row[None])
            fwd.append(forwarded)
            if item.valid:
                if quiet is not None:
                    quiet.flush(item.meta.station)  # (its quiet windows before it)
                feed_one(item, row)

        def feed_run(run: list[ScreenItem], rows: np.ndarray) -> None:
            items.extend(run)
            blocks.append(rows)
            fwd.extend([False] * len(run))
            if not self._feed_quiet(run, rows, now):
                for item, row in zip(run, rows, strict=True):
                    feed_one(item, row)

        make = getattr(self.screen, "quiet_runs", None)
        quiet = make(feed_run, self._quiet_ok) if make is not None else None
        kw = {} if quiet is None else {"quiet": quiet.add}
        while need := step(feed, **kw):
            rows = self._refine(stack_rows(s[int(i)] for s, i, *_ in (it.payload for it in need)))
            for it, row in zip(need, rows, strict=True):
                it.probs = row
            self.stats["refined"] += len(need)
        if quiet is not None:
            quiet.flush()
        keys = [(item.meta.start_ns, item.meta.station) for item in items]
        order = sorted(range(len(items)), key=keys.__getitem__)
        metas = [items[k].meta for k in order]
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        forwarded = np.array(fwd, dtype=bool)[order] if items else np.zeros(0, bool)
        self.stats["windows"] += len(metas)
        self.stats["inferred"] += int(valid.sum())
        self.stats["invalid"] += int((~valid).sum())
        self.stats["forwarded"] += int(forwarded.sum())
        self.stats["screened_out"] += int((valid & ~forwarded).sum())
        probs = (np.concatenate(blocks)[order].astype(np.float32, copy=False) if items
                 else np.zeros((0, len(self.labels)), np.float32))
        order = sorted(range(len(events)), key=lambda k: keyed[k])
        return self._finish(DetectionResult(metas, probs, forwarded=forwarded), [events[k] for k in order], to_pick)

    def _quiet_ok(self, station: str) -> bool:
        """Whether windows the cascade does not forward leave the station's triggers idle (`QuietRuns`)."""
        assert self.screen is not None
        return self.triggers.stays_quiet(station, float(np.float32(self.screen.threshold)))

    def _feed_quiet(self, run: list[ScreenItem], rows: np.ndarray, now: float) -> bool:
        """Feed a run of one station's valid windows, in time order, that leave its triggers idle, in one step:
        what `_feed` of each in turn does (the triggers remember the last, `TriggerBank.update_quiet`; the pick
        context keeps the last `PICK_LEAD_S`). False, with nothing done, where the triggers refuse it."""
        first, last = run[0].meta, run[-1].meta
        station = first.station
        if first.start_ns <= self._last_start.get(station, -1):
            return False
        names = self.triggers.trigger_labels
        cols = rows[:, [self.labels.index(label) for label in names]]
        bounds = dict(zip(names, zip(cols.min(0).tolist(), cols.max(0).tolist(), strict=True), strict=True))
        probs = dict(zip(self.triggers.labels, rows[-1].tolist(), strict=True))
        if not self.triggers.update_quiet(station, first.start_ns / _NS,
                                          (last.start_ns / _NS, last.end_ns / _NS, probs), bounds):
            return False
        self._last_start[station] = last.start_ns
        self._decided_at[station] = now
        kept = last.start_ns - self.context.lead_ns  # (older rows would be dropped by the run's last add)
        tail = [item for item in run if item.payload[2] is not None and item.meta.start_ns >= kept]
        if tail:  # (the windows of one batch: one BatchComponents)
            comps = tail[0].payload[3].of([item.payload[1] for item in tail])
            for item, comp in zip(tail, comps, strict=True):
                self.context.add(station, item.meta.start_ns, item.payload[2], comp)
        return True

    def _new_phase(self, held: DetectionRef, meta: WindowMeta, window: np.ndarray) -> bool:
        """Whether a window re-triggering a held detection holds a clearly new P: its pick (the window with its
        context) passes the SNR gate and lies `new_pick_after_s` or more after the held detection's pick. Asked
        for re-triggers inside a hold only (a few per event), so it picks that one window there and then."""
        if held.pick is None and id(held) in self._unpicked:  # opened earlier in this batch: picked now, so
            held.pick = self._pick_one(*self._unpicked[id(held)])  # the answer does not depend on the batching
        fresh = self._pick_one(*self.context.span(meta.station, meta.start_ns, window))
        return is_new_p(fresh, held.pick_or_window(), self.new_pick_after_s)

    def _pick_one(self, start_ns: int, x: np.ndarray) -> Pick:
        pick = pick_every_row(x[None], start_ns, self.sampling_rate, config=self.picker).picks()[0]
        assert pick is not None  # pick_every_row picks every row
        return pick

    def _pick(self, todo: list[tuple[list[DetectionRef], int, np.ndarray]]) -> None:
        """Pick the opened detections' spans, one batched call per span length (a few: with or without the full
        context), and give each detection its pick."""
        by_length: dict[int, list[int]] = {}
        for k, (_, _, x) in enumerate(todo):
            by_length.setdefault(x.shape[0], []).append(k)
        for rows in by_length.values():
            batch = pick_every_row(np.stack([todo[k][2] for k in rows]),
                                   np.array([todo[k][1] for k in rows], np.int64), self.sampling_rate,
                                   config=self.picker)
            for k, pick in zip(rows, batch.picks(), strict=True):
                self.stats[f"picks_{pick.method}"] += 1
                for ref in todo[k][0]:
                    if ref.pick is None:  # (a re-trigger in this batch may have needed it already)
                        ref.pick = pick

    def expire_silent(self, now: float | None = None) -> list[tuple[dict[str, Any], float | None]]:
        """Close the open triggers of stations that went silent (live streams; replays use `flush`).

        Silent means: no window of the station was decided for longer than the trigger's maximum gap (by
        default one window length) of wall clock, measured on the monotonic clock `now` (default: now). The
        station's data clock is taken to have run on at real time since its newest window, and
        `TriggerBank.expire` closes its triggers exactly as a window arriving that late would have
        (close_reason "gap"; a held detection closes as "off" once the data clock passes its hold). Only the
        station's own silence counts: a station whose data arrives late but steadily keeps its triggers, and a
        station that stops is closed even when every other station stopped too. Should its windows come back
        after all, its trigger opens anew (a new pick, a new id).
        """
        now = time.monotonic() if now is None else now
        out: list[tuple[dict[str, Any], float | None]] = []
        for station, decided_at in self._decided_at.items():
            data_time = self._last_start[station] / _NS + max(0.0, now - decided_at)
            for ev in self.triggers.expire(data_time, station=station):
                out.append((ev.to_body(self.model_info), None))
        self.stats["detections"] += len(out)
        return out

    def defer_silence(self, seconds: float, now: float | None = None) -> None:
        """Count the last `seconds` (monotonic) as silence of no station, for `expire_silent`: the live service
        calls it when the ingest process was down for that long, as its windows could not arrive meanwhile."""
        now = time.monotonic() if now is None else now
        for station, decided_at in self._decided_at.items():
            self._decided_at[station] = min(now, decided_at + max(0.0, seconds))

    def flush(self) -> list[tuple[dict[str, Any], float | None]]:
        """Close every open trigger (end of a replay)."""
        return [(ev.to_body(self.model_info), None) for ev in self.triggers.flush()]

    def shutdown(self) -> list[tuple[dict[str, Any], float | None]]:
        """Close every open detection with close_reason "shutdown" (the live service stops)."""
        out = [(ev.to_body(self.model_info), None) for ev in self.triggers.shutdown()]
        self.stats["detections"] += len(out)
        return out

    def resume(self, body: Mapping[str, Any]) -> bool:
        """Continue a detection whose "new" `body` a previous run published and never closed (the service was
        killed): its trigger goes on from the body's last window with the same pick, so the same id, and the
        station's windows up to that one count as decided (a SeedLink resume sends them again). False (nothing
        done) when its label is not a trigger label or another model made it (its id could not be kept)."""
        label, station = str(body["label"]), str(body["station"])
        model = body.get("model") or {}
        if label not in self.triggers.trigger_labels or model.get("sha256") != self.model_info.get("sha256"):
            return False
        pick = body["pick"]
        snr = pick.get("snr")
        ref = DetectionRef(station, parse_iso_utc(body["window_start"]), parse_iso_utc(body["window_end"]),
                           Pick(_iso_ns(pick["time"]), float(pick["uncertainty_s"]), str(pick["method"]),
                                math.nan if snr is None else float(snr)))
        start, end = parse_iso_utc(body["last_window_start"]), parse_iso_utc(body["last_window_end"])
        probs = {str(k): float(v) for k, v in body["probabilities"].items()}
        self.triggers.resume(label, ref, (start, end, float(body["probability"]), probs),
                             float(body["peak_probability"]))
        self._last_start[station] = max(self._last_start.get(station, -1), round(start * _NS))
        self._decided_at[station] = time.monotonic()
        return True
