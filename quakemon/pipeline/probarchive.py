"""The probability archive: each station's class probabilities as MiniSEED in an SDS tree, one sample per window.

Written by the daemon's inference stage (`[archive] probabilities`) and by `quakemon replay --probabilities DIR`,
through this one writer, so that operators review the model's output beside the waveforms in ObsPy
(`obspy.clients.filesystem.sds.Client`), Swarm or scrttv. docs/operations.md#probability-archive has the how-to.

Layout: ``ROOT/YEAR/NET/STA/CHA.D/NET.STA.LOC.CHA.D.YEAR.DOY`` (SDS, as slarchive writes it), one file per
channel and UTC day. Naming, per station "NET.STA.LOC" and class:

* network, station, location: the station's own, so two sensors of one station (locations 00 and 10) stay apart.
* channel: band code from the sampling rate 1 / stride (`band_code`: ``L`` at the default 1 s stride), instrument
  code ``X`` (SEED: derived or generated channel), then the class's index in the model's labels, ``0``-``9`` then
  ``A``-``Z`` (`channel_codes`). The bundled model's noise and earthquake are ``LX0`` and ``LX1``. The mapping is
  written to ``ROOT/quakemon-probabilities.json`` (`SIDECAR`), with the model, the stride and the sample time.
* sample time: the end of the window (exclusive; ``last_window_end`` in a detection), so the trace is causal:
  a sample at t is the probability of the window [t - window length, t), known once t was reached.

Encoding: FLOAT32 (MiniSEED encoding 4), the model's float32 probabilities bit for bit; an integer scaling
would compress with Steim but lose precision near 0 and 1 and make every reader remember a scale factor. At
1 Hz a channel takes about 400 kB a day. Records are 512 bytes (the usual SeedLink and slarchive record
length), `RECORD_SAMPLES` (112) samples each.

Flushing: samples are buffered per station (all its class channels together) and appended to the day files by
a writer thread (the encoding never runs on the caller's thread) when a record's worth is buffered, or when the
oldest buffered sample has waited `flush_s` (wall clock), or at `close`. A killed process (SIGKILL, a crash)
loses at most the unflushed tail: fewer than `RECORD_SAMPLES` samples and at most `flush_s` per station. Files
are not fsynced: a power cut may also lose what the OS had not written yet. Memory is bounded by one record per
station plus `MAX_PENDING` flushes queued for the thread (a slow disk then slows the caller rather than growing
memory). Samples are split at UTC midnight, each day's into its own file.

Gaps: a window that was not inferred (never cut, or invalid: NaN probabilities) has no sample: the trace has a
gap there, never a zero. A sample at or before the channel's newest one (a window cut again after a restart, a
duplicate) is dropped and counted (`late_samples`). When a process first appends to a day file it reads the
newest sample time in it, so a restarted daemon continues the trace instead of writing what it holds already,
and it cuts off a partial last record (a write a crash interrupted), so every file stays readable.
"""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import json
import os
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from quakemon.base.errors import ConfigError
from quakemon.base.files import atomic_write, path_problem

if TYPE_CHECKING:
    from quakemon.pipeline.detect import WindowMeta

log = structlog.get_logger(__name__)

RECORD_BYTES = 512
RECORD_SAMPLES = (RECORD_BYTES - 64) // 4  # fixed header and blockette 1000 take 64 bytes; float32 after them
DEFAULT_FLUSH_S = 120.0
MAX_PENDING = 8  # flushes queued for the writer thread before `add` waits for the oldest
CHECK_INTERVAL_S = 1.0  # how often `maybe_flush` looks for channels that waited flush_s
SIDECAR = "quakemon-probabilities.json"
SIDECAR_FORMAT = "quakemon.probabilities/1"
INSTRUMENT_CODE = "X"
CLASS_CODES = string.digits + string.ascii_uppercase
_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS


def band_code(sampling_rate: float) -> str:
    """SEED band code of a probability channel sampled at `sampling_rate` Hz: B (>= 10 Hz), M (> 1 to < 10 Hz),
    L (about 1 Hz: 0.5 to 1), V (0.05 to < 0.5), U (slower)."""
    if sampling_rate >= 10:
        return "B"
    if sampling_rate > 1.0 + 1e-9:
        return "M"
    if sampling_rate >= 0.5:
        return "L"
    return "V" if sampling_rate >= 0.05 else "U"


def channel_codes(labels: Sequence[str], stride_s: float) -> dict[str, str]:
    """{label: channel code} for a model's labels, in their order: band code, ``X``, class index (0-9, A-Z)."""
    if len(labels) > len(CLASS_CODES):
        raise ValueError(f"the probability archive names at most {len(CLASS_CODES)} classes, got {len(labels)}")
    band = band_code(1.0 / stride_s)
    return {label: f"{band}{INSTRUMENT_CODE}{CLASS_CODES[i]}" for i, label in enumerate(labels)}


