"""Real noise for training, cut from the catalogue's training-noise recordings (never its evaluation ones).

`training_noise_segments` cuts non-overlapping segments away from anything a classic STA/LTA detector sees, so
the noise class holds no visible earthquake.
"""

from __future__ import annotations

import functools

import numpy as np
import structlog

from quakemon.base.errors import QuakemonError
from quakemon.data.realdata import load, training_noise_recordings

log = structlog.get_logger(__name__)


def _trigger_mask(data: np.ndarray, sampling_rate: float, pre_s: float = 30.0, post_s: float = 90.0) -> np.ndarray:
    """True where a sample is near a classic STA/LTA trigger (0.5 s/10 s, 1-20 Hz, on 3.5) or in the first 60 s."""
    from obspy.signal.filter import bandpass
    from obspy.signal.trigger import recursive_sta_lta, trigger_onset

    x = bandpass(data - np.median(data), 1.0, min(20.0, 0.45 * sampling_rate), sampling_rate, zerophase=True)
    cft = recursive_sta_lta(x, int(0.5 * sampling_rate), int(10 * sampling_rate))
    mask = np.zeros(len(data), dtype=bool)
    mask[: int(60 * sampling_rate)] = True
    for on, off in trigger_onset(cft, 3.5, 1.0):
        mask[max(0, on - int(pre_s * sampling_rate)) : off + int(post_s * sampling_rate)] = True
    return mask


@functools.lru_cache(maxsize=4)
def _training_noise_arrays(sampling_rate: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(data [C, n], usable mask [n]) per training-noise recording at `sampling_rate` (cached: the read takes ~2 s)."""
    out = []
    for rec in training_noise_recordings():
        st = load(rec)
        data = np.stack([tr.data for tr in st])
        bad = np.zeros(data.shape[1], dtype=bool)
        for row in data:
            bad |= _trigger_mask(row, rec.sampling_rate)
        if sampling_rate != rec.sampling_rate:
            st = load(rec, sampling_rate)
            new = np.stack([tr.data for tr in st])
            idx = np.minimum((np.arange(new.shape[1]) * rec.sampling_rate / sampling_rate).astype(int), len(bad) - 1)
            data, bad = new, bad[idx]
        out.append((data, ~bad))
    return tuple(out)


def training_noise_segments(n_samples: int, sampling_rate: float = 100.0) -> np.ndarray:
    """Non-overlapping real-noise segments from `TRAINING_NOISE_SOURCES`, float32 [k, 1, n_samples] (Z only).

    Segments touching an STA/LTA trigger (30 s before to 90 s after), the first 60 s, or with a peak over 12
    robust standard deviations (spikes, glitches) are left out, so the result holds no earthquake the classic
    detector can see. Order is the recording's time order; shuffle in the caller.
    """
    if int(n_samples) != n_samples or n_samples <= 0:
        raise QuakemonError(f"n_samples must be a positive integer, got {n_samples!r}")
    n = int(n_samples)
    segments = []
    for data, usable in _training_noise_arrays(float(sampling_rate)):
        k = data.shape[1] // n
        if k == 0:
            continue
        seg = data[:, : k * n].reshape(data.shape[0], k, n).transpose(1, 0, 2)  # [k, C, n]
        ok = usable[: k * n].reshape(k, n).all(axis=1)
        centred = seg - np.median(seg, axis=2, keepdims=True)
        sigma = 1.4826 * np.median(np.abs(centred), axis=2)
        ok &= (np.abs(centred).max(axis=2) <= 12.0 * np.maximum(sigma, 1e-12)).all(axis=1)
        segments.append(seg[ok][:, :1].astype(np.float32))
    out = np.concatenate(segments) if segments else np.zeros((0, 1, n), dtype=np.float32)
    log.info("training_noise_segments", segments=len(out), n_samples=n, sampling_rate=sampling_rate)
    return out
