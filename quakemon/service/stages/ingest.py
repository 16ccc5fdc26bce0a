"""The ingest stage: SeedLink source -> station windows -> PUSH (binds pipeline.windows_endpoint).

The reading loop only appends to a bounded deque and never blocks on a send: a stage downstream that falls
behind costs the oldest windows (counted), never the SeedLink connection.

Windows go out in batches: the windows cut since the last message are sent once the oldest of them has
waited FLUSH_AGE_S, or at once when FLUSH_WINDOWS are pending. Windows complete one by one as records arrive;
a message per window would make every step downstream run on tiny batches and pay its fixed cost per call
(transform, send) for each of them. The added latency is at most FLUSH_AGE_S + FEED_TICK_S.

Resume: a SeedLink record counts as processed, and is committed to the state file, only once no window that
still has to reach the next stage needs its samples: neither a window still to be cut, nor one cut but still
queued here, nor one of the last messages handed to ZeroMQ (up to its send HWM, which a SIGKILL loses with the
process). A restart therefore re-reads about one window length per station, plus what was queued
(at-least-once: windows sent just before a stop are cut again, and the inference stage drops the ones it
already decided; detection ids are stable).

Rewind: the batches already sent are kept, up to half of pipeline.queue_hwm windows (the newest). On SIGUSR2,
which the supervisor sends when it restarts a stage downstream, they are sent again, oldest first and ahead of
anything not yet sent: the windows the killed process held are not lost. Every batch carries this process and
its rewind count as sent (`Sender`), so a preprocess process reset for the rewind drops the batches sent before
it (which the rewind sends again) instead of passing them on ahead of the older re-sent windows. The inference
stage drops the windows it already decided (by window start) and does not publish a journaled message twice.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
import zmq

from quakemon.base.signals import StopFlag, set_on_signals
from quakemon.models.contract import InputContract
from quakemon.service.config import Config
from quakemon.service.reload import ReloadableStage, reselect_windower
from quakemon.service.stages.common import ZMQ_HWM, DropOldestQueue, Stage, Stats, StatusRelay, drain_to
from quakemon.service.stages.messages import WINDOWS, Batch, Sender

log = structlog.get_logger(__name__)

FLUSH_WINDOWS = 256
FLUSH_AGE_S = 0.1
FEED_TICK_S = 0.05
REWIND_SIGNAL = signal.SIGUSR2  # the supervisor restarted a stage downstream: send the kept batches again


class IngestStage(ReloadableStage, Stage):
    """SeedLink -> windows -> PUSH, with the counters of the source, the windower and the queue.

    `go`: when given and not yet set, the stage reports ready at once but connects to SeedLink only once it is
    set (the supervisor releases it when the stages downstream are ready). `source_factory` replaces the
    SeedLink source (tests).

    Status: the supervisor gets everything (per-station data ends and buffer fill, corrupt records by reason,
    source counters such as records, gaps and reconnects, windower counters); downstream, towards the
    heartbeat, go the totals only, after every batch of windows (so that a heartbeat never counts more windows
    inferred than cut) and when due.
    """

    name = "ingest"

    def __init__(self, cfg: Config, contract: InputContract, should_stop: StopFlag, control: str | None,
                 source_factory: Callable[[], Any] | None = None, go: threading.Event | None = None) -> None:
        super().__init__(should_stop, control)
        self.cfg = cfg
        self.contract = contract
        self.source_factory = source_factory
        self.go = go
        self.push: zmq.Socket | None = None
        self.source: Any = None
        self.windower: Any = None
        self.committer: Committer | None = None
        self.feed: IdleFeed | None = None
        self.queue = DropOldestQueue(cfg.pipeline.queue_hwm)
        self.kept = DropOldestQueue(max(1, cfg.pipeline.queue_hwm // 2))  # sent batches, newest, for a rewind
        self.resend = DropOldestQueue(self.kept.capacity)  # kept batches being sent again, before `queue`
        self.rewind = threading.Event()
        set_on_signals(self.rewind, [REWIND_SIGNAL])  # (main thread only: a stage run on a thread never rewinds)
        self.rewinds = 0
        self.relay = StatusRelay()
        self.center = "ZSCORE" in contract.transforms
        self.pending: list[Any] = []  # windows cut since the last message ...
        self.arrivals: list[float] = []  # ... and when they were cut
        self.newest_end: dict[str, int] = {}  # station -> end (ns) of its newest window
        self.station_windows: collections.Counter[str] = collections.Counter()  # station -> windows cut
        self.windows_cut = 0
        self.in_flight: collections.deque[int] = collections.deque(maxlen=ZMQ_HWM)  # windows of the last sends
        self._counted = (-1, 0)  # (schedulers, stations among them): recounted only when a scheduler is added
        self.gaps: Any = None  # the backfill GapPlanner, when [backfill] source is set

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> bool:
        from quakemon.ingest.seedlink import SeedLinkSource
        from quakemon.pipeline import stft_kernel
        from quakemon.pipeline.windowing import StationWindower

        stft_kernel.warm_up_centring()  # the compiled centring that stack_windows runs, before the first window
        self.push = self.socket(zmq.PUSH, self.cfg.pipeline.windows_endpoint, bind=True)
        if not self._hold():
            return False
        sl = self.cfg.seedlink
        self.source = self.source_factory() if self.source_factory else SeedLinkSource(
            sl.server, sl.streams, sl.state_file or None, netto=sl.netto, backoff_max=sl.reconnect_backoff_max,
            connect_timeout=sl.connect_timeout, resume_policy=sl.resume_policy, auto_commit=False)
        self.windower = StationWindower(self.contract, self.cfg.window.stride_s, list(sl.streams),
                                        max_missing=self.cfg.window.max_missing_fraction,
                                        silence_s=sl.station_silence_s)
        self.committer = Committer(self.source, self.windower, self.windows_delivered)
        self.start_backfill()
        self.status.ready = True
        log.info("stage_started", stage="ingest", server=sl.server, streams=list(sl.streams),
                 windows_endpoint=self.cfg.pipeline.windows_endpoint)
        self.feed = IdleFeed(self.source, self.should_stop, tick_s=FEED_TICK_S)
        return True

    def _hold(self) -> bool:
        """Wait for `go` (reporting ready and alive meanwhile); False when stopped first."""
        if self.go is None or self.go.is_set():
            return True
        self.status.ready = True
        log.info("ingest_holding", note="waiting for the downstream stages before reading SeedLink")
        while not self.go.wait(0.1) and not self.should_stop.is_set():
            self.status.loops += 1
            self.status.maybe_send({})
        return not self.should_stop.is_set()

    def loop(self) -> int:
        assert self.feed is not None and self.push is not None
        for tr in self.feed:
            self.tick()
            self.maybe_reload()
            if tr is not None:
                self.add(tr)
            if self.pending and (len(self.pending) >= FLUSH_WINDOWS or time.time() - self.arrivals[0] >= FLUSH_AGE_S):
                self.flush()
            self.send()
            self.report()
            if self.should_stop.is_set():
                break
        return 0

    def stop(self) -> None:
        self.should_stop.set()  # the feed's pump thread and the source's generator end with it
        started = self.source is not None
        if self.pending:
            self.flush()
        if self.feed is not None:
            self.feed.close()
        if self.source is not None:
            self.source.close()
        if self.push is not None:
            self.send()
            if started:
                self.report(force=True)
            self.push.close(linger=0)
        super().stop()
        if started:
            log.info("stage_stopped", stage="ingest", **self.totals(), **self.source_counters(),
                     windows_by_station=dict(self.station_windows))

    # -- work -----------------------------------------------------------------------------------------------------
    def add(self, tr: Any) -> None:
        """One record: cut the windows it completes, commit what no window needs any more."""
        assert self.windower is not None and self.committer is not None
        windows = self.windower.add_trace(tr)
        if windows:
            now = time.time()
            for w in windows:
                if w.end_ns > self.newest_end.get(w.station, 0):
                    self.newest_end[w.station] = w.end_ns
                self.station_windows[w.station] += 1
            self.windows_cut += len(windows)
            self.status.progress += len(windows)
            self.committer.note_cut(windows, self.windows_cut - len(windows))
            self.pending += windows
            self.arrivals += [now] * len(windows)
        self.committer.add(tr)

    def flush(self) -> None:
        """Queue the pending windows as one batch; their totals follow on the status path."""
        from quakemon.pipeline.detect import stack_windows

        data, metas = stack_windows(self.pending, self.arrivals, center=self.center)
        self.queue.put(Batch(WINDOWS, tuple(metas), {"data": data}))
        self.pending.clear()
        self.arrivals.clear()
        self.relay.put(self.status.body(self.totals()))

    def send(self) -> None:
        """Send what is queued without blocking: after a rewind (`REWIND_SIGNAL`) the kept batches first; every
        batch stamped with this process and its rewinds so far."""
        assert self.push is not None
        if self.rewind.is_set():
            self.rewind.clear()
            self.rewind_kept()
        sender = Sender(self.status.source, self.rewinds)
        if self.resend:
            drain_to(self.push, self.resend, self.kept, sender)
        if not self.resend:
            before = self.queue.windows
            if drain_to(self.push, self.queue, self.kept, sender):
                self.in_flight.append(before - self.queue.windows)

    def windows_delivered(self) -> int:
        """How many of the windows cut so far (the oldest) have left this process for sure: not pending, not
        queued, not among the last ZMQ_HWM sends (ZeroMQ may still hold those). Dropped ones count as gone."""
        return self.windows_cut - len(self.pending) - self.queue.windows - sum(self.in_flight)

    def rewind_kept(self) -> None:
        """Queue the kept batches (and those of an unfinished rewind) to be sent again, oldest first."""
        again = DropOldestQueue(self.kept.capacity)
        for batch in [*self.kept, *self.resend]:
            again.put(batch)
        self.kept, self.resend = DropOldestQueue(self.kept.capacity), again
        self.rewinds += 1
        log.info("ingest_rewound", windows=again.windows, batches=len(again), rewinds=self.rewinds)

    def report(self, force: bool = False) -> None:
        """Status to the supervisor when due; the totals downstream with it."""
        assert self.push is not None
        if self.status.maybe_send(self.full_stats, force) is not None:
            if self.windower is not None:
                self.windower.check_silence()
            self.plan_backfill()
            self.relay.put(self.status.body(self.totals()))
        self.relay.send(self.push)

    def start_backfill(self) -> None:
        """Plan backfill requests from the source's gaps when [backfill] source is set (`quakemon.ingest.backfill`)."""
        from quakemon.ingest.backfill import GapPlanner

        bf = self.cfg.backfill
        if bf.source:
            self.gaps = GapPlanner(bf.delay_s, bf.max_span_s)

    def plan_backfill(self) -> None:
        """Note the source's new gaps; requests that became due go into the status (`backfill_requests`), which
        the inference stage reads."""
        spans = getattr(self.source, "gap_spans", None)
        if self.gaps is None or spans is None:
            return
        while spans:
            self.gaps.note(*spans.popleft())
        self.gaps.poll()

    def backfill_totals(self) -> Stats:
        if self.gaps is None:
            return {}
        return {**self.gaps.stats, "backfill_requests": [r.to_wire() for r in self.gaps.listed]}

    # -- counters -------------------------------------------------------------------------------------------------
    def station_count(self) -> int:
        schedulers = self.windower.schedulers if self.windower is not None else {}
        if self._counted[0] != len(schedulers):
            self._counted = (len(schedulers), len({key[0] for key in schedulers}))
        return self._counted[1]

    def totals(self) -> Stats:
        """The counters the heartbeat reports (constant size). `oldest_end_s`: the end of the newest window of the
        station that is furthest behind, so the heartbeat's lag is computed when it is sent."""
        silent = self.windower.silent_stations() if self.windower is not None else []
        connected = bool(self.source is not None and self.source.stats.get("connected"))
        return {"stations": self.station_count(), "windows_out": self.windows_cut,
                "silent_stations": len(silent), "connected": connected,
                "dropped_ingest": self.queue.dropped, "queue_ingest": self.queue.windows,
                "oldest_end_s": min(self.newest_end.values()) / 1e9 if self.newest_end else None,
                **self.backfill_totals()}

    def source_counters(self) -> Stats:
        source = {} if self.source is None else self.source.stats
        windower = {} if self.windower is None else self.windower.counters()
        return {**{f"source_{k}": v for k, v in source.items()}, **{f"windower_{k}": v for k, v in windower.items()}}

    def full_stats(self) -> Stats:
        """Everything, for the supervisor: totals, source and windower counters, corrupt records by reason, and
        per station the end of its newest window (s) and its ring buffer's fill ratio."""
        reasons = getattr(self.source, "corrupt_reasons", None) or {}
        return {**self.totals(), **self.source_counters(),
                "corrupt_reasons": {str(k): int(v) for k, v in dict(reasons).items()},
                "newest_end_s": {st: end / 1e9 for st, end in self.newest_end.items()},
                "silent": self.windower.silent_stations() if self.windower is not None else [],
                "buffer_fill": self.buffer_fill(), "rewinds": self.rewinds, **self.reload_stats()}

    def apply_reload(self, new: Config, changed: list[str]) -> Stats:
        """seedlink.streams: re-subscribe (`SeedLinkSource.set_streams`) and drop the buffers of stations no longer
        selected; the stations that stay keep their buffers, windows and resume positions."""
        if "seedlink.streams" not in changed:
            return {}
        old, streams = set(self.cfg.seedlink.streams), list(new.seedlink.streams)
        if self.source is not None and hasattr(self.source, "set_streams"):
            self.source.set_streams(streams)  # ConfigError (nothing changed) for a selector it cannot use
        dropped = [] if self.windower is None else reselect_windower(self.windower, streams,
                                                                      self.contract.component_order)
        for station in dropped:
            self.newest_end.pop(station, None)
        return {"streams_added": sorted(set(streams) - old), "streams_removed": sorted(old - set(streams)),
                "stations_dropped": dropped}

    def buffer_fill(self) -> dict[str, float]:
        """Per station, the fill ratio of its fullest instrument's ring buffer."""
        fill: dict[str, float] = {}
        for (station, _), sched in list((self.windower.schedulers if self.windower is not None else {}).items()):
            fill[station] = max(fill.get(station, 0.0), sched.buffer.fill_ratio())
        return fill


