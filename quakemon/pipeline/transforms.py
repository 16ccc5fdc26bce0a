"""The one preprocessing implementation: waveform windows [B, C, N] -> float32 spectrograms [B, C, F, T].

Training (`quakemon.pipeline.adapter.WaveformDataAdapter`) and streaming (the preprocessing worker) both call
`preprocess_batch`, so a model sees the same numbers live as in training. Everything is batched array
algebra, no per-window Python loop: numpy/scipy on the CPU (torch is not imported), torch on a GPU.
Transforms run in `quakemon.models.contract.KNOWN_TRANSFORMS` order, as named in the model's `InputContract.transforms`:

DROP_NAN     Non-finite samples (NaN, +-inf) are *repaired*, not dropped: every run of them is linearly
             interpolated between its finite neighbours (held at the nearest finite value at the edges; a
             channel with no finite sample becomes zeros). Linear fill, not zero fill, because a zero-filled
             gap in raw counts is a step, and a step looks like an impulsive event in a spectrogram. A window
             whose worst channel has more than `max_nan_fraction` (default 0.1, the streaming windows' limit too;
             or `contract.extra["max_nan_fraction"]`) non-finite samples is flagged `valid=False`. Rows are never
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
             With `contract.extra["bandpass_taper"] = alpha` (0 < alpha <= 1) the filtered samples are then
             multiplied by a Tukey(alpha) window: filtering a 20 s window whose microseism is far stronger than
             the band leaves transients in its first and last seconds, which the taper removes. Runs on the CPU
             (scipy); optional, for models trained on a band.
ZSCORE       Per window and channel: (x - mean) / std (population std) over the real samples. A dead channel
             (std <= 10 * eps * |mean|, eps of the working precision: constant, or an all-NaN channel after
             DROP_NAN) gives zeros, never inf/NaN, and is reported in `dead` (also without ZSCORE). Dead
             channels do not make a window invalid: the caller decides.
SPECTROGRAM  |STFT| exactly as `np.abs(scipy.signal.stft(x, window="hann", nperseg, noverlap=nperseg - hop,
             boundary="zeros", padded=True)[2])`: periodic Hann window, nperseg//2 zeros at both ends, zeros at
             the end to fill the last segment, scaled by 1 / sum(window). No log, no further normalisation.
             F = nperseg // 2 + 1, T = `contract.spectrogram_shape[1]` (33 x 64 for 64/32 and 2000 samples).
             Without SPECTROGRAM the output is the transformed waveform [B, C, N'].
WHITEN       Each spectrogram row (one frequency bin of one channel) over its background in the window, as
             log1p(S / (b_f + floor * max_f b_f)): b_f is the row's q-quantile over the time frames (the k-th
             smallest frame, k = floor(q * (T - 1)); q = `contract.extra["whiten_quantile"]`, default 0.2), floor
             = `contract.extra["whiten_floor"]` (default 1e-3) keeps rows with almost no content (a band a filter
             or a low sampling rate emptied) from being blown up. Stationary noise of any spectrum becomes the
             same flat image (a level near 1 in every row), and a signal shows as its excess over the
             window's own background in each band, which is what an STA/LTA measures in time. A row whose
             denominator is 0 (a dead channel) stays 0. Needs SPECTROGRAM; runs after it on every path.

The output is always finite float32 (a last guard zeroes anything non-finite, e.g. a float32 overflow without
ZSCORE). Precision: the steps up to the mean removal run in float64 (float32 input stays float32), since raw
counts with a large offset lose their signal in float32; the centred signal and the STFT run in `dtype`
(float32 by default: within ~3e-7 of scipy relative to the spectrogram peak; float64 matches bin for bin).
Speed: on the CPU the common contract (finite input, DROP_NAN/TRIMMING/ZSCORE/SPECTROGRAM, float32 STFT, a
power-of-two nperseg that the hop divides) runs in one compiled pass per row (`quakemon.pipeline.stft_kernel`);
every other CPU case (non-finite rows, float64, DETREND/TAPER/BANDPASS, other STFT sizes) goes through two
batched numpy passes (|STFT| by scipy.fft.rfft over strided segments) that compute the same numbers. Both work
in cache-sized parts of the batch, shared out to a persistent pool of `cpu_threads()` threads (the kernel,
numpy and scipy.fft release the GIL). On a GPU (a tensor there, or device="cuda"), the torch passes of
`quakemon.pipeline.transforms_torch` run instead, the only place torch is imported; tests hold all three
together. benchmarks/bench_transforms.py measures them against each other and a per-window scipy loop.

ObsPy Streams become contract arrays in `quakemon.pipeline.streams`.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.fft
import structlog
from numpy.lib.stride_tricks import sliding_window_view

from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract
from quakemon.pipeline import stft_kernel

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


@dataclass(frozen=True)
class Plan:
    """What all parts of one `preprocess_batch` call share (numpy dtypes here; torch ones in the torch passes)."""

    ops: frozenset[str]
    work: Any  # precision up to the mean removal
    dtype: Any  # precision of the centred signal and the STFT
    n_real: int  # samples TRIMMING keeps; the rest of the window is padding
    pad_left: int  # STFT boundary zeros before the signal (0 without SPECTROGRAM)
    length: int  # the zero-padded STFT input, or the window without SPECTROGRAM
    nperseg: int
    hop: int
    lean: bool  # input in the working dtype, only DROP_NAN, TRIMMING, ZSCORE (required), SPECTROGRAM
    contract: InputContract

    @property
    def output_shape(self) -> tuple[int, ...]:
        """(F, T) of a channel's spectrogram, or (N',) without SPECTROGRAM."""
        if "SPECTROGRAM" in self.ops:
            return self.nperseg // 2 + 1, (self.length - self.nperseg) // self.hop + 1
        return (self.length,)


def preprocess_batch(
    x: Any,
    contract: InputContract,
    *,
    device: Any = None,
    dtype: Any = None,
    max_nan_fraction: float | None = None,
) -> PreprocessResult:
    """Apply the contract's transforms to a batch of windows x [B, C, N] (any real dtype: float64, int32 counts).

    x: a numpy array or a torch tensor. device: where to compute (default: x's device, the CPU for numpy); on the
    CPU numpy/scipy compute (torch is not imported for numpy input), elsewhere torch. dtype: precision of the
    centred signal and the STFT, float32 (default) or float64 (numpy or torch dtype). The output type follows
    the input type (tensors on the device for tensor input).
    """
    torch = sys.modules.get("torch")  # a tensor can only exist once torch has been imported
    tensor = torch is not None and isinstance(x, torch.Tensor)
    place = device if device is not None else (x.device if tensor else "cpu")
    if _device_type(place) != "cpu":
        from quakemon.pipeline.transforms_torch import preprocess_tensors

        return preprocess_tensors(x, contract, device=device, dtype=dtype, max_nan_fraction=max_nan_fraction)
    if tensor:
        t = x.detach().cpu()
        arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    else:
        arr = np.asarray(x)
    result = preprocess_arrays(arr, contract, dtype=dtype, max_nan_fraction=max_nan_fraction)
    if tensor:
        return PreprocessResult(*(torch.from_numpy(a) for a in vars(result).values()))
    return result


def preprocess_arrays(
    x: np.ndarray, contract: InputContract, *, dtype: Any = None, max_nan_fraction: float | None = None
) -> PreprocessResult:
    """`preprocess_batch` for a numpy batch on the CPU, with numpy, scipy and the compiled kernel."""
    check_input(x.shape, x.dtype.kind in "cbOUSV", str(x.dtype), contract)
    out_dtype = numpy_dtype(dtype)
    work = np.promote_types(x.dtype if x.dtype.kind == "f" else np.float64, out_dtype)
    plan = make_plan(x.shape, contract, work=work, dtype=out_dtype, input_is_work=x.dtype == work)
    b, c, _ = x.shape
    spectra = np.empty((b, c, *plan.output_shape), np.float32)
    dead = np.zeros((b, c), bool)
    nan_fraction = np.zeros(b, np.float32)
    if b:
        if _fused_applies(plan):
            _fused_passes(x, plan, spectra, dead, nan_fraction)
        else:
            _numpy_passes(x, plan, spectra, dead, nan_fraction)
    if "WHITEN" in plan.ops:
        whiten(spectra, contract)
    valid = valid_windows(nan_fraction, plan, nan_limit(contract, max_nan_fraction))
    return PreprocessResult(spectra, valid, dead, nan_fraction)


WHITEN_QUANTILE = 0.2
WHITEN_FLOOR = 1e-3


def whiten_settings(contract: InputContract) -> tuple[float, float]:
    """(quantile, floor) of WHITEN from the contract's extra, checked; ContractError when out of range."""
    q = contract.extra.get("whiten_quantile", WHITEN_QUANTILE)
    floor = contract.extra.get("whiten_floor", WHITEN_FLOOR)
    if not isinstance(q, int | float) or not 0 <= q < 1:
        raise ContractError(f'contract.extra["whiten_quantile"] must be a number in [0, 1), got {q!r}')
    if not isinstance(floor, int | float) or not 0 < floor < 1:
        raise ContractError(f'contract.extra["whiten_floor"] must be a number in (0, 1), got {floor!r}')
    return float(q), float(floor)


def whiten_rank(q: float, frames: int) -> int:
    """The 0-based rank of the frame WHITEN takes as a row's background."""
    return int(q * (frames - 1))


def whiten(spectra: np.ndarray, contract: InputContract) -> None:
    """WHITEN in place on float32 spectrograms [B, C, F, T] (see the module docstring)."""
    q, floor = whiten_settings(contract)
    k = whiten_rank(q, spectra.shape[-1])
    background = np.partition(spectra, k, axis=-1)[..., k : k + 1]
    denominator = background + floor * background.max(axis=-2, keepdims=True)
    live = denominator > 0
    np.divide(spectra, denominator, out=spectra, where=live)
    spectra *= live
    np.log1p(spectra, out=spectra)


def check_input(shape: tuple[int, ...], complex_or_bool: bool, dtype_name: str, contract: InputContract) -> None:
    """Raise ContractError unless the batch is real windows [B, C, N] with the contract's C and N >= 1."""
    if len(shape) != 3:
        raise ContractError(f"preprocess_batch expects windows [B, C, N], got shape {tuple(shape)}")
    if shape[1] != contract.n_channels:
        raise ContractError(
            f"expected {contract.n_channels} channels ({contract.component_order}), got {shape[1]} "
            f"(shape {tuple(shape)})"
        )
    if shape[-1] == 0:
        raise ContractError(f"windows have no samples (shape {tuple(shape)})")
    if complex_or_bool:
        raise ContractError(f"waveforms must be real numbers, got dtype {dtype_name}")


def numpy_dtype(dtype: Any) -> np.dtype:
    """The STFT precision as a numpy dtype: float32 (None) or float64, given as a numpy or a torch dtype."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        resolved = np.dtype(str(dtype).removeprefix("torch.") if type(dtype).__module__ == "torch" else dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.float32, np.float64):
        raise ContractError(f"dtype must be float32 or float64, got {dtype}")
    return resolved


def make_plan(
    shape: tuple[int, ...], contract: InputContract, *, work: np.dtype, dtype: np.dtype, input_is_work: bool
) -> Plan:
    """The plan of a batch [B, C, N] under `contract` (what the numpy and the torch passes share)."""
    ops = frozenset(contract.transforms)
    n = shape[-1]
    window = contract.window_samples if "TRIMMING" in ops else n
    spectrogram = "SPECTROGRAM" in ops
    nperseg, hop = contract.stft_nperseg, contract.stft_hop
    return Plan(
        ops=ops,
        work=work,
        dtype=dtype,
        n_real=min(n, window),
        pad_left=nperseg // 2 if spectrogram else 0,
        length=_stft_length(window, nperseg, hop) if spectrogram else window,
        nperseg=nperseg,
        hop=hop,
        lean=input_is_work and "ZSCORE" in ops and ops <= {"DROP_NAN", "TRIMMING", "ZSCORE", "SPECTROGRAM"},
        contract=contract,
    )


def nan_limit(contract: InputContract, max_nan_fraction: float | None) -> float:
    if max_nan_fraction is None:
        return float(contract.extra.get("max_nan_fraction", DEFAULT_MAX_NAN_FRACTION))
    return max_nan_fraction


def valid_windows(nan_fraction: Any, plan: Plan, limit: float) -> Any:
    """valid [B] from nan_fraction [B] (numpy or torch): under DROP_NAN up to the limit, else none at all."""
    return nan_fraction <= limit if "DROP_NAN" in plan.ops else nan_fraction == 0


def dead_tolerance(work: np.dtype) -> float:
    """A channel is dead when its std <= this times |mean| (10 eps of the working precision), on every path."""
    return 10 * float(np.finfo(work).eps)


def _device_type(device: Any) -> str:
    """"cpu", "cuda", ... of a torch.device or a device string ("cuda:1"), without importing torch."""
    return getattr(device, "type", None) or str(device).split(":")[0]


# The compiled CPU kernel (quakemon.pipeline.stft_kernel) serves the common contract; tests switch it off to compare
# it with the numpy passes, which serve every other CPU case (float64 STFT, DETREND/TAPER/BANDPASS, NaN repair).
FUSED_KERNEL = True


def _fused_applies(plan: Plan) -> bool:
    return (
        FUSED_KERNEL
        and plan.lean
        and plan.dtype == np.float32
        and "SPECTROGRAM" in plan.ops
        and stft_kernel.applies(plan.nperseg, plan.hop)
    )


def _fused_passes(x: np.ndarray, plan: Plan, spectra: np.ndarray, dead: np.ndarray, nan_fraction: np.ndarray) -> None:
    """The compiled kernel over the batch's rows (in parts on the preprocessing pool with more than one CPU
    thread: the kernel releases the GIL); windows with a non-finite row go through the numpy passes."""
    b, c, n = x.shape
    rows = np.ascontiguousarray(x).reshape(b * c, n)
    out = spectra.reshape(b * c, *spectra.shape[2:])
    dead_rows = dead.reshape(b * c)
    bad = np.zeros(b * c, dtype=bool)
    dead_eps = dead_tolerance(plan.work)

    def part(bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        stft_kernel.spectrogram_rows(
            rows[lo:hi], plan.n_real, plan.pad_left, plan.length, plan.nperseg, plan.hop, dead_eps,
            out[lo:hi], dead_rows[lo:hi], bad[lo:hi],
        )  # fmt: skip

    threads = cpu_threads()
    counts = cpu_parts(b, c * n, 4 * CPU_PART_SAMPLES) if threads > 1 else [b]
    edges = [0, *itertools.accumulate(count * c for count in counts)]
    run_parts(part, list(itertools.pairwise(edges)), min(threads, len(counts)))
    if bad.any():  # NaN/inf (repaired or flagged by the numpy passes), or a float32 overflow
        windows = bad.reshape(b, c).any(1).nonzero()[0]
        sub = (spectra[windows], dead[windows], np.zeros(len(windows), np.float32))
        _numpy_passes(x[windows], plan, *sub)
        for target, values in zip((spectra, dead, nan_fraction), sub, strict=True):
            target[windows] = values


def _numpy_passes(x: np.ndarray, plan: Plan, spectra: np.ndarray, dead: np.ndarray, nan_fraction: np.ndarray) -> None:
    """The transforms as batched numpy/scipy operations over cache-sized parts of the batch (on the pool when
    there is more than one CPU thread): fills spectra, dead and nan_fraction (which arrives zeroed)."""
    b, c, n = x.shape
    counts = cpu_parts(b, c * n, 2 * CPU_PART_SAMPLES)
    edges = [0, *itertools.accumulate(counts)]

    def part(bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        _numpy_part(x[lo:hi], plan, spectra[lo:hi], dead[lo:hi], nan_fraction[lo:hi])

    run_parts(part, list(itertools.pairwise(edges)), min(cpu_threads(), len(counts)))


def _numpy_part(x: np.ndarray, plan: Plan, spectra: np.ndarray, dead: np.ndarray, nan_fraction: np.ndarray) -> None:
    """Both passes for windows x [b, C, N]: (1) DROP_NAN .. BANDPASS, the signal centred into the zero-padded STFT
    input, the ZSCORE statistics over the real samples (population std; dead channels, std <= 10 eps |mean|,
    get scale 0); (2) |STFT| (scipy.fft.rfft of the windowed segments) or the waveform, times 1/std."""
    n_real, ops = plan.n_real, plan.ops
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow: zeroed by the last guard
        t = _repaired(x.astype(plan.work, copy=False), plan, nan_fraction)
        if "DETREND" in ops:
            t = _detrend(t)
        t = t[..., :n_real]  # TRIMMING's cut; its padding is added below (stats exclude it)
        if "TAPER" in ops:
            t = t * tukey_window(n_real).astype(plan.work, copy=False)
        if "BANDPASS" in ops:
            t = band_passed(t, plan.contract).astype(plan.work, copy=False)
        sums = t.sum(-1, keepdims=True)
        padded = np.zeros((*x.shape[:2], plan.length), plan.dtype)
        signal = padded[..., plan.pad_left : plan.pad_left + n_real]
        np.subtract(t, sums / n_real, out=signal, casting="unsafe")
        std = np.sqrt(np.einsum("...i,...i->...", signal, signal, dtype=np.float64) / n_real)[..., None]
        dead[:] = (std <= np.abs(sums) * (dead_tolerance(plan.work) / n_real))[..., 0]
        zscore = "ZSCORE" in ops
        scale = np.where(dead[..., None], 0.0, 1.0 / std).astype(plan.dtype) if zscore else None
        if not zscore:
            signal[...] = t  # the raw (transformed) samples, not centred
        if "SPECTROGRAM" in ops:
            _stft_magnitude(padded, scale, plan, spectra)
        else:
            np.multiply(padded, scale if scale is not None else 1, out=spectra, casting="unsafe")
        # z-scored output with finite std is bounded; anything else gets the guard (e.g. float32 overflow)
        if (not zscore or not np.isfinite(std).all()) and not np.isfinite(spectra).all():
            np.nan_to_num(spectra, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _repaired(t: np.ndarray, plan: Plan, nan_fraction: np.ndarray) -> np.ndarray:
    """DROP_NAN: t with its non-finite runs interpolated (a copy; t itself when all finite); nan_fraction [b] of
    the kept window filled in. Without DROP_NAN the fraction is counted and nothing is repaired."""
    if np.isfinite(t.sum(-1)).all():
        return t
    bad = ~np.isfinite(t)
    if not bad.any():  # a sum overflowed, the data are fine
        return t
    nan_fraction[:] = bad[..., : plan.n_real].mean(-1, dtype=np.float64).max(-1)
    if "DROP_NAN" not in plan.ops:
        return t
    rows = bad.any(-1)
    repaired = t.copy()
    repaired[rows] = _interpolate_nonfinite(t[rows], bad[rows])
    return repaired


def _interpolate_nonfinite(x: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Linear interpolation over non-finite runs of each row of x [R, N]; edges hold, empty rows become 0."""
    n = x.shape[-1]
    idx = np.broadcast_to(np.arange(n), x.shape)
    prev = np.maximum.accumulate(np.where(bad, -1, idx), axis=-1)  # last finite index <= i, or -1
    nxt = np.minimum.accumulate(np.where(bad, n, idx)[:, ::-1], axis=-1)[:, ::-1]  # next finite index >= i, or n
    finite = np.where(bad, 0.0, x).astype(x.dtype, copy=False)
    pv = np.take_along_axis(finite, np.maximum(prev, 0), -1)
    nv = np.take_along_axis(finite, np.minimum(nxt, n - 1), -1)
    has_prev, has_next = prev >= 0, nxt < n
    frac = ((idx - prev) / np.maximum(nxt - prev, 1)).astype(x.dtype)
    fill = np.where(has_prev & has_next, pv + (nv - pv) * frac, np.where(has_prev, pv, np.where(has_next, nv, 0.0)))
    return np.where(bad, fill, x).astype(x.dtype, copy=False)


