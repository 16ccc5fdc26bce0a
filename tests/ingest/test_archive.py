"""ArchiveSource: files, directory trees and SDS archives in time order; corrupt data skipped and counted."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import Stream, Trace, UTCDateTime
from structlog.testing import capture_logs

from quakemon.ingest.archive import ArchiveSource
from quakemon.ingest.base import Samples
from quakemon.ingest.selectors import match_selector
from quakemon.ingest.validate import decode_records
from quakemon.models.contract import InputContract
from quakemon.pipeline.windowing import StationWindower

MIDNIGHT = UTCDateTime(2021, 1, 1)


def _example() -> Stream:
    stream = obspy.read()
    for tr in stream:
        tr.data = tr.data.astype(np.int32)
    return stream


def _write(stream: Stream, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    stream.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


def _read_all(source: ArchiveSource) -> list[Trace]:
    return list(source.traces(threading.Event()))


def _assert_time_ordered(traces: list[Trace]) -> None:
    starts = [t.stats.starttime.ns for t in traces]
    assert starts == sorted(starts)


def _merged(traces: list[Trace]) -> Stream:
    return Stream([t.copy() for t in traces]).merge(method=1)


def _synthetic(stations: tuple[str, ...], start: UTCDateTime, seconds: int, seed: int = 0) -> Stream:
    rng = np.random.default_rng(seed)
    return Stream([
        Trace(rng.integers(-5000, 5000, seconds * 100).astype(np.int32),
              header=dict(network="XX", station=sta, location="", channel=f"HH{c}", sampling_rate=100.0,
                          starttime=start))
        for sta in stations for c in "ZNE"
    ])


def _write_sds(stream: Stream, root: Path) -> list[Path]:
    """SDS layout: YEAR/NET/STA/CHAN.D/NET.STA.LOC.CHAN.D.YEAR.DAY, one file per channel and day."""
    paths = []
    for tr in stream:
        t = tr.stats.starttime
        day = UTCDateTime(t.year, t.month, t.day)
        while day <= tr.stats.endtime:
            part = tr.slice(day, day + 86400 - tr.stats.delta)
            if part.stats.npts:
                s = part.stats
                name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{day.year}.{day.julday:03d}"
                folder = root / str(day.year) / s.network / s.station / f"{s.channel}.D"
                paths.append(_write(Stream([part]), folder / name))
            day += 86400
    return paths


def test_single_multichannel_file_is_interleaved_in_time(tmp_path: Path) -> None:
    stream = _example()
    src = ArchiveSource([_write(stream, tmp_path / "rjob.mseed")], chunk_s=5.0)
    traces = _read_all(src)
    _assert_time_ordered(traces)
    assert {t.id for t in traces[:3]} == {"BW.RJOB..EHZ", "BW.RJOB..EHN", "BW.RJOB..EHE"}  # interleaved
    assert max(t.stats.npts for t in traces) <= 500
    merged = _merged(traces)
    for orig in stream:
        got = merged.select(id=orig.id)[0]
        assert got.stats.starttime == orig.stats.starttime
        np.testing.assert_array_equal(got.data, orig.data)
    assert src.stats["records"] == 21 and src.stats["records_rejected"] == 0 and src.stats["files"] == 1


def test_directory_tree_with_corrupt_file_and_record(tmp_path: Path) -> None:
    stream = _example()
    for tr in stream:
        _write(Stream([tr]), tmp_path / "a" / "b" / f"{tr.id}.mseed")
    (tmp_path / "a" / "notes.txt").write_bytes(b"not miniseed at all\n" * 40)
    # a second copy of Z, shifted by a day, with its fourth record damaged (Steim integrity)
    shifted = stream.select(channel="EHZ").copy()
    shifted[0].stats.starttime += 86400
    bad = _write(shifted, tmp_path / "c" / "shifted.mseed")
    raw = bytearray(bad.read_bytes())
    raw[3 * 512 + 64 + 11] ^= 0x01
    bad.write_bytes(bytes(raw))
    (tmp_path / ".hidden").write_bytes(b"x" * 512)

    src = ArchiveSource([tmp_path])
    with capture_logs() as logs:
        traces = _read_all(src)
    _assert_time_ordered(traces)
    stats = src.stats
    assert stats["files"] == 5 and stats["files_skipped"] == 1  # the text file
    assert stats["rejected_decode_warning"] == 1 and stats["records"] == 21 + 6
    rejected_logs = [e for e in logs if e["event"] == "archive_records_rejected"]
    assert {Path(e["file"]).name for e in rejected_logs} == {"notes.txt", "shifted.mseed"}
    merged = _merged(traces)
    for orig in stream:  # the good files are complete
        day1 = merged.select(id=orig.id).slice(orig.stats.starttime, orig.stats.endtime)
        np.testing.assert_array_equal(day1[0].data, orig.data)
    late = [t for t in traces if t.stats.starttime >= stream[0].stats.starttime + 86400]
    assert 0 < sum(t.stats.npts for t in late) < 3000  # one record lost, the rest kept


def test_sds_archive_across_midnight(tmp_path: Path) -> None:
    stream = _synthetic(("AAA", "BBB"), MIDNIGHT - 40, 80)
    paths = _write_sds(stream, tmp_path / "sds")
    assert len(paths) == 12
    assert any("2020/XX/AAA/HHZ.D/XX.AAA..HHZ.D.2020.366" in str(p) for p in paths)

    src = ArchiveSource([tmp_path / "sds"], chunk_s=2.0)
    traces = _read_all(src)
    _assert_time_ordered(traces)
    assert len({t.id for t in traces[:6]}) == 6  # all channels of both stations start together
    merged = _merged(traces)
    for orig in stream:
        np.testing.assert_array_equal(merged.select(id=orig.id)[0].data, orig.data)

    # selection by SEED id and by time: files of other streams and days are not even opened
    src = ArchiveSource([tmp_path / "sds"], ["XX.AAA..HH?"], endtime=MIDNIGHT - 0.005)
    traces = _read_all(src)
    assert {t.stats.station for t in traces} == {"AAA"} and src.stats["files"] == 3
    assert max(t.stats.endtime for t in traces) == MIDNIGHT - 0.01
    assert sum(t.stats.npts for t in traces) == 3 * 4000

    src = ArchiveSource([tmp_path / "sds"], ["XX.BBB..HHZ"], starttime=MIDNIGHT + 10)
    traces = _read_all(src)
    assert {t.id for t in traces} == {"XX.BBB..HHZ"}
    assert min(t.stats.starttime for t in traces) == MIDNIGHT + 10
    assert sum(t.stats.npts for t in traces) == 3000


def test_replay_gives_the_same_windows_as_a_live_record_stream(tmp_path: Path) -> None:
    """The archive path (blocks, chunks, merge) and a record-by-record 'live' feed cut identical windows."""
    stream = _synthetic(("AAA",), MIDNIGHT - 30, 60, seed=3)
    _write_sds(stream, tmp_path / "sds")
    contract = InputContract()

    replay = StationWindower(contract, 1.0)
    replay_windows = replay.add_traces(_read_all(ArchiveSource([tmp_path / "sds"], chunk_s=3.0)))
    replay_windows += replay.flush()

    records: list[Trace] = []
    for path in sorted((tmp_path / "sds").rglob("XX.*")):
        good, rejected = decode_records(path.read_bytes())
        assert rejected == []
        records += good
    records.sort(key=lambda t: t.stats.endtime)  # live: a record arrives when it is complete
    live = StationWindower(contract, 1.0)
    live_windows = live.add_traces(records) + live.flush()

    assert len(replay_windows) == len(live_windows) == 60 - 20 + 1
    assert all(a.same_as(b) for a, b in zip(replay_windows, live_windows, strict=True))
    assert replay_windows[0].start == MIDNIGHT - 30


def test_samples_are_the_traces_without_obspy_headers(tmp_path: Path) -> None:
    """`samples()` (replay's path) yields the very pieces `traces()` does, and the windower cuts the same windows
    from them."""
    stream = _synthetic(("AAA", "BBB"), MIDNIGHT - 30, 60, seed=4)
    _write_sds(stream, tmp_path / "sds")
    traces = _read_all(ArchiveSource([tmp_path / "sds"], chunk_s=7.0))
    pieces = list(ArchiveSource([tmp_path / "sds"], chunk_s=7.0).samples(threading.Event()))
    assert len(pieces) == len(traces) > 12
    for piece, tr in zip(pieces, traces, strict=True):
        assert (piece.seed_id, piece.sampling_rate, piece.start_ns, piece.end_ns) == (
            tr.id, tr.stats.sampling_rate, tr.stats.starttime.ns, tr.stats.endtime.ns)
        assert piece.data.dtype == tr.data.dtype == np.int32
        np.testing.assert_array_equal(piece.data, tr.data)
        assert Samples.from_trace(tr).start_ns == piece.start_ns and piece.to_trace().id == tr.id
    from_traces, from_samples = StationWindower(InputContract(), 1.0), StationWindower(InputContract(), 1.0)
    a = from_traces.add_traces(traces) + from_traces.flush()
    b = [w for piece in pieces for w in from_samples.add_samples(piece)] + from_samples.flush()
    assert len(a) == len(b) == 2 * (60 - 20 + 1)
    assert all(x.same_as(y) for x, y in zip(a, b, strict=True))
    assert from_traces.counters() == from_samples.counters()


def test_stop_flag_and_missing_path(tmp_path: Path) -> None:
    path = _write(_example(), tmp_path / "x.mseed")
    src = ArchiveSource([path, tmp_path / "missing.mseed"], chunk_s=1.0)
    stop = threading.Event()
    got = []
    for tr in src.traces(stop):
        got.append(tr)
        if len(got) == 5:
            stop.set()
    assert len(got) == 5 and src.stats["files_missing"] == 1
    with pytest.raises(ValueError, match="chunk_s"):
        ArchiveSource([path], chunk_s=0)


def test_match_selector_is_reexported() -> None:
    from quakemon.ingest import archive

    assert archive.match_selector is match_selector
