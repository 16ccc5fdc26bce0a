"""Batched P-arrival picker: the detected window(s) of N stations in, one P pick per row out.

A detection's ``onset`` is the start of the first window whose probability passed ``on``; the P lies somewhere
inside that window (usually in its last seconds). This module turns such windows into a P pick with an
uncertainty, vectorised over the batch (numpy and scipy only, no per-sample Python loop). docs/picks.md has the
measurements on real earthquakes that chose the method and its parameters.

Method (``METHOD = "aic"``: Maeda's AIC on the band-passed vertical, with an SNR gate):

1. Each row's vertical (component 0) is checked (non-finite or constant: no pick), demeaned and band-passed
   (causal Butterworth, `PickerConfig.freqmin`..`freqmax`, started in its steady state for the first sample so
   the row start gives no step transient). Causal, so no energy of the P leaks to before its onset.
2. ``AIC(k) = k log var(x[:k]) + (n - k - 1) log var(x[k:])`` over the search span (default: the row less its
   first `edge_s`), computed for every k at once from cumulative sums. Only splits where the variance rises
   count (an onset, not the decay of a coda). The minimum is the pick.
3. Quality: ``snr`` = RMS over `signal_s` from the pick / RMS over the `noise_s` ending `gap_s` before it. Below
   `min_snr` the row gets no pick (NaN time) but keeps its SNR, so pure noise reports a low quality rather than a
   spurious pick.
4. Uncertainty (1 sigma, seconds): the AIC is -2 log-likelihood of a change point at k (Gaussian segments) up to a
   constant, so ``w_k = exp(-(AIC_k - AIC_min) / 2)``, normalised, is the relative likelihood of the onset at k;
   its standard deviation ``sigma_aic`` is the statistical part. Real noise is not white and onsets are not
   steps, which makes that part over-confident at low SNR, so ``uncertainty_s = max(min_uncertainty_s,
   hypot(sigma_aic, snr_uncertainty_s / snr))``: about 0.3 s at SNR 3, 0.1 s at SNR 10, the floor above SNR 20.

Only the vertical is used (the P is strongest there; a vertical-only station is picked exactly like a three-component
one). A row whose vertical is unusable gives no pick and NaN SNR, without raising.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import structlog
from scipy.signal import butter, sosfilt, sosfilt_zi

log = structlog.get_logger(__name__)

_NS = 1_000_000_000

#: Name of the picking method, reported with each pick.
METHOD = "aic"
#: `pick_every_row`: the ungated AIC pick of a row whose SNR is below the gate.
METHOD_LOW_SNR = "aic_low_snr"
#: `pick_every_row`: no onset found (unusable data, or a decaying coda); the middle of the search span.
METHOD_WINDOW = "window"


@dataclass(frozen=True)
class PickerConfig:
    """Parameters of `pick_p` (defaults chosen on the real-data catalogue, see docs/picks.md).

    freqmin, freqmax, corners: causal Butterworth band-pass applied before the AIC (Hz, Hz, order); freqmax is
                       capped at 0.9 x Nyquist.
    edge_s:            the default search span leaves out the row's first seconds (the filter settling).
    min_segment_s:     an AIC split leaves at least this much on either side of the span.
    noise_s, gap_s, signal_s: the SNR's noise span (ending gap_s before the pick) and signal span (from it).
    min_snr:           below this SNR a row gets no pick.
    snr_uncertainty_s, min_uncertainty_s: the uncertainty rule (module docstring, step 4).
    fallback_uncertainty_s: the least uncertainty of a `pick_every_row` pick below the SNR gate.
    """

    freqmin: float = 2.0
    freqmax: float = 20.0
    corners: int = 4
    edge_s: float = 0.5
    min_segment_s: float = 0.1
    noise_s: float = 2.0
    gap_s: float = 0.1
    signal_s: float = 1.0
    min_snr: float = 2.5
    snr_uncertainty_s: float = 1.0
    min_uncertainty_s: float = 0.05
    fallback_uncertainty_s: float = 2.0


@dataclass(frozen=True)
class Pick:
    """One P pick: absolute time (ns since the epoch), 1-sigma uncertainty (s), method name and SNR."""

    time_ns: int
    uncertainty_s: float
    method: str
    snr: float

    def to_dict(self) -> dict[str, Any]:
        return {"time_ns": self.time_ns, "uncertainty_s": self.uncertainty_s, "method": self.method, "snr": self.snr}


@dataclass(frozen=True)
class PickBatch:
    """Picks of N rows. ``offset_s`` is seconds after each row's ``start_ns``; NaN offset: no credible pick."""

    start_ns: np.ndarray  # int64 [N]
    offset_s: np.ndarray  # float64 [N], NaN: no pick
    uncertainty_s: np.ndarray  # float64 [N], NaN: no pick
    snr: np.ndarray  # float64 [N], NaN: no usable data
    method: str = METHOD
    methods: tuple[str, ...] = ()  # per row when rows differ (`pick_every_row`); empty: `method` for all

    def method_of(self, i: int) -> str:
        """The method of row i."""
        return self.methods[i] if self.methods else self.method

    def __len__(self) -> int:
        return int(self.offset_s.shape[0])

    @property
    def picked(self) -> np.ndarray:
        """bool [N]: rows with a pick."""
        return np.isfinite(self.offset_s)

    @property
    def time_ns(self) -> np.ndarray:
        """int64 [N] pick times in ns since the epoch; rows without a pick hold the row start (see `picked`)."""
        off = np.where(self.picked, self.offset_s, 0.0)
        return self.start_ns + np.round(off * _NS).astype(np.int64)

    def picks(self) -> list[Pick | None]:
        """One `Pick` per row, None where there is no credible pick."""
        times, ok = self.time_ns.tolist(), self.picked.tolist()
        return [Pick(int(t), float(u), self.method_of(i), float(s)) if p else None
                for i, (t, u, s, p) in enumerate(zip(times, self.uncertainty_s.tolist(), self.snr.tolist(), ok,
                                                     strict=True))]


