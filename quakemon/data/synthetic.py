"""Physically motivated synthetic 3-component windows: local earthquakes over realistic noise, plus hard negatives.

Why: HybridViT needs labelled training windows, and shipped/real catalogues are small. The generator follows the
stochastic method (Boore 1983, BSSA 73): band-limited Gaussian noise shaped by a Brune (1970) source spectrum with
a stress-drop corner frequency, anelastic attenuation exp(-pi f t / Q(f)), near-site kappa, and an envelope per
phase; single-scattering coda (Aki & Chouet 1975) decays as t^-alpha exp(-pi f t / Qc) per frequency band.
P is polarised along the ray (mostly Z/radial), S across it (mostly horizontal), and the radial/transverse pair is
rotated into N/E with a random back-azimuth. Noise is coloured (power ~ 1/f^a) plus a 0.1-0.3 Hz microseism peak,
optionally cut from real recordings (never from the evaluation recordings, see `EVALUATION_RECORDINGS`). Hard
negatives (spikes, glitches, steps, dropouts, cultural bursts) are labelled noise.

Amplitudes are set by a signal-to-noise ratio, not by absolute ground motion: the pipeline z-scores every window,
so only the shape of the spectrum (which the magnitude and distance control) and the SNR matter. The output is
scaled to counts-like units with a random gain per component.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft
import structlog

from quakemon.base.errors import ConfigError, ContractError
from quakemon.data.artefacts import HARD_NEGATIVE_KINDS, _add_artefacts
from quakemon.data.physics import (
    _normalise_spectrum,
    anelastic_attenuation,
    brune_corner_frequency,
    brune_velocity_spectrum,
    coda_decay,
    instrument_response,
    log_uniform,
    phase_envelope,
    polarisation_zne,
    seismic_moment,
    shaped_noise,
    site_kappa,
    uniform,
)
from quakemon.data.realdata import EVALUATION_SOURCES
from quakemon.models.contract import InputContract

log = structlog.get_logger(__name__)

#: Class labels; the index is the class id (0 noise, 1 earthquake).
LABELS: tuple[str, ...] = ("noise", "earthquake")

#: Basenames of ObsPy-bundled recordings never used as training noise: every evaluation recording of the
#: real-data catalogue (`quakemon.data.realdata.EVALUATION_SOURCES`, the one list), plus recordings of the
#: evaluation stations and others judged unsuitable as noise.
EVALUATION_RECORDINGS: frozenset[str] = frozenset(
    {os.path.basename(source) for source in EVALUATION_SOURCES}
    | {
        "RJOB.BW.EHZ.D.300806.0000.fullseed",  # BW.RJOB (an evaluation station)
        "BW.BGLD.__.EHE.D.2008.001.first_10_records",  # BW.BGLD noise
        "timingquality.mseed",  # BW.BGLD 200 Hz noise
        "ref_STS2",  # 1 h noise, CA.STS2, full of transients of unknown origin
        "ref_unknown",  # 1 h noise, CA.0438
    }
)

#: ObsPy-bundled recordings judged quiet (classic STA/LTA, 0.5 s / 10 s on 1-20 Hz, stays below ~5): usable as
#: training noise via `obspy_noise_files()`. Paths are relative to the obspy package folder.
OBSPY_NOISE_CANDIDATES: tuple[str, ...] = (
    *(f"io/win/tests/data/10030302.{i:02d}" for i in (0, 1, 2, 3, 6, 7, 9)),  # 100 Hz, 2 channels, 1 min each
    "io/seisan/tests/data/D1360930.203",  # .mart, 100 Hz, 120 s
    "io/dmx/tests/data/131114_090600.dmx",  # ETNA.EMFO/EMPL Z, 100 Hz, 60 s
)


#: Component letters the generator can produce (it synthesises Z, N, E; 1/2/3 are aliases).
_COMPONENT_INDEX = {"Z": 0, "N": 1, "E": 2, "3": 0, "1": 1, "2": 2}

#: Coda frequency bands (Hz edges); each band decays with its own centre frequency.
_CODA_BAND_EDGES = (0.0, 1.5, 4.0, 10.0, np.inf)
_CODA_BAND_CENTRES = np.array([0.8, 2.5, 6.3, 20.0])


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges the generator samples from (log-uniform for scale-like quantities, uniform otherwise).

    event_fraction:   share of windows labelled earthquake (exactly floor(n * event_fraction + 0.5) of n).
    scenario_weights: relative weights of (P in window, only S+coda in window, only coda in window).
    min_signal_s:     an in-window phase onset leaves at least this much signal before the window ends.
    hard_negative_fraction: share of noise windows that get one artefact; hard_negative_weights pick its kind
                      (order of HARD_NEGATIVE_KINDS; teleseism is 0 by default because a teleseism is an earthquake).
    event_artefact_fraction: share of earthquake windows that also get a spike/glitch/step/dropout.
    real_noise_files: paths of recordings to cut noise from (resampled to the contract rate); real_noise_fraction
                      of the windows use it instead of synthetic noise. Evaluation recordings are refused.
    """

    event_fraction: float = 0.5
    magnitude_range: tuple[float, float] = (0.5, 4.5)
    distance_km_range: tuple[float, float] = (5.0, 150.0)
    vp_km_s_range: tuple[float, float] = (5.6, 6.4)
    vp_vs_range: tuple[float, float] = (1.68, 1.80)
    stress_drop_mpa_range: tuple[float, float] = (1.0, 10.0)
    q0_range: tuple[float, float] = (100.0, 600.0)
    q_eta_range: tuple[float, float] = (0.3, 0.8)
    kappa_s_range: tuple[float, float] = (0.01, 0.05)
    coda_alpha_range: tuple[float, float] = (0.7, 1.5)
    coda_q_range: tuple[float, float] = (150.0, 800.0)
    snr_range: tuple[float, float] = (0.5, 100.0)
    scenario_weights: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_signal_s: float = 1.0
    noise_exponent_range: tuple[float, float] = (0.0, 2.0)
    microseism_ratio_range: tuple[float, float] = (0.1, 10.0)
    microseism_hz_range: tuple[float, float] = (0.1, 0.3)
    short_period_fraction: float = 0.3
    hard_negative_fraction: float = 0.5
    hard_negative_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 2.0, 0.0)
    event_artefact_fraction: float = 0.05
    counts_scale_range: tuple[float, float] = (1e2, 1e5)
    component_gain_range: tuple[float, float] = (0.5, 2.0)
    real_noise_files: tuple[str, ...] = ()
    real_noise_fraction: float = 0.0
    chunk_size: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_range"):
                lo, hi = value
                if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                    raise ConfigError(f"SyntheticConfig.{f.name} must be (low, high) with low <= high, got {value!r}")
            elif f.name.endswith("_fraction") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"SyntheticConfig.{f.name} must be within [0, 1], got {value!r}")
        if len(self.hard_negative_weights) != len(HARD_NEGATIVE_KINDS) or min(self.hard_negative_weights) < 0:
            raise ConfigError(
                f"SyntheticConfig.hard_negative_weights needs {len(HARD_NEGATIVE_KINDS)} weights >= 0 "
                f"for {HARD_NEGATIVE_KINDS}, got {self.hard_negative_weights!r}"
            )
        if len(self.scenario_weights) != 3 or min(self.scenario_weights) < 0 or sum(self.scenario_weights) <= 0:
            raise ConfigError(f"SyntheticConfig.scenario_weights needs 3 weights >= 0, got {self.scenario_weights!r}")
        if self.real_noise_fraction > 0 and not self.real_noise_files:
            raise ConfigError("SyntheticConfig.real_noise_fraction > 0 needs real_noise_files")
        if self.chunk_size < 1:
            raise ConfigError(f"SyntheticConfig.chunk_size must be >= 1, got {self.chunk_size!r}")
        object.__setattr__(self, "real_noise_files", tuple(str(p) for p in self.real_noise_files))


