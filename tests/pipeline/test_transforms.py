"""preprocess_batch against per-window scipy/numpy references, NaN/dead policies, and stream_to_array mapping."""

from __future__ import annotations

import numpy as np
import obspy
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract
from quakemon.pipeline.streams import stream_to_array
from quakemon.pipeline.transforms import PreprocessResult, preprocess_batch

DEFAULT = InputContract()


def scipy_stft_mag(x: np.ndarray, nperseg: int = 64, hop: int = 32) -> np.ndarray:
    """The reference: |scipy.signal.stft| with the documented parameters, one window at a time."""
    _, _, z = scipy.signal.stft(
        x, window="hann", nperseg=nperseg, noverlap=nperseg - hop, boundary="zeros", padded=True
    )
    return np.abs(z)


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)


def reference(batch: np.ndarray, nperseg: int = 64, hop: int = 32) -> np.ndarray:
    return np.stack([scipy_stft_mag(zscore(w.astype(np.float64)), nperseg, hop) for w in batch])


def windows(b: int = 6, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Noise with per-channel offsets and scales like raw counts, plus a burst, float64 [b, 3, n]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 3, n)) * rng.uniform(1, 1e4, (b, 3, 1)) + rng.uniform(-1e5, 1e5, (b, 3, 1))
    x[:, :, n // 2 : n // 2 + 200] *= 20
    return x


def test_matches_scipy_per_window_float64_bin_for_bin():
    x = windows()
    res = preprocess_batch(x, DEFAULT, dtype=torch.float64)
    ref = reference(x)
    assert res.spectrograms.shape == (6, 3, 33, 64) == (6, 3, *DEFAULT.spectrogram_shape)
    assert res.spectrograms.dtype == np.float32
    np.testing.assert_allclose(res.spectrograms, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert res.valid.all() and not res.dead.any() and (res.nan_fraction == 0).all()


def test_matches_scipy_float32_default_within_1e5_relative():
    x = windows(seed=1)
    out = preprocess_batch(x, DEFAULT).spectrograms
    ref = reference(x)
    # float32 compute: the error relative to each channel's spectrogram peak stays below 1e-5
    err = np.abs(out - ref).max(axis=(-2, -1)) / ref.max(axis=(-2, -1))
    assert err.max() < 1e-5, err.max()


def test_int32_counts_and_torch_input_give_the_same_answer():
    x = np.round(windows(b=3, seed=2)).astype(np.int32)
    from_numpy = preprocess_batch(x, DEFAULT)
    from_torch = preprocess_batch(torch.from_numpy(x), DEFAULT, device="cpu")
    assert isinstance(from_torch.spectrograms, torch.Tensor) and from_torch.spectrograms.dtype == torch.float32
    assert isinstance(from_numpy.spectrograms, np.ndarray)
    np.testing.assert_allclose(from_torch.spectrograms.numpy(), from_numpy.spectrograms)
    np.testing.assert_allclose(from_numpy.spectrograms, reference(x), rtol=1e-3, atol=1e-5 * reference(x).max())


@pytest.mark.parametrize(("nperseg", "hop", "window"), [(64, 32, 2000), (50, 20, 1000), (64, 64, 999), (32, 8, 500)])
def test_spectrogram_only_matches_scipy_for_other_stft_parameters(nperseg, hop, window):
    contract = InputContract(window_samples=window, stft_nperseg=nperseg, stft_hop=hop, transforms=("SPECTROGRAM",))
    x = windows(b=2, n=window, seed=3)
    out = preprocess_batch(x, contract, dtype=torch.float64).spectrograms
    ref = np.stack([scipy_stft_mag(w, nperseg, hop) for w in x])
    assert out.shape[-2:] == contract.spectrogram_shape == ref.shape[-2:]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * ref.max())


def test_trimming_keeps_the_first_window_samples():
    x = windows(n=3000, seed=4)
    out = preprocess_batch(x, DEFAULT, dtype=torch.float64).spectrograms
    np.testing.assert_allclose(out, reference(x[..., :2000]), rtol=1e-5, atol=1e-6)


def test_trimming_pads_short_input_at_the_end_outside_the_zscore_statistics():
    x = windows(n=1500, seed=5)
    out = preprocess_batch(x, DEFAULT, dtype=torch.float64).spectrograms
    padded = np.concatenate([zscore(x), np.zeros((6, 3, 500))], axis=-1)
    ref = np.stack([scipy_stft_mag(w) for w in padded])
    assert out.shape == (6, 3, 33, 64)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    wave = preprocess_batch(x, InputContract(transforms=("TRIMMING", "ZSCORE")), dtype=torch.float64).spectrograms
    np.testing.assert_allclose(wave, padded, atol=1e-6)


def test_dead_channel_is_flagged_and_zero_while_others_are_unchanged():
    x = windows(b=2, seed=6)
    x[1, 2] = 12345.0  # constant E channel in window 1
    res = preprocess_batch(x, DEFAULT)
    assert res.dead.tolist() == [[False, False, False], [False, False, True]]
    assert np.isfinite(res.spectrograms).all()
    assert (res.spectrograms[1, 2] == 0).all()
    ref = reference(x[:, :2])
    np.testing.assert_allclose(res.spectrograms[:, :2], ref, rtol=1e-3, atol=1e-5 * ref.max())
    assert res.valid.all()  # dead is reported, not a reason on its own to skip the window


def test_huge_amplitudes_and_all_zero_window_stay_finite():
    x = np.zeros((2, 3, 2000), dtype=np.int32)
    x[0] = np.where(np.arange(2000) % 2, 2**31 - 1, -(2**31))
    res = preprocess_batch(x, DEFAULT)
    assert np.isfinite(res.spectrograms).all()
    assert res.dead[1].all() and not res.dead[0].any()
    assert res.spectrograms[0].max() > 0


def test_short_nan_run_is_interpolated_and_window_stays_valid():
    x = windows(b=2, seed=7)
    x[0, 1, 500:550] = np.nan  # 2.5 % of the N channel
    x[1, 0, 10] = np.inf
    res = preprocess_batch(x, DEFAULT, dtype=torch.float64)
    repaired = x.copy()
    for b, c in [(0, 1), (1, 0)]:
        ok = np.isfinite(repaired[b, c])
        repaired[b, c] = np.interp(np.arange(2000), np.flatnonzero(ok), repaired[b, c, ok])
    np.testing.assert_allclose(res.spectrograms, reference(repaired), rtol=1e-5, atol=1e-6)
    assert res.valid.tolist() == [True, True]
    np.testing.assert_allclose(res.nan_fraction, [50 / 2000, 1 / 2000], rtol=1e-6)


def test_nan_over_threshold_or_whole_channel_marks_invalid_but_output_is_finite():
    x = windows(b=4, seed=8)
    x[0, 0, :300] = np.nan  # 15 % of one channel (5 % of the window): the worst channel counts
    x[1, 2] = np.nan  # a whole channel missing
    x[2, 1, 1000:1100] = np.nan  # 5 %: valid
    res = preprocess_batch(x, DEFAULT)
    assert res.valid.tolist() == [False, False, True, True]
    np.testing.assert_allclose(res.nan_fraction, [0.15, 1.0, 0.05, 0.0], rtol=1e-6)
    assert res.dead[1, 2] and not res.dead[0].any()
    assert np.isfinite(res.spectrograms).all()
    strict = preprocess_batch(x, DEFAULT, max_nan_fraction=0.01)
    assert strict.valid.tolist() == [False, False, False, True]
    lenient = preprocess_batch(x, InputContract(extra={"max_nan_fraction": 0.2}))
    assert lenient.valid.tolist() == [True, False, True, True]


def test_nan_fraction_counts_only_the_kept_window():
    x = windows(b=1, n=3000, seed=9)
    x[0, 0, 2000:] = np.nan  # entirely in the part TRIMMING cuts away
    res = preprocess_batch(x, DEFAULT)
    assert res.valid[0] and res.nan_fraction[0] == 0


def test_without_drop_nan_nonfinite_windows_are_invalid_and_zeroed():
    x = windows(b=2, seed=10)
    x[0, 0, 7] = np.nan
    res = preprocess_batch(x, InputContract(transforms=("TRIMMING", "ZSCORE", "SPECTROGRAM")))
    assert res.valid.tolist() == [False, True]
    assert np.isfinite(res.spectrograms).all()


def test_detrend_taper_bandpass_match_scipy():
    x = windows(b=2, seed=11) + np.linspace(0, 5e4, 2000)
    extra = {"bandpass_hz": [1.0, 20.0], "bandpass_order": 4}
    contract = InputContract(transforms=("DETREND", "TAPER", "BANDPASS"), extra=extra)
    out = preprocess_batch(x, contract, dtype=torch.float64).spectrograms
    sos = scipy.signal.butter(4, [1.0, 20.0], btype="bandpass", fs=100.0, output="sos")
    ref = scipy.signal.detrend(x, axis=-1, type="linear") * scipy.signal.windows.tukey(2000, alpha=0.1)
    ref = scipy.signal.sosfiltfilt(sos, ref, axis=-1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_bandpass_taper_multiplies_the_filtered_samples_by_a_tukey_window():
    x = windows(b=2, seed=12) + 300 * np.sin(2 * np.pi * 0.2 * np.arange(2000) / 100.0)
    extra = {"bandpass_hz": [0.7, 25.0], "bandpass_taper": 0.2}
    out = preprocess_batch(x, InputContract(transforms=("DETREND", "BANDPASS"), extra=extra),
                           dtype=torch.float64).spectrograms
    sos = scipy.signal.butter(4, [0.7, 25.0], btype="bandpass", fs=100.0, output="sos")
    ref = scipy.signal.sosfiltfilt(sos, scipy.signal.detrend(x, axis=-1, type="linear"), axis=-1)
    ref *= scipy.signal.windows.tukey(2000, alpha=0.2)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    for alpha in (0, 1.5, "0.2"):
        with pytest.raises(ContractError, match="bandpass_taper"):
            preprocess_batch(x, InputContract(transforms=("BANDPASS",), extra={**extra, "bandpass_taper": alpha}))


def test_bandpass_without_corners_is_a_contract_error():
    with pytest.raises(ContractError, match="bandpass_hz"):
        preprocess_batch(windows(b=1), InputContract(transforms=("BANDPASS",)))


def test_wrong_channel_count_is_a_contract_error():
    with pytest.raises(ContractError, match="expected 3 channels"):
        preprocess_batch(np.zeros((1, 2, 2000)), DEFAULT)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=64, max_value=2600),
    nan_runs=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2599), st.integers(1, 400)), max_size=4),
    scale=st.sampled_from([0.0, 1e-9, 1.0, 1e9]),
    seed=st.integers(0, 2**16),
)
def test_output_is_always_finite_with_consistent_flags(n, nan_runs, scale, seed):
    x = np.random.default_rng(seed).standard_normal((1, 3, n)) * scale
    for c, start, length in nan_runs:
        x[0, c, start : start + length] = np.nan
    res = preprocess_batch(x, DEFAULT)
    assert isinstance(res, PreprocessResult)
    assert res.spectrograms.shape == (1, 3, 33, 64)
    assert np.isfinite(res.spectrograms).all()
    kept = x[0, :, :2000]
    expected_fraction = np.isnan(kept).mean(-1).max()
    assert res.nan_fraction[0] == pytest.approx(expected_fraction, abs=1e-6)
    assert res.valid[0] == (expected_fraction <= 0.1)


