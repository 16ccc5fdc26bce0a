"""WHITEN: each spectrogram row over its background in the window, on the numpy and the torch paths."""

from __future__ import annotations

import numpy as np
import pytest

from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.transforms_torch import preprocess_tensors
from quakemon.training.finetune import band_passed_contract, whitened_contract

PLAIN = band_passed_contract(InputContract(), (0.7, 25.0))
WHITENED = whitened_contract(PLAIN)


def coloured_noise(kind: str, rng: np.random.Generator, b: int = 8) -> np.ndarray:
    """[b, 3, 2000] stationary noise: white, red (a random walk: power falling as f^-2) or a 1-3 Hz band."""
    white = rng.normal(size=(b, 3, 2000))
    if kind == "white":
        return 100 * white
    if kind == "red":
        return np.cumsum(white, axis=-1)
    spectrum = np.fft.rfft(white, axis=-1)
    freqs = np.fft.rfftfreq(2000, 0.01)
    spectrum[..., (freqs < 1) | (freqs > 3)] *= 0.01
    return 5000 * np.fft.irfft(spectrum, 2000, axis=-1)


def test_stationary_noise_of_any_spectrum_becomes_the_same_flat_image():
    rng = np.random.default_rng(3)
    band = slice(2, 15)  # 3-22 Hz rows, inside the 0.7-25 Hz band-pass
    means = {}
    for kind in ("white", "red", "narrow"):
        x = coloured_noise(kind, rng)
        plain = preprocess_batch(x, PLAIN).spectrograms[..., band, 8:-8].mean(axis=(0, 1, 3))
        white = preprocess_batch(x, WHITENED).spectrograms[..., band, 8:-8].mean(axis=(0, 1, 3))
        means[kind] = plain, white
    # without WHITEN the rows differ between the noises by factors of 5 and more ...
    assert means["red"][0].max() / means["red"][0].min() > 5
    assert means["narrow"][0][0] / means["narrow"][0][-1] > 5
    # ... with it every row of every noise sits at the same level
    levels = np.concatenate([white for _, white in means.values()])
    assert levels.max() - levels.min() < 0.25, levels
    assert 0.7 < levels.mean() < 1.5


def test_a_burst_shows_as_its_excess_over_the_background_in_its_own_rows():
    rng = np.random.default_rng(4)
    x = coloured_noise("red", rng, b=2)
    t = np.arange(1000) / 100.0
    burst = np.sin(2 * np.pi * 5.0 * t) * np.exp(-t / 2.0)  # 5 Hz, in the second half of the window
    x[1, 0, 1000:] += 20 * x[1, 0].std() * burst
    out = preprocess_batch(x, WHITENED).spectrograms
    row = round(5.0 / (100.0 / 64))  # the 5 Hz bin
    quiet, loud = out[0, 0, row].max(), out[1, 0, row, 32:].max()
    assert loud > quiet + 2.5  # log1p(ratio): more than e^2.5 ~ 12 times the background
    assert out[1, 0, row, :28].max() < quiet + 0.5  # the frames before the burst stay at the background


def test_torch_and_numpy_agree_with_nan_runs_and_a_dead_channel():
    rng = np.random.default_rng(5)
    x = coloured_noise("red", rng, b=6)
    x[1, 1, 100:150] = np.nan
    x[2, 0] = 4321.0  # dead
    x[3, 2] = np.nan  # invalid window
    cpu, ref = preprocess_batch(x, WHITENED), preprocess_tensors(x, WHITENED)
    # log1p of a ratio whose denominator can be 1e-3 of a row's level: float32 rounding of the spectrum shows
    # at the 1e-3 level here, not the 1e-6 of the plain spectrogram
    np.testing.assert_allclose(cpu.spectrograms, ref.spectrograms, atol=1e-2)
    np.testing.assert_array_equal(cpu.valid, ref.valid)
    np.testing.assert_array_equal(cpu.dead, ref.dead)
    assert np.isfinite(cpu.spectrograms).all()
    assert not cpu.spectrograms[2, 0].any() and not ref.spectrograms[2, 0].any()


def test_whitened_contract_keeps_the_shapes_and_records_its_settings():
    assert WHITENED.transforms[-2:] == ("SPECTROGRAM", "WHITEN")
    assert WHITENED.spectrogram_shape == PLAIN.spectrogram_shape
    assert WHITENED.extra["whiten_quantile"] == 0.2 and WHITENED.extra["whiten_floor"] == 1e-3
    assert InputContract.from_dict(WHITENED.to_dict()) == WHITENED


def test_bad_whiten_settings_are_contract_errors():
    with pytest.raises(ContractError, match="needs SPECTROGRAM"):
        InputContract(transforms=("DROP_NAN", "TRIMMING", "ZSCORE", "WHITEN"))
    x = np.zeros((1, 3, 2000))
    for key, value in (("whiten_quantile", 1.0), ("whiten_quantile", "low"), ("whiten_floor", 0.0)):
        contract = InputContract(transforms=WHITENED.transforms, extra={**WHITENED.extra, key: value})
        with pytest.raises(ContractError, match=key):
            preprocess_batch(x, contract)
        with pytest.raises(ContractError, match=key):
            preprocess_tensors(x, contract)