def sds_path(root: Path, net: str, sta: str, loc: str, cha: str, time_ns: int) -> Path:
    """The SDS day file of a channel holding the sample at `time_ns`."""
    day = _dt.datetime.fromtimestamp(time_ns // _NS, _dt.UTC)
    year, doy = day.year, day.timetuple().tm_yday
    return root / f"{year}" / net / sta / f"{cha}.D" / f"{net}.{sta}.{loc}.{cha}.D.{year}.{doy:03d}"


def check_archive_dir(root: str, key: str) -> None:
    """Create `root` if needed and check that files can be written in it (`quakemon.base.files.path_problem`);
    ConfigError (exit 2) naming `key` if not. An empty `root` (archive off) passes."""
    if root and (why := path_problem(root, "dir", create=True)):
        raise ConfigError(f"{key}: expected a writable directory for the probability archive, got {root!r} ({why})")


@dataclass
class _Station:
    """One station's buffered samples (a row of class probabilities per time) and the newest sample time its
    channels hold (buffered or on disk)."""

    net: str
    sta: str
    loc: str
    times: list[int] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    since: float = 0.0  # monotonic time the oldest buffered sample was added
    newest_ns: int = -1
    days: set[int] = field(default_factory=set)  # days (ns // _DAY_NS) whose files this process has opened


class ProbabilityArchive:
    """Buffers class probabilities per station and appends them to an SDS tree (module docstring).

    Args:
        root: the archive's top folder (created if needed).
        labels: the model's class labels, in the order of the probability columns.
        stride_s: the window stride; one sample per stride.
        flush_s: the longest a sample waits in memory (wall clock) before it is written.
        model: {name, sha256} of the model, written to the sidecar.
        key: how errors name the setting (the config key, or the CLI flag).

    Raises ConfigError when `root` cannot be written, or holds probabilities of a model with other classes.
    """

    def __init__(self, root: str | os.PathLike[str], labels: Sequence[str], stride_s: float, *,
                 flush_s: float = DEFAULT_FLUSH_S, model: dict[str, str] | None = None,
                 key: str = "archive.probabilities") -> None:
        self.root = Path(root)
        self.labels = list(labels)
        self.stride_ns = round(stride_s * _NS)
        self.sampling_rate = 1.0 / stride_s
        self.flush_s = float(flush_s)
        self.codes = channel_codes(self.labels, stride_s)
        check_archive_dir(str(self.root), key)
        self._write_sidecar(model or {}, key)
        self.stations: dict[str, _Station] = {}
        self.stats: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(1, "probarchive")
        self._pending: deque[Future] = deque()
        self._checked = 0.0
        self._lock = threading.Lock()  # the stats the writer thread counts

    def _write_sidecar(self, model: dict[str, str], key: str) -> None:
        path = self.root / SIDECAR
        channels = {code: label for label, code in self.codes.items()}
        if path.exists():
            try:
                old = json.loads(path.read_text()).get("channels", {})
            except (OSError, ValueError, AttributeError):
                old = {}
            clash = {c: (old[c], label) for c, label in channels.items() if c in old and old[c] != label}
            if clash:
                raise ConfigError(f"{key}: {str(self.root)!r} holds probabilities of other classes on the same "
                                  f"channels ({', '.join(f'{c}: {a} != {b}' for c, (a, b) in clash.items())}); "
                                  "expected an empty directory or one this model wrote")
        body = {"format": SIDECAR_FORMAT, "channels": channels, "sample_time": "window end",
                "stride_s": self.stride_ns / _NS, "encoding": "FLOAT32", "record_bytes": RECORD_BYTES,
                "model": {"name": str(model.get("name", "")), "sha256": str(model.get("sha256", ""))}}
        atomic_write(path, lambda fh: fh.write((json.dumps(body, indent=1) + "\n").encode()))

    # -- feeding ----------------------------------------------------------------------------------------------------
    def add(self, metas: Sequence[WindowMeta], probabilities: np.ndarray, now: float | None = None) -> None:
        """Buffer one batch: row i of `probabilities` (one column per label) is the window `metas[i]`, sampled at
        its end. Rows with a non-finite value (windows not inferred) are skipped: a gap."""
        now = time.monotonic() if now is None else now
        probs = np.asarray(probabilities, dtype=np.float32).reshape(len(metas), len(self.labels))
        rows = probs.tolist()  # (float32 -> float -> float32 is exact)
        full: list[_Station] = []
        for i in np.flatnonzero(np.isfinite(probs).all(axis=1)).tolist():
            st, t = self._station(metas[i].station), metas[i].end_ns
            if not self._accept(st, t):
                self.stats["late_samples"] += len(self.labels)
                continue
            if not st.times:
                st.since = now
            st.times.append(t)
            st.rows.append(rows[i])
            st.newest_ns = t
            if len(st.times) >= RECORD_SAMPLES:
                full.append(st)
        if full:
            self._submit(full)

    def maybe_flush(self, now: float | None = None) -> None:
        """Write the channels whose oldest buffered sample has waited `flush_s` (looked for once a second)."""
        now = time.monotonic() if now is None else now
        if now - self._checked < min(CHECK_INTERVAL_S, self.flush_s):
            return
        self._checked = now
        due = [st for st in self.stations.values() if st.times and now - st.since >= self.flush_s]
        if due:
            self._submit(due)

    def flush(self) -> None:
        """Write everything buffered and wait until it is on disk (in the OS's hands)."""
        self._submit([st for st in self.stations.values() if st.times])
        self.wait()

    def wait(self) -> None:
        """Wait until the flushes already handed to the writer thread are written."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Flush, then stop the writer thread. Idempotent."""
        if self._pool is None:
            return
        self.flush()
        self._pool.shutdown(wait=True)
        self._pool = None  # type: ignore[assignment]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"samples_written": self.stats["samples_written"], "late_samples": self.stats["late_samples"],
                    "write_errors": self.stats["write_errors"]}

    # -- internals --------------------------------------------------------------------------------------------------
    def _station(self, station: str) -> _Station:
        st = self.stations.get(station)
        if st is None:
            st = self.stations[station] = _Station(*station.split("."))
        return st

    def _accept(self, st: _Station, t: int) -> bool:
        """Whether sample time `t` is newer than what the station's channels hold, reading the day files' newest
        sample the first time this process meets that day (and cutting a partial last record off them). The
        newest of the channels counts: after a crash between two channels' writes, the others lose that tail
        rather than the first getting it twice."""
        day = t // _DAY_NS
        if day not in st.days:
            st.days.add(day)
            st.newest_ns = max(st.newest_ns, *(_resume_point(sds_path(self.root, st.net, st.sta, st.loc, cha, t),
                                                             self.stride_ns) for cha in self.codes.values()))
        return t > st.newest_ns

    def _submit(self, stations: list[_Station]) -> None:
        """Hand the stations' buffered samples to the writer thread (waiting while MAX_PENDING flushes are queued)."""
        work = []
        for st in stations:
            work.append((st, np.asarray(st.times, np.int64), np.asarray(st.rows, np.float32)))
            st.times, st.rows = [], []
        while len(self._pending) >= MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, work))
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def _write(self, work: list[tuple[_Station, np.ndarray, np.ndarray]]) -> None:
        """On the writer thread: encode each channel's samples (contiguous runs within one day) and append them."""
        for st, times, values in work:
            for (lo, hi), (j, cha) in itertools.product(_runs(times, self.stride_ns), enumerate(self.codes.values())):
                path = sds_path(self.root, st.net, st.sta, st.loc, cha, int(times[lo]))
                try:
                    _append(path, st, cha, int(times[lo]), np.ascontiguousarray(values[lo:hi, j]),
                            self.sampling_rate)
                except OSError as exc:  # the archive is a review aid: the detections go on without it
                    with self._lock:
                        self.stats["write_errors"] += 1
                    log.error("probability_archive_write_failed", path=str(path), samples=hi - lo,
                              error=str(exc))
                    continue
                with self._lock:
                    self.stats["samples_written"] += hi - lo


