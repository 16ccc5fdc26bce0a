"""The probability archive writer on its own: naming, SDS layout, exact values, gaps, day rollover, flushing,
restarts, a crash's partial record and the errors it reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client

from quakemon.base.errors import ConfigError
from quakemon.pipeline.detect import WindowMeta
from quakemon.pipeline.probarchive import (
    RECORD_BYTES,
    RECORD_SAMPLES,
    SIDECAR,
    ProbabilityArchive,
    band_code,
    channel_codes,
    check_archive_dir,
)

NS = 1_000_000_000
LABELS = ["noise", "earthquake"]
MIDNIGHT = int(UTCDateTime(2026, 3, 1).ns)  # day 060 ends here: 2026-03-01 is day 060, 2026-02-28 day 059


def metas(station: str, ends_s: list[float]) -> list[WindowMeta]:
    return [WindowMeta(station, round(t * NS) - 20 * NS, round(t * NS)) for t in ends_s]


def probs(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random(n, dtype=np.float32)
    return np.stack([1 - p, p], axis=1)


def read(root: Path, cha: str, t0: float, t1: float, station: str = "RJOB", loc: str = ""):
    return Client(str(root)).get_waveforms("BW", station, loc, cha, UTCDateTime(t0), UTCDateTime(t1))


def test_channel_naming_follows_the_sampling_rate_and_the_class_index():
    assert channel_codes(LABELS, 1.0) == {"noise": "LX0", "earthquake": "LX1"}
    assert channel_codes(["a", "b", "c"], 0.5)["c"] == "MX2"  # 2 Hz
    assert [band_code(r) for r in (20.0, 2.0, 1.0, 0.5, 0.2, 0.01)] == ["B", "M", "L", "L", "V", "U"]
    assert channel_codes([str(i) for i in range(12)], 1.0)["11"] == "LXB"
    with pytest.raises(ValueError, match="at most 36 classes"):
        channel_codes([str(i) for i in range(37)], 1.0)


def test_exact_values_gaps_and_the_day_rollover_read_back_through_the_sds_client(tmp_path: Path):
    t0 = MIDNIGHT / NS - 30  # 30 s before midnight
    ends = [t0 + k for k in range(60) if not 10 <= k < 15]  # a 5-window gap (windows never cut)
    p = probs(len(ends))
    p[40] = np.nan  # a window not inferred (invalid): a gap too, not a zero
    arc = ProbabilityArchive(tmp_path, LABELS, 1.0, model={"name": "m", "sha256": "ab"})
    arc.add(metas("BW.RJOB.", ends), p)
    arc.close()
    files = sorted(str(f.relative_to(tmp_path)) for f in tmp_path.rglob("BW.RJOB.*"))
    assert files == [f"2026/BW/RJOB/{c}.D/BW.RJOB..{c}.D.2026.{d}" for c in ("LX0", "LX1") for d in ("059", "060")]
    for j, cha in enumerate(("LX0", "LX1")):
        st = read(tmp_path, cha, t0 - 5, t0 + 70)
        assert [tr.stats.npts for tr in st] == [10, 30, 14]  # the gap, then midnight (merged), then the NaN row
        assert st[1].stats.starttime == UTCDateTime(t0 + 15) and st[2].stats.starttime == UTCDateTime(ends[41])
        got = np.concatenate([tr.data for tr in st])
        want = np.delete(p[:, j], 40)
        assert got.dtype == np.float32 and np.array_equal(got, want)  # bit for bit: FLOAT32
        assert all(tr.stats.sampling_rate == 1.0 and tr.stats.mseed.encoding == "FLOAT32" for tr in st)
    side = json.loads((tmp_path / SIDECAR).read_text())
    assert side["channels"] == {"LX0": "noise", "LX1": "earthquake"} and side["model"]["sha256"] == "ab"
    assert arc.counters() == {"samples_written": 2 * 54, "late_samples": 0, "write_errors": 0}


def test_location_codes_keep_two_sensors_of_a_station_apart(tmp_path: Path):
    arc = ProbabilityArchive(tmp_path, LABELS, 1.0)
    t = [MIDNIGHT / NS + k for k in range(3)]
    arc.add(metas("BW.RJOB.00", t) + metas("BW.RJOB.10", t), np.concatenate([probs(3, 1), probs(3, 2)]))
    arc.close()
    assert np.array_equal(read(tmp_path, "LX1", t[0], t[-1], loc="00")[0].data, probs(3, 1)[:, 1])
    assert np.array_equal(read(tmp_path, "LX1", t[0], t[-1], loc="10")[0].data, probs(3, 2)[:, 1])


def test_a_record_is_written_when_full_and_a_partial_one_only_after_flush_s(tmp_path: Path):
    arc = ProbabilityArchive(tmp_path, LABELS, 1.0, flush_s=5.0)
    path = tmp_path / "2026/BW/RJOB/LX1.D/BW.RJOB..LX1.D.2026.060"
    start = MIDNIGHT / NS + 100
    arc.add(metas("BW.RJOB.", [start + k for k in range(RECORD_SAMPLES - 1)]), probs(RECORD_SAMPLES - 1), now=0.0)
    arc.maybe_flush(now=4.9)
    arc.wait()
    assert not path.exists()  # less than a record, younger than flush_s: in memory
    arc.add(metas("BW.RJOB.", [start + RECORD_SAMPLES - 1]), probs(1), now=4.9)  # the record is full
    arc.wait()
    assert path.stat().st_size == RECORD_BYTES
    arc.add(metas("BW.RJOB.", [start + RECORD_SAMPLES + k for k in range(3)]), probs(3), now=10.0)
    arc.maybe_flush(now=14.0)
    arc.wait()
    assert path.stat().st_size == RECORD_BYTES
    arc.maybe_flush(now=15.0)  # the oldest buffered sample has waited flush_s
    arc.wait()
    assert path.stat().st_size == 2 * RECORD_BYTES
    assert read(tmp_path, "LX1", start, start + 200)[0].stats.npts == RECORD_SAMPLES + 3
    arc.close()


def test_a_restart_continues_the_trace_without_writing_what_the_file_holds(tmp_path: Path):
    ends = [MIDNIGHT / NS + k for k in range(20)]
    p = probs(20)
    first = ProbabilityArchive(tmp_path, LABELS, 1.0)
    first.add(metas("BW.RJOB.", ends[:12]), p[:12])
    first.close()
    again = ProbabilityArchive(tmp_path, LABELS, 1.0)  # windows cut again after a restart: 8..11 once more
    again.add(metas("BW.RJOB.", ends[8:]), p[8:])
    again.close()
    assert again.counters()["late_samples"] == 2 * 4
    (tr,) = read(tmp_path, "LX1", ends[0], ends[-1])
    assert np.array_equal(tr.data, p[:, 1])


def test_a_partial_last_record_left_by_a_crash_is_cut_off_before_appending(tmp_path: Path):
    ends = [MIDNIGHT / NS + k for k in range(10)]
    p = probs(10)
    first = ProbabilityArchive(tmp_path, LABELS, 1.0)
    first.add(metas("BW.RJOB.", ends[:5]), p[:5])
    first.close()
    path = next(tmp_path.rglob("BW.RJOB..LX1.D.2026.060"))
    with open(path, "ab") as fh:  # what a write interrupted by SIGKILL leaves: part of a record
        fh.write(path.read_bytes()[:200])
    again = ProbabilityArchive(tmp_path, LABELS, 1.0)
    again.add(metas("BW.RJOB.", ends[5:]), p[5:])
    again.close()
    assert path.stat().st_size == 2 * RECORD_BYTES
    (tr,) = read(tmp_path, "LX1", ends[0], ends[-1])
    assert np.array_equal(tr.data, p[:, 1])


def test_an_unwritable_folder_is_a_config_error_naming_the_key(tmp_path: Path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"archive\.probabilities: expected a writable directory") as exc:
        check_archive_dir(str(tmp_path / "file" / "sub"), "archive.probabilities")
    assert exc.value.exit_code == 2
    with pytest.raises(ConfigError, match="--probabilities"):
        ProbabilityArchive(tmp_path / "file", LABELS, 1.0, key="--probabilities")
    check_archive_dir("", "archive.probabilities")  # off


def test_an_archive_of_a_model_with_other_classes_is_refused(tmp_path: Path):
    ProbabilityArchive(tmp_path, LABELS, 1.0).close()
    with pytest.raises(ConfigError, match=r"LX1: earthquake != explosion"):
        ProbabilityArchive(tmp_path, ["noise", "explosion"], 1.0)
    ProbabilityArchive(tmp_path, [*LABELS, "explosion"], 1.0).close()  # a class added at the end: same channels


def test_a_failed_write_is_counted_and_logged_and_the_caller_goes_on(tmp_path: Path):
    arc = ProbabilityArchive(tmp_path, LABELS, 1.0)
    (tmp_path / "2026").write_text("not a folder")  # the year folder cannot be made
    arc.add(metas("BW.RJOB.", [MIDNIGHT / NS]), probs(1))
    arc.close()
    assert arc.counters()["write_errors"] == 2 and arc.counters()["samples_written"] == 0
