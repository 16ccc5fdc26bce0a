"""The CPU preprocessing (numpy/scipy and the compiled kernel, no torch) against the torch passes that run on a GPU:
the same spectra within float32 rounding, the same flags, on real recordings, random data, gaps and NaN runs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_transforms import windows

from quakemon.data import realdata
from quakemon.models.contract import InputContract
from quakemon.pipeline import transforms
from quakemon.pipeline.streams import stream_to_array
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.transforms_torch import preprocess_tensors

DEFAULT = InputContract()


def assert_float32_close(got, ref) -> None:
    """Spectra within 2e-6 of each channel's peak (float32 rounding); valid, dead, nan_fraction identical."""
    scale = np.maximum(np.abs(ref.spectrograms).max(axis=tuple(range(2, ref.spectrograms.ndim)), keepdims=True),
                       1e-30)  # fmt: skip
    err = np.abs(got.spectrograms - ref.spectrograms) / scale
    assert err.max(initial=0) < 2e-6, err.max()
    assert got.spectrograms.dtype == np.float32
    np.testing.assert_array_equal(got.valid, ref.valid)
    np.testing.assert_array_equal(got.dead, ref.dead)
    np.testing.assert_allclose(got.nan_fraction, ref.nan_fraction, rtol=1e-6)


def cpu_and_torch(x, contract=DEFAULT, **kwargs):
    """(preprocess_batch on the CPU, the torch passes on the CPU) for the numpy batch x."""
    return preprocess_batch(x, contract, **kwargs), preprocess_tensors(x, contract, **kwargs)


def real_windows() -> np.ndarray:
    """2000-sample windows every 2.5 s through three-component real recordings (ObsPy's test data) at 100 Hz."""
    out = []
    for name in ("rjob_2005-08-01", "rjob_example_2009-08-24", "rjob_2005-10-06"):
        arr = stream_to_array(realdata.load(realdata.recording_by_name(name), 100.0), DEFAULT)
        out += [arr[:, i : i + 2000] for i in range(0, arr.shape[1] - 2000, 250)]
    return np.stack(out)


def test_real_recordings_give_the_torch_spectra_within_float32_rounding():
    x = real_windows()
    assert x.shape[0] >= 20 and x.shape[1:] == (3, 2000)
    finite = np.isfinite(x).all(axis=(1, 2))
    cpu, ref = cpu_and_torch(x)
    assert_float32_close(cpu, ref)
    assert cpu.valid[finite].all()


def test_real_recordings_with_gaps_and_nan_runs():
    x = real_windows()[:12].copy()
    x[0, 0, 300:340] = np.nan  # a short gap: repaired, valid
    x[1, :, 1900:] = np.nan  # every channel's end: held at the last sample
    x[2, 1] = np.nan  # a whole channel: invalid, zeros
    x[3, 2, 100:700] = np.inf  # over the NaN limit: invalid
    x[4, 0, :5] = -np.inf  # at the start: held at the first finite sample
    cpu, ref = cpu_and_torch(x)
    assert_float32_close(cpu, ref)
    assert cpu.valid[:5].tolist() == [True, True, False, False, True]
    assert np.isfinite(cpu.spectrograms).all()
    assert cpu.nan_fraction[0] == pytest.approx(40 / 2000)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32])
@pytest.mark.parametrize("n", [2000, 2437, 1311])
def test_random_batches_of_any_input_dtype_and_length(dtype, n):
    x = windows(b=9, n=n, seed=n)
    if dtype == np.float32:
        x = x - x.mean(-1, keepdims=True)
    x = np.round(x).astype(dtype) if dtype == np.int32 else x.astype(dtype)
    assert_float32_close(*cpu_and_torch(x))


