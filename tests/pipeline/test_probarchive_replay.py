"""`quakemon replay --probabilities DIR`: a real replay writes the probability archive, and ObsPy's SDS client reads
back exactly the probabilities the runner computed, with the data gap as a gap and the trace split at midnight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import obspy
import pytest
from obspy import UTCDateTime
from obspy.clients.filesystem.sds import Client

from quakemon.cli.app import main
from quakemon.models import load_checkpoint
from quakemon.pipeline.runner import replay

START = UTCDateTime(2026, 3, 1) - 50  # the data runs across midnight (day 059 -> 060)
SPAN_S = 120.0
GAP_S = (70.0, 76.0)  # no data on any component: windows overlapping it are never cut


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """ObsPy's BW.RJOB example (30 s, 100 Hz, 3 components) repeated to SPAN_S from START, GAP_S cut out."""
    base = obspy.read()
    st = obspy.Stream()
    for i in range(int(SPAN_S // 30)):
        block = base.copy()
        for tr in block:
            tr.stats.starttime = START + 30 * i
            tr.data = np.round(tr.data).astype(np.int32)
        st += block
    st.merge()
    st = st.slice(START, START + GAP_S[0] - 0.01) + st.slice(START + GAP_S[1], START + SPAN_S)
    path = tmp_path_factory.mktemp("rollover") / "rjob.mseed"
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


def test_the_archive_holds_exactly_the_runner_probabilities_with_gaps_and_day_files(archive, tiny_checkpoint,
                                                                                     tmp_path):
    out = tmp_path / "prob"
    result = replay([str(archive)], load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32",
                    progress=False, keep_series=True, probabilities=str(out))
    series = result.series["BW.RJOB."]
    ends = np.asarray(series.end_ns)
    p = np.asarray(series.probabilities, np.float32)
    keep = np.isfinite(p).all(axis=1)
    assert keep.sum() > 40 and np.diff(ends[keep]).max() > 1e9  # windows on both sides of the gap
    days = sorted(f.name[-3:] for f in out.rglob("BW.RJOB..LX1.D.2026.*"))
    assert days == ["059", "060"]
    client = Client(str(out))
    for j, cha in enumerate(("LX0", "LX1")):
        st = client.get_waveforms("BW", "RJOB", "", cha, START, START + SPAN_S + 30)
        times = np.concatenate([[round(t.ns) for t in tr.times("utcdatetime")] for tr in st])
        assert times.tolist() == ends[keep].tolist()  # one sample per inferred window, at its end
        assert np.array_equal(np.concatenate([tr.data for tr in st]), p[keep, j])  # bit for bit
        runs = 1 + int(np.count_nonzero(np.diff(ends[keep]) != 1_000_000_000))
        assert len(st) == runs >= 2  # the gap stays a gap (midnight alone does not split the merged trace)
        # no window missing more than max_missing (10 %: 2 s of 20) of its data: none ends in that part of the gap
        offsets = times / 1e9 - START.timestamp
        assert not ((offsets > GAP_S[0] + 2.0) & (offsets < GAP_S[1] + 18.0)).any()


def test_replay_cli_writes_the_archive_and_refuses_an_unwritable_folder(archive, tiny_checkpoint, tmp_path,
                                                                        capsys):
    out = tmp_path / "prob"
    dets = tmp_path / "dets.jsonl"
    assert main(["replay", str(archive), "--model", str(tiny_checkpoint), "--output", str(dets), "--quiet",
                 "--probabilities", str(out)]) == 0
    assert (out / "quakemon-probabilities.json").exists() and len(list(out.rglob("BW.RJOB..LX?.D.2026.06?"))) == 2
    (tmp_path / "file").write_text("")
    bad_out = tmp_path / "bad.jsonl"
    capsys.readouterr()
    assert main(["replay", str(archive), "--model", str(tiny_checkpoint), "--output", str(bad_out), "--quiet",
                 "--probabilities", str(tmp_path / "file" / "prob")]) == 2
    assert "--probabilities: expected a writable directory" in capsys.readouterr().err
    assert not bad_out.exists()  # refused before anything was written
