"""ObsPy Streams to the model's input array: component mapping, resampling and merging for one station.

The boundary where seismologists' vocabulary (Stream/Trace, SEED channel codes) meets the contract's
[C, N] float64 array. Training (`WaveformDataAdapter`) and the bundle builder use it; the streaming path
builds its arrays in `quakemon.pipeline.windowing` from the same contract.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import obspy
import structlog

from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract

log = structlog.get_logger(__name__)


def stream_to_array(stream: obspy.Stream, contract: InputContract) -> np.ndarray:
    """One station's Stream -> float64 [C, N] in contract.component_order at contract.sampling_rate.

    Channel codes map by their last letter: Z -> Z; N/E when both exist, else the two numeric horizontals
    (1/2 or 2/3) in ascending order -> N, E. Split traces are merged; gaps and unequal spans become NaN
    (DROP_NAN's business). Traces at another rate are resampled (scipy.signal.resample_poly, an
    anti-aliased polyphase filter) before merging. Raises ContractError naming NET.STA.LOC for a missing,
    ambiguous or mixed-station input.
    """
    if len(stream) == 0:
        raise ContractError("empty Stream: no traces to build a window from")
    stations = sorted({_station_id(tr) for tr in stream})
    if len(stations) != 1:
        raise ContractError(f"a Stream must hold one station (NET.STA.LOC), got {stations}")
    station = stations[0]
    bands = sorted({tr.stats.channel[:-1] for tr in stream})
    if len(bands) != 1:
        raise ContractError(
            f"station {station}: traces from several instruments {bands} "
            f"(channels {sorted({tr.stats.channel for tr in stream})}); select one band/instrument"
        )
    mapping = _component_mapping({tr.stats.channel[-1:] for tr in stream}, contract.component_order, station)
    fs = contract.sampling_rate
    by_component: dict[str, list[Any]] = {}
    for tr in stream:
        tr = tr.copy()
        if not math.isclose(tr.stats.sampling_rate, fs, rel_tol=1e-6):
            tr = _resample(tr, fs, station)
        by_component.setdefault(tr.stats.channel[-1:], []).append(tr)
    merged = {code: _merge(traces, station) for code, traces in by_component.items()}
    t0 = min(tr.stats.starttime for tr in merged.values())
    offsets = {code: round((tr.stats.starttime - t0) * fs) for code, tr in merged.items()}
    length = max(offsets[code] + tr.stats.npts for code, tr in merged.items())
    out = np.full((contract.n_channels, length), np.nan)
    for row, letter in enumerate(contract.component_order):
        code = mapping[letter]
        data = merged[code].data
        values = np.ma.asarray(data, dtype=np.float64).filled(np.nan) if np.ma.isMaskedArray(data) else data
        out[row, offsets[code] : offsets[code] + len(values)] = values
    return out


def _station_id(tr: Any) -> str:
    s = tr.stats
    return f"{s.network}.{s.station}.{s.location}"


def _component_mapping(codes: set[str], order: str, station: str) -> dict[str, str]:
    """contract letter -> channel component code present in the stream (see stream_to_array)."""
    mapping: dict[str, str] = {}
    horizontals = sorted(codes & {"1", "2", "3"})
    for letter in order:
        if letter in codes:
            mapping[letter] = letter
        elif letter in "NE" and not {"N", "E"} & codes and len(horizontals) == 2:
            mapping[letter] = horizontals["NE".index(letter)]
    missing = [letter for letter in order if letter not in mapping]
    if missing:
        raise ContractError(
            f"station {station}: missing component(s) {missing} for component_order {order!r}; "
            f"present: {sorted(codes)} (accepted: Z, N/E, or two of 1/2/3 for N, E)"
        )
    return mapping


def _resample(tr: Any, fs: float, station: str) -> Any:
    ratio = Fraction(fs / tr.stats.sampling_rate).limit_denominator(1000)
    if not math.isclose(float(ratio), fs / tr.stats.sampling_rate, rel_tol=1e-6):
        raise ContractError(
            f"station {station} {tr.stats.channel}: cannot resample {tr.stats.sampling_rate} Hz to {fs} Hz "
            "by a rational factor with denominator <= 1000"
        )
    from scipy.signal import resample_poly

    log.debug("resampling", station=station, channel=tr.stats.channel, from_hz=tr.stats.sampling_rate, to_hz=fs)
    data = np.asarray(tr.data, dtype=np.float64)
    tr.data = resample_poly(data, ratio.numerator, ratio.denominator)
    tr.stats.sampling_rate = fs
    return tr


def _merge(traces: list[Any], station: str) -> Any:
    from obspy import Stream

    if len(traces) == 1:
        return traces[0]
    for tr in traces:
        tr.data = np.asarray(tr.data, dtype=np.float64)
    st = Stream(traces).merge(method=1, fill_value=None)
    if len(st) != 1:
        raise ContractError(f"station {station}: cannot merge traces {[tr.id for tr in traces]}")
    return st[0]
