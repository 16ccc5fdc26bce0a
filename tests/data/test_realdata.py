"""The real-data catalogue: recordings load as advertised, P picks sit on real onsets, evaluation and training
sources stay apart, and the committed demo archive is exactly what `build_demo_archive` makes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy.io.mseed.util import get_record_information

from quakemon.base.errors import QuakemonError
from quakemon.data import demo_archive, realdata, training_noise

DEMO_DIR = Path(realdata.__file__).resolve().parents[1] / "assets" / "demo"
ALL = realdata.local_events() + realdata.noise_recordings() + realdata.training_noise_recordings()


@pytest.mark.parametrize("rec", ALL, ids=[r.name for r in ALL])
def test_recording_loads_with_advertised_ids_rates_components_and_span(rec: realdata.Recording) -> None:
    st = realdata.load(rec)
    assert [tr.id for tr in st] == list(rec.seed_ids)  # Z, N, E order
    assert "".join(tr.stats.channel[-1] for tr in st) == rec.components
    delta = 1.0 / rec.sampling_rate
    for tr in st:
        assert tr.stats.sampling_rate == rec.sampling_rate
        assert abs(tr.stats.starttime - rec.start) <= delta
        assert abs(tr.stats.endtime - rec.end) <= delta
        assert tr.data.dtype == np.float64 and np.isfinite(tr.data).all() and tr.data.std() > 0
        assert len(tr.stats.network) <= 2 and len(tr.stats.station) <= 5 and len(tr.stats.channel) == 3


@pytest.mark.parametrize("ev", realdata.local_events(), ids=[e.name for e in realdata.local_events()])
def test_p_times_lie_inside_the_recording_and_mark_an_amplitude_onset(ev: realdata.EventRecording) -> None:
    assert ev.p_times and ev.pick_method
    assert all(ev.start < p < ev.end for p in ev.p_times)
    assert list(ev.p_times) == sorted(ev.p_times)
    if ev.s_time is not None:
        assert ev.p_time < ev.s_time < ev.end
    tr = realdata.load(ev).select(component="Z")[0]
    sr = tr.stats.sampling_rate
    tr.detrend("demean")
    tr.taper(0.05, max_length=1.0)
    tr.filter("bandpass", freqmin=10.0 if ev.name.startswith("uh_") else 1.0, freqmax=min(20.0, 0.45 * sr))
    x, t0 = tr.data, tr.stats.starttime

    def idx(t: obspy.UTCDateTime) -> int:
        return int(round((t - t0) * sr))

    for p in ev.p_times:
        sigma = x[idx(max(ev.start + 0.3, p - 5.0)) : idx(p - 0.2)].std()
        after = np.abs(x[idx(p - 0.1) : idx(p + 1.5)]).max() / sigma
        before = np.abs(x[idx(p - 1.2) : idx(p - 0.2)]).max() / sigma
        # A wrong pick (noise, or a second late/early) fails one of these.
        assert after >= 3.5, f"{ev.name} {p}: peak {after:.1f} sigma after P"
        assert after >= 1.4 * before, f"{ev.name} {p}: {after:.1f} after vs {before:.1f} before P"


def test_resampling_on_load() -> None:
    rec = realdata.recording_by_name("rjob_2005-08-01")
    st = realdata.load(rec, sampling_rate=100.0)
    assert {tr.stats.sampling_rate for tr in st} == {100.0}
    assert {tr.stats.npts for tr in st} == {6000}


def test_evaluation_and_training_sources_are_disjoint_and_exist() -> None:
    root = realdata.obspy_root()
    assert realdata.EVALUATION_SOURCES and realdata.TRAINING_NOISE_SOURCES
    assert not realdata.EVALUATION_SOURCES & realdata.TRAINING_NOISE_SOURCES
    assert not set(realdata.EXCLUDED_SOURCES) & (realdata.EVALUATION_SOURCES | realdata.TRAINING_NOISE_SOURCES)
    for src in (*realdata.EVALUATION_SOURCES, *realdata.TRAINING_NOISE_SOURCES, *realdata.EXCLUDED_SOURCES):
        assert (root / src).is_file(), src
    for rec in realdata.local_events() + realdata.noise_recordings():
        assert set(rec.sources) <= realdata.EVALUATION_SOURCES
    # The synthetic generator's real-noise candidates must not reuse evaluation recordings.
    from quakemon.data import synthetic

    assert not set(synthetic.OBSPY_NOISE_CANDIDATES) & realdata.EVALUATION_SOURCES


def test_names_are_unique_and_lookup_fails_clearly() -> None:
    names = [r.name for r in ALL]
    assert len(names) == len(set(names))
    with pytest.raises(QuakemonError, match="no real recording named 'nope'"):
        realdata.recording_by_name("nope")


def test_write_event_csv_lists_every_p_time(tmp_path: Path) -> None:
    path = realdata.write_event_csv(tmp_path / "picks.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"network", "station", "location", "p_time"}
    expected = {(*e.station.split("."), str(p)) for e in realdata.local_events() for p in e.p_times}
    assert {(r["network"], r["station"], r["location"], r["p_time"]) for r in rows} == expected
    assert ("BW", "RJOB", "", "2009-08-24T00:20:07.750000Z") in expected
    assert all(obspy.UTCDateTime(r["p_time"]) for r in rows)


def test_training_noise_segments_skip_the_events_in_kw1() -> None:
    n = 2000
    seg = training_noise.training_noise_segments(n)
    assert seg.dtype == np.float32 and seg.ndim == 3 and seg.shape[1:] == (1, n)
    assert seg.shape[0] > 200  # 2.6 h minus masked parts
    rec = realdata.training_noise_recordings()[0]
    raw = realdata.load(rec)[0].data
    # KW1 holds a local event at ~3890 s and another at ~3960 s after its start: neither segment may be returned.
    for t in (3890.0, 3962.0):
        k = int(t * rec.sampling_rate) // n
        block = raw[k * n : (k + 1) * n].astype(np.float32)
        assert not (seg[:, 0] == block).all(axis=1).any(), f"segment with the event at {t} s was returned"
    quiet = raw[: len(raw) // n * n].reshape(-1, n).astype(np.float32)
    matches = (seg[:, 0, None, :] == quiet[None, :5000:50]).all(axis=2).any(axis=0)
    assert matches.any(), "segments should be verbatim cuts of the recording"
    with pytest.raises(QuakemonError, match="n_samples"):
        training_noise.training_noise_segments(0)


def _records_are_512_bytes(path: Path) -> bool:
    size = path.stat().st_size
    return size % 512 == 0 and all(
        get_record_information(str(path), offset)["record_length"] == 512 for offset in range(0, size, 512)
    )


def test_demo_archive_is_committed_and_matches_a_rebuild(tmp_path: Path) -> None:
    committed = sorted(DEMO_DIR.glob("*.mseed"))
    rebuilt = demo_archive.build_demo_archive(tmp_path)
    assert [p.name for p in committed] == [p.name for p in rebuilt]
    assert len(committed) == len(demo_archive.DEMO_ITEMS) >= 5
    assert sum(p.stat().st_size for p in committed) < 3_000_000
    assert (DEMO_DIR / "README.txt").is_file()
    assert (DEMO_DIR / "demo_picks.csv").read_text() == (tmp_path / "demo_picks.csv").read_text()
    starts, ends = [], []
    for old, new in zip(committed, rebuilt, strict=True):
        assert _records_are_512_bytes(old)
        a, b = obspy.read(str(old)), obspy.read(str(new))
        assert {tr.stats.mseed.encoding for tr in a} == {"STEIM2"}
        assert [tr.id for tr in a] == [tr.id for tr in b]
        assert [tr.stats.channel[-1] for tr in a] == ["Z", "N", "E"]
        for ta, tb in zip(a, b, strict=True):
            assert ta.stats.sampling_rate == 100.0
            assert ta.stats.starttime == tb.stats.starttime and ta.stats.npts == tb.stats.npts
            assert np.abs(ta.data.astype(np.int64) - tb.data).max() <= 1  # FFT rounding may differ by 1 count
            starts.append(ta.stats.starttime)
            ends.append(ta.stats.endtime)
    assert 60.0 <= max(ends) - min(starts) <= 90.0
    assert len({tr.stats.station for p in committed for tr in obspy.read(str(p))}) == len(committed)
