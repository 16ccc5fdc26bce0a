"""preprocess_batch on the CPU in parts and on the worker pool: the same numbers as one batched pass, for the CPU
passes (numpy and the compiled kernel) and the torch passes (`preprocess_tensors` on the CPU)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quakemon.pipeline.transforms as transforms
import quakemon.pipeline.transforms_torch as transforms_torch
from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.transforms_torch import preprocess_tensors

DEFAULT = InputContract()
WINDOW = DEFAULT.n_channels * DEFAULT.window_samples  # input samples of one default window


@contextmanager
def part_windows(windows: int | None, threads: int | None = None):
    """Parts of `windows` default windows (None: the whole batch in one part), with `threads` CPU threads (both
    the CPU passes' and torch's)."""
    before_parts, before_threads = transforms.CPU_PART_SAMPLES, torch.get_num_threads()
    samples = 10**12 if windows is None else windows * WINDOW
    transforms.CPU_PART_SAMPLES = transforms_torch.CPU_PART_SAMPLES = samples
    if threads is not None:
        torch.set_num_threads(threads)
        transforms.set_cpu_threads(threads)
    try:
        yield
    finally:
        transforms.CPU_PART_SAMPLES = transforms_torch.CPU_PART_SAMPLES = before_parts
        torch.set_num_threads(before_threads)
        transforms.set_cpu_threads(None)


@pytest.fixture(params=["cpu", "torch"])
def preprocess(request):
    """preprocess_batch (numpy and the kernel) or the torch passes on the CPU."""
    return preprocess_batch if request.param == "cpu" else preprocess_tensors


def messy_windows(b: int, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Raw-count-like noise with offsets, a burst, NaN runs, a dead channel and an all-NaN channel."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 3, n)) * rng.uniform(1, 1e4, (b, 3, 1)) + rng.uniform(-1e5, 1e5, (b, 3, 1))
    x[:, :, n // 3 : n // 3 + 100] *= 20
    x[b // 2, 1, 100:150] = np.nan
    x[b - 1, 0] = 4321.0  # dead
    if b > 2:
        x[1, 2] = np.nan  # a whole channel missing: invalid window
        x[2, 0, 5:900] = np.nan  # over the NaN limit: invalid window
    return x


def assert_same_result(got, ref, rtol: float = 1e-6) -> None:
    scale = max(float(np.abs(ref.spectrograms).max()), 1e-30)
    np.testing.assert_allclose(got.spectrograms, ref.spectrograms, rtol=rtol, atol=rtol * scale)
    np.testing.assert_array_equal(got.valid, ref.valid)
    np.testing.assert_array_equal(got.dead, ref.dead)
    np.testing.assert_array_equal(got.nan_fraction, ref.nan_fraction)


@pytest.mark.parametrize("b", [1, 2, 7, 37])
@pytest.mark.parametrize("windows_per_part", [1, 3, 8])
def test_parts_give_the_one_pass_result(b, windows_per_part, preprocess):
    x = messy_windows(b, seed=b)
    with part_windows(None, threads=1):
        whole = preprocess(x, DEFAULT)
    with part_windows(windows_per_part, threads=1):
        inline = preprocess(x, DEFAULT)
    with part_windows(windows_per_part, threads=2):
        pooled = preprocess(x, DEFAULT)
    assert_same_result(inline, whole)
    # the same parts inline or on the pool: the same computations (bit for bit here; allow for BLAS variations)
    assert_same_result(pooled, inline, rtol=1e-7)
    assert np.isfinite(pooled.spectrograms).all()
    assert pooled.dead[b - 1, 0] and (pooled.spectrograms[b - 1, 0] == 0).all()
    if b > 2:
        assert pooled.valid.tolist()[1:3] == [False, False]


@pytest.mark.parametrize(("nperseg", "hop"), [(50, 20), (63, 21), (64, 32)])
def test_parts_match_scipy_in_float64_and_other_stft_parameters(nperseg, hop, preprocess):
    """Odd and even nperseg: the DFT matrix drops the identically zero sine rows (k = 0, Nyquist)."""
    contract = InputContract(window_samples=1000, stft_nperseg=nperseg, stft_hop=hop)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((11, 3, 1000)) * rng.uniform(1, 1e4, (11, 3, 1)) + rng.uniform(-1e5, 1e5, (11, 3, 1))
    with part_windows(1, threads=2):
        out = preprocess(x, contract, dtype=torch.float64).spectrograms
        out32 = preprocess(x, contract).spectrograms
    z = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    stft = scipy.signal.stft(z, window="hann", nperseg=nperseg, noverlap=nperseg - hop, boundary="zeros", padded=True)
    ref = np.abs(stft[2])
    assert out.shape == ref.shape == (11, 3, *contract.spectrogram_shape)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert np.abs(out32 - ref).max() < 1e-5 * ref.max()


@pytest.mark.parametrize(
    "transforms_",
    [
        ("DROP_NAN", "TRIMMING", "ZSCORE"),  # waveform output
        ("TRIMMING", "SPECTROGRAM"),  # no ZSCORE: raw samples
        ("DROP_NAN", "DETREND", "TRIMMING", "TAPER", "ZSCORE", "SPECTROGRAM"),
    ],
)
def test_parts_on_the_pool_for_other_transform_lists(transforms_, preprocess):
    contract = InputContract(transforms=transforms_)
    x = messy_windows(9, n=2300, seed=4)
    with part_windows(None, threads=1):
        whole = preprocess(x, contract)
    with part_windows(2, threads=2):
        pooled = preprocess(x, contract)
    assert_same_result(pooled, whole, rtol=1e-5)


def test_short_windows_keep_zero_padding_across_calls(preprocess):
    """A part's padding is zeroed by the part itself: a longer batch first must not leak into a shorter one."""
    with part_windows(2, threads=2):
        preprocess(messy_windows(8, n=2000, seed=5), DEFAULT)
        x = messy_windows(8, n=1500, seed=6)
        got = preprocess(x, InputContract(transforms=("DROP_NAN", "TRIMMING", "ZSCORE")), dtype=torch.float64)
    assert (got.spectrograms[..., 1500:] == 0).all()
    assert np.isfinite(got.spectrograms).all()


