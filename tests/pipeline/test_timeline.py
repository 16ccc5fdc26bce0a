"""Station silence: a station with no record for silence_s is reported once, until its data returns."""

from __future__ import annotations

import numpy as np
from obspy import Trace, UTCDateTime

from quakemon.models.contract import InputContract
from quakemon.pipeline.timeline import SilenceMonitor
from quakemon.pipeline.windowing import StationWindower


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _record(station: str) -> Trace:
    return Trace(np.zeros(100), header={"network": "XX", "station": station, "channel": "HHZ",
                                        "sampling_rate": 100.0, "starttime": UTCDateTime(2021, 1, 1)})


def test_a_silent_station_is_reported_once_and_forgiven_when_data_returns() -> None:
    w = StationWindower(InputContract(), 1.0, silence_s=30.0)
    clock = Clock()
    w.silence.clock = clock
    w.add_trace(_record("A"))
    w.add_trace(_record("B"))
    clock.t += 20
    w.add_trace(_record("B"))
    assert w.check_silence() == []
    clock.t += 15
    assert w.check_silence() == ["XX.A."] and w.check_silence() == []  # once per silence
    assert w.silent_stations() == ["XX.A."]
    c = w.counters()
    assert c["silent_stations"] == 1 and c["station_silences"] == 1
    w.add_trace(_record("A"))
    assert w.silent_stations() == [] and w.counters()["silent_stations"] == 0
    clock.t += 31
    assert sorted(w.check_silence()) == ["XX.A.", "XX.B."] and w.counters()["station_silences"] == 3
    assert set(w.silence.state()) == {"XX.A.", "XX.B."}


def test_silence_check_off() -> None:
    mon = SilenceMonitor(0)
    mon.note("A")
    assert mon.check() == []
