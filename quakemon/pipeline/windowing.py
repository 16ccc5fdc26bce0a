"""Window scheduling on an absolute time grid: station buffers in, model-ready windows out.

Windows start at k * stride_s since the epoch (k integer), last `contract.window_samples` samples at
`contract.sampling_rate` and hold the contract's components in its order, so a replay of archived data
and a live stream of the same data produce the same windows bit for bit, whatever the record chunking
and interleaving, provided that (1) no component runs more than `max_skew_s` ahead of another, and
(2) a record that arrives out of order within its channel arrives before that channel holds data more
than `late_s` past the record's start. Traces longer than the ring are fed in ring-sized pieces.

Emission policy (per station, windows strictly in start order):

- A window is emitted as soon as every component has every sample it needs (plus the resampling margin,
  if any). Complete windows never wait for more data.
- A window with missing samples waits until every component has data `late_s` past its end (late,
  out-of-order records can still fill it), or until the ring is about to evict its first sample (a dead
  component), or until `flush()`. Then, if more than `max_missing` (default 10 %) of its samples are
  missing, it is skipped and counted (`windows_skipped`); otherwise missing samples are filled by linear
  interpolation between the neighbouring present samples (edge gaps hold the nearest value; a component
  with no sample at all is zeros). The z-score that follows removes the mean, so the fill only has to be
  smooth, not exact. `Window.missing_fraction` says how much was filled.
- Components whose samples in the window are all equal are listed in `Window.constant` (dead channel).

Reduced component sets (vertical-only stations). Only when the contract lists `component_sets` (a model trained
with component dropout, e.g. ("Z",)); otherwise a station must deliver every component, as above.

- Per window (content): a component with no real sample in the window is *absent*. If the components that are
  present form a set the contract accepts (`InputContract.accepts`), the window goes out with the absent ones
  zero-filled (exactly what the model saw in training), `missing_fraction` counts the present components only,
  and `Window.components` names the real ones (counted in `windows_reduced`). Otherwise the usual rule applies
  (> `max_missing` missing: skipped). The content depends on the data only, never on arrival order.
- Per station (timing): a component the station has never delivered (since its start or last reset) is decided
  absent once the station's other components, which must form an accepted set, hold data `max_skew_s` past the
  end of the station's first window. From then on windows no longer wait for it: a Z-only station's windows go
  out as soon as Z is complete, like a three-component station's. Waiting `max_skew_s` once keeps assumption
  (1) above: a three-component station whose horizontals lag by less than `max_skew_s` is never mistaken for a
  vertical-only one. When an absent component starts delivering, windows wait for it again; windows ending
  within `max_skew_s` after its first sample may then differ between replay and live (as around clock jumps).
  Without the decision (e.g. horizontals that died), reduced windows still go out, `late_s` after their end
  only once every component has data again, or when the ring is about to evict them.

Sample rates: a station's rate is set by its first accepted record. A record at another rate is rejected,
counted (`rate_change_records`) and logged; once `rate_change_reset` consecutive records, from every component
the station delivers, agree on one new rate, the station is reset and restarts at that rate (a reconfigured
datalogger recovers by itself). A rate the windows cannot be cut at is implausible (`implausible_rate_records`)
and never counts: one corrupt header never resets a station. A station
whose rate differs from the contract's is stored at its own rate and each window is resampled at
emission time with `scipy.signal.resample_poly` (up/down from the exact rate ratio). The window is cut
with a margin of the filter's half-length on both sides and the margin is cropped after resampling, so
there are no edge effects from the window boundary; the price is that the window waits for that margin
(about 0.1 s at 200 Hz, 0.2 s at 50 Hz). Resampling whole windows, not records, keeps the output independent
of how the stream was chunked.

Clock jumps and duplicates (per station instrument; `quakemon.pipeline.timeline`): a record that starts more
than one window after the newest data, or ends more than one window before the ring, leaves the timeline. It
is held, not written. A component that left and continues the old timeline again (also after a hole as long as
the held excursion) makes the held records a clock fault: rejected, counted (`clock_glitch` records, `clock_glitches`
excursions; `late_records` behind) and logged (`clock_glitch`), and the correctly timed data flows at once.
Held records that agree on a new timeline (every component, `jump_confirm` records, covering min(offset,
`glitch_s`) of data) are a permanent jump or the return after an outage: the station's pending windows are
decided, the station is reset (`clock_jumps`, WARNING `clock_jump`) and the held records go in, so the
new timeline's windows come out late by that span but complete. Records still held at `flush()` are rejected.
A duplicate is a record whose samples the buffer holds already (time range and content, also after they left
the ring: `duplicate_records`), never one that is merely older than the newest. Around a jump, replay and live
can differ where the channels' records interleave differently.

Memory: one ring per station instrument of window + 2 * margin + late_s + max_skew_s + one stride samples
per component (float64 + mask: about 150 kB for 3 components at 100 Hz with the defaults).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import structlog
from obspy import Trace

from quakemon.base.timegrid import grid_time_ns, rate_fraction, split_seed_id
from quakemon.ingest.base import Samples
from quakemon.ingest.selectors import SelectorSet
from quakemon.models.contract import InputContract
from quakemon.pipeline.buffers import StationBuffer
from quakemon.pipeline.cutting import cut_run, cut_window
from quakemon.pipeline.timeline import SilenceMonitor, TimelineCandidate
from quakemon.pipeline.window import Window, rate_supported, window_grid_start

log = structlog.get_logger(__name__)

_NS = 1_000_000_000
#: Below this rate a band-passed model's windows hold only the bottom of its band (a 5 Hz channel: nothing above
#: 2.5 Hz), where it was not trained to tell noise from earthquakes; the station opens with a warning.
BANDPASSED_MIN_RATE_HZ = 20.0


def _ratio(native: Fraction, target: Fraction) -> tuple[int, int]:
    r = target / native  # up / down
    return r.numerator, r.denominator


class WindowScheduler:
    """Windows of one station instrument: owns its `StationBuffer` and decides when each window is ready."""

    def __init__(
        self,
        station: str,
        instrument: str,
        contract: InputContract,
        sampling_rate: float,
        stride_s: float = 1.0,
        *,
        max_missing: float = 0.1,
        late_s: float = 5.0,
        max_skew_s: float = 30.0,
        jump_confirm: int = 3,
        glitch_s: float = 120.0,
        dtype: np.dtype | type = np.float64,
    ) -> None:
        self.contract = contract
        self.rate = rate_fraction(sampling_rate)
        self.rate_hz = float(self.rate)  # the rate as a float, once (float(Fraction) costs microseconds)
        target = rate_fraction(contract.sampling_rate)
        stride_ns = round(stride_s * _NS)
        if stride_ns <= 0:
            raise ValueError(f"[window] stride_s must be > 0, got {stride_s}")
        stride = Fraction(stride_ns, _NS) * self.rate
        win = Fraction(contract.window_samples) * self.rate / target
        if stride.denominator != 1 or win.denominator != 1:
            raise ValueError(
                f"station {station} {instrument}: sampling rate {float(sampling_rate)} Hz does not put stride "
                f"{stride_s} s and the {contract.window_seconds} s window on whole samples"
            )
        self.stride_ns = stride_ns
        self.stride = int(stride)  # native samples per stride
        self.window = int(win)  # native samples per window
        self.up, self.down = _ratio(self.rate, target)
        if (self.up, self.down) == (1, 1):
            self.margin = 0
        else:  # resample_poly's filter half-length, in input samples, rounded up to a multiple of `down`
            half = math.ceil(10 * max(self.up, self.down) / self.up) + 1
            self.margin = -(-half // self.down) * self.down
        self.late = math.ceil(late_s * self.rate)
        self.skew = math.ceil(max_skew_s * self.rate)
        self.jump = self.window
        capacity = self.window + 2 * self.margin + self.late + self.skew + self.stride
        self.buffer = StationBuffer(station, instrument, contract.component_order, sampling_rate, capacity)
        self.max_missing = float(max_missing)
        self.jump_confirm = int(jump_confirm)
        self.glitch = math.ceil(glitch_s * self.rate)
        self.dtype = np.dtype(dtype)
        self.next_k: int | None = None  # next window to decide; None until the first decision after a reset
        self.absent: frozenset[int] = frozenset()  # component indices decided absent (never delivered)
        self.candidate: TimelineCandidate | None = None  # records held off the timeline (see timeline.py)
        self.stats: Counter[str] = Counter()

    @property
    def station(self) -> str:
        return self.buffer.station

    @property
    def instrument(self) -> str:
        return self.buffer.instrument

    # --- input -----------------------------------------------------------------------------------------

    def add(self, component: int, start_ns: int, values: np.ndarray) -> list[Window]:
        """Add samples of one component (record start in ns); return the windows that became ready."""
        buf = self.buffer
        start = buf.index_of(start_ns)
        if abs(start_ns - buf.time_ns(start)) > 1000:
            buf.stats["snapped_records"] += 1
        piece = buf.capacity - self.window - 2 * self.margin
        if len(values) <= piece:
            return self._add_at(component, start, values)
        out: list[Window] = []  # a long trace goes in as ring-sized pieces, so none of it is evicted unseen
        for i in range(0, len(values), piece):
            out += self._add_at(component, start + i, values[i : i + piece])
        return out

    def _add_at(self, component: int, start: int, values: np.ndarray) -> list[Window]:
        """Route one piece: onto the timeline, into the held candidate timeline, or out as a duplicate."""
        buf = self.buffer
        end = start + len(values)
        out: list[Window] = []
        cand = self.candidate
        if buf.head is None:
            return self._write(component, start, values)
        head = buf.head
        if start < head + self.jump and end > head - buf.capacity - self.jump:  # continues the timeline
            if cand is not None and cand.has(component):  # this component left the timeline and came back
                out += self._reject(cand, "timeline_resumed")
            return out + self._write(component, start, values)
        if cand is not None and cand.member(start, end, self.jump):
            cand.add(component, start, values)
            return out + self._settle(cand)
        if cand is not None and cand.offset > 0 and start < cand.lo and start <= head + self.jump + cand.span:
            # the old timeline resumes after a hole as long as the excursion: those records were a clock fault,
            # and this one is correctly timed (a data gap, as after an outage): in at once
            out += self._reject(cand, "timeline_resumed_after_hole")
            out += self._clock_jump(start - head, reason="gap")
            return out + self._write(component, start, values)
        if end <= head - buf.capacity - self.jump and buf.holds(component, start, values):
            buf.stats["duplicate_records"] += 1  # re-sent after its samples left the ring
            return out
        if cand is not None:
            out += self._reject(cand, "another_timeline")
        seen = [i for i, h in enumerate(buf.hwm) if h is not None and i not in self.absent]
        self.candidate = cand = TimelineCandidate(start - head, seen)
        cand.add(component, start, values)
        log.info("clock_jump_suspected", station=self.station, instrument=self.instrument,
                 offset_s=round(cand.offset / float(self.rate), 3),
                 action="records held until the timeline resumes or the new one is confirmed")
        return out + self._settle(cand)

    def _settle(self, cand: TimelineCandidate) -> list[Window]:
        """Accept the held timeline once agreed (min(offset, glitch_s) of data, every component, jump_confirm
        records); reject it when it grew to the memory cap without that agreement (some components never left)."""
        if cand.agreed(min(abs(cand.offset), self.glitch), self.jump_confirm):
            return self._accept(cand)
        if cand.samples >= 4 * (self.glitch + self.buffer.capacity) * len(self.contract.component_order):
            return self._reject(cand, "no_agreement")
        return []

    def _write(self, component: int, start: int, values: np.ndarray) -> list[Window]:
        buf = self.buffer
        end = start + len(values)
        out: list[Window] = []
        if buf.head is not None and end > buf.head:
            out += self._decide(force_before=end - buf.capacity)
        buf.write(component, start, values)
        out += self._decide()
        return out

    def _reject(self, cand: TimelineCandidate, reason: str) -> list[Window]:
        """Drop the held records as a clock fault of theirs; the timeline goes on as before."""
        self.candidate = None
        key = "clock_glitch" if cand.offset > 0 else "late_records"
        self.stats[key] += len(cand.records)
        if cand.offset > 0:
            self.stats["clock_glitches"] += 1
        log.warning("clock_glitch" if cand.offset > 0 else "late_records_rejected", station=self.station,
                    instrument=self.instrument, records=len(cand.records), reason=reason,
                    offset_s=round(cand.offset / float(self.rate), 3), span_s=round(cand.span / float(self.rate), 3),
                    action="records rejected")
        return []

    def _accept(self, cand: TimelineCandidate) -> list[Window]:
        """The new timeline is agreed: decide the old one's windows, reset, and put the held records in."""
        self.candidate = None
        out = self._clock_jump(cand.offset, reason="confirmed", records=len(cand.records))
        for component, start, values in cand.records:
            out += self._write(component, start, values)
        return out

    def _clock_jump(self, jump_samples: int, reason: str, records: int = 0) -> list[Window]:
        out = self._decide(force_before=None, final=True)
        self.stats["clock_jumps"] += 1
        log.warning(
            "clock_jump",
            station=self.station,
            instrument=self.instrument,
            jump_s=round(jump_samples / float(self.rate), 3),
            reason=reason,
            agreeing_records=records,
            action="station buffer reset",
        )
        self.buffer.reset()
        self.next_k = None
        self.absent = frozenset()
        return out

    def flush(self) -> list[Window]:
        """Decide every window whose samples (and margin) lie inside the data received so far. Records still held
        off the timeline (not agreed by the end of the data) are rejected as a clock fault."""
        if self.candidate is not None:
            self._reject(self.candidate, "end_of_data")
        return self._decide(force_before=None, final=True)

    # --- decisions -------------------------------------------------------------------------------------

    def _first_k(self) -> int | None:
        if self.next_k is not None:
            return self.next_k
        if self.buffer.first is None:
            return None
        return -(-(self.buffer.first + self.margin) // self.stride)

    def _update_absent(self, k: int) -> None:
        """Decide (once per station start) which never-delivered components are absent; forget revived ones."""
        buf = self.buffer
        seen = [i for i, h in enumerate(buf.hwm) if h is not None]
        if self.absent:
            revived = [i for i in self.absent if buf.hwm[i] is not None]
            if revived:
                self.absent = self.absent - set(revived)
                log.info("component_appeared", station=self.station, instrument=self.instrument,
                         components="".join(self.contract.component_order[i] for i in revived))
            return
        if not self.contract.component_sets or not seen or len(seen) == len(buf.hwm):
            return
        letters = "".join(self.contract.component_order[i] for i in seen)
        first_end = k * self.stride + self.window + self.margin
        if self.contract.accepts(letters) and min(buf.hwm[i] for i in seen) >= first_end + self.skew:
            self.absent = frozenset(i for i in range(len(buf.hwm)) if i not in seen)
            self.stats["reduced_stations"] += 1
            log.info("station_components", station=self.station, instrument=self.instrument, components=letters,
                     zero_filled="".join(self.contract.component_order[i] for i in sorted(self.absent)))

    def _decide(self, force_before: int | None = None, final: bool = False) -> list[Window]:
        buf = self.buffer
        out: list[Window] = []
        k = self._first_k()
        if k is None or buf.head is None:
            return out
        self._update_absent(k)
        active = [i for i in range(len(buf.hwm)) if i not in self.absent]
        hwms = [buf.hwm[i] if buf.hwm[i] is not None else buf.head - buf.capacity for i in active]
        low = min(hwms)
        if not self.margin:  # the steady state first: every window whose samples are all there (absent ones: zeros)
            out = self._make_complete_run(k, (min(low, buf.head) - self.window) // self.stride)
            if out:
                k = self.next_k
        rows = active if self.absent else None
        while True:
            a = k * self.stride - self.margin
            b = k * self.stride + self.window + self.margin
            forced = force_before is not None and a < force_before
            if b > buf.head and not forced:
                break
            # a component whose newest sample ends before b lacks [its end, b): incomplete without looking
            if not (forced or final) and low < b + self.late and (low < b or not buf.complete(a, b, rows)):
                break
            window = self._make(k, a, b)
            if window is not None:
                out.append(window)
            k += 1
            self.next_k = k
        return out

    def _make_complete_run(self, k: int, last: int) -> list[Window]:
        """Windows k..last at once when every sample of them is there (`quakemon.pipeline.cutting.cut_run`)."""
        return cut_run(self, k, last)

    def _make(self, k: int, a: int, b: int) -> Window | None:
        """The window k over native samples [a, b), or None if skipped (`quakemon.pipeline.cutting.cut_window`)."""
        return cut_window(self, k, a, b)


class StationWindower:
    """Routes traces to per-station schedulers and returns the windows that are ready.

    Only stations matching `selectors` (NET.STA.LOC.CHA with ? and *) get a buffer; others are counted
    (`unselected_records`) and allocate nothing. `max_stations` caps the number of buffers when no
    selectors are given (ID flood protection; extra stations are counted as `station_limit_records`).
    """

    def __init__(
        self,
        contract: InputContract,
        stride_s: float = 1.0,
        selectors: Sequence[str] | None = None,
        *,
        max_missing: float = 0.1,
        late_s: float = 5.0,
        max_skew_s: float = 30.0,
        rate_tolerance: float = 1e-4,
        rate_change_reset: int = 50,
        max_stations: int | None = None,
        glitch_s: float = 120.0,
        silence_s: float = 60.0,
        dtype: np.dtype | type = np.float64,
    ) -> None:
        self.contract = contract
        self.stride_s = float(stride_s)
        self.selectors = list(selectors) if selectors else None
        self._selector_set = SelectorSet(self.selectors) if self.selectors else None
        self._kwargs = dict(max_missing=max_missing, late_s=late_s, max_skew_s=max_skew_s, glitch_s=glitch_s,
                            dtype=dtype)
        self.rate_tolerance = float(rate_tolerance)
        self.rate_change_reset = int(rate_change_reset)
        self.max_stations = max_stations
        self.schedulers: dict[tuple[str, str], WindowScheduler] = {}
        self._rate_rejects: dict[tuple[str, str], tuple[Fraction, int, frozenset[int]]] = {}
        self.silence = SilenceMonitor(silence_s)
        self.stats: Counter[str] = Counter()

    def add_trace(self, trace: Trace) -> list[Window]:
        """Add one record (or any contiguous trace); return the windows it completed, in start order."""
        return self.add_samples(Samples.from_trace(trace))

    def add_samples(self, piece: Samples) -> list[Window]:
        """`add_trace` for a piece without ObsPy headers (what `ArchiveSource.samples` yields)."""
        seed_id = piece.seed_id
        if self._selector_set is not None and not self._selector_set.matches(seed_id):
            self.stats["unselected_records"] += 1
            return []
        parts = split_seed_id(seed_id)
        if parts is None or parts[2] not in self.contract.component_order:
            self.stats["unknown_component_records"] += 1
            return []
        station, instrument, comp = parts
        key = (station, instrument)
        rate = float(piece.sampling_rate)
        if not (math.isfinite(rate) and rate > 0) or len(piece.data) == 0:
            self.stats["invalid_records"] += 1
            return []
        self.silence.note(station)
        sched = self.schedulers.get(key)
        out: list[Window] = []
        if sched is None:
            sched = self._open(key, rate)
            if sched is None:
                return []
        elif abs(rate - sched.rate_hz) > self.rate_tolerance * sched.rate_hz:
            sched, out = self._rate_change(key, sched, rate, self.contract.component_order.index(comp))
            if sched is None:
                return out
        else:
            self._rate_rejects.pop(key, None)
        self.stats["records"] += 1
        out += sched.add(self.contract.component_order.index(comp), int(piece.start_ns), piece.data)
        return out

    def add_traces(self, traces: Iterable[Trace]) -> list[Window]:
        out: list[Window] = []
        for tr in traces:
            out += self.add_trace(tr)
        return out

    def _open(self, key: tuple[str, str], rate: float) -> WindowScheduler | None:
        if self.selectors is None and self.max_stations is not None and len(self.schedulers) >= self.max_stations:
            self.stats["station_limit_records"] += 1
            return None
        try:
            sched = WindowScheduler(key[0], key[1], self.contract, rate, self.stride_s, **self._kwargs)
        except ValueError as exc:
            self.stats["unsupported_rate_records"] += 1
            if self.stats["unsupported_rate_records"] == 1 or self.stats["unsupported_rate_records"] % 1000 == 0:
                log.warning("unsupported_rate", station=key[0], instrument=key[1], rate=rate, error=str(exc))
            return None
        self.schedulers[key] = sched
        log.info("station_open", station=key[0], instrument=key[1], rate=rate, resample=(sched.up, sched.down))
        if "BANDPASS" in self.contract.transforms and rate < BANDPASSED_MIN_RATE_HZ:
            log.warning("station_rate_low_for_band", station=key[0], instrument=key[1], rate=rate,
                        band_hz=self.contract.extra.get("bandpass_hz"), min_rate=BANDPASSED_MIN_RATE_HZ,
                        hint="the window holds only the bottom of the model's band; expect many false detections")
        return sched

    def _rate_change(
        self, key: tuple[str, str], sched: WindowScheduler, rate: float, component: int
    ) -> tuple[WindowScheduler | None, list[Window]]:
        """A record at another rate: rejected; the station restarts at the new rate only once `rate_change_reset`
        consecutive records agree on it, from every component the station delivers. A rate the windows cannot
        be cut at (`implausible_rate_records`) never counts: one corrupt header must not reset a station."""
        new = rate_fraction(rate)
        self.stats["rate_change_records"] += 1
        if not rate_supported(new, self.contract, self.stride_s):
            self.stats["implausible_rate_records"] += 1
            n = self.stats["implausible_rate_records"]
            if n == 1 or n % 1000 == 0:
                log.warning("rate_implausible", station=key[0], instrument=key[1], expected_rate=float(sched.rate),
                            actual_rate=rate, records=n, action="record rejected, station kept")
            return None, []
        prev, count, comps = self._rate_rejects.get(key, (new, 0, frozenset()))
        if prev != new:
            count, comps = 0, frozenset()
        count, comps = count + 1, comps | {component}
        self._rate_rejects[key] = (new, count, comps)
        if count == 1 or count % 1000 == 0:
            log.warning(
                "rate_change_rejected",
                station=key[0],
                instrument=key[1],
                expected_rate=float(sched.rate),
                actual_rate=rate,
                consecutive=count,
            )
        delivered = {i for i, h in enumerate(sched.buffer.hwm) if h is not None and i not in sched.absent}
        if count < self.rate_change_reset or not delivered <= comps:
            return None, []
        out = sched.flush()
        self._merge_stats(sched)
        del self.schedulers[key]
        self._rate_rejects.pop(key, None)
        self.stats["rate_resets"] += 1
        log.warning("rate_change_reset", station=key[0], instrument=key[1], old_rate=float(sched.rate), new_rate=rate,
                    agreeing_records=count, components="".join(self.contract.component_order[i] for i in sorted(comps)))
        return self._open(key, rate), out

    def _merge_stats(self, sched: WindowScheduler) -> None:
        self.stats.update(sched.stats)
        self.stats.update(sched.buffer.stats)

    def flush(self) -> list[Window]:
        """Decide every pending window with the data received so far (end of a replay)."""
        out: list[Window] = []
        for sched in self.schedulers.values():
            out += sched.flush()
        return out

    def counters(self) -> dict[str, int]:
        """All counters: router-level plus the sum over stations (buffers and schedulers), and the silence ones
        (`silent_stations` now, `station_silences` since the start)."""
        total: Counter[str] = Counter(self.stats)
        for sched in self.schedulers.values():
            total.update(sched.stats)
            total.update(sched.buffer.stats)
        total["stations"] = len(self.schedulers)
        total["silent_stations"] = len(self.silence.silent)
        total["station_silences"] = self.silence.silences
        return dict(total)

    def check_silence(self) -> list[str]:
        """Stations that became silent (no record for `silence_s`) since the last call; logged once each. A live
        stage calls it now and then; `silent_stations()` is the current list."""
        return self.silence.check()

    def silent_stations(self) -> list[str]:
        return sorted(self.silence.silent)

    @property
    def stations(self) -> list[tuple[str, str]]:
        return sorted(self.schedulers)


__all__ = ["StationWindower", "Window", "WindowScheduler", "grid_time_ns", "window_grid_start"]