# --- stream_to_array: component mapping, resampling, errors -------------------------------------------


def rjob(codes: str = "ZNE", order: str | None = None) -> obspy.Stream:
    """obspy's bundled BW.RJOB example with channels renamed to EH<code>, traces in `order` (codes' order)."""
    st_ = obspy.read()
    for tr, code in zip(st_, codes, strict=True):
        tr.stats.channel = "EH" + code
    if order is not None:
        st_.traces = [next(tr for tr in st_ if tr.stats.channel[-1] == code) for code in order]
    return st_


def test_stream_to_array_orders_shuffled_zne_components():
    ref = rjob()
    expected = np.stack([ref.select(component=c)[0].data for c in "ZNE"]).astype(np.float64)
    for order in ["ZNE", "ENZ", "NZE", "EZN"]:
        np.testing.assert_array_equal(stream_to_array(rjob(order=order), DEFAULT), expected)
    enz = stream_to_array(rjob(order="NEZ"), InputContract(component_order="ENZ"))
    np.testing.assert_array_equal(enz, expected[::-1])


@pytest.mark.parametrize("codes", ["Z12", "Z23"])
def test_stream_to_array_maps_numeric_horizontals_onto_n_and_e(codes):
    st_ = rjob(codes, order=codes[::-1])
    expected = np.stack([tr.data for tr in rjob(codes)]).astype(np.float64)  # Z, 1->N, 2->E (or 2->N, 3->E)
    np.testing.assert_array_equal(stream_to_array(st_, DEFAULT), expected)


