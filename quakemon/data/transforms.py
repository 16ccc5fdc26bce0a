"""The one preprocessing implementation: waveform windows [B, C, N] -> float32 spectrograms [B, C, F, T].

Training (`quakemon.data.adapter.WaveformDataAdapter`) and streaming (the preprocessing worker) both call
`preprocess_batch`, so a model sees the same numbers live as in training. Everything is batched tensor
algebra in torch (CPU or any device; only BANDPASS goes through scipy on the CPU): no per-window Python loop.
Transforms run in `quakemon.contract.KNOWN_TRANSFORMS` order, as named in the model's `InputContract.transforms`:

DROP_NAN     Non-finite samples (NaN, +-inf) are *repaired*, not dropped: every run of them is linearly
             interpolated between its finite neighbours (held at the nearest finite value at the edges; a
             channel with no finite sample becomes zeros). Linear fill, not zero fill, because a zero-filled
             gap in raw counts is a step, and a step looks like an impulsive event in a spectrogram. A window
             whose worst channel has more than `max_nan_fraction` (default 0.1, RELIABILITY.md #10, or
             `contract.extra["max_nan_fraction"]`) non-finite samples is flagged `valid=False`. Rows are never
             removed here: the caller counts and drops them (the adapter drops such events; streaming skips
             inference for them). `nan_fraction` counts only the samples TRIMMING keeps. Without DROP_NAN
             nothing is repaired and any non-finite sample makes the window invalid (its output is zeroed).
DETREND      Removes the least-squares line per channel (scipy.signal.detrend(type="linear")), over the whole
             input. Optional: useful for stations with drift or a large DC offset before TAPER/BANDPASS.
TRIMMING     Cuts or pads to `contract.window_samples`, aligned at the start: the first window_samples samples
             are kept (a streaming window and a training event are both cut from their start time, so an
             onset keeps its position); a shorter input is padded at the end. The padding is excluded from the
             ZSCORE statistics and is exactly zero in the z-scored waveform (i.e. it sits at the channel mean),
             so a short event does not get a step to zero counts. Without TRIMMING the output length follows N.
TAPER        Tukey (cosine) window with a 5 % ramp at each end (scipy.signal.windows.tukey(n, alpha=0.1)) over
             the real samples. Optional: reduces edge leakage, mainly before BANDPASS.
BANDPASS     Zero-phase Butterworth band-pass (scipy.signal.sosfiltfilt), corners from
             `contract.extra["bandpass_hz"] = [fmin, fmax]`, order `contract.extra.get("bandpass_order", 4)`.
             Runs on the CPU (scipy); optional, for models trained on a band.
ZSCORE       Per window and channel: (x - mean) / std (population std) over the real samples. A dead channel
             (std <= 10 * eps * |mean|, eps of the working precision: constant, or an all-NaN channel after
             DROP_NAN) gives zeros, never inf/NaN, and is reported in `dead` (also without ZSCORE). Dead
             channels do not make a window invalid: the caller decides.
SPECTROGRAM  |STFT| exactly as `np.abs(scipy.signal.stft(x, window="hann", nperseg, noverlap=nperseg - hop,
             boundary="zeros", padded=True)[2])`: periodic Hann window, nperseg//2 zeros at both ends, zeros at
             the end to fill the last segment, scaled by 1 / sum(window). No log, no further normalisation.
             F = nperseg // 2 + 1, T = `contract.spectrogram_shape[1]` (33 x 64 for 64/32 and 2000 samples).
             Without SPECTROGRAM the output is the transformed waveform [B, C, N'].

The output is always finite float32 (a last guard zeroes anything non-finite, e.g. a float32 overflow without
ZSCORE). Precision: the steps up to the mean removal run in float64 (float32 input stays float32), since raw
counts with a large offset lose their signal in float32; the centred signal and the STFT run in `dtype`
(float32 by default: within ~3e-7 of scipy relative to the spectrogram peak; float64 matches bin for bin).
Speed: the STFT is a batched matrix product with a windowed DFT matrix, so the same code runs on a GPU
(`device="cuda"`); on a CPU shared with other processes, one torch thread per worker process is the
efficient setting (torch.set_num_threads(1)), since OpenMP threads spin when their cores are busy.

`stream_to_array` turns one station's ObsPy Stream into the [C, N] array the contract expects: component
mapping, merging of split traces (gaps become NaN, handled by DROP_NAN) and resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from quakemon.contract import InputContract
from quakemon.errors import ContractError

if TYPE_CHECKING:  # obspy is only needed by callers that hand us Streams
    import obspy

log = structlog.get_logger(__name__)

DEFAULT_MAX_NAN_FRACTION = 0.1
TAPER_FRACTION = 0.05  # per side


@dataclass(frozen=True)
class PreprocessResult:
    """Output of `preprocess_batch`; numpy arrays for numpy input, torch tensors (on the device) for tensor input.

    spectrograms: float32 [B, C, F, T] (the waveform [B, C, N'] when SPECTROGRAM is not in the contract).
    valid:        bool [B]; False when the worst channel's non-finite fraction exceeds max_nan_fraction.
    dead:         bool [B, C]; constant (zero-variance) channels, output zeros under ZSCORE.
    nan_fraction: float32 [B]; worst channel's fraction of non-finite samples in the kept window.
    """

    spectrograms: Any
    valid: Any
    dead: Any
    nan_fraction: Any


def preprocess_batch(
    x: np.ndarray | torch.Tensor,
    contract: InputContract,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    max_nan_fraction: float | None = None,
) -> PreprocessResult:
    """Apply the contract's transforms to a batch of windows x [B, C, N] (any real dtype: float64, int32 counts).

    device: where to compute (default: x's device, CPU for numpy). Output type follows the input type.
    """
    as_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x.detach()
    if t.ndim != 3:
        raise ContractError(f"preprocess_batch expects windows [B, C, N], got shape {tuple(t.shape)}")
    if t.shape[1] != contract.n_channels:
        raise ContractError(
            f"expected {contract.n_channels} channels ({contract.component_order}), got {t.shape[1]} "
            f"(shape {tuple(t.shape)})"
        )
    if t.shape[-1] == 0:
        raise ContractError(f"windows have no samples (shape {tuple(t.shape)})")
    if t.is_complex() or t.dtype == torch.bool:
        raise ContractError(f"waveforms must be real numbers, got dtype {t.dtype}")
    dev = torch.device(device) if device is not None else t.device
    # Steps up to the centring run in float64 (float32 input stays float32): raw counts with a large offset
    # lose their signal in float32. The centred signal and the STFT are computed in `dtype`.
    work = torch.promote_types(t.dtype if t.is_floating_point() else torch.float64, dtype)
    t = t.to(device=dev, dtype=work)
    if max_nan_fraction is None:
        max_nan_fraction = float(contract.extra.get("max_nan_fraction", DEFAULT_MAX_NAN_FRACTION))
    ops = set(contract.transforms)
    b, c, n = t.shape
    window = contract.window_samples if "TRIMMING" in ops else n
    n_real = min(n, window)

    untouched = t
    nonfinite_rows, t, row_sums = _drop_nan(t, repair="DROP_NAN" in ops)
    if nonfinite_rows is None:
        nan_fraction = torch.zeros(b, dtype=torch.float32, device=dev)
    else:
        nan_fraction = nonfinite_rows[..., :n_real].float().mean(-1).amax(-1)
    valid = nan_fraction <= max_nan_fraction if "DROP_NAN" in ops else nan_fraction == 0
    if "DETREND" in ops:
        t = _detrend(t)
    t = t[..., :n_real]  # TRIMMING's cut; its padding is added below (stats exclude it)
    if "TAPER" in ops:
        t = t * _tukey(n_real, work, dev)
    if "BANDPASS" in ops:
        t = _bandpass(t, contract)

    # ZSCORE statistics over the real samples; the centred signal is written straight into the zero-padded
    # buffer the STFT reads (one pass), and 1/std is applied to the (smaller) magnitude at the end.
    pad_left = contract.stft_nperseg // 2 if "SPECTROGRAM" in ops else 0
    length = _stft_length(window, contract.stft_nperseg, contract.stft_hop) if "SPECTROGRAM" in ops else window
    padded = torch.empty(b, c, length, dtype=dtype, device=dev)
    padded[..., :pad_left] = 0
    padded[..., pad_left + n_real :] = 0
    signal = padded[..., pad_left : pad_left + n_real]
    if row_sums is not None and t.data_ptr() == untouched.data_ptr() and n_real == n:
        mean = row_sums / n  # the finiteness check already summed these very samples
    else:
        mean = t.mean(-1, keepdim=True)
    if dev.type == "cpu":  # numpy subtracts in the working precision and casts on the fly, without a temporary
        np.subtract(t.numpy(), mean.numpy(), out=signal.numpy(), casting="same_kind")
    else:
        torch.sub(t, mean, out=signal)
    std = (torch.linalg.vector_norm(signal, dim=-1, keepdim=True) / math.sqrt(n_real)).to(work)
    dead_k = std <= 10 * torch.finfo(work).eps * mean.abs()
    dead = dead_k[..., 0]
    if "ZSCORE" in ops:
        scale = torch.where(dead_k, 0.0, 1.0 / torch.where(dead_k, 1.0, std)).to(dtype)
    else:
        scale = None
        signal.copy_(t)  # no ZSCORE: the raw (transformed) samples, not centred

    if "SPECTROGRAM" in ops:
        out = _stft_magnitude(padded, contract.stft_nperseg, contract.stft_hop)  # [B, C, F, T]
        if scale is not None:
            out.mul_(scale[..., None])
    else:
        out = padded if scale is None else padded.mul_(scale)
    out = out.to(torch.float32, memory_format=torch.contiguous_format)
    # z-scored output with finite std is bounded; anything else gets the guard (e.g. float32 overflow)
    if ("ZSCORE" not in ops or not torch.isfinite(std).all()) and not torch.isfinite(out.sum()):
        out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    if as_numpy:
        return PreprocessResult(out.cpu().numpy(), valid.cpu().numpy(), dead.cpu().numpy(), nan_fraction.cpu().numpy())
    return PreprocessResult(out, valid, dead, nan_fraction)


def _drop_nan(t: torch.Tensor, *, repair: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(non-finite mask or None when all finite, t with non-finite runs interpolated when repair, row sums).

    The row sums [B, C, 1] come from the cheap finiteness check (NaN/inf anywhere makes a sum non-finite) and
    are returned, for reuse as the ZSCORE mean, only when every sample is finite.
    """
    sums = t.sum(-1, keepdim=True)
    if torch.isfinite(sums).all():
        return None, t, sums
    bad = ~torch.isfinite(t)
    if not bad.any():  # a sum overflowed, the data are fine
        return None, t, None
    if not repair:
        return bad, t, None
    rows = bad.flatten(0, 1).any(-1)
    flat = t.flatten(0, 1).clone()
    flat[rows] = _interpolate_nonfinite(flat[rows], bad.flatten(0, 1)[rows])
    return bad, flat.view_as(t), None


def _interpolate_nonfinite(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Linear interpolation over non-finite runs of each row of x [R, N]; edges hold, empty rows become 0."""
    n = x.shape[-1]
    idx = torch.arange(n, device=x.device).expand_as(x)
    prev = torch.where(bad, -1, idx).cummax(-1).values  # last finite index <= i, or -1
    nxt = torch.where(bad, n, idx).flip(-1).cummin(-1).values.flip(-1)  # next finite index >= i, or n
    finite = torch.where(bad, torch.zeros_like(x), x)
    pv = finite.gather(-1, prev.clamp(min=0))
    nv = finite.gather(-1, nxt.clamp(max=n - 1))
    has_prev, has_next = prev >= 0, nxt < n
    frac = (idx - prev).to(x.dtype) / (nxt - prev).clamp(min=1).to(x.dtype)
    both = pv + (nv - pv) * frac
    fill = torch.where(has_prev & has_next, both, torch.where(has_prev, pv, torch.where(has_next, nv, 0.0)))
    return torch.where(bad, fill, x)


def _detrend(t: torch.Tensor) -> torch.Tensor:
    """Subtract the least-squares line of each channel (scipy.signal.detrend, type='linear')."""
    n = t.shape[-1]
    if n < 2:
        return t - t.mean(-1, keepdim=True)
    ramp = torch.arange(n, dtype=t.dtype, device=t.device) - (n - 1) / 2.0
    centred = t - t.mean(-1, keepdim=True)
    slope = (centred @ ramp) / (ramp @ ramp)
    return centred - slope[..., None] * ramp


@lru_cache(maxsize=16)
def _tukey(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    from scipy.signal.windows import tukey

    return torch.from_numpy(tukey(n, alpha=2 * TAPER_FRACTION)).to(device=device, dtype=dtype)


def _bandpass(t: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Zero-phase Butterworth band-pass on the CPU (scipy), corners from contract.extra['bandpass_hz']."""
    from scipy.signal import butter, sosfiltfilt

    corners = contract.extra.get("bandpass_hz")
    nyquist = contract.sampling_rate / 2
    if not isinstance(corners, list | tuple) or len(corners) != 2 or not 0 < corners[0] < corners[1] < nyquist:
        raise ContractError(
            f'BANDPASS needs contract.extra["bandpass_hz"] = [fmin, fmax] with 0 < fmin < fmax < {nyquist} Hz '
            f"(Nyquist), got {corners!r}"
        )
    order = int(contract.extra.get("bandpass_order", 4))
    sos = butter(
        order, [float(corners[0]), float(corners[1])], btype="bandpass", fs=contract.sampling_rate, output="sos"
    )
    filtered = sosfiltfilt(sos, t.detach().cpu().double().numpy(), axis=-1)
    return torch.from_numpy(np.ascontiguousarray(filtered)).to(device=t.device, dtype=t.dtype)


@lru_cache(maxsize=16)
def _dft_matrix(nperseg: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Periodic-Hann-windowed real DFT scaled by 1/sum(window), as a matrix [nperseg, 2F] (cos | -sin).

    Built in float64, then cast once per (nperseg, dtype, device).
    """
    n = np.arange(nperseg)[:, None]
    f = np.arange(nperseg // 2 + 1)[None, :]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)  # periodic Hann = scipy 'hann'
    ang = 2 * np.pi * n * f / nperseg
    m = np.concatenate([np.cos(ang), -np.sin(ang)], axis=1) * (win / win.sum())[:, None]
    return torch.from_numpy(m).to(device=device, dtype=dtype)


def _stft_length(window: int, nperseg: int, hop: int) -> int:
    """Samples after scipy's boundary='zeros' (nperseg//2 each side) and padded=True (fill the last segment)."""
    length = window + 2 * (nperseg // 2)
    return length + (-(length - nperseg) % hop) % nperseg


def _stft_magnitude(padded: torch.Tensor, nperseg: int, hop: int) -> torch.Tensor:
    """|windowed real DFT| of every segment of the already zero-padded x [B, C, L] -> [B, C, F, T].

    Batched matrix products with the windowed, scaled DFT matrix (cos | -sin rows) instead of an FFT: for
    64-point segments this beats torch.stft/rfft on the CPU (no complex intermediate, output lands in
    [F, T] layout) and maps onto GEMM on a GPU. When hop divides nperseg, a segment is k = nperseg/hop
    consecutive hop-blocks of the signal, so the products read the buffer in place (no frame copy):
    spec = sum_j  dft[:, j-th block of columns] @ blocks[j : j + T].T.
    """
    b, c, length = padded.shape
    dft_t = _dft_matrix(nperseg, padded.dtype, padded.device).T  # [2F, nperseg]
    two_f = dft_t.shape[0]
    freqs = two_f // 2
    frames = (length - nperseg) // hop + 1
    rows = b * c
    if nperseg % hop == 0:
        blocks = padded.reshape(rows, length // hop, hop)
        spec = None
        for j in range(nperseg // hop):
            part = dft_t[:, j * hop : (j + 1) * hop].contiguous()
            seg = blocks[:, j : j + frames].transpose(1, 2)
            # matmul broadcasts the first product; baddbmm_ accumulates the others in place
            spec = torch.matmul(part, seg) if spec is None else spec.baddbmm_(part.expand(rows, two_f, hop), seg)
    else:
        segments = padded.reshape(rows, length).unfold(-1, nperseg, hop)  # [rows, T, nperseg] view
        spec = torch.matmul(dft_t, segments.transpose(1, 2))  # copies the overlapping segments once
    assert spec is not None
    spec.mul_(spec)
    return torch.add(spec[:, :freqs], spec[:, freqs:]).sqrt_().view(b, c, freqs, frames)


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
