"""Archive source: MiniSEED files, directory trees and SDS archives replayed in time order.

`quakemon replay` feeds the station buffers through the same code path as the live SeedLink source, so the
archive must arrive the way a live stream would: interleaved across channels and stations in time order,
in record-sized pieces. `ArchiveSource` therefore

- indexes each file's record headers (vectorised over the whole file), sorts its records by start time
  and decodes them in blocks of consecutive records (fast path), falling back to record-by-record
  decoding and validation (`quakemon.ingest.validate`) for any block that warns, fails or looks wrong,
  so a corrupt record costs that record only (counted per reason and logged with the file);
- cuts the decoded data into pieces of at most `chunk_s` seconds and merges the pieces of all files by
  start time (files are opened only when the merge reaches their first record, so an SDS archive of many
  days does not open every file at once).

Windows do not depend on the chunking (see `quakemon.pipeline.windowing`), so `chunk_s` only bounds how far one
channel runs ahead of another. The default 20 s stays inside the windower's `max_skew_s` (30 s) while keeping
pieces few, since each piece costs a windower call and, as a Trace, ObsPy's header objects; `samples()` yields the
pieces without those (the replay's path), `traces()` wraps the same pieces into Traces. Blocks of up to
`block_records` (128) consecutive records go to ObsPy's reader in one call, which amortises its per-call cost. A
block with a bad record costs its records a second, record-by-record decode, whatever the block size.
docs/performance.md gives the measurements behind both defaults.

SDS layout (YEAR/NET/STA/CHAN.TYPE/NET.STA.LOC.CHAN.TYPE.YEAR.DAY, as `obspy.clients.filesystem.sds` writes it)
is recognised by file name: files of unselected streams or of days outside [starttime, endtime] are skipped
without being opened.
"""

from __future__ import annotations

import heapq
import mmap
import os
import re
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import structlog
from obspy import Trace, UTCDateTime

from quakemon.base.timegrid import grid_time_ns, rate_fraction
from quakemon.ingest.base import Samples, TraceSource
from quakemon.ingest.selectors import SelectorSet, match_selector
from quakemon.ingest.validate import (
    _ID_BYTES,
    _QUALITY_BYTES,
    _SEQ_BYTES,
    _blockette1000,
    _decode_one,
    decode_record,
    validate_trace,
)

log = structlog.get_logger(__name__)

__all__ = ["ArchiveSource", "match_selector"]

_NS = 1_000_000_000
_SDS_NAME = re.compile(r"([A-Z0-9]{0,2})\.([A-Z0-9]{0,5})\.([A-Z0-9]{0,2})\.([A-Z0-9]{3})\.[A-Z]\.(\d{4})\.(\d{3})")
_LEAPS_1969 = 1969 // 4 - 1969 // 100 + 1969 // 400


def _lut(allowed: frozenset[int]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(allowed)] = True
    return table


_SEQ_LUT, _QUAL_LUT, _ID_LUT = _lut(_SEQ_BYTES), _lut(_QUALITY_BYTES), _lut(_ID_BYTES)


