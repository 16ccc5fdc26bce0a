"""The synthetic generator: shapes, reproducibility, class balance, physics (arrivals, corner frequency,
polarisation, coda), hard negatives, real-noise policy and the streaming embed helper."""

from __future__ import annotations

import os

import numpy as np
import obspy
import pytest

from quakemon.base.errors import ConfigError, ContractError
from quakemon.data.synthetic import (
    EVALUATION_RECORDINGS,
    HARD_NEGATIVE_KINDS,
    LABELS,
    SyntheticConfig,
    brune_corner_frequency,
    event_waveforms,
    generate,
    obspy_noise_files,
    polarisation_zne,
    sample_event_params,
    seismic_moment,
    synthesize_event_trace,
)
from quakemon.models.contract import InputContract

CONTRACT = InputContract()
FS = CONTRACT.sampling_rate
# Clean events: high SNR, no artefacts, so waveform checks see the physics only.
CLEAN = SyntheticConfig(snr_range=(300.0, 300.0), hard_negative_fraction=0.0, event_artefact_fraction=0.0)


def test_shapes_dtypes_finite() -> None:
    w, y, meta = generate(48, CONTRACT, seed=0)
    assert w.shape == (48, 3, CONTRACT.window_samples) and w.dtype == np.float32
    assert y.shape == (48,) and y.dtype == np.int64
    assert len(meta) == 48 and [m["label"] for m in meta] == [LABELS[i] for i in y]
    assert np.isfinite(w).all()
    assert (w.std(axis=-1) > 0).mean() > 0.9  # counts-like, not all-zero (dropouts may zero a component)