def test_missing_component_error_names_station_missing_and_present():
    st_ = rjob()
    st_.remove(st_.select(component="E")[0])
    with pytest.raises(ContractError) as exc:
        stream_to_array(st_, DEFAULT)
    msg = str(exc.value)
    assert "BW.RJOB." in msg and "['E']" in msg and "['N', 'Z']" in msg


def test_mixed_stations_and_mixed_numeric_codes_are_errors():
    st_ = rjob()
    st_[1].stats.station = "OTHER"
    with pytest.raises(ContractError, match=r"BW\.OTHER\..*BW\.RJOB\."):
        stream_to_array(st_, DEFAULT)
    with pytest.raises(ContractError, match="missing component"):
        stream_to_array(rjob("ZN2"), DEFAULT)  # N with a numeric horizontal is ambiguous


def test_other_sampling_rate_is_resampled():
    st_ = rjob()
    slow = st_.copy()
    for tr in slow:
        tr.data = tr.data[::2].astype(np.float64)  # 50 Hz, 1500 samples
        tr.stats.sampling_rate = 50.0
    arr = stream_to_array(slow, DEFAULT)
    assert arr.shape == (3, 3000)
    expected = scipy.signal.resample_poly(slow[0].data, 2, 1)
    np.testing.assert_allclose(arr[0], expected)
    odd = rjob()
    odd[0].stats.sampling_rate = 100.003  # 100000/100003 has no small rational approximation
    with pytest.raises(ContractError, match="cannot resample"):
        stream_to_array(odd, DEFAULT)


