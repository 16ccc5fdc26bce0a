"""The torch implementation of `quakemon.pipeline.transforms.preprocess_batch`: for GPUs (and any torch device).

`preprocess_batch` sends windows here when they are to be transformed on a GPU (a tensor on one, or
device="cuda"); on the CPU it never imports torch and runs numpy/scipy (and the compiled kernel) instead.
`preprocess_tensors` also runs these passes on the CPU, which is how the tests and benchmarks/bench_transforms.py
hold the two implementations together: the same numbers within float32 rounding. The transforms' semantics are
documented in `quakemon.pipeline.transforms`.

Two batched passes: (1) repair, detrend, cut, taper, filter, centre into a zero-padded buffer; (2) |STFT| as a
matrix product with a windowed DFT matrix (or the scaled waveform). On the CPU they go over the batch in
cache-sized parts on a pool of single-threaded torch workers; on a GPU each pass is one batched call.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from quakemon.models.contract import InputContract
from quakemon.pipeline import transforms
from quakemon.pipeline.threads import torch_worker_pool
from quakemon.pipeline.transforms import Plan, PreprocessResult, band_passed, tukey_window


def preprocess_tensors(
    x: np.ndarray | torch.Tensor,
    contract: InputContract,
    *,
    device: str | torch.device | None = None,
    dtype: Any = None,
    max_nan_fraction: float | None = None,
) -> PreprocessResult:
    """`preprocess_batch` (same arguments and checks) computed with torch on `device` (default: x's device, the
    CPU for numpy). The output type follows the input type: numpy arrays for numpy input, else tensors."""
    as_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x.detach()
    transforms.check_input(tuple(t.shape), t.is_complex() or t.dtype == torch.bool, str(t.dtype), contract)
    dev = torch.device(device) if device is not None else t.device
    t = t.to(device=dev)  # the working dtype is applied per part (no batch-sized copy of int counts)
    out_dtype = _torch_dtype(transforms.numpy_dtype(dtype))
    work = torch.promote_types(t.dtype if t.is_floating_point() else torch.float64, out_dtype)
    plan = transforms.make_plan(tuple(t.shape), contract, work=_numpy_name(work), dtype=_numpy_name(out_dtype),
                                input_is_work=t.dtype == work)
    plan = dataclasses.replace(plan, work=work, dtype=out_dtype)
    b, c, _ = t.shape
    spectra = torch.empty(b, c, *plan.output_shape, dtype=torch.float32, device=dev)
    dead = torch.empty(b, c, dtype=torch.bool, device=dev)
    nan_fraction = torch.zeros(b, dtype=torch.float32, device=dev)
    if b:
        _torch_passes(t, plan, spectra, dead, nan_fraction)
    valid = transforms.valid_windows(nan_fraction, plan, transforms.nan_limit(contract, max_nan_fraction))
    outputs = (spectra, valid, dead, nan_fraction)
    return PreprocessResult(*(o.cpu().numpy() for o in outputs)) if as_numpy else PreprocessResult(*outputs)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return getattr(torch, dtype.name)


def _numpy_name(dtype: torch.dtype) -> np.dtype:
    return np.dtype(str(dtype).removeprefix("torch."))


def _torch_passes(
    t: torch.Tensor, plan: Plan, spectra: torch.Tensor, dead: torch.Tensor, nan_fraction: torch.Tensor
) -> None:
    """The transforms as torch operations (CPU in cache-sized parts, or one batched call per pass on a GPU):
    fills spectra, dead and nan_fraction (which arrives zeroed)."""
    b, c, n = t.shape
    dev, work, dtype, ops = t.device, plan.work, plan.dtype, plan.ops
    nperseg, hop, spectrogram = plan.nperseg, plan.hop, "SPECTROGRAM" in ops
    shape = spectra.shape[2:]
    padded, zeroed = _padded_buffer((b, c, plan.length), plan, dev)
    sums = torch.empty(b, c, 1, dtype=work, device=dev)
    norm = torch.empty(b, c, 1, dtype=dtype, device=dev)
    rows = b * c

    # CPU: the two passes below go over the batch in parts of a few windows (intermediates stay in L2), on a
    # pool of worker threads when torch has more than one. GPU: each pass is one batched call.
    cpu = dev.type == "cpu"
    threads = torch.get_num_threads()
    parts = transforms.cpu_parts(b, c * n, CPU_PART_SAMPLES) if cpu else [b]

    # 1: repair, detrend, cut, taper, filter; the signal, centred, into the zero-padded STFT input; sum, norm
    signal = padded.narrow(-1, plan.pad_left, plan.n_real)
    starts = [0, *itertools.accumulate(parts)][:-1]
    pieces = zip(*(tensor.split(parts) for tensor in (t, signal, padded, sums, norm)), starts, strict=True)
    _run(lambda p: _centre(*p, plan, zeroed, nan_fraction), list(pieces), min(threads, len(parts)))

    # ZSCORE statistics over the real samples (population std). Dead channels (std <= 10 eps |mean|, eps of
    # the working precision) give zeros: their scale is 0.
    std = norm.mul_(1 / math.sqrt(plan.n_real))
    tolerance = transforms.dead_tolerance(_numpy_name(work)) / plan.n_real
    torch.le(std, sums.abs_().mul_(tolerance), out=dead.unsqueeze(-1))
    zscore = "ZSCORE" in ops
    scale = std.reciprocal().masked_fill_(dead.unsqueeze(-1), 0.0) if zscore else None

    # 2: |STFT| (or the waveform) times 1/std into the output, in row parts (of twice the windows: this pass's
    # DFT product gains from the larger matrices)
    parts = transforms.cpu_parts(b, c * n, 2 * CPU_PART_SAMPLES) if cpu else [b]
    workers = min(threads, len(parts))
    row_parts = [part * c for part in parts]
    scales = scale.view(rows, 1, 1).split(row_parts) if scale is not None else [None] * len(parts)
    if spectrogram:
        segments = padded.view(rows, plan.length).unfold(-1, nperseg, hop)  # [R, T, nperseg] view
        magnitudes = spectra.view(rows, *shape).transpose(0, 1)  # [F, R, T] view
        pieces = zip(segments.split(row_parts), scales, magnitudes.split(row_parts, dim=1), strict=True)
        _run(lambda p: _stft_magnitude(*p, plan), list(pieces), workers)
    else:
        waves = padded.view(rows, -1).split(row_parts)
        pieces = zip(waves, scales, spectra.view(rows, -1).split(row_parts), strict=True)
        _run(lambda p: _scaled_copy(*p), list(pieces), workers)

    # z-scored output with finite std is bounded; anything else gets the guard (e.g. float32 overflow)
    if (not zscore or not _all_finite(std)) and not _all_finite(spectra.sum()):
        torch.nan_to_num(spectra, nan=0.0, posinf=0.0, neginf=0.0, out=spectra)
    if spectrogram and "WHITEN" in ops:
        _whiten(spectra, plan.contract)


def _whiten(spectra: torch.Tensor, contract: InputContract) -> None:
    """WHITEN in place (`transforms.whiten`, the same numbers on any device)."""
    q, floor = transforms.whiten_settings(contract)
    k = transforms.whiten_rank(q, spectra.shape[-1])
    background = spectra.kthvalue(k + 1, dim=-1, keepdim=True).values
    denominator = background + floor * background.amax(dim=-2, keepdim=True)
    ratio = torch.where(denominator > 0, spectra / denominator.clamp_min(torch.finfo(spectra.dtype).tiny), 0.0)
    torch.log1p(ratio, out=spectra)


def _centre(
    x: torch.Tensor,
    signal: torch.Tensor,
    padded: torch.Tensor,
    sums: torch.Tensor,
    norm: torch.Tensor,
    start: int,
    plan: Plan,
    zeroed: bool,
    nan_fraction: torch.Tensor,
) -> None:
    """Pass 1 for windows x [b, C, N] (batch rows start..): DROP_NAN .. BANDPASS, then the signal, centred (ZSCORE)
    or raw, into `signal`, the real samples of the buffer padded [b, C, L] (plan.dtype; its padding is zeroed
    here unless `zeroed`); the sums [b, C, 1] (plan.work) and the norms [b, C, 1] of the centred signal; the
    batch's nan_fraction (arrives zeroed). Every step is per window and channel.
    """
    n_real = plan.n_real
    if plan.lean:  # the common case in a few calls, since each call here is GIL time: finite samples, no filters
        kept = x if x.shape[-1] == n_real else x.narrow(-1, 0, n_real)
        torch.sum(kept, -1, keepdim=True, out=sums)
        if _all_finite(sums):
            if not zeroed:
                padded.zero_()
            torch.sub(kept, sums, alpha=1 / n_real, out=signal)
            torch.linalg.vector_norm(signal, dim=-1, keepdim=True, out=norm)
            return

    ops = plan.ops
    t = x if x.dtype == plan.work else x.to(plan.work)
    untouched = t
    nonfinite_rows, t = _drop_nan(t, repair="DROP_NAN" in ops, sums=sums)
    if nonfinite_rows is not None:
        rows_nan = nonfinite_rows[..., :n_real].float().mean(-1).amax(-1)
        nan_fraction.narrow(0, start, x.shape[0]).copy_(rows_nan)
    if "DETREND" in ops:
        t = _detrend(t)
    if n_real < t.shape[-1]:
        t = t.narrow(-1, 0, n_real)  # TRIMMING's cut; its padding is added below (stats exclude it)
    if "TAPER" in ops:
        t = t * _tukey(n_real, plan.work, t.device)
    if "BANDPASS" in ops:
        t = _bandpass(t, plan.contract)
    if t is not untouched or nonfinite_rows is not None:
        torch.sum(t, -1, keepdim=True, out=sums)  # (else the finiteness check summed these very samples)

    # The centred signal goes straight into the zero-padded buffer the STFT reads, cast to plan.dtype on the
    # way. The statistics exclude the padding, which is exactly zero (i.e. at the channel mean).
    if not zeroed:
        padded.zero_()
    torch.sub(t, sums, alpha=1 / n_real, out=signal)
    torch.linalg.vector_norm(signal, dim=-1, keepdim=True, out=norm)
    if "ZSCORE" not in ops:
        signal.copy_(t)  # the raw (transformed) samples, not centred


_padded_buffers = threading.local()
_PADDED_CACHE_BYTES = 32 << 20


def _padded_buffer(shape: tuple[int, int, int], plan: Plan, device: torch.device) -> tuple[torch.Tensor, bool]:
    """(buffer for the zero-padded signal, whether its padding is already zero).

    On the CPU the calling thread keeps its last buffer (up to _PADDED_CACHE_BYTES): only the signal samples are
    ever written, so the padding stays zero, and a warm buffer is not faulted in and zeroed (a cold one
    streams from memory) on every call.
    """
    if device.type != "cpu" or math.prod(shape) * plan.dtype.itemsize > _PADDED_CACHE_BYTES:
        return torch.empty(shape, dtype=plan.dtype, device=device), False
    key = (shape, plan.dtype, plan.pad_left, plan.n_real)
    held = getattr(_padded_buffers, "held", None)
    if held is None or held[0] != key:
        held = (key, torch.zeros(shape, dtype=plan.dtype))
        _padded_buffers.held = held
    return held[1], True


def _scaled_copy(source: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor) -> None:
    """Pass 2 without SPECTROGRAM: out (float32) = the waveform times 1/std (or as is, without ZSCORE)."""
    if scale is None:
        out.copy_(source)
    else:
        torch.mul(source, scale.view(-1, 1), out=out)


def _all_finite(t: torch.Tensor) -> bool:
    if t.is_cpu and t.numel() < 4096:  # numpy answers a small CPU tensor faster than bool(tensor)
        return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())


# CPU parts of pass 1 hold about this many input samples (B_part * C * N: 8 windows of 3 x 2000), those of pass 2
# twice as many windows. A part's intermediates (pass 1: float64 input 0.4 MB, the float64 temporary of the cast,
# float32 signal 0.2 MB; pass 2: frames 0.8 MB, DFT output 0.8 MB, magnitude 0.4 MB) mostly stay in the 2 MB L2



# CPU parts of pass 1 hold about this many input samples (B_part * C * N: 8 windows of 3 x 2000), those of pass 2
# twice as many windows: a part's intermediates mostly stay in the 2 MB L2 cache between steps.
CPU_PART_SAMPLES = 48_000


def _run(fn: Any, parts: list[Any], workers: int) -> None:
    """fn(part) for every part, on `workers` single-threaded torch workers (`transforms.run_parts`)."""
    transforms.run_parts(fn, parts, workers, _worker_pool)


_pool_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (pid, workers) -> executor


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool of `workers` threads that each run torch single-threaded (CPU parts in parallel).

    Parts on threads rather than torch's intra-op threads: two hand-offs per pass instead of a fork/join per
    operation, and no thread waits for another between operations, which matters on a CPU shared with other
    processes. Torch ops release the GIL, so the threads run in parallel. One pool per worker count and process
    (threads do not survive a fork).
    """
    with _pool_lock:
        key = (os.getpid(), workers)
        if key not in _pools:
            for stale in [k for k in _pools if k[0] != key[0]]:
                del _pools[stale]  # inherited through a fork: its threads are gone
            _pools[key] = torch_worker_pool(workers, "quakemon-preprocess")
        return _pools[key]