def test_same_seed_identical_different_seed_differs() -> None:
    a = generate(24, CONTRACT, seed=7)
    b = generate(24, CONTRACT, seed=7)
    c = generate(24, CONTRACT, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("fraction, n, expected", [(0.25, 40, 10), (0.0, 10, 0), (1.0, 10, 10), (0.5, 7, 4)])
def test_class_balance_honoured(fraction: float, n: int, expected: int) -> None:
    _, y, _ = generate(n, CONTRACT, seed=1, config=SyntheticConfig(event_fraction=fraction))
    assert int(y.sum()) == expected


def test_s_minus_p_matches_distance_and_velocities() -> None:
    _, y, meta = generate(60, CONTRACT, seed=2, config=SyntheticConfig(event_fraction=1.0))
    for m in meta:
        expected = m["distance_km"] * (1.0 / m["vs_km_s"] - 1.0 / m["vp_km_s"]) * FS
        assert m["s_sample"] > m["p_sample"] > m["origin_sample"]
        assert m["s_sample"] - m["p_sample"] == pytest.approx(expected, rel=1e-9)
        assert 5.0 <= m["distance_km"] <= 150.0 and 1.6 < m["vp_km_s"] / m["vs_km_s"] < 1.85
    scenarios = {m["scenario"] for m in meta}
    assert scenarios == {"p_in_window", "s_only", "coda_only"}
    in_window = [m for m in meta if m["scenario"] == "p_in_window"]
    assert all(0 <= m["p_sample"] <= CONTRACT.window_samples - FS for m in in_window)
    assert all(m["p_sample"] < 0 <= m["s_sample"] for m in meta if m["scenario"] == "s_only")
    assert all(m["s_sample"] < 0 for m in meta if m["scenario"] == "coda_only")


def test_waveform_starts_at_p_and_s_dominates_horizontals() -> None:
    cfg = SyntheticConfig(
        event_fraction=1.0,
        scenario_weights=(1, 0, 0),
        snr_range=(300.0, 300.0),
        hard_negative_fraction=0.0,
        event_artefact_fraction=0.0,
        distance_km_range=(40.0, 80.0),
    )
    w, _, meta = generate(40, CONTRACT, seed=3, config=cfg)
    ratios = []
    for x, m in zip(w.astype(np.float64), meta, strict=True):
        x = x - x[:, :50].mean(axis=1, keepdims=True)
        p, s = int(np.ceil(m["p_sample"])), int(np.ceil(m["s_sample"]))
        if p < 60 or s + 100 > x.shape[1]:
            continue
        before = np.sqrt(np.mean(x[:, : p - 2] ** 2))
        after = np.sqrt(np.mean(x[:, p : p + 100] ** 2))
        assert after > 10 * before, m  # nothing arrives before the P pick in meta
        h_p = np.sqrt(np.mean(x[1:, p : p + 100] ** 2))
        h_s = np.sqrt(np.mean(x[1:, s : s + 100] ** 2))
        ratios.append(h_s / h_p)
    assert len(ratios) >= 10 and np.median(ratios) > 1.5  # S stronger than P on the horizontals


def test_corner_frequency_falls_with_magnitude() -> None:
    mags = np.arange(0.0, 6.5, 0.5)
    fc = brune_corner_frequency(mags)
    assert np.all(np.diff(fc) < 0)
    assert fc[:-2] / fc[2:] == pytest.approx(np.full(fc.size - 2, 10**0.5))  # fc ~ M0^(-1/3), M0 ~ 10^(1.5 Mw)
    assert brune_corner_frequency(3.0, 3e6, 3500.0) == pytest.approx(7.24, abs=0.01)
    assert seismic_moment(6.0) == pytest.approx(10 ** (1.5 * 6 + 9.1))
    assert brune_corner_frequency(3.0, 10e6) > brune_corner_frequency(3.0, 1e6)  # higher stress drop, higher fc


def test_large_events_have_lower_frequency_content() -> None:
    rng = np.random.default_rng(0)
    centroid = {}
    for mag in (1.0, 4.5):
        params = sample_event_params(16, rng, CLEAN, p_sample=np.full(16, 200.0))
        params.magnitude[:] = mag
        params.distance_km[:] = 20.0
        x = event_waveforms(params, 2000, FS, rng, np.zeros(16, dtype=bool))
        power = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        f = np.fft.rfftfreq(2000, 1 / FS)
        centroid[mag] = float(np.median((power * f).sum(-1) / power.sum(-1)))
    assert centroid[4.5] < 0.6 * centroid[1.0]


def test_polarisation_p_on_vertical_s_on_horizontals() -> None:
    rng = np.random.default_rng(1)
    inc, baz, psi = np.radians(rng.uniform(5, 35, 100)), np.radians(rng.uniform(0, 360, 100)), rng.uniform(0, 6.3, 100)
    p, s = polarisation_zne(inc, baz, psi)
    assert np.allclose(np.linalg.norm(p, axis=1), 1) and np.allclose(np.linalg.norm(s, axis=1), 1)
    assert np.allclose((p * s).sum(axis=1), 0)  # S is transverse to P
    assert np.all(np.abs(p[:, 0]) > np.cos(np.radians(35)) - 1e-9)  # P mostly vertical
    assert np.all(np.abs(s[:, 0]) < np.sin(np.radians(35)) + 1e-9)  # S mostly horizontal
    # Back-azimuth rotation: P's horizontal motion points along the great circle (radial), i.e. N/E ~ cos/sin(baz).
    horiz = p[:, 1:] / np.linalg.norm(p[:, 1:], axis=1, keepdims=True)
    assert np.allclose(horiz, -np.stack([np.cos(baz), np.sin(baz)], axis=1))


def test_coda_decays() -> None:
    rng = np.random.default_rng(2)
    params = sample_event_params(8, rng, CLEAN, p_sample=np.full(8, 100.0))
    params.distance_km[:] = 10.0
    params.magnitude[:] = 2.0
    x = event_waveforms(params, 6000, FS, rng, np.zeros(8, dtype=bool)).astype(np.float64)
    s = int(np.ceil(params.p_sample[0] + params.s_minus_p_s.max() * FS))
    early = np.sqrt(np.mean(x[:, :, s : s + 500] ** 2))
    late = np.sqrt(np.mean(x[:, :, -500:] ** 2))
    assert late < 0.3 * early


def test_hard_negatives_present_in_noise_class() -> None:
    cfg = SyntheticConfig(event_fraction=0.0, hard_negative_fraction=1.0, hard_negative_weights=(1, 1, 1, 1, 1, 1))
    w, y, meta = generate(240, CONTRACT, seed=4, config=cfg)
    assert (y == 0).all()
    kinds = [m["artefact"] for m in meta]
    assert set(kinds) == set(HARD_NEGATIVE_KINDS)
    for x, kind in zip(w.astype(np.float64), kinds, strict=True):
        z = (x - np.median(x, axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-12)
        if kind == "dropout":
            assert (x == 0).sum() >= 20  # a zero-filled gap of >= 0.2 s
        elif kind == "spike":
            assert np.abs(z).max() > 6
    default = generate(200, CONTRACT, seed=5)[2]
    noise_kinds = {m["artefact"] for m in default if m["label"] == "noise"}
    assert {"spike", "glitch", "step", "dropout", "cultural"} <= noise_kinds
    assert "teleseism" not in noise_kinds  # off by default: a teleseism is an earthquake, not noise


def test_component_order_follows_contract() -> None:
    zne = generate(6, CONTRACT, seed=9)[0]
    enz = generate(6, InputContract(component_order="ENZ"), seed=9)[0]
    assert np.array_equal(enz[:, 0], zne[:, 2]) and np.array_equal(enz[:, 2], zne[:, 0])
    with pytest.raises(ContractError, match="ZNH"):
        generate(2, InputContract(component_order="ZNH"), seed=0)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="snr_range"):
        SyntheticConfig(snr_range=(10.0, 1.0))
    with pytest.raises(ConfigError, match="event_fraction"):
        SyntheticConfig(event_fraction=1.5)
    with pytest.raises(ConfigError, match="hard_negative_weights"):
        SyntheticConfig(hard_negative_weights=(1.0, 2.0))


def test_real_noise_from_file_and_evaluation_recordings_refused(tmp_path) -> None:
    rng = np.random.default_rng(0)
    tr = obspy.Trace(rng.normal(0, 50, 6000).astype(np.float32))
    tr.stats.update({"network": "XX", "station": "NOIS", "channel": "HHZ", "sampling_rate": 50.0})
    path = tmp_path / "noise.mseed"
    obspy.Stream([tr]).write(str(path), format="MSEED")
    cfg = SyntheticConfig(real_noise_files=(str(path),), real_noise_fraction=1.0, hard_negative_fraction=0.0)
    w, _, meta = generate(8, CONTRACT, seed=0, config=cfg)
    assert np.isfinite(w).all() and {m["noise_source"] for m in meta} == {"real"}

    example = os.path.join(os.path.dirname(obspy.__file__), "core", "data", "example.npz")
    with pytest.raises(ConfigError, match="evaluation"):
        generate(2, CONTRACT, seed=0, config=SyntheticConfig(real_noise_files=(example,), real_noise_fraction=0.5))


def test_synthesize_event_trace_embeds_at_onset() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 1, (3, 6000))
    out = synthesize_event_trace(noise, 3000, 3.0, 30.0, np.random.default_rng(4), snr=20.0)
    assert out.shape == noise.shape and np.isfinite(out).all()
    assert np.array_equal(out[:, :3000], noise[:, :3000])  # nothing before the P onset
    ratio = np.sqrt(np.mean((out - noise)[:, 3000:3400] ** 2)) / np.sqrt(np.mean(noise**2))
    assert ratio == pytest.approx(20.0, rel=1e-3)

    # Without snr, the SNR follows the Hutton & Boore (1987) ML distance correction.
    def snr_of(out: np.ndarray) -> float:
        return float(np.sqrt(np.mean((out - noise)[:, 3000:3400] ** 2)) / np.sqrt(np.mean(noise**2)))

    near = snr_of(synthesize_event_trace(noise, 3000, 3.0, 20.0, np.random.default_rng(4)))
    far = snr_of(synthesize_event_trace(noise, 3000, 3.0, 140.0, np.random.default_rng(4)))
    bigger = snr_of(synthesize_event_trace(noise, 3000, 4.0, 140.0, np.random.default_rng(4)))
    assert near / far == pytest.approx(10 ** (1.11 * np.log10(7.0) + 0.00189 * 120.0), rel=1e-6)
    assert bigger / far == pytest.approx(10.0, rel=1e-6)
    assert snr_of(synthesize_event_trace(noise, 3000, 2.0, 100.0, np.random.default_rng(4))) == pytest.approx(10.0)
    # Rows follow component_order: the same event in "ENZ" is the "ZNE" one reversed.
    zne = synthesize_event_trace(noise, 3000, 3.0, 30.0, np.random.default_rng(5), snr=5.0) - noise
    enz = (
        synthesize_event_trace(noise[::-1], 3000, 3.0, 30.0, np.random.default_rng(5), snr=5.0, component_order="ENZ")
        - noise[::-1]
    )
    np.testing.assert_allclose(enz, zne[::-1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ContractError, match="noise must be"):
        synthesize_event_trace(noise[:2], 3000, 3.0, 30.0, np.random.default_rng(5))


def test_obspy_noise_sources_are_not_evaluation_data() -> None:
    files = obspy_noise_files()
    assert len(files) >= 5
    assert not {os.path.basename(f) for f in files} & EVALUATION_RECORDINGS
    cfg = SyntheticConfig(
        real_noise_files=files, real_noise_fraction=0.5, event_fraction=0.0, hard_negative_fraction=0.0
    )
    w, _, meta = generate(16, CONTRACT, seed=1, config=cfg)
    assert np.isfinite(w).all() and {m["noise_source"] for m in meta} == {"real", "synthetic"}