# --------------------------------------------------------------------------------------------------- building blocks
def _sos(config: PickerConfig, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(sos, its steady-state initial conditions `sosfilt_zi(sos)`) of the picker's band-pass; the second is
    read-only (sosfilt takes only a writable sos, so each call gets its own copy of the first)."""
    sos, zi = _design(config.corners, float(config.freqmin), float(config.freqmax), float(sampling_rate))
    return sos.copy(), zi


@lru_cache(maxsize=64)
def _design(corners: int, freqmin: float, freqmax: float, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    # The design costs more than filtering a row; a detector picks one or a few rows at a time, always with the
    # same band, so each design is made once.
    nyq = 0.5 * sampling_rate
    hi = min(freqmax, 0.9 * nyq)
    if not 0 < freqmin < hi:
        raise ValueError(f"picker band {freqmin}-{freqmax} Hz does not fit {sampling_rate} Hz data")
    sos = butter(corners, [freqmin / nyq, hi / nyq], btype="band", output="sos")
    zi = sosfilt_zi(sos)
    zi.flags.writeable = False
    return sos, zi


def prepare_vertical(data: np.ndarray, sampling_rate: float, config: PickerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(band-passed float64 vertical [N, S], usable bool [N]) from data [N, C, S] or [N, S] (vertical only).

    Unusable rows (non-finite or constant vertical) come back as zeros."""
    x = np.asarray(data)
    z = x[:, 0, :] if x.ndim == 3 else x
    if z.ndim != 2:
        raise ValueError(f"data must be [N, C, S] or [N, S], got shape {x.shape}")
    z = z.astype(np.float64)  # a copy: windows may be read-only views
    finite = np.isfinite(z).all(axis=1)
    z[~finite] = 0.0
    z -= z.mean(axis=1, keepdims=True)
    usable = finite & (np.abs(z).max(axis=1, initial=0.0) > 0.0)
    sos, zi_unit = _sos(config, sampling_rate)
    # start the filter in its steady state for the first sample's value (no step transient at the row start)
    zi = zi_unit[:, None, :] * z[None, :, :1]  # [sections, N, 2]
    y, _ = sosfilt(sos, z, axis=1, zi=zi)
    y[~usable] = 0.0
    return y, usable


def aic_curves(seg: np.ndarray, min_segment: int = 1, rising: bool = True) -> np.ndarray:
    """Maeda's AIC of each row of seg [N, L] at every split k (the first k samples vs the rest), via cumulative sums.

    Splits leaving fewer than `min_segment` (at least 2) samples on a side are +inf, and so are splits where the
    variance does not rise when `rising`."""
    n = seg.shape[1]
    m = max(int(min_segment), 2)
    s1 = np.cumsum(seg, axis=1)
    s2 = np.cumsum(seg * seg, axis=1)
    k = np.arange(1, n + 1, dtype=np.float64)  # samples in the first part when the split is after index k-1
    tot1, tot2 = s1[:, -1:], s2[:, -1:]
    rest = n - k
    var1 = s2 / k - (s1 / k) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        var2 = (tot2 - s2) / rest - ((tot1 - s1) / rest) ** 2
    tiny = np.maximum(1e-30 * tot2 / n, 1e-300)  # keeps log() finite on flat stretches
    with np.errstate(invalid="ignore"):
        aic = k * np.log(np.maximum(var1, tiny)) + (rest - 1) * np.log(np.maximum(var2, tiny))
    if rising:  # an onset raises the variance: splits where it falls (a coda's decay) are not onsets
        aic[~(var2 > var1)] = np.inf
    out = np.full_like(seg, np.inf)
    # out[:, j] is the split *before* sample j (j samples in the first part): aic computed with k = j
    out[:, m:n - m + 1] = aic[:, m - 1:n - m]
    return out


def _gather(y: np.ndarray, lo: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows y[i, lo[i]:lo[i] + length] (lo clipped into the row) and the clipped lo."""
    lo = np.clip(lo, 0, max(y.shape[1] - length, 0))
    idx = lo[:, None] + np.arange(min(length, y.shape[1]))[None, :]
    return np.take_along_axis(y, idx, axis=1), lo


def aic_onset(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, min_segment: int) -> tuple[np.ndarray, np.ndarray]:
    """(onset sample [N], AIC curve [N, L]) of the AIC minimum of each row's span y[i, lo[i]:hi[i]].

    The onset is the first sample of the second segment. Each row's curve is computed on its own span (rows are
    grouped by span length) and padded with +inf to the longest span; rows whose span is too short give -1."""
    lengths = np.maximum(hi - lo, 0)
    length = int(lengths.max(initial=0))
    if length < 2 * max(min_segment, 2) + 1:
        return np.full(y.shape[0], -1, np.int64), np.full((y.shape[0], max(length, 1)), np.inf)
    if (lengths == length).all():
        seg, lo = _gather(y, lo, length)
        curve = aic_curves(seg, min_segment)
    else:  # rows of different span lengths: group them by length (few distinct lengths in practice)
        curve = np.full((y.shape[0], length), np.inf)
        for n in np.unique(lengths):
            rows = np.flatnonzero(lengths == n)
            if n >= 2 * max(min_segment, 2) + 1:
                seg, _ = _gather(y[rows], lo[rows], int(n))
                curve[rows, :n] = aic_curves(seg, min_segment)
    onset = np.where(np.isfinite(curve).any(axis=1), lo + np.argmin(curve, axis=1), -1)
    return onset, curve


def _rms(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """RMS of y[i, lo[i]:hi[i]] per row (bounds clipped into the row); NaN for empty spans."""
    n = y.shape[1]
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    c2 = np.concatenate([np.zeros((y.shape[0], 1)), np.cumsum(y * y, axis=1)], axis=1)
    rows = np.arange(y.shape[0])
    count = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.sqrt((c2[rows, hi] - c2[rows, lo]) / np.maximum(count, 1)), np.nan)


def _snr(y: np.ndarray, onset: np.ndarray, cfg: PickerConfig, fs: float) -> np.ndarray:
    """RMS over `signal_s` from onset / RMS over `noise_s` ending `gap_s` before it; NaN where undefined."""
    noise = _rms(y, onset - int(round((cfg.gap_s + cfg.noise_s) * fs)), onset - int(round(cfg.gap_s * fs)))
    signal = _rms(y, onset, onset + int(round(cfg.signal_s * fs)))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise > 0, signal / noise, np.nan)
    return np.where((noise == 0) & (signal > 0), np.inf, snr)


def _span(search: Any, n_rows: int, n_samples: int, sampling_rate: float,
          edge_s: float) -> tuple[np.ndarray, np.ndarray]:
    if search is None:
        search = (edge_s, n_samples / sampling_rate)
    lo_s, hi_s = search
    lo = np.broadcast_to(np.round(np.asarray(lo_s, dtype=np.float64) * sampling_rate), (n_rows,)).astype(np.int64)
    hi = np.broadcast_to(np.round(np.asarray(hi_s, dtype=np.float64) * sampling_rate), (n_rows,)).astype(np.int64)
    return np.clip(lo, 0, n_samples), np.clip(hi, 0, n_samples)


# ---------------------------------------------------------------------------------------------------------- the picker
def pick_p(data: np.ndarray, start_ns: np.ndarray | int, sampling_rate: float, *,
           search: tuple[Any, Any] | None = None, config: PickerConfig | None = None) -> PickBatch:
    """Pick the P arrival in each row of data [N, C, S] (components in the contract's order, vertical first) or
    [N, S] (vertical only), sampled at `sampling_rate`, row i starting at start_ns[i] (ns since the epoch).

    search: (lo_s, hi_s), seconds after each row's start (scalars or [N] arrays) where the P may lie; default
    the row less its first `PickerConfig.edge_s`. The detector's first window over ``on`` holds the P, so that
    window is what to pass (or a longer span holding it, e.g. with a few seconds of the data before it).
    Returns a `PickBatch`; rows without a credible pick have NaN offset and uncertainty. Raises ValueError only
    for a malformed call (data not 2-D/3-D, a band that does not fit the sampling rate), never for bad samples.
    """
    cfg = config or PickerConfig()
    fs = float(sampling_rate)
    x = np.asarray(data)
    n_rows = x.shape[0]
    start = np.broadcast_to(np.asarray(start_ns, dtype=np.int64), (n_rows,)).copy()
    nan = np.full(n_rows, np.nan)
    if n_rows == 0:
        return PickBatch(start, nan, nan.copy(), nan.copy())
    y, usable = prepare_vertical(x, fs, cfg)
    n = y.shape[1]
    min_seg = max(int(round(cfg.min_segment_s * fs)), 2)
    lo, hi = _span(search, n_rows, n, fs, cfg.edge_s)

    onset, curve = aic_onset(y, lo, hi, min_seg)
    ok = usable & (onset >= 0)

    # uncertainty: spread of the relative likelihood exp(-dAIC/2) of the change point (module docstring)
    finite = np.isfinite(curve)
    best = np.min(np.where(finite, curve, np.inf), axis=1, keepdims=True)
    d = np.where(finite, curve - np.where(np.isfinite(best), best, 0.0), np.inf)
    w = np.exp(-0.5 * d)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    pos = np.arange(curve.shape[1], dtype=np.float64)[None, :]
    mean = (w * pos).sum(axis=1, keepdims=True)
    sigma = np.sqrt((w * (pos - mean) ** 2).sum(axis=1)) / fs
    snr = np.where(ok, _snr(y, onset, cfg, fs), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        unc = np.maximum(np.hypot(sigma, cfg.snr_uncertainty_s / snr), cfg.min_uncertainty_s)

    good = ok & ((snr >= cfg.min_snr) | (cfg.min_snr == -np.inf))  # -inf: no gate, even where the SNR is NaN
    offset = np.where(good, onset / fs, np.nan)
    log.debug("picked", rows=n_rows, picked=int(good.sum()), unusable=int((~usable).sum()))
    return PickBatch(start, offset, np.where(good, unc, np.nan), snr)


def pick_every_row(data: np.ndarray, start_ns: np.ndarray | int, sampling_rate: float, *,
                   search: tuple[Any, Any] | None = None, config: PickerConfig | None = None) -> PickBatch:
    """`pick_p`, but every row gets a pick (what a detection carries); `PickBatch.methods` says how each was made:

    * ``"aic"``: `pick_p`'s pick (SNR at or above the gate), its uncertainty;
    * ``"aic_low_snr"``: below the SNR gate, the ungated AIC minimum, with uncertainty
      ``max(rule, fallback_uncertainty_s)`` (the rule of the module docstring, step 4): such picks are often
      right within a second, sometimes a later phase, so they come with a large error bar rather than not at all;
    * ``"window"``: no onset in the span (an unusable vertical, non-finite or constant; or a span whose variance
      only falls, e.g. a window that starts in a coda): the middle of the search span, with its spread
      (span / sqrt(12), a uniform position) as the uncertainty, and NaN SNR.
    """
    cfg = config or PickerConfig()
    fs = float(sampling_rate)
    raw = pick_p(data, start_ns, fs, search=search, config=replace(cfg, min_snr=-np.inf))
    n_rows = len(raw)
    if n_rows == 0:
        return replace(raw, methods=())
    lo, hi = _span(search, n_rows, np.asarray(data).shape[-1], fs, cfg.edge_s)
    picked = raw.picked
    gated = picked & ~(raw.snr >= cfg.min_snr)
    offset = np.where(picked, raw.offset_s, 0.5 * (lo + hi) / fs)
    unc = np.where(picked, raw.uncertainty_s, np.maximum((hi - lo) / fs / np.sqrt(12.0), cfg.min_uncertainty_s))
    unc = np.where(gated, np.fmax(unc, cfg.fallback_uncertainty_s), unc)
    methods = np.where(picked, np.where(gated, METHOD_LOW_SNR, METHOD), METHOD_WINDOW)
    return PickBatch(raw.start_ns, offset, unc, raw.snr, METHOD, tuple(methods.tolist()))


def is_new_p(fresh: Pick, earlier: Pick, after_s: float) -> bool:
    """Whether `fresh` (a window's pick) is a clearly new P after an open detection's pick `earlier`: it passes
    the SNR gate (method ``"aic"``) and lies `after_s` or more after `earlier`. With `after_s` longer than local
    S-P times, the S wave of the same event is not a new P (`quakemon.pipeline.settings.TriggerSettings`)."""
    return fresh.method == METHOD and fresh.time_ns - earlier.time_ns >= int(round(after_s * _NS))