class Committer:
    """Commits records to the source's resume state once no window still to be cut or delivered needs them.

    Records are committed per station in arrival (= sequence) order; a record stays pending while it ends
    after the start (minus the resampling margin) of its station's next undecided window or, with `delivered`,
    of its oldest window not yet delivered. `delivered()` is how many of the windows cut so far, in cutting
    order, have been delivered; `note_cut` numbers the windows as they are cut. Without `delivered` a window
    counts as delivered once cut.
    """

    def __init__(self, source: Any, windower: Any, delivered: Callable[[], int] | None = None) -> None:
        self.source = source
        self.windower = windower
        self.delivered = delivered
        self.pending: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.undelivered: dict[str, collections.deque[tuple[int, int]]] = collections.defaultdict(collections.deque)

    def note_cut(self, windows: list[Any], first: int) -> None:
        """Windows just cut, numbered from `first` in cutting order."""
        if self.delivered is None or not hasattr(self.source, "commit"):
            return
        for n, w in enumerate(windows, first):
            self.undelivered[w.station].append((n, w.start_ns))

    def _oldest_undelivered(self, station: str) -> int | None:
        """Start (ns) of the station's oldest window not yet delivered, or None."""
        queue = self.undelivered.get(station)
        if not queue or self.delivered is None:
            return None
        done = self.delivered()
        while queue and queue[0][0] < done:
            queue.popleft()
        return queue[0][1] if queue else None

    def add(self, tr: Any) -> None:
        if not hasattr(self.source, "commit"):
            return
        from quakemon.base.timegrid import split_seed_id

        parts = split_seed_id(tr.id)
        key = parts[0] if parts else tr.id
        pending = self.pending[key]
        pending.append(tr)
        sched = self.windower.schedulers.get((parts[0], parts[1])) if parts else None
        if sched is None:  # not windowed (unselected, unsupported): nothing waits for it
            needed_from = None
        elif sched.next_k is None:
            return  # no window decided yet: everything is still needed
        else:
            margin_ns = int(sched.margin / float(sched.rate) * 1e9) + 1
            oldest = self._oldest_undelivered(key)
            first_needed = sched.next_k * sched.stride_ns if oldest is None else oldest
            needed_from = first_needed - margin_ns
        while pending:
            head = pending[0]
            if needed_from is not None and head.stats.endtime.ns >= needed_from:
                break
            self.source.commit(pending.popleft())