# --------------------------------------------------------------------------------------------------------------------
# Earthquakes
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EventParams:
    """Per-event parameters (arrays of length k). Times in samples relative to the array start."""

    magnitude: np.ndarray
    distance_km: np.ndarray
    vp_km_s: np.ndarray
    vs_km_s: np.ndarray
    p_sample: np.ndarray
    stress_drop_pa: np.ndarray
    q0: np.ndarray
    q_eta: np.ndarray
    qp_over_qs: np.ndarray
    kappa_s: np.ndarray
    back_azimuth_deg: np.ndarray
    incidence_deg: np.ndarray
    s_polarisation_deg: np.ndarray
    s_to_p_amplitude: np.ndarray
    coda_alpha: np.ndarray
    coda_q: np.ndarray
    coda_level: np.ndarray
    rise_p_s: np.ndarray
    rise_s_s: np.ndarray

    @property
    def s_minus_p_s(self) -> np.ndarray:
        """S-P time [s]: d (1/vs - 1/vp)."""
        return self.distance_km * (1.0 / self.vs_km_s - 1.0 / self.vp_km_s)

    @property
    def fc_hz(self) -> np.ndarray:
        """Brune corner frequency with the sampled S velocity as the source shear velocity."""
        return brune_corner_frequency(self.magnitude, self.stress_drop_pa, beta_m_s=1000.0 * self.vs_km_s)

    def row(self, i: int) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)[i]) for f in dataclasses.fields(self)}