def _field(hdr: np.ndarray, lo: int, hi: int, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(hdr[:, lo:hi]).view(dtype).ravel().astype(np.int64)


def _header_index(hdr: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised fixed-header parse of records [n, >=48 bytes]: (start ns, header plausible, sample count)."""
    year, doy = _field(hdr, 20, 22, order + "u2"), _field(hdr, 22, 24, order + "u2")
    hour, minute, sec = (hdr[:, i].astype(np.int64) for i in (24, 25, 26))
    frac = _field(hdr, 28, 30, order + "u2")
    nsamp = _field(hdr, 30, 32, order + "u2")
    corr = _field(hdr, 40, 44, order + "i4")
    applied = (hdr[:, 36] & 0x02) != 0
    ok = (
        (year >= 1970) & (year <= 2100) & (doy >= 1) & (doy <= 366) & (hour < 24) & (minute < 60)
        & (sec <= 60) & (frac < 10000)
        & _SEQ_LUT[hdr[:, :6]].all(axis=1) & _QUAL_LUT[hdr[:, 6]] & _ID_LUT[hdr[:, 8:20]].all(axis=1)
    )
    y1 = year - 1
    days = (year - 1970) * 365 + (y1 // 4 - y1 // 100 + y1 // 400) - _LEAPS_1969 + doy - 1
    secs = days * 86400 + hour * 3600 + minute * 60 + sec
    start = secs * _NS + frac * 100_000 + np.where(applied, 0, corr * 100_000)
    return np.where(ok, start, -1), ok, nsamp


def _record_id(raw: bytes) -> str:
    """SEED id from fixed-header bytes 8..19."""
    text = raw.decode("ascii", "replace")
    sta, loc, cha, net = text[0:5], text[5:7], text[7:10], text[10:12]
    return ".".join(s.strip() for s in (net, sta, loc, cha))


class _ArchiveFile:
    """One MiniSEED file: memory-mapped, record headers indexed and sorted by start time."""

    def __init__(self, path: Path, number: int) -> None:
        self.path = path
        self.number = number
        self.mm: mmap.mmap | bytes = b""
        self.reclen = 512
        self.order = ">"

    def first_start_ns(self) -> int:
        """Start of the file's first record, for scheduling when to open it (-1 when unknown)."""
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(256)
        except OSError:
            return -1
        b1000 = _blockette1000(head)
        if b1000 is None or len(head) < 48:
            return -1
        hdr = np.frombuffer(head[:48], dtype=np.uint8).reshape(1, 48)
        return int(_header_index(hdr, b1000[1])[0][0])

    def open(self) -> None:
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        b1000 = _blockette1000(bytes(self.mm[:256]))
        if b1000 is not None:
            self.reclen, self.order = b1000

    def close(self) -> None:
        if isinstance(self.mm, mmap.mmap):
            self.mm.close()
        self.mm = b""


class ArchiveSource(TraceSource):
    """Replays MiniSEED files, directories (recursive) and SDS archives as Traces in time order."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        selectors: Sequence[str] | None = None,
        *,
        starttime: UTCDateTime | None = None,
        endtime: UTCDateTime | None = None,
        chunk_s: float = 20.0,
        block_records: int = 128,
    ) -> None:
        if not paths:
            raise ValueError("ArchiveSource needs at least one file or directory")
        if chunk_s <= 0:
            raise ValueError(f"chunk_s must be > 0, got {chunk_s}")
        self.paths = [Path(p) for p in paths]
        self.selectors = list(selectors) if selectors else None
        self._selector_set = SelectorSet(self.selectors) if self.selectors else None
        self.starttime = starttime
        self.endtime = endtime
        self.chunk_s = float(chunk_s)
        self.block_records = max(1, int(block_records))
        self._stats: Counter[str] = Counter()
        self._open_files: list[_ArchiveFile] = []

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    # --- file discovery ---------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The files to read, after SDS-name preselection, in a stable order."""
        found: list[Path] = []
        for root in self.paths:
            if root.is_file():
                found.append(root)
            elif root.is_dir():
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    found += [Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
            else:
                self._stats["files_missing"] += 1
                log.warning("archive_path_missing", path=str(root))
        return [p for p in found if self._preselect(p)]

    def _preselect(self, path: Path) -> bool:
        m = _SDS_NAME.fullmatch(path.name)
        if m is None:
            return True
        net, sta, loc, cha, year, day = m.groups()
        if self._selector_set is not None and not self._selector_set.matches(f"{net}.{sta}.{loc}.{cha}"):
            return False
        day_start = UTCDateTime(year=int(year), julday=int(day))
        if self.endtime is not None and day_start > self.endtime:
            return False
        # a day file may begin a few records before midnight: allow one day of slack at the start.
        if self.starttime is not None and day_start + 2 * 86400 < self.starttime:
            return False
        return True

    # --- reading -------------------------------------------------------------------------------------

    def traces(self, stop: threading.Event) -> Iterator[Trace]:
        """Yield record-sized Traces from all files, merged in start-time order, until done or `stop`."""
        for piece in self.samples(stop):
            yield piece.to_trace()

    def samples(self, stop: threading.Event) -> Iterator[Samples]:
        """`traces` without ObsPy's header objects: the pieces as `Samples` (what replay feeds the windower)."""
        files = [_ArchiveFile(p, i) for i, p in enumerate(self.files())]
        pending = sorted(((f.first_start_ns(), f.number, f) for f in files), key=lambda x: x[:2])
        pending.reverse()  # pop() takes the earliest
        heap: list[tuple[int, int, int, Samples, Iterator[Samples]]] = []
        counter = 0
        try:
            while not stop.is_set():
                while pending and (not heap or pending[-1][0] <= heap[0][0]):
                    _, _, f = pending.pop()
                    gen = self._file_chunks(f)
                    first = next(gen, None)
                    if first is not None:
                        heapq.heappush(heap, (first.start_ns, f.number, counter, first, gen))
                        counter += 1
                if not heap:
                    break
                _, number, _, piece, gen = heapq.heappop(heap)
                yield piece
                nxt = next(gen, None)
                if nxt is not None:
                    heapq.heappush(heap, (nxt.start_ns, number, counter, nxt, gen))
                    counter += 1
        finally:
            for _, _, _, _, gen in heap:
                gen.close()
            for f in self._open_files:
                f.close()
            self._open_files.clear()

    def _file_chunks(self, f: _ArchiveFile) -> Iterator[Samples]:
        """Chunks of one file in start-time order (records sorted, decoded in blocks, cut to chunk_s)."""
        try:
            f.open()
        except OSError as exc:
            self._stats["files_failed"] += 1
            log.warning("archive_file_unreadable", file=str(f.path), error=str(exc))
            return
        self._open_files.append(f)
        self._stats["files"] += 1
        rejected: Counter[str] = Counter()
        good = 0
        try:
            nrec, tail = divmod(len(f.mm), f.reclen)
            if tail:
                rejected["truncated"] += 1
            if nrec:
                # a copy, so that no numpy view pins the mmap when the file is closed
                hdr = np.frombuffer(f.mm, dtype=np.uint8, count=nrec * f.reclen).reshape(nrec, f.reclen)[:, :48].copy()
                starts, ok, nsamp = _header_index(hdr, f.order)
                keep = self._select_records(hdr)
                order = np.argsort(starts, kind="stable")
                order = order[keep[order]]
                # Chunks wait in a heap until no later record of this file can start before them.
                ready: list[tuple[int, int, Samples]] = []
                seq = 0
                for block, traces, nxt in self._decode_blocks(f, order, ok, nsamp, rejected):
                    good += block
                    for tr in traces:
                        for c in self._chunks(tr):
                            heapq.heappush(ready, (c.start_ns, seq, c))
                            seq += 1
                    horizon = int(starts[order[nxt]]) if nxt < len(order) else None
                    while ready and (horizon is None or ready[0][0] <= horizon):
                        yield heapq.heappop(ready)[2]
        finally:
            n_rej = sum(rejected.values())
            self._stats["records"] += good
            self._stats["records_rejected"] += n_rej
            for reason, n in rejected.items():
                self._stats[f"rejected_{reason}"] += n
            if n_rej:
                log.warning("archive_records_rejected", file=str(f.path), rejected=n_rej, good=good,
                            reasons=dict(rejected))
            if good == 0:
                self._stats["files_skipped"] += 1
                if n_rej:
                    log.warning("archive_file_skipped", file=str(f.path), reason="no valid MiniSEED record")
            f.close()

    def _select_records(self, hdr: np.ndarray) -> np.ndarray:
        keep = np.ones(len(hdr), dtype=bool)
        if self.selectors is None or not len(hdr):
            return keep
        ids = np.ascontiguousarray(hdr[:, 8:20]).view("S12").ravel()
        uniq, inverse = np.unique(ids, return_inverse=True)
        wanted = np.array([self._selector_set.matches(_record_id(u.ljust(12))) for u in uniq])
        keep = wanted[inverse.ravel()]
        self._stats["records_unselected"] += int(np.count_nonzero(~keep))
        return keep

    def _decode_blocks(
        self, f: _ArchiveFile, order: np.ndarray, ok: np.ndarray, nsamp: np.ndarray, rejected: Counter[str]
    ) -> Iterator[tuple[int, list[Trace], int]]:
        """(good record count, traces, position in `order` of the next block) per block of consecutive records."""
        reclen = f.reclen
        i = 0
        while i < len(order):
            j = i + 1
            if ok[order[i]]:
                while j < len(order) and j - i < self.block_records and order[j] == order[j - 1] + 1 and ok[order[j]]:
                    j += 1
            first = int(order[i])
            count = j - i
            if count > 1:
                data = bytes(f.mm[first * reclen : (first + count) * reclen])
                traces = self._decode_fast(data, int(nsamp[first : first + count].sum()))
                if traces is not None:
                    yield count, traces, j
                    i = j
                    continue
            good: list[Trace] = []
            for rec in order[i:j]:
                out = decode_record(bytes(f.mm[int(rec) * reclen : (int(rec) + 1) * reclen]), reclen)
                if isinstance(out, str):
                    rejected[out] += 1
                else:
                    good.append(out)
            yield len(good), good, j
            i = j

    def _decode_fast(self, data: bytes, expected_samples: int) -> list[Trace] | None:
        """Decode a block of records in one call; None if anything looks wrong (then go record by record)."""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                st = _decode_one(data)
        except Exception:  # noqa: BLE001 - fall back to per-record decoding, which labels the culprit
            return None
        if caught or sum(tr.stats.npts for tr in st) != expected_samples:
            return None
        if any(validate_trace(tr, max_samples=2 * len(data)) is not None for tr in st):
            return None
        return list(st)

    def _chunks(self, tr: Trace) -> Iterator[Samples]:
        """Cut a decoded trace into pieces of at most chunk_s, on exact sample times; apply start/end bounds."""
        hz = float(tr.stats.sampling_rate)
        rate = rate_fraction(hz)
        step = max(1, int(self.chunk_s * hz))
        t0 = int(tr.stats.starttime.ns)
        lo, hi = 0, tr.stats.npts
        if self.starttime is not None:
            lo = max(lo, -(-(int(self.starttime.ns) - t0) * rate.numerator // (rate.denominator * _NS)))
        if self.endtime is not None:
            hi = min(hi, (int(self.endtime.ns) - t0) * rate.numerator // (rate.denominator * _NS) + 1)
        seed_id = tr.id
        for i in range(lo, hi, step):
            yield Samples(seed_id, hz, t0 + grid_time_ns(i, rate), tr.data[i : min(i + step, hi)])
