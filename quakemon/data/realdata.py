"""Real recordings shipped inside the installed ObsPy package: a catalogue for evaluation, training noise and the demo.

Why: quakemon may not download anything, yet its detector must be judged on real earthquakes and real noise. ObsPy
ships a few dozen real waveforms as test data; this module names the usable ones (local earthquakes with P times,
quiet noise), loads them with proper SEED ids, and builds the bundled demo archive from them.

Policies (docs/evaluation.md describes the data set and its use):

- Every recording is one station, 1 or 3 components, read from ``obspy/<source>``; nothing is downloaded.
- Sources without network codes get ``XX`` (the FDSN placeholder), except RJOB/RNON/MANZ, which are BayernNetz (BW)
  stations (the ObsPy example names BW.RJOB). Channel codes are rebuilt as band + "H" + component where the source
  has none (``S Z`` -> ``SHZ``, ``Z`` at 200 Hz -> ``EHZ``); the component letter always ends the code.
- Sampling rates within 10 ppm of an integer are snapped to it (GSE1 stores 124.9999924 Hz).
- P times come from ObsPy's own tests where they state picks (ar_pick, pk_baer, coincidence_trigger windows),
  otherwise from classic recursive STA/LTA on a band-passed Z trace, each confirmed by eye on a plot.
- Recordings in `EVALUATION_SOURCES` are for evaluation only; `TRAINING_NOISE_SOURCES` (disjoint) feed
  `quakemon.data.training_noise.training_noise_segments`.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import obspy
import structlog
from obspy import Stream, Trace, UTCDateTime

from quakemon.base.errors import QuakemonError

log = structlog.get_logger(__name__)

U = UTCDateTime

#: Component letters in the order `load` returns traces.
_COMPONENT_RANK = {"Z": 0, "N": 1, "E": 2, "1": 1, "2": 2}
#: Two-letter component names some formats use (K-NET "EW", seisan "S Z" is handled by taking the last letter).
_COMPONENT_ALIASES = {"EW": "E", "NS": "N", "UD": "Z"}


@dataclass(frozen=True)
class Recording:
    """One station's real recording shipped with ObsPy.

    name:          unique catalogue name.
    sources:       file(s) relative to the obspy package folder (one per component for single-column ASCII).
    seed_ids:      NET.STA.LOC.CHA of the traces `load` returns, in Z, N, E order.
    sampling_rate: native rate in Hz (after snapping, see module docstring).
    components:    component letters available, e.g. "ZNE" or "Z".
    start, end:    the span `load` returns (a sub-window of the file where start/end say so).
    notes:         provenance, caveats, how times were determined.
    reader:        "obspy" (obspy.read), "example" (obspy.read() with no argument) or "columns" (one number per
                   line, optional '#' header; the trace starts at `start`, rate is `sampling_rate`).
    raw_select:    fnmatch pattern on the raw trace id as read (selects one station out of multi-station files).
    """

    name: str
    sources: tuple[str, ...]
    seed_ids: tuple[str, ...]
    sampling_rate: float
    components: str
    start: UTCDateTime
    end: UTCDateTime
    notes: str = ""
    reader: str = "obspy"
    raw_select: str = "*"

    @property
    def source(self) -> str:
        """The first source file (relative to the obspy package folder)."""
        return self.sources[0]

    @property
    def station(self) -> str:
        """NET.STA.LOC of this recording (quakemon's station key)."""
        return self.seed_ids[0].rsplit(".", 1)[0]


@dataclass(frozen=True)
class EventRecording(Recording):
    """A recording of a real earthquake.

    p_time:       first P arrival inside [start, end] (None if unknown).
    s_time:       S arrival of that event, where determined.
    more_p_times: P arrivals of further events in the same recording.
    kind:         "local" (S-P under ~15 s), "regional" or "local/regional" when uncertain.
    pick_method:  how p_time was determined.
    """

    p_time: UTCDateTime | None = None
    s_time: UTCDateTime | None = None
    more_p_times: tuple[UTCDateTime, ...] = ()
    kind: str = "local"
    pick_method: str = ""

    @property
    def p_times(self) -> tuple[UTCDateTime, ...]:
        """All P times in this recording, first event first."""
        return ((self.p_time,) if self.p_time is not None else ()) + self.more_p_times


@dataclass(frozen=True)
class NoiseRecording(Recording):
    """A real recording without earthquakes (checked with STA/LTA and by eye)."""


def obspy_root() -> Path:
    """The installed ObsPy package folder all `sources` are relative to."""
    return Path(obspy.__file__).resolve().parent


# --------------------------------------------------------------------------------------------------------- catalogue
_SIG = "signal/tests/data/"
_UH_START = U("2010-05-27T16:24:03.68")
_UH_END = U("2010-05-27T16:27:53.99")
_UH_PICKS = "recursive STA/LTA 0.5 s/10 s, thresholds 3.5/1.0, on 10-20 Hz (the UH prefilter of ObsPy's "
_UH_PICKS += "test_coincidence_trigger); all inside that test's event windows; checked by eye"
_UH_NOTE = "Unterhaching (UH) network, 2010-05-27, small local events (ObsPy coincidence-trigger test data). "
_UH_MICRO = (
    "Also a micro-event not in ObsPy's test: P 16:25:26.67 (UH3 Z), S 16:25:27.8 (UH3 N/E), P 16:25:26.89 "
    "(UH1); found by STA/LTA 0.1 s/5 s on 5-20 Hz (peak 15-26 against <= 7 elsewhere), checked by eye."
)


def _uh_event(sta: str, chans: str, rate: float, picks: Sequence[str], note: str = "") -> EventRecording:
    band = "SH" if rate == 50.0 else "EH"
    files = tuple(f"{_SIG}BW.{sta}._.{band}{c}.D.2010.147.cut.slist.gz" for c in chans)
    times = [U(f"2010-05-27T{p}") for p in picks]
    return EventRecording(
        name=f"uh_{sta.lower()}_2010-05-27",
        sources=files,
        seed_ids=tuple(f"BW.{sta}..{band}{c}" for c in chans),
        sampling_rate=rate,
        components=chans,
        start=_UH_START,
        end=_UH_END,
        notes=_UH_NOTE + note,
        p_time=times[0],
        more_p_times=tuple(times[1:]),
        pick_method=_UH_PICKS,
    )


_LOC_RJOB_START = U("2005-08-01T14:57:19.850")
_RJOB_1006_START = U("2005-10-06T07:23:20.009995")
_MANZ_START = U(0)

_EVENTS: tuple[EventRecording, ...] = (
    EventRecording(
        name="rjob_example_2009-08-24",
        sources=("core/data/example.npz",),
        reader="example",
        seed_ids=("BW.RJOB..EHZ", "BW.RJOB..EHN", "BW.RJOB..EHE"),
        sampling_rate=100.0,
        components="ZNE",
        start=U("2009-08-24T00:20:03"),
        end=U("2009-08-24T00:20:32.99"),
        p_time=U("2009-08-24T00:20:07.75"),
        pick_method="recursive STA/LTA 0.2 s/2 s on 1-20 Hz: Z, N 07.75, E 07.81 (record too short for a 10 s LTA)",
        notes="obspy.read() default example; 30 s only (about 11 windows of 20 s at 1 s stride).",
    ),
    EventRecording(
        name="rjob_2005-08-01",
        reader="columns",
        sources=tuple(f"{_SIG}loc_RJOB20050801145719850.{c}" for c in "zne"),
        seed_ids=("BW.RJOB..EHZ", "BW.RJOB..EHN", "BW.RJOB..EHE"),
        sampling_rate=200.0,
        components="ZNE",
        start=_LOC_RJOB_START,
        end=_LOC_RJOB_START + 11999 / 200.0,
        p_time=_LOC_RJOB_START + 30.635,
        s_time=_LOC_RJOB_START + 31.165,
        pick_method="ObsPy test_ar_pick (ar_pick P 30.635 s, S 31.165 +- 0.05 s after start); STA/LTA 30.66 s",
        notes="Bare ASCII columns; 200 Hz as in ObsPy's test; start time from the file name; very close event.",
    ),
    EventRecording(
        name="rjob_2005-10-06",
        reader="columns",
        sources=(f"{_SIG}rjob_20051006.gz", f"{_SIG}rjob_20051006_n.gz", f"{_SIG}rjob_20051006_e.gz"),
        seed_ids=("BW.RJOB..EHZ", "BW.RJOB..EHN", "BW.RJOB..EHE"),
        sampling_rate=200.0,
        components="ZNE",
        start=_RJOB_1006_START,
        end=_RJOB_1006_START + 1749 / 200.0,
        p_time=U("2005-10-06T07:23:22.215"),
        pick_method="recursive STA/LTA 0.1 s/1 s on 1-20 Hz Z (record too short for longer windows)",
        notes="Raw Z/N/E (the other rjob_20051006_* files are processed copies, not used). Only 8.75 s: shorter "
        "than one 20 s window, so usable only padded; not in the demo.",
    ),
    EventRecording(
        name="rjob_2005-08-31",
        sources=("io/gse2/tests/data/loc_RJOB20050831023349.z",),
        raw_select=".RJOB..Z",
        seed_ids=("BW.RJOB..EHZ",),
        sampling_rate=200.0,
        components="Z",
        start=U("2005-08-31T02:33:49.850"),
        end=U("2005-08-31T02:34:49.845"),
        p_time=U("2005-08-31T02:34:21.335"),
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z",
        notes="GSE2, Z only; weak event (peak STA/LTA 7.8, SNR about 3).",
    ),
    EventRecording(
        name="rnon_2004-06-09",
        sources=("io/gse2/tests/data/loc_RNON20040609200559.z",),
        raw_select=".RNON..Z",
        seed_ids=("BW.RNON..EHZ",),
        sampling_rate=200.0,
        components="Z",
        start=U("2004-06-09T20:05:59.850"),
        end=U("2004-06-09T20:06:59.845"),
        p_time=U("2004-06-09T20:06:21.145"),
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z",
        notes="GSE2, Z only; network BW assumed (BayernNetz station like RJOB).",
    ),
    EventRecording(
        name="stau_2003-11-19",
        sources=("io/gse2/tests/data/loc_STAU20031119011659.z",),
        raw_select=".LE0083..*Z",
        seed_ids=("XX.STAU..EHZ",),
        sampling_rate=125.0,
        components="Z",
        start=U("2003-11-19T01:16:59.990"),
        end=U("2003-11-19T01:17:23.982"),
        p_time=U("2003-11-19T01:17:09.638"),
        pick_method="recursive STA/LTA 0.5 s/5 s on 1-20 Hz Z",
        notes="GSE1, header station LE0083 (6 letters, too long for SEED): named STAU after the file; 24 s.",
    ),
    _uh_event("UH1", "Z", 50.0, ["16:24:33.40", "16:25:26.89", "16:27:02.38", "16:27:30.68"], note=_UH_MICRO),
    _uh_event(
        "UH2",
        "Z",
        50.0,
        ["16:24:33.28", "16:27:01.26", "16:27:30.62"],
        note="The 16:25:27 micro-event is not visible at UH2 (its noisiest station).",
    ),
    _uh_event("UH3", "ZNE", 50.0, ["16:24:33.21", "16:25:26.67", "16:27:02.19", "16:27:30.51"], note=_UH_MICRO),
    _uh_event(
        "UH4",
        "Z",
        100.0,
        ["16:24:34.18", "16:27:31.48"],
        note="The 16:25:27 micro-event and the small 16:27:01 event are below UH4's noise (no STA/LTA "
        "trigger, UH4 also absent from ObsPy's coincidence result for 16:27:01).",
    ),
    EventRecording(
        name="jmi_1990-01-03",
        sources=("io/seisan/tests/data/90010319.1320J90",),
        raw_select=".JMI..S [ZNE]",
        seed_ids=("XX.JMI..SHZ", "XX.JMI..SHN", "XX.JMI..SHE"),
        sampling_rate=50.0,
        components="ZNE",
        start=U("1990-01-03T19:13:20.80"),
        end=U("1990-01-03T19:14:55.58"),
        p_time=U("1990-01-03T19:13:32.36"),
        s_time=U("1990-01-03T19:13:41.68"),
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z (P) and second trigger (S); emergent P",
        notes="SEISAN multi-station file (JMI 3-C, JNE, JNW Z); S-P 9.3 s. SLZ (long-period) not used.",
    ),
    EventRecording(
        name="jne_1990-01-03",
        sources=("io/seisan/tests/data/90010319.1320J90",),
        raw_select=".JNE..S Z",
        seed_ids=("XX.JNE..SHZ",),
        sampling_rate=50.0,
        components="Z",
        start=U("1990-01-03T19:13:20.80"),
        end=U("1990-01-03T19:14:55.58"),
        p_time=U("1990-01-03T19:13:32.08"),
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z",
        notes="Same event as jmi_1990-01-03; weak P, strong S about 6 s later.",
    ),
    EventRecording(
        name="jnw_1990-01-03",
        sources=("io/seisan/tests/data/90010319.1320J90",),
        raw_select=".JNW..S Z",
        seed_ids=("XX.JNW..SHZ",),
        sampling_rate=50.0,
        components="Z",
        start=U("1990-01-03T19:13:20.80"),
        end=U("1990-01-03T19:14:55.58"),
        p_time=U("1990-01-03T19:13:32.58"),
        s_time=U("1990-01-03T19:13:38.56"),
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z (P) and second trigger (S)",
        notes="Same event as jmi_1990-01-03.",
    ),
    EventRecording(
        name="cer_2005-07-23",
        sources=("io/seisan/tests/data/2005-07-23-1452-04S.CER___030",),
        raw_select=".CER..BH?",
        seed_ids=("XX.CER..BHZ", "XX.CER..BHN", "XX.CER..BHE"),
        sampling_rate=150.0,
        components="ZNE",
        start=U("2005-07-23T14:52:04"),
        end=U("2005-07-23T14:53:14.993333"),
        p_time=U("2005-07-23T14:52:34.287"),
        kind="local/regional",
        pick_method="recursive STA/LTA 0.5 s/10 s on 1-20 Hz Z; sharp onset",
        notes="SEISAN; header: South African National Seismograph Network. Impulsive P, coda dominated by ~1 Hz; "
        "largest N amplitude ~6 s after P (S?). Possibly mining-induced. Z starts with an instrument transient.",
    ),
    EventRecording(
        name="manz_regional",
        reader="columns",
        sources=(f"{_SIG}manz_waldk.a01.gz",),
        seed_ids=("BW.MANZ..EHZ",),
        sampling_rate=200.0,
        components="Z",
        start=_MANZ_START,
        end=_MANZ_START + 119999 / 200.0,
        p_time=_MANZ_START + 87.725,
        kind="regional",
        pick_method="ObsPy test_pk_baer (pk_baer P at sample 17545, 200 Hz); STA/LTA 87.70 s",
        notes="Bare ASCII, 600 s, Z only; absolute time unknown, so it starts at the epoch (1970). Name suggests a "
        "Waldkirch (SW Germany) event at BW.MANZ: Pn 87.7 s, Pg ~100.4 s, Sg ~142 s (S-P ~54 s, ~400 km).",
    ),
)

_UH_QUIET = (U("2010-05-27T16:25:35"), U("2010-05-27T16:26:55"))
_TSINDEX = "clients/filesystem/tests/data/tsindex_data/"


def _uh_noise(sta: str, chans: str, rate: float) -> NoiseRecording:
    band = "SH" if rate == 50.0 else "EH"
    return NoiseRecording(
        name=f"uh_{sta.lower()}_quiet_2010-05-27",
        sources=tuple(f"{_SIG}BW.{sta}._.{band}{c}.D.2010.147.cut.slist.gz" for c in chans),
        seed_ids=tuple(f"BW.{sta}..{band}{c}" for c in chans),
        sampling_rate=rate,
        components=chans,
        start=_UH_QUIET[0],
        end=_UH_QUIET[1],
        notes="80 s between the 16:25:27 micro-event and the 16:27:01 event; peak STA/LTA (0.1 s/5 s, 5-20 Hz) "
        "<= 7.2 here against 15-26 for the micro-event; no trigger at 3.5 with 0.5 s/10 s on 10-20 Hz.",
    )


_NOISE: tuple[NoiseRecording, ...] = (
    _uh_noise("UH1", "Z", 50.0),
    _uh_noise("UH2", "Z", 50.0),
    _uh_noise("UH3", "ZNE", 50.0),
    _uh_noise("UH4", "Z", 100.0),
    *(
        NoiseRecording(
            name=f"{net.lower()}_{sta.lower()}_2018-01-01",
            sampling_rate=40.0,
            components="Z",
            sources=(f"{_TSINDEX}{net}/2018/001/{net}.{sta}.{loc}.BHZ.2018.001_first_minute.mseed",),
            seed_ids=(f"{net}.{sta}.{loc}.BHZ",),
            start=U(t0),
            end=U(t0) + 2399 / 40.0 + (1 / 40.0 if extra else 0),
            notes="Broadband BHZ, first minute of 2018; 40 Hz (content up to ~16 Hz), upsample for a 100 Hz model.",
        )
        for net, sta, loc, t0, extra in (
            ("IU", "ANMO", "10", "2018-01-01T00:00:00.0195", False),
            ("IU", "COLA", "10", "2018-01-01T00:00:00.0195", False),
            ("CU", "TGUH", "00", "2018-01-01T00:00:00.000", True),
        )
    ),
    NoiseRecording(
        name="sk_mods_2016-01-06",
        sources=("io/mseed/tests/data/wrong_blockette_numbers_specified.mseed",),
        seed_ids=("SK.MODS..HHZ",),
        sampling_rate=100.0,
        components="Z",
        start=U("2016-01-06T23:59:05.8999"),
        end=U("2016-01-07T00:00:00.8099"),
        notes="55 s HHZ at 100 Hz; the file has a deliberately wrong blockette count (warning suppressed).",
    ),
    NoiseRecording(
        name="gt_bosa_2010-06-22",
        sources=("io/mseed/tests/data/dataquality-m.mseed",),
        seed_ids=("GT.BOSA.00.BHZ", "GT.BOSA.00.BHN", "GT.BOSA.00.BHE"),
        sampling_rate=40.0,
        components="ZNE",
        start=U("2010-06-22T22:26:07"),
        end=U("2010-06-22T22:26:47.825"),
        notes="3-component broadband noise, 40.8 s at 40 Hz (content up to ~16 Hz); large DC offsets.",
    ),
)

#: Long real noise reserved for TRAINING (cut into segments by `training_noise_segments`), never for evaluation.
_TRAINING_NOISE: tuple[NoiseRecording, ...] = (
    NoiseRecording(
        name="bw_kw1_2011-03-31",
        reader="columns",
        sources=(f"{_SIG}BW.KW1._.EHZ.D.2011.090_downsampled.asc.gz",),
        seed_ids=("BW.KW1..EHZ",),
        sampling_rate=100.0,
        components="Z",
        start=U("2011-03-31T00:00:00.18"),
        end=U("2011-03-31T00:00:00.18") + 936000 / 100.0,
        notes="2.6 h EHZ downsampled to 100 Hz (ObsPy's PPSD test: rate and start from test_spectral_estimation). "
        "NOT pure noise: two local events near 01:04:50 and 01:06:00 and weaker transients; "
        "training_noise_segments masks every STA/LTA trigger.",
    ),
)

#: Every file used for evaluation (events and noise); relative to the obspy package folder.
EVALUATION_SOURCES: frozenset[str] = frozenset(s for r in (*_EVENTS, *_NOISE) for s in r.sources)
#: Files used as real training noise; disjoint from EVALUATION_SOURCES.
TRAINING_NOISE_SOURCES: frozenset[str] = frozenset(s for r in _TRAINING_NOISE for s in r.sources)

#: Real waveforms deliberately not catalogued, with the reason (for reviewers; relative to the obspy folder).
EXCLUDED_SOURCES: dict[str, str] = {
    "realtime/tests/data/II.TLY.BHZ.SAC": "teleseism (2011-03-11 Tohoku at II.TLY), 20 Hz",
    "clients/fdsn/tests/data/dataselect_example.mseed": "teleseism (2010-02-27 Chile at IU.ANMO), 20 Hz",
    "io/sh/tests/data/tele2.evt": "Seismic Handler event/pick file, not a waveform",
    "signal/tests/data/IM.I59H1..BDF_2020_10_31.mseed": "infrasound (BDF), not seismic",
    "io/mseed/tests/data/CH.BALST..LH_two_channels": "1 Hz long-period, not comparable to 100 Hz windows",
    "signal/tests/data/IUANMO.seed": "1 Hz LHZ day file",
    "signal/tests/data/CRLZ.HHZ.10.NZ.SAC": "long signal from ~140 s of unclear origin; neither clean noise nor a "
    "pickable local event",
    "signal/tests/data/MBGA_Z.ASC": "Montserrat volcano station, 13 s at 75.19 Hz (volcanic)",
    "io/seisan/tests/data/9701-30-1048-54S.MVO_21_1": "Montserrat volcanic event, 75.19 Hz",
    "signal/tests/data/3cssan.hy.1.MBGA_Z": "computed attributes (expected results), not a waveform",
    "io/nied/tests/data/test.knet": "strong-motion earthquake record, horizontal EW only",
    "io/seisan/tests/data/2011-09-06-1311-36S.A1032_001BH_Z": "ambiguous onset (6 s or 30 s), not pickable",
    "signal/tests/data/ref_STS2": "1 h at 200 Hz with many transients of unknown origin",
    "io/win/tests/data/10030302.00": "unknown station/components; used by quakemon.data.synthetic as training noise",
    "io/dmx/tests/data/131114_090600.dmx": "Etna (volcanic tremor); used by quakemon.data.synthetic as noise",
}


def local_events() -> list[EventRecording]:
    """All catalogued real earthquake recordings (local ones first, then local/regional and regional)."""
    order = {"local": 0, "local/regional": 1, "regional": 2}
    return sorted(_EVENTS, key=lambda r: order.get(r.kind, 3))


def noise_recordings() -> list[NoiseRecording]:
    """Real noise recordings for evaluation (no earthquakes)."""
    return list(_NOISE)


def training_noise_recordings() -> list[NoiseRecording]:
    """Real noise recordings reserved for training (see `training_noise_segments`)."""
    return list(_TRAINING_NOISE)


# ------------------------------------------------------------------------------------------------------------ loading
def _read_columns(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """One number per line, with optional '#KEY value' header lines (the UNESCO short-course ASCII format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        text = f.read()
    header = dict(m.groups() for m in re.finditer(r"^#(\w+)\s+(.*?)\s*$", text, flags=re.M))
    data = np.loadtxt(text.splitlines(), comments="#", dtype=np.float64)
    return data, header


def _read_raw(rec: Recording) -> Stream:
    root = obspy_root()
    missing = [s for s in rec.sources if not (root / s).is_file()]
    if missing:
        raise QuakemonError(f"recording {rec.name!r}: file(s) {missing} not found under the ObsPy package {root}")
    if rec.reader == "example":
        return obspy.read()
    if rec.reader == "columns":
        st = Stream()
        for src, seed_id in zip(rec.sources, rec.seed_ids, strict=True):
            data, header = _read_columns(root / src)
            start = U(header["START_TIME"].replace(" ", "T")) if "START_TIME" in header else rec.start
            net, sta, loc, cha = seed_id.split(".")
            st += Trace(
                data,
                {
                    "network": net,
                    "station": sta,
                    "location": loc,
                    "channel": cha,
                    "sampling_rate": rec.sampling_rate,
                    "starttime": start,
                },
            )
        return st
    if rec.reader != "obspy":
        raise QuakemonError(f"recording {rec.name!r}: unknown reader {rec.reader!r}; expected obspy|example|columns")
    st = Stream()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deliberately broken test headers (e.g. wrong blockette counts)
        for src in rec.sources:
            st += obspy.read(str(root / src))
    return Stream([tr for tr in st if fnmatch(tr.id, rec.raw_select)])


def _component(channel: str) -> str:
    code = channel.strip().upper()
    return _COMPONENT_ALIASES.get(code, code[-1:] if code else "")


def _normalise(st: Stream, rec: Recording) -> Stream:
    """Give every trace its catalogued SEED id (matched by component letter) and a snapped sampling rate."""
    targets = {sid[-1]: sid for sid in rec.seed_ids}
    for tr in st:
        comp = _component(tr.stats.channel)
        if comp not in targets:
            raise QuakemonError(
                f"recording {rec.name!r}: trace {tr.id!r} has component {comp!r}; expected one of {sorted(targets)}"
            )
        tr.stats.network, tr.stats.station, tr.stats.location, tr.stats.channel = targets[comp].split(".")
        rate = tr.stats.sampling_rate
        if abs(rate - round(rate)) <= 1e-5 * rate:
            tr.stats.sampling_rate = float(round(rate))
        tr.data = np.asarray(tr.data, dtype=np.float64)
    return st


def load(recording: Recording, sampling_rate: float | None = None) -> Stream:
    """Read a catalogued recording from the installed ObsPy package as a merged float64 Stream.

    Traces carry the catalogued `seed_ids`, come in Z, N, E order and span [start, end]. With `sampling_rate`,
    traces at another rate are resampled (FFT method, `Trace.resample`).
    """
    st = _normalise(_read_raw(recording), recording)
    st.merge(method=1)
    if any(np.ma.isMaskedArray(tr.data) for tr in st):
        raise QuakemonError(f"recording {recording.name!r}: source has gaps; not expected for catalogued files")
    st.trim(recording.start, recording.end, nearest_sample=True)
    got = sorted(tr.id for tr in st)
    if got != sorted(recording.seed_ids):
        raise QuakemonError(f"recording {recording.name!r}: expected traces {sorted(recording.seed_ids)}, got {got}")
    if sampling_rate is not None:
        for tr in st:
            if tr.stats.sampling_rate != sampling_rate:
                tr.resample(float(sampling_rate))
    st.traces.sort(key=lambda tr: _COMPONENT_RANK.get(tr.stats.channel[-1], 9))
    log.debug("realdata_loaded", recording=recording.name, traces=len(st), sampling_rate=st[0].stats.sampling_rate)
    return st


def write_event_csv(path: str | Path, events: Sequence[EventRecording] | None = None) -> Path:
    """Write P times per station (columns network,station,location,p_time; ISO 8601 UTC) for `quakemon evaluate`.

    One row per P arrival (recordings with several events give several rows); events default to `local_events()`.
    """
    path = Path(path)
    rows = []
    for ev in local_events() if events is None else events:
        net, sta, loc = ev.station.split(".")
        rows += [(net, sta, loc, str(p)) for p in ev.p_times]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["network", "station", "location", "p_time"])
        writer.writerows(sorted(set(rows)))
    log.info("event_csv_written", path=str(path), rows=len(set(rows)))
    return path


def recording_by_name(name: str) -> Recording:
    """Look a catalogued recording (event, noise or training noise) up by name."""
    for rec in (*_EVENTS, *_NOISE, *_TRAINING_NOISE):
        if rec.name == name:
            return rec
    known = sorted(r.name for r in (*_EVENTS, *_NOISE, *_TRAINING_NOISE))
    raise QuakemonError(f"no real recording named {name!r}; known: {known}")