def sample_event_params(
    k: int, rng: np.random.Generator, config: SyntheticConfig, p_sample: np.ndarray | None = None
) -> EventParams:
    """Draw k events from the config's ranges; p_sample (if given) fixes the P arrival sample."""
    vp = uniform(rng, config.vp_km_s_range, k)
    return EventParams(
        magnitude=uniform(rng, config.magnitude_range, k),
        distance_km=log_uniform(rng, config.distance_km_range, k),
        vp_km_s=vp,
        vs_km_s=vp / uniform(rng, config.vp_vs_range, k),
        p_sample=np.zeros(k) if p_sample is None else np.asarray(p_sample, dtype=float),
        stress_drop_pa=1e6 * log_uniform(rng, config.stress_drop_mpa_range, k),
        q0=log_uniform(rng, config.q0_range, k),
        q_eta=uniform(rng, config.q_eta_range, k),
        qp_over_qs=rng.uniform(1.2, 2.25, k),
        kappa_s=uniform(rng, config.kappa_s_range, k),
        back_azimuth_deg=rng.uniform(0.0, 360.0, k),
        incidence_deg=rng.uniform(5.0, 35.0, k),
        s_polarisation_deg=rng.uniform(0.0, 360.0, k),
        s_to_p_amplitude=np.exp(rng.uniform(np.log(2.0), np.log(8.0), k)),  # ~ (vp/vs)^3 with radiation scatter
        coda_alpha=uniform(rng, config.coda_alpha_range, k),
        coda_q=log_uniform(rng, config.coda_q_range, k),
        coda_level=rng.uniform(0.1, 0.35, k),
        rise_p_s=np.exp(rng.uniform(np.log(0.03), np.log(0.3), k)),
        rise_s_s=np.exp(rng.uniform(np.log(0.05), np.log(0.6), k)),
    )


