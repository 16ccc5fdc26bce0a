"""benchmarks/detection_quality.py --hours: a noise day's stream and the model's windows cut to the same hours."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.training.continuous import Series

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import detection_quality  # noqa: E402

DAY = UTCDateTime("2010-09-01")


def test_hours_cut_the_stream_and_keep_only_the_windows_wholly_inside():
    fs = 10.0
    st = Stream([Trace(np.zeros(int(86400 * fs), np.int32), {"station": "UV05", "channel": "HHZ",
                                                             "sampling_rate": fs, "starttime": DAY})])
    part = detection_quality.hours_of(st, (12.0, 24.0))
    assert part[0].stats.starttime == DAY + 12 * 3600 and part[0].stats.endtime <= DAY + 86400
    starts = DAY.timestamp + np.arange(0.0, 86380.0, 1.0)
    series = Series(starts, starts + 20.0, np.linspace(0, 1, starts.size))
    kept = detection_quality.within(series, part)
    assert kept.start[0] == DAY.timestamp + 12 * 3600 and kept.end[-1] <= part[0].stats.endtime.timestamp + 1e-6
    assert np.all(kept.start >= part[0].stats.starttime.timestamp) and kept.p[0] == series.p[43200]
    assert len(kept.start) == len(kept.p) == len(kept.end) < starts.size / 2


def test_hours_outside_a_day_or_in_the_wrong_order_are_refused():
    for hours in (["12", "12"], ["-1", "5"], ["20", "25"]):
        with pytest.raises(SystemExit) as exc:
            detection_quality.main(["--hours", *hours])
        assert exc.value.code == 2
