"""The picked component of each station's recent windows (`PickContext`): the context a detected window's P pick
sees before the window, shared by every path through `quakemon.pipeline.detect.DetectionStage`."""

from __future__ import annotations

import numpy as np

_NS = 1_000_000_000

#: Seconds of data before a detected window that its pick also sees (from the station's earlier windows).
PICK_LEAD_S = 5.0


class PickContext:
    """The picked component of each station's recent windows, so that a detected window is picked with up to
    `lead_s` seconds of the data before it.

    The picked component is the vertical (component 0), or the first usable one when the vertical is missing
    (all equal or non-finite: a horizontal-only station). Each kept row is the first 2 x `lead_s` of it. The
    context of a window starting at t comes from the oldest kept row of the station, of the same component,
    that starts in [t - lead_s, t): its samples before t, shifted by the difference of the two rows at t (rows
    are centred one by one, `stack_windows`), so the join has no step. Rows are fed in window-start order per
    station (what the triggers see), so replay and live build the same context from the same windows.
    """

    def __init__(self, sampling_rate: float, lead_s: float = PICK_LEAD_S) -> None:
        self.fs = float(sampling_rate)
        self.lead_ns = int(round(lead_s * _NS))
        self.keep = int(round(2 * lead_s * self.fs))
        self.rows: dict[str, list[tuple[int, int, np.ndarray]]] = {}  # station -> [(start_ns, component, row)]

    @staticmethod
    def component(window: np.ndarray) -> int:
        """The component a window [C, N] is picked on: 0 (vertical) unless it is unusable."""
        for c in range(window.shape[0]):
            x = window[c]
            if x.size and np.isfinite(x).all() and x.max() > x.min():
                return c
        return 0

    @classmethod
    def components(cls, windows: np.ndarray) -> list[int]:
        """`component` of each window of a batch [B, C, N]: the vertical of every window checked at once (a few
        array passes instead of several calls per window), the rest one by one."""
        if windows.ndim != 3:
            raise ValueError(f"windows must be [B, C, N], got shape {windows.shape}")
        if not windows.shape[0] or not windows.shape[1] or not windows.shape[2]:
            return [cls.component(w) for w in windows]
        z = windows[:, 0]
        # (NaN makes max > min false, inf makes the sum non-finite: the row is then checked on its own)
        usable = (z.max(axis=1) > z.min(axis=1)) & np.isfinite(z.sum(axis=1, dtype=np.float64))
        return [0 if ok else cls.component(windows[i]) for i, ok in enumerate(usable.tolist())]

    def span(self, station: str, start_ns: int, window: np.ndarray,
             comp: int | None = None) -> tuple[int, np.ndarray]:
        """(start ns, float32 samples) of the window's picked component with the kept context before it. comp: the
        window's `component`, when known."""
        comp = self.component(window) if comp is None else comp
        x = window[comp]
        for t0, c, row in self.rows.get(station, ()):
            k = (start_ns - t0) * self.fs / _NS
            lead = int(round(k))
            if c == comp and 0 < lead < row.shape[0] and abs(k - lead) < 1e-3 and start_ns - t0 <= self.lead_ns:
                prefix = row[:lead] + (x[0] - row[lead])
                if np.isfinite(prefix).all():  # (a gap in the earlier window: pick the window alone)
                    return t0, np.concatenate([prefix, x])
                break
        return start_ns, x

    def add(self, station: str, start_ns: int, window: np.ndarray, comp: int | None = None) -> None:
        """Keep the window's picked component (the first 2 x lead_s); forget rows older than lead_s before it.
        comp: the window's `component`, when known."""
        comp = self.component(window) if comp is None else comp
        rows = [r for r in self.rows.get(station, ()) if start_ns - r[0] <= self.lead_ns]
        rows.append((start_ns, comp, np.array(window[comp, : self.keep], dtype=np.float32)))
        self.rows[station] = rows


class BatchComponents:
    """`PickContext.components` of a batch's windows [B, C, N], each found when first asked for (a window the
    cascade does not forward needs it only when it joins the pick context, the last `PICK_LEAD_S` of a run)."""

    def __init__(self, windows: np.ndarray) -> None:
        self.windows = windows
        self.known: dict[int, int] = {}

    def __getitem__(self, i: int) -> int:
        return self.of([i])[0]

    def of(self, rows: list[int]) -> list[int]:
        """The components of these rows of the batch (those not known yet found together)."""
        todo = [i for i in rows if i not in self.known]
        if todo:
            self.known.update(zip(todo, PickContext.components(self.windows[todo]), strict=True))
        return [self.known[i] for i in rows]