def test_the_reused_padded_buffer_gives_fresh_results(monkeypatch):
    """Torch passes: calls alternating long and short windows (same STFT input length) equal calls without the
    kept buffer."""
    batches = [messy_windows(6, n=n, seed=n) for n in (2000, 1500, 2000, 1500, 2600)]
    with part_windows(2, threads=2):
        kept = [preprocess_tensors(x, DEFAULT) for x in batches]
        first = kept[0].spectrograms.copy()
        monkeypatch.setattr(transforms_torch, "_PADDED_CACHE_BYTES", 0)
        fresh = [preprocess_tensors(x, DEFAULT) for x in batches]
    for got, ref in zip(kept, fresh, strict=True):
        assert_same_result(got, ref, rtol=0)
    np.testing.assert_array_equal(kept[0].spectrograms, first)  # outputs never alias the kept buffer


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 30),
    windows_per_part=st.integers(1, 9),
    n=st.integers(64, 2600),
    nan_runs=st.lists(
        st.tuples(st.integers(0, 29), st.integers(0, 2), st.integers(0, 2599), st.integers(1, 400)), max_size=5
    ),
    seed=st.integers(0, 2**16),
)
def test_any_batch_in_any_parts_equals_one_pass(b, windows_per_part, n, nan_runs, seed):
    """The CPU passes (the kernel and numpy for the windows with NaN runs)."""
    x = np.random.default_rng(seed).standard_normal((b, 3, n)) * 100 + 1e4
    for w, c, start, length in nan_runs:
        x[w % b, c, start : start + length] = np.nan
    with part_windows(None, threads=1):
        whole = preprocess_batch(x, DEFAULT)
    with part_windows(windows_per_part, threads=2):
        pooled = preprocess_batch(x, DEFAULT)
    assert_same_result(pooled, whole, rtol=1e-5)


def test_cpu_parts_cover_the_batch_in_near_equal_parts():
    for b in [1, 2, 5, 8, 9, 63, 64, 65, 256, 513]:
        for samples in [1, 6000, 48_000, 10**6]:
            for part_samples in [48_000, 96_000]:
                parts = transforms.cpu_parts(b, samples, part_samples)
                assert sum(parts) == b and min(parts) >= 1
                assert max(parts) - min(parts) <= 1
                assert len(parts) == min(max(round(b * samples / part_samples), 1), b)


def test_an_error_in_a_worker_reaches_the_caller_and_the_pool_still_works(preprocess):
    bad = InputContract(transforms=("BANDPASS",), extra={"bandpass_hz": [1.0, 99.0]})
    with part_windows(1, threads=2):
        with pytest.raises(ContractError, match="bandpass_hz"):
            preprocess(messy_windows(6), bad)
        assert preprocess(messy_windows(6), DEFAULT).valid.tolist() == [True, False, False, True, True, True]


def in_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_torch_pool_workers_run_torch_single_threaded_and_leave_other_threads_alone():
    before_main = torch.get_num_threads()
    before_new = in_new_thread(torch.get_num_threads)  # what torch gives a thread started now
    for executor in transforms_torch._pools.values():  # start from new pools
        executor.shutdown()
    transforms_torch._pools.clear()
    pool = transforms_torch._worker_pool(2)
    assert sorted(pool.map(lambda _: torch.get_num_threads(), range(8))) == [1] * 8
    assert torch.get_num_threads() == before_main
    assert in_new_thread(torch.get_num_threads) == before_new
    assert transforms_torch._worker_pool(2) is pool  # kept between calls


@pytest.mark.parametrize("module", [transforms, transforms_torch])
def test_pool_is_recreated_in_a_forked_child(monkeypatch, module):
    pool = module._worker_pool(2)
    monkeypatch.setattr(module.os, "getpid", lambda: -1)  # as if this were a forked child
    child = module._worker_pool(2)
    assert child is not pool
    assert list(child.map(lambda v: v * 2, range(3))) == [0, 2, 4]
    pool.shutdown()  # (in a real child its threads would not exist)


def test_cpu_threads_follow_the_setting_then_torch():
    try:
        transforms.set_cpu_threads(3)
        assert transforms.cpu_threads() == 3
        transforms.set_cpu_threads(0)
        assert transforms.cpu_threads() == 1
    finally:
        transforms.set_cpu_threads(None)
    assert transforms.cpu_threads() == torch.get_num_threads()  # torch is loaded here: one setting per process
