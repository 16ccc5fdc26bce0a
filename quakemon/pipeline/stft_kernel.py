"""The CPU fast path of `preprocess_batch`: z-score and |STFT| of each waveform row in one compiled pass (numba).

`spectrogram_rows` computes, for every row x[r, :n_real] of raw samples, exactly what the torch path of
`quakemon.pipeline.transforms.preprocess_batch` computes for the common contract (finite input, TRIMMING, ZSCORE,
SPECTROGRAM, a power-of-two nperseg that the hop divides), within float32 rounding:

    mean over the real samples (float64 sum), the centred signal cast to float32, std = its population std,
    dead = std <= dead_eps * |mean|, then |STFT| of the zero-padded centred signal times 1/std (0 when dead)
    with the periodic Hann window scaled by 1/sum(window).

Why a compiled kernel: the torch path spends its time in a 64 x 64 DFT matrix product (an FFT needs a sixth of
its arithmetic) and in a dozen memory passes (cast, centre, frame copy, re^2, +im^2, sqrt into a strided output),
each a separate call.
Here each row is read twice (sum, then centre) and everything after stays in the L1 cache:

1. the centred float32 signal goes into a zero-padded row p; p seen as [blocks, hop] is transposed to
   PT [hop, blocks], so that sample n of every frame is one contiguous run PT[n % hop, n // hop:];
2. the nperseg real samples of each frame are packed as nperseg/2 complex ones, z[m] = a[2m] + i a[2m+1]
   (window and 1/std applied on the way), in bit-reversed order, for a couple of rows side by side: Z [m, frame];
3. an in-place radix-2 FFT of length nperseg/2 over m, vectorised across frames (every inner loop runs over
   ~128 contiguous frames);
4. the real spectrum X[k] = E[k] + e^{-2 pi i k / nperseg} O[k], E/O from Z[k] and conj Z[nperseg/2 - k],
   and its magnitude, written straight into the output row [F, T].

A dead row (scale 0: a zero-filled absent component, a flat channel) gets its all-zero output written directly,
without the transform, which would give exactly 0 too. Rows whose sum (or sum of squares) is not finite are left
untouched and flagged in `bad`: the caller runs
them through the torch path, which repairs NaN gaps (DROP_NAN). The functions release the GIL (nogil), so
parts of a batch run in parallel on plain Python threads. Compiled code is cached on disk (numba cache=True,
in __pycache__ or numba's user-wide cache directory), so a new process loads it in well under a second.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from numpy.lib.stride_tricks import as_strided


def _jit(function):
    """numba.njit without the GIL. reassoc lets LLVM vectorise the sums, contract allows fused multiply-adds; no
    fast-math on NaN/inf: the finiteness checks must see them. Compiled code is cached on disk (next to this
    file, else in numba's user-wide cache directory, e.g. under $HOME, which the systemd unit points at its state
    directory); where neither is writable, each process compiles once (a few seconds) instead."""
    options = {"nogil": True, "fastmath": {"reassoc", "contract"}}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


# frames (across rows) side by side in the FFT's work arrays: 2 x 32 x 128 float32 = 32 KB, inside the L1 cache
_FFT_COLUMNS = 128


def applies(nperseg: int, hop: int) -> bool:
    """Whether the kernel handles this STFT: nperseg a power of two >= 4 and a hop that divides it."""
    return nperseg >= 4 and nperseg & (nperseg - 1) == 0 and hop > 0 and nperseg % hop == 0


@lru_cache(maxsize=8)
def constants(nperseg: int) -> tuple[np.ndarray, ...]:
    """(scaled window, bit-reversal permutation, FFT twiddles re/im, post-processing twiddles re/im)."""
    n = np.arange(nperseg)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / nperseg)  # periodic Hann = scipy's "hann"
    half = nperseg // 2
    bits = half.bit_length() - 1
    bitrev = np.array([int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(half)], dtype=np.int64)
    fft_angles = -2 * np.pi * np.arange(max(half // 2, 1)) / half
    post_angles = -2 * np.pi * np.arange(half + 1) / nperseg
    return (
        (window / window.sum()).astype(np.float32),
        bitrev,
        np.cos(fft_angles).astype(np.float32),
        np.sin(fft_angles).astype(np.float32),
        np.cos(post_angles).astype(np.float32),
        np.sin(post_angles).astype(np.float32),
    )


def spectrogram_rows(
    x: np.ndarray,
    n_real: int,
    pad_left: int,
    length: int,
    nperseg: int,
    hop: int,
    dead_eps: float,
    out: np.ndarray,
    dead: np.ndarray,
    bad: np.ndarray,
) -> None:
    """Rows x [R, N] (float64 or float32, N >= n_real) -> out [R, F, T] float32, dead [R], bad [R] (bool).

    length: the zero-padded STFT input (pad_left zeros, n_real samples, zeros); T = (length - nperseg)//hop + 1.
    """
    _rows(x, n_real, pad_left, length, nperseg, hop, *constants(nperseg), dead_eps, out, dead, bad)


@_jit
def _sum(row, n):
    s = 0.0
    for i in range(n):
        s += row[i]
    return s


@_jit
def _centre(row, n, mean, p, offset):
    """p[offset:offset+n] = float32(row - mean); returns the float64 sum of squares of those float32 values."""
    squares = 0.0
    for i in range(n):
        c = np.float32(row[i] - mean)
        p[offset + i] = c
        squares += np.float64(c) * np.float64(c)
    return squares


@_jit
def _transpose(p, pt):
    """pt [hop, blocks] = p seen as [blocks, hop], transposed."""
    hop, blocks = pt.shape
    for k in range(hop):
        dst = pt[k]
        for b in range(blocks):
            dst[b] = p[b * hop + k]


@_jit
def _pack(pt, window, scale, bitrev, zr, zi, column, frames):
    """Z[bitrev[m], column + f] = a_f[2m] + i a_f[2m+1], a_f = frame f times window * scale."""
    hop = pt.shape[0]
    for m in range(bitrev.shape[0]):
        n0 = 2 * m
        n1 = n0 + 1
        w0 = window[n0] * scale
        w1 = window[n1] * scale
        s0 = pt[n0 % hop, n0 // hop :]
        s1 = pt[n1 % hop, n1 // hop :]
        dr = zr[bitrev[m], column:]
        di = zi[bitrev[m], column:]
        for f in range(frames):
            dr[f] = s0[f] * w0
            di[f] = s1[f] * w1


@_jit
def _fft(zr, zi, tw_re, tw_im, width):
    """In-place radix-2 decimation-in-time FFT along axis 0 (input in bit-reversed order), columns :width."""
    size = zr.shape[0]
    span = 2
    while span <= size:
        half = span // 2
        step = size // span
        for start in range(0, size, span):
            for j in range(half):
                wr = tw_re[j * step]
                wi = tw_im[j * step]
                ar = zr[start + j]
                ai = zi[start + j]
                br = zr[start + j + half]
                bi = zi[start + j + half]
                for f in range(width):
                    tr = wr * br[f] - wi * bi[f]
                    ti = wr * bi[f] + wi * br[f]
                    xr = ar[f]
                    xi = ai[f]
                    br[f] = xr - tr
                    bi[f] = xi - ti
                    ar[f] = xr + tr
                    ai[f] = xi + ti
        span *= 2


@_jit
def _magnitude(zr, zi, post_re, post_im, out, first, rows, frames, packed):
    """out[first + g, k, :] = |X[k]| of packed row `packed + g` (columns from (packed + g) * frames):
    X[k] = E[k] + e^{-2 pi i k/nperseg} O[k] from the packed FFT."""
    size = zr.shape[0]
    for k in range(size + 1):
        k1 = k % size
        k2 = (size - k) % size
        cr = post_re[k]
        ci = post_im[k]
        for g in range(rows):
            column = (packed + g) * frames
            z1r = zr[k1, column:]
            z1i = zi[k1, column:]
            z2r = zr[k2, column:]
            z2i = zi[k2, column:]
            dst = out[first + g, k]
            for f in range(frames):
                er = z1r[f] + z2r[f]  # 2 E
                ei = z1i[f] - z2i[f]
                orr = z1i[f] + z2i[f]  # 2 O
                oi = z2r[f] - z1r[f]
                xr = er + cr * orr - ci * oi
                xi = ei + cr * oi + ci * orr
                dst[f] = np.float32(0.5) * np.sqrt(xr * xr + xi * xi)


@_jit
def _rows(x, n_real, pad_left, length, nperseg, hop, window, bitrev, tw_re, tw_im, post_re, post_im, dead_eps,
          out, dead, bad):  # fmt: skip
    frames = (length - nperseg) // hop + 1
    group = max(1, _FFT_COLUMNS // frames)
    p = np.zeros(length, np.float32)  # only [pad_left, pad_left + n_real) is ever written: the padding stays 0
    pt = np.empty((hop, length // hop), np.float32)
    zr = np.empty((nperseg // 2, group * frames), np.float32)
    zi = np.empty((nperseg // 2, group * frames), np.float32)
    for first in range(0, x.shape[0], group):
        rows = 0  # rows of this group packed into Z, in order; a bad or dead row is skipped, packed rows shift
        for r in range(first, min(first + group, x.shape[0])):
            row = x[r]
            total = _sum(row, n_real)
            bad[r] = not math.isfinite(total)
            if bad[r]:
                continue
            mean = total / n_real
            squares = _centre(row, n_real, mean, p, pad_left)
            if not math.isfinite(squares):  # finite samples whose float32 cast or square overflows
                bad[r] = True
                continue
            std = math.sqrt(squares / n_real)
            dead[r] = std <= dead_eps * abs(mean)
            if dead[r]:  # scale 0: its |STFT| is exactly 0, written without the transform
                out[r, :, :] = np.float32(0.0)
                continue
            scale = np.float32(1.0 / std)
            _transpose(p, pt)
            _pack(pt, window, scale, bitrev, zr, zi, rows * frames, frames)
            rows += 1
        if rows == 0:
            continue
        _fft(zr, zi, tw_re, tw_im, rows * frames)
        if rows == min(group, x.shape[0] - first):
            _magnitude(zr, zi, post_re, post_im, out, first, rows, frames, 0)
        else:  # a bad or dead row in the group: write the packed rows one by one to their own output rows
            g = 0
            for r in range(first, min(first + group, x.shape[0])):
                if not bad[r] and not dead[r]:
                    _magnitude(zr, zi, post_re, post_im, out, r, 1, frames, g)
                    g += 1


def warm_up_centring() -> None:
    """Load (on a fresh install: compile) `centre_to_float32`, before the first window. The spectrogram
    kernel is loaded by a first `preprocess_batch` call (`quakemon.pipeline.detect.warm_up_preprocess`)."""
    centre_to_float32(np.zeros((1, 2, 64)), np.empty((1, 2, 64), np.float32))


def centre_to_float32(x: np.ndarray, out: np.ndarray) -> None:
    """out[k, c, :] = float32(x[k, c, :] - mean of x[k, c, :]), the mean in float64 (x: float64 [K, C, N], e.g.
    overlapping windows of one block of samples; out: float32 [K, C, N], C-contiguous).

    What `quakemon.pipeline.detect.stack_windows` does to every window before it travels as float32: one read for
    the mean and one for the difference, instead of numpy's buffered float64 -> float32 cast."""
    k, c, n = x.shape
    if not x.size:
        return
    item = x.itemsize
    if x.strides[2] != item or any(s < 0 or s % item for s in x.strides[:2]):
        x = np.ascontiguousarray(x)
    # the memory x spans, as one contiguous read-only row: the compiled loop then reads every row of every window
    # as a contiguous slice (with x's own strides it could not vectorise)
    s0, s1 = x.strides[0] // item, x.strides[1] // item
    flat = as_strided(x, ((k - 1) * s0 + (c - 1) * s1 + n,), (item,), writeable=False)
    _centre_windows(flat, s0, s1, k, c, n, out)


@_jit
def _centre_windows(flat, s0, s1, k, c, n, out):
    for i in range(k):
        for j in range(c):
            start = i * s0 + j * s1
            row = flat[start : start + n]
            _centre(row, n, _sum(row, n) / n, out[i, j], 0)
