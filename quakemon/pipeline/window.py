"""The model input cut by the station windower (`Window`) and the window grid arithmetic it shares."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from obspy import UTCDateTime

from quakemon.base.timegrid import rate_fraction
from quakemon.models.contract import InputContract

_NS = 1_000_000_000


@dataclass(frozen=True, eq=False)
class Window:
    """One model input: `data[C, window_samples]` in `component_order`, starting at `start_ns`.

    `data` may be a read-only view that overlaps the windows before and after it (a steady-state run, see
    `run`): copy it before changing it."""

    station: str  # "NET.STA.LOC"
    instrument: str  # band + instrument code, e.g. "EH"
    start_ns: int  # integer ns since the epoch; a multiple of the stride
    sampling_rate: float  # the contract's rate (after resampling)
    data: np.ndarray
    component_order: str
    missing_fraction: float = 0.0  # share of samples filled by interpolation
    components: tuple[str, ...] = ()  # components with at least one real sample in the window
    constant: tuple[str, ...] = ()  # components whose real samples are all equal (dead/flat channel)
    source_rate: float = 0.0  # the station's own rate before resampling
    # (the [K, C, N] array of a steady-state run, this window's row in it): data is run[0][run[1]], and
    # `stack_windows` takes consecutive rows of one run as one array
    run: tuple[np.ndarray, int] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[-1])

    @property
    def end_ns(self) -> int:
        """Exclusive end: start + window_samples / sampling_rate."""
        return self.start_ns + round(self.n_samples * _NS / self.sampling_rate)

    @property
    def start(self) -> UTCDateTime:
        return UTCDateTime(ns=self.start_ns)

    @property
    def end(self) -> UTCDateTime:
        return UTCDateTime(ns=self.end_ns)

    @property
    def network(self) -> str:
        return self.station.split(".")[0]

    def same_as(self, other: Window) -> bool:
        """Bit-for-bit equality of everything a window carries."""
        return (
            (self.station, self.instrument, self.start_ns, self.sampling_rate, self.component_order)
            == (other.station, other.instrument, other.start_ns, other.sampling_rate, other.component_order)
            and self.data.dtype == other.data.dtype
            and self.data.shape == other.data.shape
            and self.data.tobytes() == other.data.tobytes()
            and self.missing_fraction == other.missing_fraction
            and self.components == other.components
            and self.constant == other.constant
        )


def rate_supported(rate: Fraction, contract: InputContract, stride_s: float) -> bool:
    """Can windows of `contract` every `stride_s` be cut at this rate (both on whole samples)?"""
    stride = Fraction(round(stride_s * _NS), _NS) * rate
    window = Fraction(contract.window_samples) * rate / rate_fraction(contract.sampling_rate)
    return stride.denominator == 1 and window.denominator == 1


def window_grid_start(t_ns: int, stride_s: float) -> int:
    """The grid window start (ns) at or after `t_ns` for a stride in seconds."""
    stride_ns = round(stride_s * _NS)
    return -(-t_ns // stride_ns) * stride_ns



__all__ = ["Window", "rate_supported", "window_grid_start"]