def _runs(times: np.ndarray, stride_ns: int) -> list[tuple[int, int]]:
    """(lo, hi) index ranges of `times` that are contiguous (one stride apart) and within one UTC day."""
    if not times.size:
        return []
    breaks = (np.diff(times) != stride_ns) | (np.diff(times // _DAY_NS) != 0)
    edges = [0, *(np.flatnonzero(breaks) + 1).tolist(), int(times.size)]
    return list(zip(edges[:-1], edges[1:], strict=False))


def _append(path: Path, st: _Station, cha: str, start_ns: int, values: np.ndarray, sampling_rate: float) -> None:
    from obspy import Trace, UTCDateTime

    trace = Trace(values, header={"network": st.net, "station": st.sta, "location": st.loc, "channel": cha,
                                  "sampling_rate": sampling_rate, "starttime": UTCDateTime(ns=start_ns)})
    buf = io.BytesIO()
    trace.write(buf, format="MSEED", reclen=RECORD_BYTES, encoding="FLOAT32")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(buf.getvalue())


def _resume_point(path: Path, stride_ns: int) -> int:
    """The time (ns) of the newest sample in a day file, or -1 when there is none; a partial last record (a write
    a crash interrupted) is cut off first, so appending keeps the file readable."""
    from obspy import read

    try:
        size = path.stat().st_size
        whole = size - size % RECORD_BYTES
        if whole != size:
            log.warning("probability_archive_partial_record", path=str(path), bytes_cut=size - whole)
            os.truncate(path, whole)
        if not whole:
            return -1
        with open(path, "rb") as fh:
            fh.seek(whole - RECORD_BYTES)
            tail = fh.read(RECORD_BYTES)
    except FileNotFoundError:
        return -1
    except OSError as exc:  # (the write will fail too, and be counted)
        log.warning("probability_archive_unreadable", path=str(path), error=str(exc))
        return -1
    try:
        stats = read(io.BytesIO(tail), format="MSEED", headonly=True)[0].stats
    except Exception as exc:  # noqa: BLE001 - ObsPy raises several types for a damaged record
        log.warning("probability_archive_unreadable_tail", path=str(path), error=str(exc))
        return -1
    return int(stats.starttime.ns) + (int(stats.npts) - 1) * stride_ns