def _detrend(t: np.ndarray) -> np.ndarray:
    """Subtract the least-squares line of each channel (scipy.signal.detrend, type='linear')."""
    n = t.shape[-1]
    centred = t - t.mean(-1, keepdims=True)
    if n < 2:
        return centred
    ramp = (np.arange(n) - (n - 1) / 2.0).astype(t.dtype)
    slope = (centred @ ramp) / (ramp @ ramp)
    return centred - slope[..., None] * ramp


def _stft_magnitude(padded: np.ndarray, scale: np.ndarray | None, plan: Plan, out: np.ndarray) -> None:
    """out [b, C, F, T] = scale * |rfft| of the periodic-Hann-windowed segments of padded [b, C, L], the window
    scaled by 1/sum(window) (scipy.signal.stft's scaling). scipy.fft keeps float32 in float32 (pocketfft)."""
    segments = sliding_window_view(padded, plan.nperseg, axis=-1)[..., :: plan.hop, :]  # [b, C, T, nperseg] view
    window = _stft_window(plan.nperseg, plan.dtype)
    weights = window if scale is None else scale[..., None] * window  # [b, C, 1, nperseg]
    spectrum = scipy.fft.rfft(segments * weights, axis=-1)  # [b, C, T, F]
    np.abs(spectrum, out=out.swapaxes(-1, -2))