@pytest.mark.parametrize(
    "names",
    [
        ("DROP_NAN", "TRIMMING", "ZSCORE"),  # waveform output
        ("TRIMMING", "SPECTROGRAM"),  # no ZSCORE: raw samples, nothing repaired
        ("DROP_NAN", "DETREND", "TRIMMING", "TAPER", "ZSCORE", "SPECTROGRAM"),
        ("DROP_NAN", "TRIMMING", "BANDPASS", "ZSCORE", "SPECTROGRAM"),
        ("DROP_NAN", "DETREND", "TRIMMING", "BANDPASS+taper", "ZSCORE", "SPECTROGRAM"),
    ],
)
def test_other_transform_lists_with_nan_runs_and_a_dead_channel(names):
    extra = {"bandpass_hz": [1.0, 20.0]} | ({"bandpass_taper": 0.2} if "BANDPASS+taper" in names else {})
    contract = InputContract(transforms=[n.split("+")[0] for n in names], extra=extra)
    x = windows(b=6, n=2300, seed=5)
    x[1, 1, 100:150] = np.nan
    x[2, 0] = 4321.0  # dead
    x[3, 2] = np.nan
    assert_float32_close(*cpu_and_torch(x, contract))


@pytest.mark.parametrize(("nperseg", "hop"), [(50, 20), (63, 21), (64, 48), (128, 32)])
def test_other_stft_sizes_in_float32_and_float64(nperseg, hop):
    contract = InputContract(window_samples=1000, stft_nperseg=nperseg, stft_hop=hop)
    x = windows(b=5, n=1000, seed=nperseg)
    x[2, 0, 10:30] = np.nan
    assert_float32_close(*cpu_and_torch(x, contract))
    cpu64, ref64 = cpu_and_torch(x, contract, dtype=np.float64)
    np.testing.assert_allclose(cpu64.spectrograms, ref64.spectrograms, rtol=1e-5, atol=1e-7)


def test_float32_overflow_and_huge_values_stay_finite_like_torch():
    x = windows(b=3, seed=15)
    x[1, 1] = 1e300 * np.sign(np.sin(np.arange(2000)))  # finite in float64, inf once cast to float32
    x[2, 0] = 7.0
    no_zscore = InputContract(transforms=("TRIMMING", "SPECTROGRAM"))
    for contract in (DEFAULT, no_zscore):
        cpu, ref = cpu_and_torch(x, contract)
        assert np.isfinite(cpu.spectrograms).all()
        assert_float32_close(cpu, ref)


def test_dtype_may_be_given_as_numpy_or_torch_and_nothing_else():
    x = windows(b=2, seed=3)
    a = preprocess_batch(x, DEFAULT, dtype=torch.float64).spectrograms
    np.testing.assert_array_equal(a, preprocess_batch(x, DEFAULT, dtype=np.float64).spectrograms)
    with pytest.raises(transforms.ContractError, match="float32 or float64"):
        preprocess_batch(x, DEFAULT, dtype=np.float16)


def test_cpu_tensors_take_the_numpy_path_and_come_back_as_tensors(monkeypatch):
    import quakemon.pipeline.transforms_torch as transforms_torch

    def refuse(*args, **kwargs):
        raise AssertionError("the torch passes ran for a CPU tensor")

    monkeypatch.setattr(transforms_torch, "_torch_passes", refuse)
    x = windows(b=2, seed=4)
    out = preprocess_batch(torch.from_numpy(x), DEFAULT)
    assert isinstance(out.spectrograms, torch.Tensor) and isinstance(out.valid, torch.Tensor)
    np.testing.assert_array_equal(out.spectrograms.numpy(), preprocess_batch(x, DEFAULT).spectrograms)


def test_cpu_preprocessing_never_imports_torch():
    """In a fresh interpreter: numpy windows with gaps, other transforms and a float64 STFT, all without torch."""
    code = (
        "import sys, numpy as np\n"
        "from quakemon.models.contract import InputContract\n"
        "from quakemon.pipeline.transforms import preprocess_batch\n"
        "x = np.random.default_rng(0).standard_normal((4, 3, 2000)); x[1, 0, 50:90] = np.nan\n"
        "r = preprocess_batch(x, InputContract())\n"
        "preprocess_batch(x, InputContract(transforms=('DROP_NAN', 'DETREND', 'TRIMMING', 'TAPER', 'ZSCORE',"
        " 'SPECTROGRAM')), dtype=np.float64, device='cpu')\n"
        "assert r.valid.all() and r.spectrograms.shape == (4, 3, 33, 64)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
