"""The compiled CPU kernel (pipeline.stft_kernel) against the numpy passes and scipy: same numbers, same flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_transforms import reference, scipy_stft_mag, windows, zscore

from quakemon.models.contract import InputContract
from quakemon.pipeline import stft_kernel, transforms
from quakemon.pipeline.transforms import preprocess_batch

DEFAULT = InputContract()


def both_paths(x, contract=DEFAULT, monkeypatch=None):
    """(fused result, numpy-passes result) of preprocess_batch on x."""
    fused = preprocess_batch(x, contract)
    monkeypatch.setattr(transforms, "FUSED_KERNEL", False)
    try:
        plain = preprocess_batch(x, contract)
    finally:
        monkeypatch.setattr(transforms, "FUSED_KERNEL", True)
    return fused, plain


def assert_same(fused, plain):
    spec_f, spec_p = fused.spectrograms, plain.spectrograms
    scale = np.maximum(spec_p.max(axis=(-2, -1), keepdims=True), 1e-30)
    assert np.abs(spec_f - spec_p).max(initial=0) / scale.max(initial=1) < 2e-6
    assert (np.abs(spec_f - spec_p) / scale).max(initial=0) < 2e-6
    np.testing.assert_array_equal(fused.dead, plain.dead)
    np.testing.assert_array_equal(fused.valid, plain.valid)
    np.testing.assert_array_equal(fused.nan_fraction, plain.nan_fraction)


@pytest.fixture
def counted(monkeypatch):
    """Counts the rows that go through the kernel, so a test sees that the fast path really ran."""
    calls = {"rows": 0}
    original = stft_kernel.spectrogram_rows

    def spy(x, *args):
        calls["rows"] += x.shape[0]
        return original(x, *args)

    monkeypatch.setattr(stft_kernel, "spectrogram_rows", spy)
    return calls


def test_default_contract_takes_the_kernel_and_matches_scipy_within_1e5(counted):
    x = windows(b=7, seed=10)  # 21 rows: the kernel's two-row FFT groups end with a lone row
    out = preprocess_batch(x, DEFAULT).spectrograms
    assert counted["rows"] == 21
    ref = reference(x)
    err = np.abs(out - ref).max(axis=(-2, -1)) / ref.max(axis=(-2, -1))
    assert err.max() < 1e-5, err.max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [2000, 2437, 1311])  # exact, cut by TRIMMING, padded by TRIMMING
def test_kernel_equals_numpy_passes(dtype, n, monkeypatch, counted):
    x = windows(b=5, n=n, seed=11)
    if dtype == np.float32:
        x = x - x.mean(-1, keepdims=True)  # float32 input: offsets of 1e5 would swamp small signals in both paths
    fused, plain = both_paths(x.astype(dtype), monkeypatch=monkeypatch)
    assert counted["rows"] == 15
    assert_same(fused, plain)


@pytest.mark.parametrize(("nperseg", "hop", "window"), [(128, 32, 3000), (16, 8, 700), (64, 16, 2000), (4, 2, 301)])
def test_kernel_matches_scipy_for_other_power_of_two_segments(nperseg, hop, window, counted):
    contract = InputContract(window_samples=window, stft_nperseg=nperseg, stft_hop=hop)
    x = windows(b=3, n=window, seed=12)
    out = preprocess_batch(x, contract).spectrograms
    assert counted["rows"] == 9
    ref = np.stack([scipy_stft_mag(zscore(w), nperseg, hop) for w in x])
    assert out.shape == ref.shape
    err = np.abs(out - ref).max(axis=(-2, -1)) / ref.max(axis=(-2, -1))
    assert err.max() < 1e-5, err.max()


def test_applies_only_to_power_of_two_segments_divided_by_the_hop():
    assert stft_kernel.applies(64, 32) and stft_kernel.applies(64, 64) and stft_kernel.applies(4, 1)
    assert not stft_kernel.applies(50, 25)  # not a power of two
    assert not stft_kernel.applies(64, 48)  # hop does not divide nperseg
    assert not stft_kernel.applies(2, 1)
    contract = InputContract(window_samples=1000, stft_nperseg=50, stft_hop=25)
    x = windows(b=2, n=1000, seed=13)
    ref = np.stack([scipy_stft_mag(zscore(w), 50, 25) for w in x])
    np.testing.assert_allclose(preprocess_batch(x, contract).spectrograms, ref, rtol=1e-4, atol=1e-5 * ref.max())


def test_nonfinite_rows_go_through_the_numpy_passes_and_the_rest_stays_in_the_kernel(monkeypatch, counted):
    x = windows(b=6, seed=14)
    x[1, 0, 100:120] = np.nan  # repaired, valid
    x[3, 1, :] = np.inf  # a whole channel: invalid, finite output
    x[4, 2, 5] = -np.inf
    fused, plain = both_paths(x, monkeypatch=monkeypatch)
    assert counted["rows"] == 18  # the kernel saw every row and left the three bad ones to the numpy passes
    assert_same(fused, plain)
    assert fused.valid.tolist() == [True, True, True, False, True, True]
    assert np.isfinite(fused.spectrograms).all()
    assert fused.nan_fraction[1] == pytest.approx(20 / 2000)


def test_rows_that_overflow_float32_fall_back(monkeypatch):
    x = windows(b=3, seed=15)
    x[1, 1] = 1e300 * np.sign(np.sin(np.arange(2000)))  # finite in float64, inf once cast to float32
    x[2, 0] = 7.0  # dead channel next to it
    fused, plain = both_paths(x, monkeypatch=monkeypatch)
    assert_same(fused, plain)
    assert np.isfinite(fused.spectrograms).all()
    assert fused.dead.tolist() == [[False] * 3, [False] * 3, [True, False, False]]
    assert (fused.spectrograms[2, 0] == 0).all()


def test_parts_on_two_threads_give_the_same_bits():
    x = windows(b=37, seed=16)
    try:
        transforms.set_cpu_threads(1)
        one = preprocess_batch(x, DEFAULT)
        transforms.set_cpu_threads(2)
        two = preprocess_batch(x, DEFAULT)
    finally:
        transforms.set_cpu_threads(None)
    np.testing.assert_array_equal(one.spectrograms, two.spectrograms)
    np.testing.assert_array_equal(one.dead, two.dead)


def test_torch_tensor_input_contiguous_or_not_agrees_with_numpy():
    x = windows(b=2, seed=17)
    from_tensor = preprocess_batch(torch.from_numpy(x), DEFAULT)
    assert isinstance(from_tensor.spectrograms, torch.Tensor)
    np.testing.assert_array_equal(from_tensor.spectrograms.numpy(), preprocess_batch(x, DEFAULT).spectrograms)
    transposed = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).transpose(1, 2)  # not contiguous
    np.testing.assert_array_equal(preprocess_batch(transposed, DEFAULT).spectrograms.numpy(),
                                  from_tensor.spectrograms.numpy())  # fmt: skip


# --- stack_windows: the float32 centring before windows travel between stages ---------------------------------


def make_window(data, start_ns=0, run=None):
    from quakemon.pipeline.windowing import Window

    return Window(station="XX.STA.", instrument="HH", start_ns=start_ns, sampling_rate=100.0, data=data,
                  component_order="ZNE", components=("Z", "N", "E"), run=run)  # fmt: skip


def test_stack_windows_centres_runs_of_one_block_like_single_windows():
    from quakemon.pipeline.detect import _runs, stack_windows

    rng = np.random.default_rng(20)
    block = rng.standard_normal((5, 3, 2000)) * 1e3 + 2.0**24  # a station's steady-state run, as the windower emits
    other = rng.standard_normal((2, 3, 2000)) * 10 - 7e5
    loose = rng.standard_normal((3, 2000)) * 10 - 7e5
    rows = [(block, 0), (block, 1), (block, 2), (other, 0), (block, 3), (block, 4), (other, 1)]
    windows = [make_window(b[i], k * 10**9, (b, i)) for k, (b, i) in enumerate(rows)]
    windows.append(make_window(loose, len(rows) * 10**9))  # no run: a range of its own
    runs = _runs(windows)
    assert [(lo, hi) for lo, hi, _ in runs] == [(0, 3), (3, 4), (4, 6), (6, 7), (7, 8)]
    assert np.shares_memory(runs[0][2], block) and runs[0][2].shape == (3, 3, 2000)
    data, metas = stack_windows(windows)
    assert data.dtype == np.float32 and data.shape == (8, 3, 2000)
    assert [m.start_ns for m in metas] == [i * 10**9 for i in range(8)]
    one_by_one = np.concatenate([stack_windows([w])[0] for w in windows])
    np.testing.assert_array_equal(data, one_by_one)  # grouping changes nothing
    for got, w in zip(data, windows, strict=True):  # the float64 difference, rounded once to float32
        want = (w.data - w.data.mean(-1, keepdims=True)).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    raw, _ = stack_windows(windows, center=False)
    np.testing.assert_array_equal(raw, np.stack([w.data for w in windows]).astype(np.float32))


def test_runs_need_the_same_run_and_the_next_row():
    from quakemon.pipeline.detect import _runs

    block, other = np.zeros((4, 3, 10)), np.zeros((2, 3, 10))

    def spans(*rows):
        return [(lo, hi) for lo, hi, _ in _runs([make_window(b[i], run=(b, i)) for b, i in rows])]

    assert spans((block, 0), (block, 2), (block, 3), (block, 1)) == [(0, 1), (1, 3), (3, 4)]
    assert spans((block, 3), (other, 0), (other, 1)) == [(0, 1), (1, 3)]
    assert spans((block, 0)) == [(0, 1)]
    assert [(lo, hi) for lo, hi, _ in _runs([make_window(block[0]), make_window(block[1])])] == [(0, 1), (1, 2)]


@pytest.mark.parametrize("layout", ["overlapping", "every_other_sample", "reversed", "contiguous"])
def test_centre_to_float32_reads_any_strides(layout):
    from numpy.lib.stride_tricks import as_strided

    from quakemon.pipeline.stft_kernel import centre_to_float32

    block = np.random.default_rng(3).standard_normal((3, 1200)) * 50 + 1e6
    windows = np.stack([block[:, i : i + 400] for i in range(0, 500, 100)])  # [5, 3, 400], C-contiguous
    x = {
        "overlapping": as_strided(block, (5, 3, 400), (100 * 8, *block.strides), writeable=False),  # the windower's
        "every_other_sample": np.stack([block[:, i : i + 800] for i in range(0, 500, 100)])[:, :, ::2],
        "reversed": windows[::-1, ::-1, ::-1],
        "contiguous": windows,
    }[layout]
    out = np.empty(x.shape, np.float32)
    centre_to_float32(x, out)
    want = (x - x.mean(-1, keepdims=True)).astype(np.float32)  # numpy's pairwise mean may differ in the last bit
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_dead_rows_are_zero_and_leave_their_neighbours_bit_for_bit(monkeypatch):
    """Dead rows (zero-filled absent components, flat channels) skip the transform: their spectra are exactly 0,
    and every other row gets the very bits it gets in a batch of its own, whatever the rows around it."""
    x = windows(b=9, seed=18)
    x[::2, 1:] = 0.0  # vertical-only windows: N and E zero-filled
    x[3, 0] = -12.5  # a flat vertical with an offset
    x[5, 2, 40] = np.nan  # a bad row beside dead ones
    fused, plain = both_paths(x, monkeypatch=monkeypatch)
    assert_same(fused, plain)
    dead = fused.dead
    assert dead[::2, 1:].all() and dead[3, 0] and not dead[1].any()
    assert (fused.spectrograms[dead] == 0).all() and not np.signbit(fused.spectrograms[dead]).any()
    for i in range(len(x)):
        alone = preprocess_batch(x[i : i + 1], DEFAULT)
        np.testing.assert_array_equal(alone.spectrograms[0], fused.spectrograms[i])
        np.testing.assert_array_equal(alone.dead[0], dead[i])


def test_preprocess_windows_metas_carry_valid_and_dead_letters():
    from dataclasses import replace

    from quakemon.pipeline.detect import WindowMeta, preprocess_windows

    x = windows(b=4, seed=19).astype(np.float32)
    x[0, 1:] = 0.0
    x[2, 2] = 3.0
    x[3, 0, :] = np.inf
    metas = [WindowMeta(f"XX.S{i}.", i * 10**9, i * 10**9 + 20 * 10**9, "HH", 1.5 * i, 0.01 * i, ("E",) * (i % 2))
             for i in range(4)]
    _, out = preprocess_windows(x, metas, DEFAULT)
    assert [m.valid for m in out] == [True, True, True, False]
    assert [m.dead for m in out] == [("N", "E"), (), ("E",), ("Z",)]  # (an all-inf channel is repaired as dead)
    assert out == [replace(m, valid=o.valid, dead=o.dead) for m, o in zip(metas, out, strict=True)]
    assert all(type(m.valid) is bool for m in out) and metas[0].valid is None  # the given metas are untouched