@lru_cache(maxsize=16)
def _stft_window(nperseg: int, dtype: np.dtype) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)  # periodic Hann = scipy's "hann"
    return (window / window.sum()).astype(dtype)


@lru_cache(maxsize=16)
def tukey_window(n: int) -> np.ndarray:
    """TAPER's float64 window: Tukey with a TAPER_FRACTION cosine ramp at each end."""
    from scipy.signal.windows import tukey

    return tukey(n, alpha=2 * TAPER_FRACTION)


def bandpass_sos(contract: InputContract) -> np.ndarray:
    """BANDPASS's Butterworth sections, corners from contract.extra['bandpass_hz'] (ContractError when unusable)."""
    corners = contract.extra.get("bandpass_hz")
    nyquist = contract.sampling_rate / 2
    if not isinstance(corners, list | tuple) or len(corners) != 2 or not 0 < corners[0] < corners[1] < nyquist:
        raise ContractError(
            f'BANDPASS needs contract.extra["bandpass_hz"] = [fmin, fmax] with 0 < fmin < fmax < {nyquist} Hz '
            f"(Nyquist), got {corners!r}"
        )
    alpha = contract.extra.get("bandpass_taper")
    if alpha is not None and not (isinstance(alpha, int | float) and 0 < alpha <= 1):
        raise ContractError(f'contract.extra["bandpass_taper"] must be a number in (0, 1], got {alpha!r}')
    sos = _butter_bandpass(int(contract.extra.get("bandpass_order", 4)), float(corners[0]), float(corners[1]),
                           float(contract.sampling_rate))
    return sos.copy()  # scipy's sosfilt family wants a writable array


