"""Hard negatives: non-earthquake transients added to noise windows (spikes, glitches, steps, dropouts, cultural
bursts, teleseism-like long-period trains). Each works in place on unit-RMS windows x [m, 3, N]; amplitudes are
multiples of the noise RMS.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from quakemon.data.physics import _normalise_spectrum, log_uniform, shaped_noise

#: Hard-negative kinds, in the order their weights are listed in `SyntheticConfig.hard_negative_weights`.
HARD_NEGATIVE_KINDS: tuple[str, ...] = ("spike", "glitch", "step", "dropout", "cultural", "teleseism")


def add_spikes(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> None:
    """One to five single-sample spikes (telemetry bit errors), 10-500x the noise RMS."""
    m, c, n = x.shape
    count = rng.integers(1, 6, m)
    slot = np.arange(5)[None, :] < count[:, None]
    win = np.broadcast_to(np.arange(m)[:, None], (m, 5))[slot]
    comp = rng.integers(0, c, (m, 5))[slot]
    pos = rng.integers(0, n, (m, 5))[slot]
    amp = log_uniform(rng, (10.0, 500.0), win.size) * rng.choice([-1.0, 1.0], win.size)
    np.add.at(x, (win, comp, pos), amp.astype(np.float32))


def add_glitches(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> None:
    """A one-sided pulse t/tau exp(1 - t/tau) (mass re-centring / thermal glitch) on one or all components."""
    m, c, n = x.shape
    t = np.arange(n) / sampling_rate
    t0 = rng.uniform(0.0, 0.9 * n / sampling_rate, m)
    tau = log_uniform(rng, (0.1, 2.0), m)
    amp = log_uniform(rng, (5.0, 100.0), m) * rng.choice([-1.0, 1.0], m)
    dt = np.maximum(t[None, :] - t0[:, None], 0.0) / tau[:, None]
    pulse = amp[:, None] * dt * np.exp(1.0 - dt)
    comps = np.where(rng.random(m)[:, None] < 0.5, np.eye(c)[rng.integers(0, c, m)], 1.0)
    x += (comps[:, :, None] * pulse[:, None, :]).astype(np.float32)


def add_steps(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> None:
    """A DC step relaxing with the seismometer's high-pass time constant, on one or all components."""
    m, c, n = x.shape
    t = np.arange(n) / sampling_rate
    t0 = rng.uniform(0.0, 0.95 * n / sampling_rate, m)
    tau = log_uniform(rng, (1.0, 60.0), m)
    amp = log_uniform(rng, (5.0, 50.0), m) * rng.choice([-1.0, 1.0], m)
    dt = t[None, :] - t0[:, None]
    step = np.where(dt >= 0, amp[:, None] * np.exp(-np.maximum(dt, 0.0) / tau[:, None]), 0.0)
    comps = np.where(rng.random(m)[:, None] < 0.5, np.eye(c)[rng.integers(0, c, m)], 1.0)
    x += (comps[:, :, None] * step[:, None, :]).astype(np.float32)


