"""Test data for backfill: a live archive with a hole, and the hole's data with an event in an SDS tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 100.0
EVENT_AT_S = 1800.0  # the event's offset inside the hole


@dataclass
class Outage:
    live: Path  # MiniSEED: `before_s` of noise, the hole, `after_s` of noise
    sds: Path  # SDS root holding the hole: noise with obspy.read()'s BW.RJOB event at EVENT_AT_S
    hole_start: float  # POSIX s
    hole_s: float


def write_outage(root: Path, hole_s: float = 7200.0, before_s: float = 60.0, after_s: float = 60.0,
                 seed: int = 0) -> Outage:
    """BW.RJOB..EH[ZNE] at 100 Hz, STEIM2 int32: the live file and the SDS tree (`sds/YEAR/NET/STA/CHA.D/...`,
    one day file per channel, as slarchive writes it)."""
    import obspy

    base = obspy.read()
    start = base[0].stats.starttime
    rng = np.random.default_rng(seed)
    live, hole = obspy.Stream(), obspy.Stream()
    for tr in base:
        def piece(t0: float, seconds: float, tr=tr) -> obspy.Trace:
            out = tr.copy()
            out.stats.starttime = start + t0
            out.data = np.round(rng.normal(0, 20, int(seconds * RATE))).astype(np.int32)
            return out

        live += piece(0.0, before_s)
        live += piece(before_s + hole_s, after_s)
        filled = piece(before_s, hole_s)
        at = int(EVENT_AT_S * RATE)
        filled.data[at : at + tr.stats.npts] = np.round(tr.data).astype(np.int32)
        hole += filled
    live_path = root / "live.mseed"
    live.write(str(live_path), format="MSEED", reclen=512, encoding="STEIM2")
    sds = root / "sds"
    for tr in hole:
        s = tr.stats
        day = sds / str(s.starttime.year) / s.network / s.station / f"{s.channel}.D"
        day.mkdir(parents=True, exist_ok=True)
        name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.{s.starttime.year}.{s.starttime.julday:03d}"
        tr.write(str(day / name), format="MSEED", reclen=512, encoding="STEIM2")
    return Outage(live_path, sds, float((start + before_s).timestamp), hole_s)