@lru_cache(maxsize=16)
def _butter_bandpass(order: int, fmin: float, fmax: float, fs: float) -> np.ndarray:
    """The Butterworth design, made once per contract rather than once per batch."""
    from scipy.signal import butter

    return butter(order, [fmin, fmax], btype="bandpass", fs=fs, output="sos")


@lru_cache(maxsize=16)
def _tukey(n: int, alpha: float) -> np.ndarray:
    """BANDPASS's post-filter taper (read-only, shared by every batch)."""
    from scipy.signal.windows import tukey

    window = tukey(n, alpha)
    window.flags.writeable = False
    return window


def band_passed(t: np.ndarray, contract: InputContract) -> np.ndarray:
    """BANDPASS on samples [..., N] (float64): the zero-phase filter, then the optional post-filter taper."""
    from scipy.signal import sosfiltfilt

    out = sosfiltfilt(bandpass_sos(contract), t, axis=-1)
    alpha = contract.extra.get("bandpass_taper")
    if alpha is not None:
        out *= _tukey(out.shape[-1], float(alpha))
    return out


def _stft_length(window: int, nperseg: int, hop: int) -> int:
    """Samples after scipy's boundary='zeros' (nperseg//2 each side) and padded=True (fill the last segment)."""
    length = window + 2 * (nperseg // 2)
    return length + (-(length - nperseg) % hop) % nperseg


# CPU parts hold about this many input samples (B_part * C * N: 8 windows of 3 x 2000) times a factor per path
# (numpy passes 2, kernel 4): a part's intermediates mostly stay in the L2 cache between steps instead of
# streaming through memory once per step as whole-batch arrays do; smaller parts pay the per-call overhead
# (GIL time) more often.
CPU_PART_SAMPLES = 48_000

_threads: int | None = None


def set_cpu_threads(threads: int | None) -> None:
    """Threads the CPU passes share a batch out to (None: `cpu_threads()`'s default). The preprocessing stage sets
    [pipeline] torch_threads here."""
    global _threads
    _threads = None if threads is None else max(1, int(threads))


def cpu_threads() -> int:
    """The CPU passes' thread count: as set by `set_cpu_threads`, else torch's intra-op count when torch is loaded
    (a process that runs a model shares one setting), else the CPUs this process may run on."""
    if _threads is not None:
        return _threads
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else len(os.sched_getaffinity(0))


def cpu_parts(b: int, samples_per_window: int, part_samples: int) -> list[int]:
    """Window counts of near-equal parts of the batch, each about part_samples input samples (>= 1 window)."""
    count = min(max(round(b * samples_per_window / part_samples), 1), b)
    return [(i + 1) * b // count - i * b // count for i in range(count)]


def run_parts(fn: Any, parts: list[Any], workers: int, pool: Any = None) -> None:
    """fn(part) for every part: in this thread, or drained from one shared iterator by `workers` threads of
    `pool(workers)` (default: this module's persistent plain thread pool).

    One pool task per worker (not per part) keeps the hand-offs to two per pass, and a worker slowed down by
    other load simply takes fewer parts. All tasks are waited for before the first exception is raised.
    """
    if workers <= 1:
        for part in parts:
            fn(part)
        return
    shared = iter(parts)  # next() on a list iterator is atomic under the GIL

    def drain() -> None:
        for part in shared:
            fn(part)

    executor = (pool or _worker_pool)(workers)
    futures = [executor.submit(drain) for _ in range(workers)]
    errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error


_pool_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, workers) -> executor


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool of `workers` threads for the CPU passes, one per worker count and process (threads do
    not survive a fork)."""
    with _pool_lock:
        key = (os.getpid(), workers)
        if key not in _pools:
            for stale in [k for k in _pools if k[0] != key[0]]:
                del _pools[stale]  # inherited through a fork: its threads are gone
            _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="quakemon-preprocess")
        return _pools[key]