def event_waveforms(
    params: EventParams, n_samples: int, sampling_rate: float, rng: np.random.Generator, short_period: np.ndarray
) -> np.ndarray:
    """Synthesise k earthquakes as float32 [k, 3 (Z, N, E), n_samples]; zero before P, peak S ~ O(1)."""
    k = params.magnitude.shape[0]
    fs = sampling_rate
    t = np.arange(n_samples) / fs
    freq = scipy.fft.rfftfreq(n_samples, 1.0 / fs)
    tp_s = params.p_sample / fs
    travel_p = params.distance_km / params.vp_km_s
    travel_s = params.distance_km / params.vs_km_s
    ts_s = tp_s + params.s_minus_p_s
    origin_s = tp_s - travel_p

    common = brune_velocity_spectrum(freq, params.fc_hz) * site_kappa(freq, params.kappa_s)
    common = common * instrument_response(freq, short_period, fs)
    amp_p = _normalise_spectrum(
        common * anelastic_attenuation(freq, travel_p, params.q0 * params.qp_over_qs, params.q_eta)
    )
    amp_s = _normalise_spectrum(common * anelastic_attenuation(freq, travel_s, params.q0, params.q_eta))

    duration = 1.0 / params.fc_hz + 0.05 * params.distance_km  # source + path duration (Boore 1983)
    env_p = phase_envelope(t, tp_s, params.rise_p_s, 0.3 * duration + 0.1)
    env_s = phase_envelope(t, ts_s, params.rise_s_s, 0.5 * duration + 0.2)
    p_vec, s_vec = polarisation_zne(
        np.radians(params.incidence_deg), np.radians(params.back_azimuth_deg), np.radians(params.s_polarisation_deg)
    )
    w_p = shaped_noise(amp_p, n_samples, rng) * env_p / params.s_to_p_amplitude[:, None]
    w_s = shaped_noise(amp_s, n_samples, rng) * env_s
    out = w_p[:, None, :] * p_vec[:, :, None] + w_s[:, None, :] * s_vec[:, :, None]

    # Coda: incoherent per component, each band with its own decay; P coda (weaker) and S coda share the bands.
    lapse = t[None, :] - origin_s[:, None]
    coda_spec = rng.standard_normal((k, 3, freq.size), dtype=np.float32) + 1j * rng.standard_normal(
        (k, 3, freq.size), dtype=np.float32
    )
    coda_spec = (coda_spec / np.float32(np.sqrt(2.0))).astype(np.complex64) * amp_s[:, None, :].astype(np.float32)
    onset_p = phase_envelope(t, tp_s, np.full(k, 0.5), np.full(k, np.inf)) / params.s_to_p_amplitude[:, None]
    onset_s = phase_envelope(t, ts_s, np.full(k, 1.0), np.full(k, np.inf))
    coda_onsets = params.coda_level[:, None] * np.maximum(onset_p, onset_s)
    for lo, hi, centre in zip(_CODA_BAND_EDGES[:-1], _CODA_BAND_EDGES[1:], _CODA_BAND_CENTRES, strict=True):
        band = ((freq >= lo) & (freq < hi)).astype(np.float32)
        if not band.any():
            continue
        band_noise = scipy.fft.irfft(coda_spec * band, n=n_samples, norm="ortho", axis=-1)
        decay = coda_decay(lapse, travel_s, centre, params.coda_alpha, params.coda_q)
        out += band_noise * (coda_onsets * np.minimum(decay, 1.5))[:, None, :].astype(np.float32)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------------------------


