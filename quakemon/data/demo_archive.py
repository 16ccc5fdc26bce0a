"""The bundled demo archive: real recordings from the catalogue, re-timed onto one 90 s axis, as MiniSEED.

`build_demo_archive` regenerates the committed ``quakemon/assets/demo/`` (the archive `quakemon demo` replays)
and its P picks; `python -m quakemon.data.demo_archive build-demo DIR | events-csv FILE` runs it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from obspy import Stream, UTCDateTime

from quakemon.data.realdata import EventRecording, load, recording_by_name, write_event_csv

log = structlog.get_logger(__name__)

U = UTCDateTime

#: The demo's common time axis starts here; the ObsPy example (BW.RJOB) keeps its real time at DEMO_START + 50 s.
DEMO_START = U("2009-08-24T00:19:13")
#: Sampling rate of the demo archive (the bundled model's rate).
DEMO_SAMPLING_RATE = 100.0


@dataclass(frozen=True)
class DemoItem:
    """One station of the demo archive: `duration` seconds of `recording`, from `offset` s after its start,
    re-timed to begin at DEMO_START + `at` seconds."""

    recording: str
    at: float
    offset: float = 0.0
    duration: float | None = None


#: What the demo archive is made of: 3 real local earthquakes and 2 real noise stations, all 3-component, overlapping
#: on one 90 s time axis (P arrivals at about +11.6 s, +40.3 s and +54.8 s).
DEMO_ITEMS: tuple[DemoItem, ...] = (
    DemoItem("jmi_1990-01-03", at=0.0, duration=90.0),
    DemoItem("uh_uh3_quiet_2010-05-27", at=10.0),
    DemoItem("cer_2005-07-23", at=10.0),
    DemoItem("gt_bosa_2010-06-22", at=45.0),
    DemoItem("rjob_example_2009-08-24", at=50.0),
)


def _demo_stream(item: DemoItem) -> tuple[Stream, list[UTCDateTime]]:
    """The item's 100 Hz traces as int32, re-timed, and its P times on the demo axis."""
    rec = recording_by_name(item.recording)
    st = load(rec, DEMO_SAMPLING_RATE)
    t0 = rec.start + item.offset
    t1 = rec.end if item.duration is None else t0 + item.duration - 1.0 / DEMO_SAMPLING_RATE
    st.trim(t0, t1, nearest_sample=True)
    new_start = DEMO_START + item.at
    shift = new_start - st[0].stats.starttime
    for tr in st:
        tr.stats.starttime = new_start
        tr.data = np.round(tr.data).astype(np.int32)
    picks = []
    if isinstance(rec, EventRecording):
        picks = [p + shift for p in rec.p_times if t0 <= p <= t1]
    return st, picks


def build_demo_archive(out_dir: str | Path) -> list[Path]:
    """Write the demo MiniSEED (one file per station, 512-byte STEIM2 records) plus demo_picks.csv and README.txt.

    Returns the MiniSEED paths, sorted. The same call regenerates the committed `quakemon/assets/demo/`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, rows, lines = [], [], []
    for item in DEMO_ITEMS:
        st, picks = _demo_stream(item)
        net, sta, loc = st[0].id.split(".")[:3]
        path = out / f"{net}.{sta}.mseed"
        st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
        paths.append(path)
        rows += [(net, sta, loc, str(p)) for p in picks]
        rec = recording_by_name(item.recording)
        kind = "earthquake" if isinstance(rec, EventRecording) else "noise"
        lines.append(
            f"{path.name}: {','.join(tr.id for tr in st)}  {kind}  {st[0].stats.starttime} - {st[0].stats.endtime}\n"
            f"    from obspy/{', obspy/'.join(rec.sources)} (catalogue name {rec.name!r}), seconds "
            f"{item.offset:g}..{item.offset + (item.duration or rec.end - rec.start):.2f} of {rec.start}, "
            f"{rec.sampling_rate:g} Hz -> {DEMO_SAMPLING_RATE:g} Hz, re-timed to start at demo +{item.at:g} s"
            + (f"; P at {', '.join(str(p) for p in picks)}" if picks else "")
            + "\n"
        )
    with (out / "demo_picks.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["network", "station", "location", "p_time"])
        writer.writerows(sorted(rows))
    (out / "README.txt").write_text(
        "quakemon demo archive: real recordings shipped with ObsPy (nothing downloaded), re-timed onto one time axis\n"
        f"starting {DEMO_START} so that they overlap, resampled to {DEMO_SAMPLING_RATE:g} Hz (FFT, Trace.resample),\n"
        "rounded to int32 counts, written as MiniSEED with 512-byte STEIM2 records. demo_picks.csv lists the P\n"
        "arrivals on the demo axis. Station codes are the real ones (XX where the source has no network).\n"
        "The ObsPy example BW.RJOB keeps its real time and is only 30 s long (11 windows of 20 s at 1 s stride).\n\n"
        + "".join(lines)
        + "\nMade with (from the repository root):\n"
        "    .venv/bin/python -m quakemon.data.demo_archive build-demo quakemon/assets/demo\n"
    )
    log.info("demo_archive_written", out_dir=str(out), files=len(paths), picks=len(rows))
    return sorted(paths)


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m quakemon.data.demo_archive build-demo DIR | events-csv FILE`: regenerate bundled files."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m quakemon.data.demo_archive", description=_main.__doc__)
    parser.add_argument("action", choices=["build-demo", "events-csv"])
    parser.add_argument("path")
    args = parser.parse_args(argv)
    if args.action == "build-demo":
        build_demo_archive(args.path)
    else:
        write_event_csv(args.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
