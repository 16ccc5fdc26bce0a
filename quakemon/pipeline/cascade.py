"""Cascade screen: a tiny distilled network (`quakemon.models.screen_net`) scores every window, and only the
windows it passes, or those of a station whose trigger is not idle, go through the detector.

`[model] screen_net` (replay: `--screen-net`; Python: the `screen_net` keyword of `DetectionRunner`, `replay` and
`DetectionStage`), instead of the K-screen (`quakemon.pipeline.screen`; the two exclude each other). The rule, per
station and in time order, as `benchmarks/cascade.py` simulates it:

* A window whose score (the screen's predicted logit of the detector's trigger probability) reaches the
  checkpoint's threshold is *passed* and forwarded (a NaN score passes).
* A window of a station whose trigger is not idle (a detection open or held, also one resumed after a restart),
  or whose trigger ``off`` is at or below the fill value below, is forwarded whatever its score.
* Any other window is not forwarded: the trigger gets, in each trigger-label column, the *fill value*
  sigmoid(min(score, threshold)), below the trigger's ``off``, so an idle trigger does nothing with it; the
  other columns share the rest of 1 (noise = 1 - fill for the bundled two-class model). The probability archive
  records these rows, what the trigger saw.

The screen net runs in `infer` over all valid windows of a batch at once (on the caller's thread, so on the
forward pool's workers), and the passed windows and those of stations busy at the last decision go through the
detector there too. `decide` forwards, on its own thread, the windows of stations that turned busy within the
batch. A window forwarded ahead of need (its station was busy when the batch was inferred, idle when decided) is
used only where the rule forwards it, so the decisions do not depend on the batching. No window is held: the
decisions come with their batch, with no delay; except in a replay on the CPU workers (`DetectionRunner`), where a
task with only a few windows to forward leaves them to `Gather`, which forwards those of several tasks in one
forward and holds their decisions until then (a pipeline batch at most). `decide` feeds the windows it does not
forward to the triggers a run per station (`QuietRuns`), as feeding them one by one would.

What it guarantees: with a threshold every window reaches, the trigger sees exactly the full-stride
probabilities. What it does not: that a window the screen scores below its threshold would not have reached the
trigger's ``on`` (it is fed the fill value, so such an event is missed); the threshold comes from the screen's
validation windows, and exactness on other data is measured (docs/performance.md), not proven.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.models.screen_net import Screen as ScreenModel
from quakemon.models.screen_net import check_screen_meta, load_screen, passes
from quakemon.pipeline.screen import Feed, ScreenItem, stack_rows

#: quiet(item, score): take a window the cascade does not forward (`CascadeScreen.advance`).
Quiet = Callable[[ScreenItem, float], None]

log = structlog.get_logger(__name__)


def load_cascade_screen(screen_net: str | Path | ScreenModel, checkpoint: Any) -> ScreenModel:
    """The screen network for `checkpoint` (a path, checked with `load_screen` against the detector's sha256 and
    input contract, or a loaded screen, checked the same way). Raises ScreenCheckpointError."""
    if isinstance(screen_net, ScreenModel):
        check_screen_meta("the loaded screen", screen_net.meta, checkpoint.sha256, checkpoint.contract)
        return screen_net
    return load_screen(screen_net, checkpoint.sha256, checkpoint.contract)


class CascadeScreen:
    """The cascade rule over every station, with the interface `DetectionStage` drives the K-screen by
    (`wanted`, `offer`, `advance`, `release`, `held`, `dense_hint`, `every`, `threshold`).

    Args:
        model: the loaded screen network and its threshold (a logit).
        labels: the detector's class labels; columns: those of the trigger labels.
        busy: busy(station): whether every window of the station must be forwarded (its trigger is not idle).
    """

    every = 1  # (no window is held for a later one: no decision delay)
    stride_ns = 0

    def __init__(self, model: ScreenModel, labels: Sequence[str], columns: Sequence[int],
                 busy: Callable[[str], bool] = lambda station: False) -> None:
        self.model = model
        self.logit = float(model.threshold)
        #: the fill value's ceiling: sigmoid(threshold); a station whose trigger off is at or below it is busy
        self.threshold = _sigmoid(self.logit)
        self.columns = list(columns)
        self.others = [k for k in range(len(labels)) if k not in set(self.columns)]
        self.busy = busy
        self.dense_hint: frozenset[str] = frozenset()  # stations busy after the last `advance` (read by workers)
        self._scores: dict[tuple[str, int], float] = {}  # (station, start_ns) -> score, from `wanted` to `offer`
        self._lock = threading.Lock()
        self._queue: deque[ScreenItem] = deque()
        self._newest: dict[str, int] = {}

    @classmethod
    def for_stage(cls, screen_net: str | Path | ScreenModel, checkpoint: Any, triggers: Any, screen_every: int,
                  busy: Callable[[str], bool]) -> CascadeScreen:
        """The cascade of a `DetectionStage`: its checkpoint, trigger bank (`TriggerBank`) and busy test. Raises
        ValueError when the K-screen is on too (screen_every > 1), ScreenCheckpointError for a screen that does
        not fit the detector."""
        if screen_every != 1:
            raise ValueError(f"screen_net and screen_every > 1 exclude each other (got screen_every={screen_every}):"
                             " the cascade screen replaces screening one window in K")
        labels = list(checkpoint.labels)
        screen = cls(load_cascade_screen(screen_net, checkpoint), labels,
                     [labels.index(label) for label in triggers.trigger_labels], busy)
        if triggers.off <= screen.threshold:
            log.warning("cascade_inactive", fill=screen.threshold, off=triggers.off,
                        effect="every window is forwarded where trigger.off is at or below the fill value")
        return screen

    @property
    def on(self) -> bool:
        return True

    def scores(self, spectra: Any) -> np.ndarray:
        """Screen scores [B] (float64) of a batch of spectra (numpy, or a torch tensor on any device)."""
        if len(spectra) == 0:
            return np.zeros(0)
        import torch

        net = self.model.net
        if isinstance(spectra, torch.Tensor) and next(net.parameters()).device != spectra.device:
            with self._lock:  # (a numpy batch has a `device` too, the string "cpu": never moved for it)
                self.model.net = net = net.to(spectra.device)
        with torch.inference_mode():
            out = net(torch.as_tensor(spectra))
        return out.float().cpu().numpy().astype(np.float64)

    def wanted(self, metas: Sequence[Any], spectra: Any = None) -> np.ndarray:
        """Score the batch's valid windows (kept for `offer`); returns which to forward now: the passed ones and
        every window of the stations busy at the last `advance`."""
        valid = np.array([m.valid is not False for m in metas], dtype=bool)
        out = np.zeros(len(metas), bool)
        if not valid.any():
            return out
        idx = np.flatnonzero(valid)
        rows = spectra if valid.all() else spectra[_index(spectra, idx)]
        sc = self.scores(rows)
        ok = passes(sc, self.logit)
        keys = [(m.station, m.start_ns) for m in (metas[i] for i in idx.tolist())]
        hint = self.dense_hint
        with self._lock:
            self._scores.update(zip(keys, sc.tolist(), strict=True))
        out[idx] = ok if not hint else ok | np.array([k[0] in hint for k in keys], dtype=bool)
        return out

    def offer(self, item: ScreenItem, now: float) -> bool:
        """Queue a window (windows of a station in time order); False (not queued) when it does not start after
        the station's newest window offered."""
        station, start = item.meta.station, item.meta.start_ns
        with self._lock:
            score = self._scores.pop((station, start), math.nan)
        if start <= self._newest.get(station, -1):
            return False
        if not item.valid and item.probs is None:
            raise ValueError("a window that is not inferable is offered with its (NaN) probabilities")
        self._newest[station] = start
        item.score = score  # type: ignore[attr-defined]
        self._queue.append(item)
        return True

    def fill(self, score: float) -> np.ndarray:
        """The row a window not forwarded gets: sigmoid(min(score, threshold)) in the trigger columns, the rest
        of 1 shared by the other columns."""
        q = _sigmoid(min(score, self.logit))
        row = np.empty(len(self.columns) + len(self.others), np.float32)
        for c in self.columns:  # (scalar stores: a window at a time, cheaper than indexing by a list)
            row[c] = q
        if self.others:
            rest = max(0.0, 1.0 - q * len(self.columns)) / len(self.others)
            for c in self.others:
                row[c] = rest
        return row

    def fill_rows(self, scores: Sequence[float]) -> np.ndarray:
        """`fill` of each score [n, C], the same values (the same float64 steps, rounded once to float32)."""
        return self.rows_of([_sigmoid(min(score, self.logit)) for score in scores])

    def rows_of(self, values: Sequence[float]) -> np.ndarray:
        """The rows [n, C] with these values q (sigmoid(min(score, threshold))) in the trigger columns."""
        q = np.array(values, np.float64)
        rows = np.empty((len(q), len(self.columns) + len(self.others)), np.float32)
        rows[:, self.columns] = q[:, None]
        if self.others:
            rows[:, self.others] = (np.maximum(0.0, 1.0 - q * len(self.columns)) / len(self.others))[:, None]
        return rows

    def advance(self, feed: Feed, quiet: Quiet | None = None) -> list[ScreenItem]:
        """Feed the queued windows in order as far as their rows are known; returns the windows to forward to go
        further (set `probs` and call again until it returns []).

        quiet(item, score): given, it takes the windows not forwarded instead of `feed` (their row is
        `fill(score)`); the caller feeds them, each station's in time order with the windows `feed` gets. A
        station's busy test is asked again only once `feed` got one of its valid windows: a window not forwarded
        leaves its triggers idle, so their state changes only there."""
        q = self._queue
        logit = self.logit
        busy: dict[str, bool] = {}  # station -> self.busy(station), until one of its valid windows is fed
        touched: set[str] = set()
        while q:
            item = q[0]
            station = item.meta.station
            touched.add(station)
            if not item.valid:
                feed(q.popleft(), item.probs, False)
                continue
            score = item.score  # type: ignore[attr-defined]
            if score < logit:  # (False for a NaN score)
                b = busy.get(station)
                if b is None:
                    b = busy[station] = self.busy(station)
                if not b:
                    if quiet is None:
                        feed(q.popleft(), self.fill(score), False)
                    else:
                        quiet(q.popleft(), score)
                    continue
            if item.probs is None:  # (with every queued window passed or of a station found busy: one forward)
                return [it for it in q if it.valid and it.probs is None and
                        (it is item or not it.score < logit or busy.get(it.meta.station))]  # type: ignore[attr-defined]
            feed(q.popleft(), item.probs, True)
            busy.pop(station, None)
        self._hint(touched, busy)
        self._prune()
        return []

    def release(self, feed: Feed, *, older_than: float | None = None, now: float = 0.0,
                quiet: Quiet | None = None) -> list[ScreenItem]:
        """Nothing is held for later windows: the same as `advance`."""
        return self.advance(feed, quiet)

    def quiet_runs(self, feed_run: Callable[[list[ScreenItem], np.ndarray], None],
                   eligible: Callable[[str], bool]) -> QuietRuns:
        """A `QuietRuns` for one decision (the `quiet` of `advance`)."""
        return QuietRuns(self, feed_run, eligible)

    def _hint(self, touched: set[str], known: dict[str, bool]) -> None:
        """Update `dense_hint` for the `touched` stations (known: their busy tests that still hold)."""
        busy = {name for name in touched if (known[name] if name in known else self.busy(name))}
        if busy != self.dense_hint & touched:
            self.dense_hint = frozenset((self.dense_hint - touched) | busy)  # (replaced whole: workers read it)

    def held(self) -> int:
        return len(self._queue)

    def _prune(self, limit: int = 100_000) -> None:
        """Forget scores of windows that were inferred and never decided (a dropped batch), once there are many."""
        if len(self._scores) > limit:
            with self._lock:
                self._scores = {k: v for k, v in self._scores.items() if k[1] > self._newest.get(k[0], -1)}


