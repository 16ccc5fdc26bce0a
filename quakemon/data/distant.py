"""Synthetic regional and teleseismic P arrivals over real continuous noise (evaluation and training).

Why: the real-data catalogue (`quakemon.data.realdata`) has one regional record and no teleseism, yet an operator's
broadband stations record many of both, and a detector trained on local events (corner frequencies of several Hz,
impulsive P, S a few seconds later) can be blind to them. These records are synthetic *signals* added to *real*
noise (e.g. a msnoise noise day, `quakemon.data.noise_days`), so the noise side is as real as it gets.

Signal model (stochastic method, as `quakemon.data.synthetic`, with the long-distance ingredients):

* regional (200-1,500 km, M 3.5-5.5): Pn first, Brune spectrum with a stress-drop corner frequency, path
  attenuation exp(-pi f T / Q0 f^eta) and kappa; emergent P (rise 0.3-2 s), a long P coda (decay 15-60 s); Sn/Lg
  2-5 times stronger 25-190 s after P (often beyond the record).
* teleseismic (30-90 degrees, M 5.5-7.5): low corner frequency and t* = 0.5-1.2 s (exp(-pi f t*)), so little energy
  above 2-3 Hz; emergent P (rise 0.5-4 s), a depth phase (pP) 3-60 s later, P coda decaying over 30-150 s; steep
  incidence (mostly vertical motion). S arrives minutes later, outside the record.

Amplitude is set by a band-limited SNR: RMS of the signal over the 10 s after P against RMS of the noise, both
band-passed 0.5-20 Hz (what a short-period detector looks at).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
from obspy import Stream, Trace

from quakemon.data.physics import brune_corner_frequency, brune_velocity_spectrum, phase_envelope, shaped_noise

KINDS: tuple[str, ...] = ("regional", "teleseismic")


@dataclass(frozen=True)
class DistantRanges:
    """Sampling ranges of one kind (uniform unless noted)."""

    magnitude: tuple[float, float]
    p_rise_s: tuple[float, float]  # log-uniform
    p_decay_s: tuple[float, float]  # direct P envelope decay
    coda_tau_s: tuple[float, float]  # P coda decay
    coda_level: tuple[float, float]  # coda amplitude relative to direct P
    t_star_s: tuple[float, float]  # whole-path attenuation of P at 1 Hz
    kappa_s: tuple[float, float]
    second_delay_s: tuple[float, float]  # Sn/Lg (regional) or pP (teleseismic) after P
    second_ratio: tuple[float, float]  # its amplitude relative to direct P
    z_share: tuple[float, float]  # cos(incidence): vertical share of P motion


RANGES: dict[str, DistantRanges] = {
    "regional": DistantRanges((3.5, 5.5), (0.3, 2.0), (2.0, 8.0), (15.0, 60.0), (0.2, 0.6), (0.05, 0.4),
                              (0.02, 0.05), (25.0, 190.0), (2.0, 5.0), (0.6, 0.9)),
    "teleseismic": DistantRanges((5.5, 7.5), (0.5, 4.0), (3.0, 12.0), (30.0, 150.0), (0.2, 0.6), (0.5, 1.2),
                                 (0.0, 0.03), (3.0, 60.0), (0.3, 1.0), (0.85, 0.98)),
}


def _band_rms(x: np.ndarray, fs: float, band: tuple[float, float] = (0.5, 20.0)) -> float:
    spec = scipy.fft.rfft(x - x.mean())
    f = scipy.fft.rfftfreq(x.size, 1.0 / fs)
    spec[(f < band[0]) | (f > min(band[1], 0.45 * fs))] = 0
    return float(np.sqrt(np.mean(scipy.fft.irfft(spec, n=x.size) ** 2)))


def distant_signal(kind: str, n_samples: int, p_sample: float, fs: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """One distant event as float64 [3 (Z, N, E), n_samples], peak direct-P amplitude ~1, zero before P."""
    r = RANGES[kind]
    u = rng.uniform
    mag = u(*r.magnitude)
    fc = float(brune_corner_frequency(mag, 3e6))
    freq = scipy.fft.rfftfreq(n_samples, 1.0 / fs)
    t_star = u(*r.t_star_s)
    amp = brune_velocity_spectrum(freq, np.array([fc]))[0] * np.exp(-np.pi * freq * (t_star + u(*r.kappa_s)))
    amp *= 1.0 / np.sqrt(1.0 + (freq / (0.4 * fs)) ** 16)  # digitiser anti-alias filter
    amp[0] = 0.0
    amp /= np.sqrt(np.mean(amp**2)) + 1e-30
    t = np.arange(n_samples) / fs
    tp = p_sample / fs
    rise = float(np.exp(u(np.log(r.p_rise_s[0]), np.log(r.p_rise_s[1]))))
    env = phase_envelope(t, np.array([tp]), np.array([rise]), np.array([u(*r.p_decay_s)]))[0]
    coda = u(*r.coda_level) * phase_envelope(t, np.array([tp]), np.array([2 * rise]), np.array([u(*r.coda_tau_s)]))[0]
    delay, ratio = u(*r.second_delay_s), u(*r.second_ratio)
    second = ratio * phase_envelope(t, np.array([tp + delay]), np.array([rise]), np.array([u(*r.p_decay_s) * 2]))[0]
    z_share = u(*r.z_share)
    baz = u(0.0, 2 * np.pi)
    h = np.sqrt(1.0 - z_share**2)
    direction = np.array([z_share, -h * np.cos(baz), -h * np.sin(baz)])
    direct = shaped_noise(amp[None, :], n_samples, rng)[0].astype(np.float64)
    out = direct[None, :] * env[None, :] * direction[:, None]
    # coda and the second phase: partly incoherent between components (scattered energy)
    inc = shaped_noise(np.broadcast_to(amp, (3, amp.size)), n_samples, rng).astype(np.float64)
    weights = np.array([1.0, 0.7, 0.7]) if kind == "teleseismic" else np.array([1.0, 1.0, 1.0])
    out += inc * (coda + second)[None, :] * weights[:, None]
    peak = np.max(np.abs(out[0])) + 1e-30
    info = {"kind": kind, "magnitude": round(mag, 2), "fc_hz": round(fc, 3), "t_star_s": round(t_star, 2),
            "p_rise_s": round(rise, 2), "second_delay_s": round(delay, 1)}
    return out / peak, info


def add_distant_event(noise: np.ndarray, kind: str, p_sample: float, fs: float, snr: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """noise [C, N] (rows Z, N, E or just Z) plus one distant event at `p_sample` with band-limited SNR `snr`."""
    noise = np.asarray(noise, dtype=np.float64)
    sig, info = distant_signal(kind, noise.shape[1], p_sample, fs, rng)
    sig = sig[: noise.shape[0]]
    i0 = int(max(p_sample, 0))
    seg = sig[0, i0 : i0 + int(10 * fs)]
    scale = snr * _band_rms(noise[0], fs) / (_band_rms(seg, fs) + 1e-30) if seg.size > fs else 0.0
    return noise + scale * sig, {**info, "snr": round(float(snr), 2)}


def distant_records(noise: Trace, n_per_kind: int, seed: int, *, record_s: float = 120.0,
                    p_range_s: tuple[float, float] = (40.0, 70.0), snr_range: tuple[float, float] = (2.0, 50.0),
                    rates: tuple[float, ...] = (100.0, 40.0, 20.0), kinds: tuple[str, ...] = KINDS,
                    network: str = "SY") -> list[tuple[Stream, float, str, dict[str, Any]]]:
    """Records of `record_s` cut from a real vertical noise trace, each with one synthetic distant event.

    Returns (stream, P time as POSIX seconds, kind, info) per record. Cuts are spread evenly over the trace (no
    overlap); each record has its own station code (``STA`` + number) so records never share a trigger. `rates`
    cycles the sampling rate: 40 and 20 Hz records are low-passed and decimated from the 100 Hz noise, as a 40 Hz
    or 20 Hz broadband channel would deliver them (the detector resamples them to its own rate).
    """
    from scipy.signal import resample_poly

    rng = np.random.default_rng(seed)
    fs = noise.stats.sampling_rate
    data = noise.data.astype(np.float64)
    n_rec = int(record_s * fs)
    total = n_per_kind * len(kinds)
    slots = (data.size - n_rec) // max(total, 1)
    if slots < n_rec:
        raise ValueError(f"{noise.id}: {data.size / fs:.0f} s is too short for {total} records of {record_s} s")
    order = rng.permutation(total)
    out = []
    for i, slot in enumerate(order):
        kind = kinds[i % len(kinds)]
        start = int(slot * slots + rng.integers(0, slots - n_rec + 1))
        p_s = float(rng.uniform(*p_range_s))
        snr = float(np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]))))
        x, info = add_distant_event(data[None, start : start + n_rec], kind, p_s * fs, fs, snr, rng)
        rate = rates[i % len(rates)]
        y = x[0]
        if rate != fs:
            up, down = int(rate), int(fs)
            g = np.gcd(up, down)
            y = resample_poly(y, up // g, down // g)
        t0 = noise.stats.starttime + start / fs
        band = "H" if rate >= 80 else "B"
        tr = Trace(np.round(y).astype(np.int32) if noise.data.dtype.kind == "i" else y.astype(np.float32),
                   {"network": network, "station": f"{kind[0].upper()}{i:03d}", "location": "00",
                    "channel": f"{band}HZ", "sampling_rate": rate, "starttime": t0})
        out.append((Stream([tr]), float((t0 + p_s).timestamp), kind,
                    {**info, "rate": rate, "source": noise.id, "offset_s": round(start / fs, 2)}))
    return out