class IdleFeed:
    """Iterates the source's traces, yielding None at least every `tick_s` while the source is quiet.

    The source generator runs on a helper thread that hands traces over through a bounded deque, so the
    consuming loop keeps running (status, sends, watchdog liveness) while the upstream is quiet or down.
    When the consumer lags, the pump waits and the source's own bounded queue absorbs (and counts) overflow.
    """

    def __init__(self, source: Any, stop: threading.Event, tick_s: float = 0.2, max_items: int = 1000) -> None:
        self.stop = stop
        self.tick_s = tick_s
        self.max_items = max_items
        self.handoff: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._pump, args=(source,), name="ingest-source", daemon=True)
        self.thread.start()

    def _pump(self, source: Any) -> None:
        try:
            for tr in source.traces(self.stop):
                with self.cond:
                    while len(self.handoff) >= self.max_items and not self.stop.is_set():
                        self.cond.wait(0.1)
                    self.handoff.append(tr)
                    if len(self.handoff) == 1:  # the consumer waits only while the hand-off is empty
                        self.cond.notify_all()
                if self.stop.is_set():
                    break
        except BaseException as exc:  # surfaced in the consuming thread
            self.error = exc
        finally:
            self.done.set()
            with self.cond:
                self.cond.notify_all()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self.cond:
                if not self.handoff and not self.done.is_set():
                    self.cond.wait(self.tick_s)
                items = list(self.handoff)
                self.handoff.clear()
                if len(items) >= self.max_items:  # the pump waits only on a full hand-off
                    self.cond.notify_all()
            yield from items
            if not items and self.done.is_set():
                if self.error is not None:
                    raise self.error
                return
            yield None  # caught up (or quiet for tick_s): the consumer sends what it has

    def close(self, timeout: float = 2.0) -> None:
        self.thread.join(timeout)