def _sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)), without overflow for a very negative x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _index(spectra: Any, idx: np.ndarray) -> Any:
    """Index numpy or torch spectra by integer positions."""
    if isinstance(spectra, np.ndarray):
        return idx
    import torch

    return torch.from_numpy(idx).to(spectra.device)


class QuietRuns:
    """The windows `CascadeScreen.advance` does not forward (`quiet`), gathered per station and handed on a run
    at a time: feed_run(items, rows), rows their fill rows [n, C] (`CascadeScreen.fill`, one row each). A
    station's run is handed on before `flush(station)` returns, which the caller does before feeding any other
    window of the station, and `flush()` hands on every run; so each station's windows are fed in time order.

    A window joins a run only where holding it back changes no decision, as it changes nothing but the window
    each trigger of the station remembers (`TriggerBank.update_quiet`): `eligible(station)` holds when it comes
    (the caller's test that trigger values up to the fills' ceiling `CascadeScreen.threshold` leave the station's
    triggers idle) and its fill value is at most that ceiling. Any other is handed on alone, at once (its run
    before it)."""

    def __init__(self, screen: CascadeScreen, feed_run: Callable[[list[ScreenItem], np.ndarray], None],
                 eligible: Callable[[str], bool]) -> None:
        self.screen = screen
        self.feed_run = feed_run
        self.eligible = eligible
        self.runs: dict[str, tuple[list[ScreenItem], list[float]]] = {}  # station -> (items, fill values)
        self._ok: dict[str, bool] = {}  # station -> eligible(station), until `flush(station)`

    def add(self, item: ScreenItem, score: float) -> None:
        station = item.meta.station
        ok = self._ok.get(station)
        if ok is None:
            ok = self._ok[station] = self.eligible(station)
        run = self.runs.get(station)
        if run is None:
            run = self.runs[station] = ([], [])
        q = _sigmoid(min(score, self.screen.logit))
        run[0].append(item)
        run[1].append(q)
        if not (ok and q <= self.screen.threshold):
            self.flush(station)

    def flush(self, station: str | None = None) -> None:
        """Hand on the station's run (None: every station's)."""
        if station is None:
            self._ok.clear()
        else:
            self._ok.pop(station, None)
        names = [station] if station is not None else list(self.runs)
        for name in names:
            run = self.runs.pop(name, None)
            if run is not None:
                self.feed_run(run[0], self.screen.rows_of(run[1]))