def dropout_mask(m: int, c: int, n: int, sampling_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean [m, c, n], True where samples are lost (zero-filled gap, 0.2-8 s, one or all components)."""
    length = np.round(log_uniform(rng, (0.2, 8.0), m) * sampling_rate).astype(int)
    start = rng.integers(0, n, m)
    idx = np.arange(n)[None, :]
    in_gap = (idx >= start[:, None]) & (idx < (start + length)[:, None])
    comps = np.where(rng.random(m)[:, None] < 0.5, np.eye(c, dtype=bool)[rng.integers(0, c, m)], True)
    return comps[:, :, None] & in_gap[:, None, :]


def add_cultural_bursts(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> None:
    """Emergent cultural noise: a harmonic machine tone (f0 2-20 Hz + harmonics) or a traffic-like 3-25 Hz burst.

    Both rise and fall slowly (a Gaussian envelope several seconds wide), unlike the impulsive P onset.
    """
    m, c, n = x.shape
    t = np.arange(n) / sampling_rate
    centre = rng.uniform(0.1, 0.9, m) * n / sampling_rate
    width = rng.uniform(2.0, 6.0, m)
    env = _gaussian_envelope(t, centre, width)
    f0 = rng.uniform(2.0, 20.0, m)
    drift = 1.0 + rng.uniform(-0.05, 0.05, m)[:, None] * (t[None, :] - centre[:, None]) / (n / sampling_rate)
    phase = 2 * np.pi * f0[:, None] * t[None, :] * drift
    n_harm = rng.integers(1, 4, m)
    tone = sum(
        (h < n_harm)[:, None] * np.sin((h + 1) * phase + rng.uniform(0, 2 * np.pi, m)[:, None]) / (h + 1)
        for h in range(3)
    )
    traffic = band_noise(m, n, sampling_rate, (3.0, 25.0), rng)
    source = np.where(rng.random(m)[:, None] < 0.5, tone, traffic)
    amp = log_uniform(rng, (1.0, 20.0), m)
    weights = rng.uniform(0.3, 1.0, (m, c))
    x += (weights[:, :, None] * (amp[:, None] * env * source)[:, None, :]).astype(np.float32)


def add_tremor_bursts(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An emergent 0.7-4 Hz burst: band-limited noise under a symmetric Gaussian envelope (1.5-6 s wide, centred
    anywhere in the window), 1.5-10 times the window's own 0.7-4 Hz RMS on its vertical (component 0), on every
    component the window has (weights 0.3-1; all-zero components stay zero). Volcanic tremor, wind and distant
    traffic make such bursts: they rise and fall within seconds, where an earthquake's P starts a coda that decays
    slowly. Unlike the other kinds, the amplitude is relative to the window's band, not to unit RMS. Returns the
    bursts' (snr, width_s) [m]."""
    from scipy.signal import butter, sosfiltfilt

    m, c, n = x.shape
    sos = butter(4, [0.7, 4.0], btype="bandpass", fs=sampling_rate, output="sos")
    rms = np.sqrt(np.mean(sosfiltfilt(sos, x[:, 0].astype(np.float64), axis=-1) ** 2, axis=-1))
    source = band_noise(m, n, sampling_rate, (0.7, 4.0), rng)
    source /= source.std(axis=-1, keepdims=True) + 1e-12
    centre, width = rng.uniform(0.0, n / sampling_rate, m), rng.uniform(1.5, 6.0, m)
    env = _gaussian_envelope(np.arange(n) / sampling_rate, centre, width)
    snr = log_uniform(rng, (1.5, 10.0), m)
    weights = rng.uniform(0.3, 1.0, (m, c)) * (np.abs(x).max(axis=-1) > 0)
    x += (weights[:, :, None] * ((snr * rms)[:, None] * env * source)[:, None, :]).astype(np.float32)
    return snr, width


def band_noise(m: int, n: int, sampling_rate: float, band_hz: tuple[float, float],
               rng: np.random.Generator) -> np.ndarray:
    """m rows of n samples of Gaussian noise with a flat spectrum in `band_hz` and nothing outside it."""
    freq = scipy.fft.rfftfreq(n, 1.0 / sampling_rate)
    band = ((freq >= band_hz[0]) & (freq <= band_hz[1])).astype(float)
    return shaped_noise(np.broadcast_to(_normalise_spectrum(band[None, :]), (m, freq.size)), n, rng)


def _gaussian_envelope(t: np.ndarray, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """[m, len(t)]: exp(-((t - centre) / width)^2 / 2) per row."""
    return np.exp(-0.5 * ((t[None, :] - centre[:, None]) / width[:, None]) ** 2)


def add_teleseisms(x: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> None:
    """Long-period (2-20 s) Gabor wavelet trains, as from a distant earthquake (not a local event)."""
    m, c, n = x.shape
    t = np.arange(n) / sampling_rate
    period = log_uniform(rng, (2.0, 20.0), m)
    centre = rng.uniform(0.0, n / sampling_rate, m)
    width = rng.uniform(5.0, 20.0, m)
    wave = np.exp(-0.5 * ((t[None, :] - centre[:, None]) / width[:, None]) ** 2) * np.cos(
        2 * np.pi * (t[None, :] - centre[:, None]) / period[:, None]
    )
    amp = log_uniform(rng, (1.0, 20.0), m)
    weights = rng.uniform(0.3, 1.0, (m, c))
    x += (weights[:, :, None] * (amp[:, None] * wave)[:, None, :]).astype(np.float32)


def _add_artefacts(x: np.ndarray, kinds: np.ndarray, sampling_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Apply kinds[i] (index into HARD_NEGATIVE_KINDS, -1 none) to window i; returns the dropout mask."""
    m, c, n = x.shape
    gaps = np.zeros((m, c, n), dtype=bool)
    adders = {
        "spike": add_spikes,
        "glitch": add_glitches,
        "step": add_steps,
        "cultural": add_cultural_bursts,
        "teleseism": add_teleseisms,
    }
    for kind, name in enumerate(HARD_NEGATIVE_KINDS):
        sel = np.flatnonzero(kinds == kind)
        if sel.size == 0:
            continue
        if name == "dropout":
            gaps[sel] = dropout_mask(sel.size, c, n, sampling_rate, rng)
            continue
        sub = x[sel]
        adders[name](sub, sampling_rate, rng)
        x[sel] = sub
    return gaps