def _drop_nan(t: torch.Tensor, *, repair: bool, sums: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(non-finite mask or None when all finite, t with non-finite runs interpolated when repair).

    The finiteness check sums each row into sums [.., 1] (NaN/inf anywhere makes a sum non-finite); when every
    sample is finite those are the rows' sums, for the ZSCORE mean.
    """
    torch.sum(t, -1, keepdim=True, out=sums)
    if _all_finite(sums):
        return None, t
    bad = ~torch.isfinite(t)
    if not bad.any():  # a sum overflowed, the data are fine
        return None, t
    if not repair:
        return bad, t
    rows = bad.flatten(0, 1).any(-1)
    flat = t.flatten(0, 1).clone()
    flat[rows] = _interpolate_nonfinite(flat[rows], bad.flatten(0, 1)[rows])
    return bad, flat.view_as(t)


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
    return torch.from_numpy(tukey_window(n)).to(device=device, dtype=dtype)


def _bandpass(t: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """BANDPASS on the CPU (scipy, `transforms.band_passed`): the zero-phase filter and its optional taper."""
    filtered = band_passed(t.detach().cpu().double().numpy(), contract)
    return torch.from_numpy(np.ascontiguousarray(filtered)).to(device=t.device, dtype=t.dtype)


@lru_cache(maxsize=16)
def _dft_matrix(nperseg: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Periodic-Hann-windowed real DFT scaled by 1/sum(window), as a matrix [F + F_im, nperseg]: cos rows for the
    F bins, then -sin rows for the bins whose sine row is not identically zero (all but k = 0 and, for even
    nperseg, the Nyquist bin k = nperseg / 2: _sine_bins).

    Built in float64 (angles reduced exactly, k*n mod nperseg, before the trig), then cast once per
    (nperseg, dtype, device).
    """
    n = np.arange(nperseg)[None, :]
    f = np.arange(nperseg // 2 + 1)[:, None]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)  # periodic Hann = scipy 'hann'
    ang = 2 * np.pi * ((f * n) % nperseg) / nperseg
    lo, hi = _sine_bins(nperseg)
    m = np.concatenate([np.cos(ang), -np.sin(ang[lo:hi])], axis=0) * (win / win.sum())[None, :]
    return torch.from_numpy(m).to(device=device, dtype=dtype).contiguous()


def _sine_bins(nperseg: int) -> tuple[int, int]:
    """The bins lo..hi-1 with a sine part: not k = 0, nor the Nyquist bin of an even nperseg."""
    return 1, (nperseg + 1) // 2


class _StftWork:
    """Work buffers for the STFT of R rows: frames [R, T, nperseg] and the DFT output [F + F_im, R * T]."""

    def __init__(self, rows: int, frames: int, plan: Plan, device: torch.device) -> None:
        self.dft = _dft_matrix(plan.nperseg, plan.dtype, device)  # [F + F_im, nperseg]
        freqs = plan.nperseg // 2 + 1
        self.sine = slice(*_sine_bins(plan.nperseg))
        self.frames = torch.empty(rows, frames, plan.nperseg, dtype=plan.dtype, device=device)
        self.frames_t = self.frames.view(rows * frames, plan.nperseg).T
        self.spec = torch.empty(self.dft.shape[0], rows * frames, dtype=plan.dtype, device=device)
        self.re = self.spec[:freqs].view(freqs, rows, frames)
        self.im = self.spec[freqs:].view(-1, rows, frames)


_stft_work = threading.local()


def _stft_buffers(rows: int, frames: int, plan: Plan, device: torch.device) -> _StftWork:
    """New buffers, or on the CPU this thread's from its last parts of the same size (two sizes are kept: the
    near-equal parts of a batch differ by one window at most)."""
    if device.type != "cpu":
        return _StftWork(rows, frames, plan, device)
    key = (rows, frames, plan.nperseg, plan.dtype)
    held: dict[tuple[Any, ...], _StftWork] = _stft_work.__dict__.setdefault("held", {})
    work = held.get(key)
    if work is None:
        if len(held) >= 2:
            held.clear()
        work = held[key] = _StftWork(rows, frames, plan, device)
    return work


def _stft_magnitude(segments: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor, plan: Plan) -> None:
    """out [F, R, T] = scale * |windowed real DFT| of the zero-padded signal's segments [R, T, nperseg] (a view).

    One copy of the overlapping segments into contiguous frames [R, T, nperseg], multiplied by the row's scale
    [R, 1, 1] (the z-score's 1/std) on the way, then one matrix product with the windowed, scaled DFT matrix
    (cos | -sin rows): [F + F_im, nperseg] @ [nperseg, R * T]. For 64-point segments this beats torch.stft/rfft on
    the CPU: the product lands real and imaginary parts in separate planes, so the magnitude is three
    vectorised elementwise passes (the complex abs of an FFT's interleaved output is a slow scalar loop), and
    it is one GEMM on a GPU. out is a [F, R, T] view of the [R, F, T] output (runs of T are contiguous).
    """
    rows, frames, _ = segments.shape
    work = _stft_buffers(rows, frames, plan, segments.device)
    if scale is None:
        work.frames.copy_(segments)
    else:
        torch.mul(segments, scale, out=work.frames)
    torch.mm(work.dft, work.frames_t, out=work.spec)
    re, im = work.re, work.im
    if out.dtype == re.dtype:
        torch.mul(re, re, out=out)
        out[work.sine].addcmul_(im, im)
        out.sqrt_()
    else:
        power = re.mul_(re)
        power[work.sine].addcmul_(im, im)
        out.copy_(power.sqrt_())