class Gather:
    """The cascade's forwards gathered across a runner's tasks (`quakemon.pipeline.runner.DetectionRunner`).

    On a quiet station the screen passes a window or two of a forward-sized task, and the detector's forward of
    a few windows costs more per window than one of dozens (docs/performance.md, "Gathered forwards", measures
    what gathering them saves, in the forwards and around them). So a task with fewer than `below` windows to
    forward (`CascadeScreen.wanted`: passed, or of a station busy at the last decision) forwards none of them on
    its worker (`infer`: their rows stay NaN, a mask says which they are); the runner holds the decisions of
    such tasks back, in order, until they hold `below` such windows or `max_tasks` tasks (or the data ends),
    forwards them all in one forward on its own thread (`forward`), then decides the tasks. A task with `below`
    or more is forwarded on its worker as without it.

    The windows forwarded and the rule that decides each window are those of the cascade without it; only the
    forwards' batches differ. The detector's forward need not be bit-identical across batch sizes (on the CPU
    measured it is from two windows up, not for a lone window), so a gathered window's probabilities may differ
    in their last bits from the task's own forward (which batches a task's windows were forwarded in depended on
    the threads' timing before too: `infer` forwards ahead)."""

    def __init__(self, stage: Any, below: int, max_tasks: int) -> None:
        self.stage = stage
        self.below = int(below)
        self.max_tasks = int(max_tasks)

    def infer(self, spectra: Any, metas: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """`DetectionStage.infer` of a task (the same forward where it has `below` windows to forward or more),
        else none forwarded: (probabilities, mask [B] of the windows still to forward)."""
        stage = self.stage
        wanted = np.array([m.valid is not False for m in metas], dtype=bool)
        wanted &= stage.screen.wanted(metas, spectra)
        if wanted.sum() >= self.below:
            return stage._forward(spectra, wanted), np.zeros(len(metas), bool)
        return np.full((len(metas), len(stage.labels)), np.nan, np.float32), wanted

    def ready(self, masks: Sequence[np.ndarray]) -> bool:
        """Whether the held tasks (their masks, oldest first) are to be forwarded now."""
        return len(masks) >= self.max_tasks or sum(int(m.sum()) for m in masks) >= self.below

    def forward(self, tasks: Sequence[tuple[Any, np.ndarray, np.ndarray]]) -> None:
        """Forward the windows of the held tasks (spectra, probabilities, mask) left to forward, in one forward
        on this thread (at the stage's `refine_threads`), their rows written into the tasks' probabilities."""
        parts = [(spectra, probs, mask) for spectra, probs, mask in tasks if mask.any()]
        if not parts:
            return
        rows = stack_rows(s[int(i)] for s, _, m in parts for i in np.flatnonzero(m))
        out = self.stage.forward_rows(rows)
        k = 0
        for _, probs, mask in parts:
            n = int(mask.sum())
            probs[mask] = out[k : k + n]
            mask[:] = False
            k += n