def test_gaps_and_unequal_spans_become_nan_for_drop_nan():
    st_ = rjob()
    z = st_.select(component="Z")[0]
    t0 = z.stats.starttime
    st_.remove(z)
    st_ += z.slice(t0, t0 + 9.995)  # samples 0..999
    st_ += z.slice(t0 + 11.0, t0 + 29.995)  # 1100..2999: a 1 s gap
    e = st_.select(component="E")[0]
    e.trim(t0 + 1.0, None)  # E starts 100 samples late
    arr = stream_to_array(st_, DEFAULT)
    assert arr.shape == (3, 3000)
    assert np.isnan(arr[0, 1000:1100]).all() and np.isfinite(arr[0, :1000]).all()
    assert np.isnan(arr[2, :100]).all() and np.isfinite(arr[2, 100:]).all()
    res = preprocess_batch(arr[None], DEFAULT)
    assert res.valid[0] and res.nan_fraction[0] == pytest.approx(0.05)


def test_empty_batch_and_empty_windows():
    res = preprocess_batch(np.zeros((0, 3, 2000)), DEFAULT)
    assert res.spectrograms.shape == (0, 3, 33, 64) and res.valid.shape == (0,) and res.dead.shape == (0, 3)
    with pytest.raises(ContractError, match="no samples"):
        preprocess_batch(np.zeros((1, 3, 0)), DEFAULT)


def test_masked_samples_in_a_single_trace_become_nan():
    st_ = rjob()
    st_[0].data = np.ma.masked_array(st_[0].data, mask=np.arange(3000) < 10)
    arr = stream_to_array(st_, DEFAULT)
    assert np.isnan(arr[0, :10]).all() and np.isfinite(arr[0, 10:]).all() and np.isfinite(arr[1:]).all()
