"""Physical ingredients of synthetic earthquakes: Brune source spectra, attenuation, site and instrument terms,
phase envelopes, coda decay, polarisation and spectrally shaped noise. One function each; all broadcast over a
leading batch axis, so the generator makes a whole batch at once.
"""

from __future__ import annotations

import numpy as np
import scipy.fft


def seismic_moment(mw: np.ndarray | float) -> np.ndarray:
    """Seismic moment M0 [N m] from moment magnitude (Hanks & Kanamori 1979: Mw = 2/3 (log10 M0 - 9.1))."""
    return 10.0 ** (1.5 * np.asarray(mw, dtype=float) + 9.1)


def brune_corner_frequency(
    mw: np.ndarray | float, stress_drop_pa: np.ndarray | float = 3e6, beta_m_s: np.ndarray | float = 3500.0
) -> np.ndarray:
    """Brune corner frequency [Hz]: fc = 0.49 beta (dsigma / M0)^(1/3); it falls with magnitude."""
    return 0.49 * beta_m_s * (np.asarray(stress_drop_pa, dtype=float) / seismic_moment(mw)) ** (1.0 / 3.0)


def brune_velocity_spectrum(freq: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """Shape of the far-field velocity spectrum, 2 pi f / (1 + (f/fc)^2), per event [k, F] (moment factored out)."""
    f = freq[None, :]
    return 2 * np.pi * f / (1.0 + (f / fc[:, None]) ** 2)


def anelastic_attenuation(freq: np.ndarray, travel_time_s: np.ndarray, q0: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Path attenuation exp(-pi f t / Q(f)) with Q(f) = Q0 f^eta, per event [k, F]."""
    f = np.maximum(freq[None, :], 1e-3)
    q = q0[:, None] * f ** eta[:, None]
    return np.exp(-np.pi * f * travel_time_s[:, None] / q)


def site_kappa(freq: np.ndarray, kappa_s: np.ndarray) -> np.ndarray:
    """Near-surface high-frequency loss exp(-pi kappa f) (Anderson & Hough 1984), per event [k, F]."""
    return np.exp(-np.pi * kappa_s[:, None] * freq[None, :])


def instrument_response(freq: np.ndarray, short_period: np.ndarray, sampling_rate: float) -> np.ndarray:
    """Amplitude response [k, F]: digitiser anti-alias low-pass at 0.8 Nyquist, plus a 1 Hz geophone for SP windows."""
    f = freq[None, :]
    lowpass = 1.0 / np.sqrt(1.0 + (f / (0.4 * sampling_rate)) ** 16)
    x = f / 1.0  # 1 Hz natural frequency, damping 0.7
    geophone = x**2 / np.sqrt((1.0 - x**2) ** 2 + (1.4 * x) ** 2)
    return lowpass * np.where(short_period[:, None], geophone, 1.0)


def phase_envelope(t: np.ndarray, onset_s: np.ndarray, rise_s: np.ndarray, duration_s: np.ndarray) -> np.ndarray:
    """Causal envelope of a direct phase [k, N]: zero before onset, rise over rise_s, exponential decay."""
    x = t[None, :] - onset_s[:, None]
    xp = np.maximum(x, 0.0)
    env = (1.0 - np.exp(-xp / rise_s[:, None])) * np.exp(-xp / duration_s[:, None])
    return np.where(x > 0, env, 0.0)


def coda_decay(lapse_s: np.ndarray, ref_lapse_s: np.ndarray, freq_hz: float, alpha: np.ndarray, qc: np.ndarray):
    """Coda amplitude decay (t/t_ref)^-alpha exp(-pi f (t - t_ref) / Qc) at lapse time t since the origin [k, N]."""
    t = np.maximum(lapse_s, 1e-3)
    ref = ref_lapse_s[:, None]
    return (t / ref) ** -alpha[:, None] * np.exp(-np.pi * freq_hz * (t - ref) / qc[:, None])


def polarisation_zne(incidence_rad: np.ndarray, back_azimuth_rad: np.ndarray, s_angle_rad: np.ndarray):
    """Unit P and S particle-motion vectors in Z, N, E [k, 3] each.

    P moves along the ray (Z, R) = (cos i, sin i); S moves across it: cos(psi) SV + sin(psi) SH with
    SV = (-sin i, cos i, 0) in (Z, R, T) and SH = T. R/T are rotated to N/E with the back-azimuth (ObsPy's
    convention: N = -R cos(baz) + T sin(baz), E = -R sin(baz) - T cos(baz)).
    """
    ci, si = np.cos(incidence_rad), np.sin(incidence_rad)
    cb, sb = np.cos(back_azimuth_rad), np.sin(back_azimuth_rad)
    cp, sp = np.cos(s_angle_rad), np.sin(s_angle_rad)

    def zrt_to_zne(z, r, t):
        return np.stack([z, -r * cb + t * sb, -r * sb - t * cb], axis=-1)

    p_vec = zrt_to_zne(ci, si, np.zeros_like(ci))
    s_vec = zrt_to_zne(-si * cp, ci * cp, sp)
    return p_vec, s_vec


def shaped_noise(amplitude: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the given amplitude spectrum [..., F] -> float32 [..., n_samples] (random phase).

    Normalised so that the output has ~unit RMS when mean(|amplitude|^2) == 1.
    """
    shape = amplitude.shape
    spec = (rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32)) / np.sqrt(
        2.0, dtype=np.float32
    )
    spec = spec.astype(np.complex64) * amplitude.astype(np.float32)
    return scipy.fft.irfft(spec, n=n_samples, norm="ortho", axis=-1)


def _normalise_spectrum(amp: np.ndarray) -> np.ndarray:
    """Scale an amplitude spectrum [..., F] to mean(|A|^2) == 1 so that shaped noise has ~unit RMS."""
    return amp / np.sqrt(np.mean(amp**2, axis=-1, keepdims=True) + 1e-30)


def uniform(rng: np.random.Generator, rng_range: tuple[float, float], k: int) -> np.ndarray:
    return rng.uniform(rng_range[0], rng_range[1], k)


def log_uniform(rng: np.random.Generator, rng_range: tuple[float, float], k: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(rng_range[0]), np.log(rng_range[1]), k))
