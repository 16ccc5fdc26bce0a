"""Per-station multi-component ring buffers on an absolute sample grid, with the gap/overlap policy.

One `StationBuffer` holds the components of one instrument of one station (key: "NET.STA.LOC" plus the
band+instrument code, e.g. "EH"), in a fixed-length ring, so memory per station is bounded.

Policies (docs/reliability.md describes them for operators):

- Time grid: sample k of a station at rate r sits at t = k / r seconds since the epoch. A record's start
  time is snapped to the nearest grid index (integer arithmetic on nanoseconds, no float drift), so a
  record whose start is up to 0.5 sample off the grid, or a gap/overlap of up to 0.5 sample between
  records, is treated as contiguous. Snaps of more than 1 us are counted (`snapped_records`).
- Gaps: samples nobody wrote stay missing (mask False); the window scheduler decides what to do with them.
- Overlaps and duplicates: the first-arrived sample wins. Identical re-sent samples are counted as
  `duplicate_samples` (and `duplicate_records` when a whole record was already there); differing ones as
  `conflict_samples` and dropped.
- Out of order: a record lands at its grid position wherever it arrives, as long as it is inside the
  ring; older samples are dropped and counted (`late_samples`).
- Record history: per component the (start, length, CRC-32 of the samples) of the last `HISTORY` records
  written, so that a record re-sent after its samples left the ring is still recognised as a duplicate by
  time range and content (`holds`), never by "older than the newest".
- NaN/Inf samples are stored as missing (`nan_samples`).
- Memory: a ring of `capacity` samples per component (float64 values + bool mask); writing past the
  newest sample evicts the oldest. Samples are float64, so 32-bit integer counts are stored exactly.

Sample-rate changes, clock jumps and resampling are handled one level up, in `quakemon.pipeline.windowing`.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from quakemon.base.timegrid import grid_index, grid_time_ns, rate_fraction

HISTORY = 512  # records remembered per component (time range + checksum): 30-60 min of 512-byte records at 100 Hz


class StationBuffer:
    """Ring buffer of one station instrument's components, indexed by absolute grid sample index."""

    def __init__(self, station: str, instrument: str, components: str, sampling_rate: float, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.station = station
        self.instrument = instrument
        self.components = components
        self.sampling_rate = float(sampling_rate)
        self.rate = rate_fraction(sampling_rate)
        self.capacity = int(capacity)
        self._data = np.zeros((len(components), self.capacity), dtype=np.float64)
        self._present = np.zeros((len(components), self.capacity), dtype=bool)
        self._held = 0  # count_nonzero(_present), kept up to date so that `fill_ratio` costs nothing
        self.stats: Counter[str] = Counter()
        self.head: int | None = None  # one past the newest sample index of any component
        self.first: int | None = None  # lowest sample index written since the last reset
        self.hwm: list[int | None] = [None] * len(components)  # per component: one past its newest sample
        # record history per component: start index, length and CRC-32 of the samples, a ring of HISTORY
        self._hist = np.zeros((len(components), HISTORY, 3), dtype=np.int64)
        self._hist[:, :, 1] = -1  # no record
        self._hist_next = [0] * len(components)

    # --- time grid -----------------------------------------------------------------------------------

    def index_of(self, t_ns: int) -> int:
        return grid_index(t_ns, self.rate)

    def time_ns(self, index: int) -> int:
        return grid_time_ns(index, self.rate)

    @property
    def tail(self) -> int | None:
        """Lowest sample index still held (None when empty)."""
        return None if self.head is None else self.head - self.capacity

    @property
    def key(self) -> tuple[str, str]:
        return self.station, self.instrument

    # --- writing ---------------------------------------------------------------------------------------

    def _positions(self, lo: int, hi: int) -> np.ndarray:
        return np.arange(lo, hi) % self.capacity

    def _spans(self, lo: int, hi: int) -> tuple[tuple[slice, slice], ...]:
        """[lo, hi) as one or two (ring slice, offset slice) pairs: views instead of fancy-index copies."""
        a, n = lo % self.capacity, hi - lo
        if a + n <= self.capacity:
            return ((slice(a, a + n), slice(0, n)),)
        k = self.capacity - a
        return ((slice(a, self.capacity), slice(0, k)), (slice(0, n - k), slice(k, n)))

    def _advance(self, new_head: int) -> None:
        """Move the ring head forward, evicting (clearing) the slots that the new samples reuse."""
        if self.head is None:
            self.head = new_head
            return
        if new_head <= self.head:
            return
        if new_head - self.head >= self.capacity:
            self._present[:] = False
            self._held = 0
        else:
            for ring, _ in self._spans(self.head, new_head):
                self._held -= int(np.count_nonzero(self._present[:, ring]))
                self._present[:, ring] = False
        self.head = new_head

    @staticmethod
    def _checksum(values: np.ndarray) -> int:
        return zlib.crc32(np.ascontiguousarray(values, dtype=np.float64).data)

    def _remember(self, component: int, start: int, values: np.ndarray) -> None:
        i = self._hist_next[component]
        self._hist[component, i] = (start, values.size, self._checksum(values))
        self._hist_next[component] = (i + 1) % HISTORY

    def holds(self, component: int, start: int, values: np.ndarray) -> bool:
        """True if a record with this time range and these samples was written before (even if its samples
        have left the ring since): a re-sent duplicate."""
        values = np.asarray(values, dtype=np.float64).ravel()
        hist = self._hist[component]
        hit = (hist[:, 0] == start) & (hist[:, 1] == values.size)
        return bool(hit.any()) and bool((hist[hit, 2] == self._checksum(values)).any())

    def write(self, component: int, start: int, values: np.ndarray) -> int:
        """Store samples of one component starting at grid index `start`; return how many were stored."""
        values = np.asarray(values, dtype=np.float64).ravel()
        n = values.size
        if n == 0:
            return 0
        self._remember(component, start, values)
        end = start + n
        self._advance(end)
        tail = self.head - self.capacity
        if start < tail:
            late = min(tail - start, n)
            self.stats["late_samples"] += late
            if late == n:
                return 0
            values = values[late:]
            start = tail
        spans = self._spans(start, end)
        present = self._present[component]
        if not any(present[ring].any() for ring, _ in spans) and np.isfinite(values.sum()):
            # the common case (new samples, all finite): slice copies, no index arrays
            for ring, part in spans:
                self._data[component, ring] = values[part]
                present[ring] = True
            self._held += end - start
            self._note_written(component, start, end)
            return n
        pos = self._positions(start, end)
        finite = np.isfinite(values)
        n_nan = int(values.size - np.count_nonzero(finite))
        if n_nan:
            self.stats["nan_samples"] += n_nan
        existing = self._present[component, pos]
        overlap = existing & finite
        n_overlap = int(np.count_nonzero(overlap))
        if n_overlap:
            same = int(np.count_nonzero(self._data[component, pos[overlap]] == values[overlap]))
            self.stats["duplicate_samples"] += same
            self.stats["conflict_samples"] += n_overlap - same
        new = finite & ~existing
        stored = int(np.count_nonzero(new))
        if stored == 0 and n_overlap:
            self.stats["duplicate_records"] += 1
        if stored:
            self._data[component, pos[new]] = values[new]
            self._present[component, pos[new]] = True
            self._held += stored
        self._note_written(component, start, end)
        return stored

    def _note_written(self, component: int, start: int, end: int) -> None:
        hwm = self.hwm[component]
        self.hwm[component] = end if hwm is None else max(hwm, end)
        self.first = start if self.first is None else min(self.first, start)

    # --- reading ---------------------------------------------------------------------------------------

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (values [C, n], present mask [C, n]) for grid indices [start, stop); outside the ring = missing."""
        n = stop - start
        data = np.zeros((len(self.components), n), dtype=np.float64)
        present = np.zeros((len(self.components), n), dtype=bool)
        if self.head is None or n <= 0:
            return data, present
        lo, hi = max(start, self.head - self.capacity), min(stop, self.head)
        if lo < hi:
            for ring, part in self._spans(lo, hi):
                out = slice(part.start + lo - start, part.stop + lo - start)
                data[:, out] = self._data[:, ring]
                present[:, out] = self._present[:, ring]
        if not present.all():
            data[~present] = 0.0
        return data, present

    def read_values(self, start: int, stop: int) -> np.ndarray:
        """A copy of the values [C, n] for [start, stop), which must lie inside the ring (see `complete`)."""
        if self.head is None or start < self.head - self.capacity or stop > self.head or stop < start:
            raise ValueError(f"[{start}, {stop}) is not inside the ring")
        data = np.empty((len(self.components), stop - start), dtype=np.float64)
        for ring, part in self._spans(start, stop):
            data[:, part] = self._data[:, ring]
        return data

    def complete(self, start: int, stop: int, components: Sequence[int] | None = None) -> bool:
        """True if every component (or each of `components`, indices) has every sample in [start, stop)."""
        if self.head is None or start < self.head - self.capacity or stop > self.head:
            return False
        rows = slice(None) if components is None else list(components)
        return all(bool(self._present[rows, ring].all()) for ring, _ in self._spans(start, stop))

    def fill_ratio(self) -> float:
        """Share of the ring (all components) that holds samples."""
        return self._held / self._present.size

    def reset(self) -> None:
        """Forget all samples (after a clock jump); counters and the record history are kept."""
        self._present[:] = False
        self._held = 0
        self.head = None
        self.first = None
        self.hwm = [None] * len(self.components)