def background_noise(
    m: int,
    n_samples: int,
    sampling_rate: float,
    rng: np.random.Generator,
    config: SyntheticConfig,
    short_period: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Coloured noise (power ~ 1/f^a) plus a microseism peak, float32 [m, 3, n_samples] with unit RMS per window."""
    freq = scipy.fft.rfftfreq(n_samples, 1.0 / sampling_rate)
    f = np.maximum(freq, 0.02)[None, None, :]
    exponent = uniform(rng, config.noise_exponent_range, m)
    coloured = _normalise_spectrum(np.broadcast_to(f ** (-exponent[:, None, None] / 2.0), (m, 3, freq.size)))
    ms_hz = uniform(rng, config.microseism_hz_range, m)
    ms_width = rng.uniform(0.02, 0.06, m)
    ms_ratio = log_uniform(rng, config.microseism_ratio_range, m)[:, None] * rng.uniform(0.7, 1.5, (m, 3))
    microseism = np.exp(-0.5 * ((freq[None, None, :] - ms_hz[:, None, None]) / ms_width[:, None, None]) ** 2)
    microseism = _normalise_spectrum(np.broadcast_to(microseism, (m, 3, freq.size)))
    amp = (coloured + ms_ratio[:, :, None] * microseism) * instrument_response(freq, short_period, sampling_rate)[
        :, None, :
    ]
    amp[..., 0] = 0.0  # no DC
    noise = shaped_noise(amp, n_samples, rng)
    noise /= np.sqrt(np.mean(noise**2, axis=(1, 2), keepdims=True)) + 1e-12
    return noise, {"noise_exponent": exponent, "microseism_hz": ms_hz, "microseism_ratio": ms_ratio.mean(axis=1)}


def _check_not_evaluation(path: str) -> None:
    name = os.path.basename(path)
    core_data = os.path.normpath(os.path.join("obspy", "core", "data"))
    if name in EVALUATION_RECORDINGS or core_data in os.path.normpath(os.path.abspath(path)):
        raise ConfigError(
            f"real_noise_files: {path!r} is an evaluation recording (EVALUATION_RECORDINGS); it must not be used "
            "as training noise"
        )


def obspy_noise_files() -> tuple[str, ...]:
    """Absolute paths of the `OBSPY_NOISE_CANDIDATES` present in this ObsPy installation."""
    import obspy

    base = os.path.dirname(obspy.__file__)
    paths = (os.path.join(base, *rel.split("/")) for rel in OBSPY_NOISE_CANDIDATES)
    return tuple(p for p in paths if os.path.isfile(p))


def load_noise_pool(paths: Sequence[str], sampling_rate: float, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Read recordings into one float32 array of unit-RMS pieces plus the valid start indices of n_samples cuts."""
    import obspy  # local import: ObsPy is slow to import and only needed when real noise is asked for

    pieces: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    offset = 0
    for path in paths:
        _check_not_evaluation(path)
        try:
            stream = obspy.read(path)
        except Exception as exc:  # ObsPy raises many types for unreadable files
            raise ConfigError(f"real_noise_files: cannot read {path!r}: {exc}") from exc
        for tr in stream.split():
            tr = tr.copy()
            tr.detrend("demean")
            if abs(tr.stats.sampling_rate - sampling_rate) > 1e-6:
                tr.resample(sampling_rate)
            data = tr.data.astype(np.float64)
            if data.size < n_samples or not np.isfinite(data).all() or data.std() == 0:
                continue
            data = (data - data.mean()) / data.std()
            pieces.append(data.astype(np.float32))
            starts.append(offset + np.arange(0, data.size - n_samples + 1, max(1, n_samples // 8)))
            offset += data.size
    if not pieces:
        raise ConfigError(f"real_noise_files: no trace of at least {n_samples} samples in {list(paths)!r}")
    log.info("real_noise_pool", files=len(paths), traces=len(pieces), samples=offset)
    return np.concatenate(pieces), np.concatenate(starts)


# --------------------------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------------------------


def _component_indices(component_order: str) -> np.ndarray:
    try:
        return np.array([_COMPONENT_INDEX[ch] for ch in component_order.upper()])
    except KeyError:
        raise ContractError(
            f"synthetic data has components Z, N, E (aliases 3, 1, 2); contract asks for {component_order!r}"
        ) from None


def _sample_onsets(
    k: int, n_samples: int, fs: float, sp_samples: np.ndarray, rng: np.random.Generator, config: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray]:
    """P arrival sample (may be negative) and scenario id (0 P in window, 1 S only, 2 coda only)."""
    w = np.asarray(config.scenario_weights, dtype=float)
    scenario = rng.choice(3, size=k, p=w / w.sum())
    last = max(n_samples - config.min_signal_s * fs, 1.0)
    p_full = rng.uniform(0.0, last, k)
    s_only = rng.uniform(0.0, 1.0, k) * np.minimum(sp_samples, last)  # S in window, P before it
    s_coda = -rng.uniform(0.0, 8.0 * fs, k)  # S up to 8 s before the window: only coda inside
    p = np.select([scenario == 0, scenario == 1], [p_full, s_only - sp_samples], s_coda - sp_samples)
    return p, scenario


def _snr_scale(signal: np.ndarray, noise: np.ndarray, first_sample: np.ndarray, fs: float, snr: np.ndarray):
    """Factor that sets RMS(signal over 4 s after its first in-window arrival) / RMS(noise) to snr, per window."""
    n = signal.shape[-1]
    start = np.clip(np.floor(first_sample), 0, n - 1)
    idx = np.arange(n)[None, :]
    mask = (idx >= start[:, None]) & (idx < start[:, None] + 4.0 * fs)
    power = np.sum(np.mean(signal.astype(np.float64) ** 2, axis=1) * mask, axis=1) / np.maximum(mask.sum(axis=1), 1)
    noise_rms = np.sqrt(np.mean(noise.astype(np.float64) ** 2, axis=(1, 2)))
    return snr * noise_rms / np.sqrt(power + 1e-30)


def generate(
    n: int, contract: InputContract, seed: int, config: SyntheticConfig | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Generate n labelled windows: waveforms float32 [n, C, N] (counts-like), labels int64 [n], meta per window.

    C and N follow the contract (component order letters among Z, N, E, 1, 2, 3). The same seed and config give
    bit-identical arrays. meta[i] holds the label name, scenario, sampled physics (arrival samples relative to
    the window start, magnitude, distance, fc, Q, ...), SNR, noise parameters and any artefact kind.
    """
    cfg = config or SyntheticConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    comp_idx = _component_indices(contract.component_order)
    fs, n_samples = float(contract.sampling_rate), int(contract.window_samples)
    rng = np.random.default_rng(seed)
    pool = load_noise_pool(cfg.real_noise_files, fs, n_samples) if cfg.real_noise_fraction > 0 else None

    labels = np.zeros(n, dtype=np.int64)
    labels[: int(np.floor(n * cfg.event_fraction + 0.5))] = 1
    rng.shuffle(labels)
    waveforms = np.empty((n, len(comp_idx), n_samples), dtype=np.float32)
    meta: list[dict[str, Any]] = []
    weights = np.asarray(cfg.hard_negative_weights, dtype=float)
    event_kinds_w = weights * np.array([1, 1, 1, 1, 0, 0], dtype=float)

    for lo in range(0, n, cfg.chunk_size):
        lab = labels[lo : lo + cfg.chunk_size]
        m = lab.size
        short_period = rng.random(m) < cfg.short_period_fraction
        x, noise_info = background_noise(m, n_samples, fs, rng, cfg, short_period)
        real = np.zeros(m, dtype=bool)
        if pool is not None:
            real = rng.random(m) < cfg.real_noise_fraction
            if real.any():
                data, starts = pool
                cut = rng.choice(starts, size=(int(real.sum()), 3))
                seg = data[cut[..., None] + np.arange(n_samples)]
                x[real] = seg / (np.sqrt(np.mean(seg.astype(np.float64) ** 2, axis=(1, 2), keepdims=True)) + 1e-12)

        # Earthquakes: scaled by SNR against the noise they sit in.
        eq = np.flatnonzero(lab == 1)
        params = sample_event_params(eq.size, rng, cfg)
        sp = params.s_minus_p_s * fs
        params.p_sample, scenario = _sample_onsets(eq.size, n_samples, fs, sp, rng, cfg)
        snr = log_uniform(rng, cfg.snr_range, eq.size)
        if eq.size:
            sig = event_waveforms(params, n_samples, fs, rng, short_period[eq])
            first = np.where(params.p_sample >= 0, params.p_sample, np.maximum(params.p_sample + sp, 0.0))
            x[eq] += sig * _snr_scale(sig, x[eq], first, fs, snr)[:, None, None].astype(np.float32)

        # Artefacts: hard negatives on noise windows, a few on earthquake windows too.
        kinds = np.full(m, -1)
        noise_idx = np.flatnonzero(lab == 0)
        hit = noise_idx[rng.random(noise_idx.size) < cfg.hard_negative_fraction]
        if hit.size and weights.sum() > 0:
            kinds[hit] = rng.choice(len(weights), size=hit.size, p=weights / weights.sum())
        hit_eq = eq[rng.random(eq.size) < cfg.event_artefact_fraction]
        if hit_eq.size and event_kinds_w.sum() > 0:
            kinds[hit_eq] = rng.choice(len(weights), size=hit_eq.size, p=event_kinds_w / event_kinds_w.sum())
        gaps = _add_artefacts(x, kinds, fs, rng)

        # Counts: random overall scale, per-component gain, DC offset; gaps are zero-filled after digitising.
        scale = log_uniform(rng, cfg.counts_scale_range, m)[:, None] * log_uniform(
            rng, cfg.component_gain_range, 3 * m
        ).reshape(m, 3)
        offset = rng.normal(0.0, 2.0, (m, 3)) * scale
        x = x * scale[:, :, None].astype(np.float32) + offset[:, :, None].astype(np.float32)
        x[gaps] = 0.0
        waveforms[lo : lo + m] = x[:, comp_idx, :]

        for j in range(m):
            row: dict[str, Any] = {
                "label": LABELS[int(lab[j])],
                "instrument": "short_period" if short_period[j] else "broadband",
                "noise_source": "real" if real[j] else "synthetic",
                "artefact": HARD_NEGATIVE_KINDS[kinds[j]] if kinds[j] >= 0 else None,
                **{key: float(val[j]) for key, val in noise_info.items()},
            }
            meta.append(row)
        for e, j in enumerate(eq):
            row = meta[lo + j]
            row.update(params.row(e))
            row.update(
                scenario=("p_in_window", "s_only", "coda_only")[int(scenario[e])],
                s_sample=float(params.p_sample[e] + sp[e]),
                origin_sample=float(params.p_sample[e] - params.distance_km[e] / params.vp_km_s[e] * fs),
                fc_hz=float(params.fc_hz[e]),
                m0_nm=float(seismic_moment(params.magnitude[e])),
                snr=float(snr[e]),
            )
    log.debug("synthetic_generated", n=n, events=int(labels.sum()), seed=seed)
    return waveforms, labels, meta


def synthesize_event_trace(
    noise: np.ndarray,
    onset_sample: float,
    magnitude: float,
    distance_km: float,
    rng: np.random.Generator,
    *,
    snr: float | None = None,
    sampling_rate: float = 100.0,
    component_order: str = "ZNE",
    config: SyntheticConfig | None = None,
) -> np.ndarray:
    """Return noise [C, N] plus one local earthquake whose P arrives at onset_sample (samples may exceed N).

    Rows of noise follow component_order (letters among Z, N, E, 1, 2, 3). Amplitude: snr is RMS(event over the
    4 s after P) / RMS(noise). Without it, the SNR follows the local-magnitude distance correction of Hutton &
    Boore (1987), log10 A = M - 1.11 log10(r/100) - 0.00189 (r - 100) - 3.0 [mm Wood-Anderson], against a
    noise level of 0.01 mm, so an M 2 at 100 km has SNR 10 and each magnitude unit multiplies it by 10.
    Samples before the P onset are returned unchanged.
    """
    noise = np.asarray(noise)
    comp_idx = _component_indices(component_order)
    if noise.ndim != 2 or noise.shape[0] != comp_idx.size:
        raise ContractError(f"noise must be [C, N] with C = len({component_order!r}), got shape {noise.shape}")
    cfg = config or SyntheticConfig()
    params = sample_event_params(1, rng, cfg, p_sample=np.array([float(onset_sample)]))
    params.magnitude = np.array([float(magnitude)])
    params.distance_km = np.array([float(distance_km)])
    if snr is None:
        r = float(distance_km)
        log_a = magnitude - 1.11 * np.log10(r / 100.0) - 0.00189 * (r - 100.0) - 3.0
        snr = float(10.0**log_a / 1e-2)
    sig = event_waveforms(params, noise.shape[1], sampling_rate, rng, np.array([False]))[:, comp_idx]
    scale = _snr_scale(sig, noise.astype(np.float32)[None], params.p_sample, sampling_rate, np.array([snr]))
    return (noise + sig[0] * scale[0]).astype(noise.dtype if noise.dtype.kind == "f" else np.float32)
