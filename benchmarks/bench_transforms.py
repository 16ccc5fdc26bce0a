"""Benchmark: the CPU preprocessing (numpy/scipy + compiled kernel) vs the torch passes vs a per-window scipy loop.

    .venv/bin/python benchmarks/bench_transforms.py [--batch 256] [--repeats 15] [--threads 2] [--device cuda]

Two batches of the same shape: "finite" (raw-count-like noise, the common case) and "gaps" (the same with a NaN
run in every window, which DROP_NAN repairs). On each, side by side in one run:
  preprocess_batch        what the daemon and replay run on the CPU: the compiled kernel for finite rows, the numpy
                          passes for the rest (quakemon.pipeline.transforms), on --threads threads
  preprocess_batch 1 thr  the same in the calling thread only (another process holds the other core)
  numpy passes            the kernel switched off: scipy.fft.rfft over strided segments, batched numpy
  torch passes            quakemon.pipeline.transforms_torch on the CPU (what ran before for every window the kernel
                          does not take; now used on GPUs only), at --threads torch threads
  scipy per-window loop   numpy z-score + scipy.signal.stft + abs, one window at a time (finite batch only)
  on DEVICE               with --device (e.g. cuda): preprocess_batch there (the torch passes), synchronised
Runs alternate so that load from other processes hits all alike; the median and the best run are reported with
the ratios (CPU time is the load-insensitive figure on a shared machine). The two alternatives considered earlier
(torch.stft, numpy rfft in float64) are timed afterwards on the finite batch, alternating between themselves.
Check `uptime` first: on a 2-core machine the --threads figure needs the second core idle. Not collected by
pytest (no test_ names).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import scipy.signal
import torch

from quakemon.models.contract import InputContract
from quakemon.pipeline import transforms
from quakemon.pipeline.transforms import preprocess_batch
from quakemon.pipeline.transforms_torch import preprocess_tensors


def scipy_loop(x: np.ndarray, contract: InputContract) -> list[np.ndarray]:
    """Per-window reference: numpy z-score and scipy.signal.stft magnitude, one window at a time."""
    out = []
    for w in x:
        z = (w - w.mean(-1, keepdims=True)) / w.std(-1, keepdims=True)
        _, _, s = scipy.signal.stft(
            z,
            window="hann",
            nperseg=contract.stft_nperseg,
            noverlap=contract.stft_nperseg - contract.stft_hop,
            boundary="zeros",
            padded=True,
        )
        out.append(np.abs(s))
    return out


def torch_stft_batch(x: np.ndarray, contract: InputContract) -> torch.Tensor:
    """Alternative considered: the same transform with torch.stft (float32), for the record."""
    t = torch.from_numpy(x)
    z = ((t - t.mean(-1, keepdim=True)) / t.std(-1, keepdim=True, correction=0)).float()
    nperseg, hop = contract.stft_nperseg, contract.stft_hop
    length = z.shape[-1] + 2 * (nperseg // 2)
    extra = (-(length - nperseg) % hop) % nperseg
    z = torch.nn.functional.pad(z, (nperseg // 2, nperseg // 2 + extra)).reshape(-1, length + extra)
    window = torch.hann_window(nperseg, periodic=True)
    spec = torch.stft(z, nperseg, hop, window=window, center=False, return_complex=True).abs() / window.sum()
    return spec.reshape(*x.shape[:2], *spec.shape[-2:])


def numpy_rfft_batch(x: np.ndarray, contract: InputContract) -> np.ndarray:
    """Alternative considered: batched numpy (strided segments + np.fft.rfft), float64."""
    nperseg, hop = contract.stft_nperseg, contract.stft_hop
    z = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    length = z.shape[-1] + 2 * (nperseg // 2)
    extra = (-(length - nperseg) % hop) % nperseg
    z = np.pad(z, ((0, 0), (0, 0), (nperseg // 2, nperseg // 2 + extra)))
    window = scipy.signal.get_window("hann", nperseg)
    segments = np.lib.stride_tricks.sliding_window_view(z, nperseg, axis=-1)[..., ::hop, :]
    return np.abs(np.fft.rfft(segments * window, axis=-1)).swapaxes(-1, -2) / window.sum()


def timed(fns: dict[str, Any], repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """{name: (wall times, CPU times)} of `repeats` alternating runs of each function."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            out[name][0].append(time.perf_counter() - start)
            out[name][1].append(time.process_time() - start_cpu)
    return out


def report(batch: int, label: str, results: dict[str, tuple[list[float], list[float]]]) -> dict[str, tuple]:
    """Print one line per implementation; returns {name: (windows/s median, best, windows/CPU-s)}."""
    rates = {}
    for name, (wall, cpu) in results.items():
        med, best, med_cpu = statistics.median(wall), min(wall), statistics.median(cpu)
        rates[name] = (batch / med, batch / best, batch / med_cpu)
        print(
            f"[{label}] {name:24s} wall median {med * 1e3:7.2f} ms {batch / med:8.0f} windows/s | "
            f"best {best * 1e3:7.2f} ms {batch / best:8.0f} windows/s | "
            f"CPU median {med_cpu * 1e3:7.2f} ms {batch / med_cpu:8.0f} windows/CPU-s"
        )
    return rates


def ratio(rates: dict[str, tuple], a: str, b: str, label: str) -> None:
    fa, fb = rates[a], rates[b]
    print(
        f"[{label}] {a} / {b}: wall median {fa[0] / fb[0]:.2f}x, wall best {fa[1] / fb[1]:.2f}x, "
        f"CPU time {fa[2] / fb[2]:.2f}x (> 1: {a} is faster)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="threads of the CPU passes and of torch")
    parser.add_argument("--device", default="cpu", help="also time preprocess_batch on this torch device")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transforms.set_cpu_threads(args.threads)
    contract = InputContract()
    rng = np.random.default_rng(0)
    shape = (args.batch, contract.n_channels, contract.window_samples)
    x = rng.standard_normal(shape) * rng.uniform(1, 1e4, shape[:2] + (1,)) + rng.uniform(-1e5, 1e5, shape[:2] + (1,))
    gaps = x.copy()
    starts = rng.integers(0, contract.window_samples - 100, args.batch)
    for i, start in enumerate(starts):  # one 0.5 s gap per window, on one channel: repaired, valid
        gaps[i, i % contract.n_channels, start : start + 50] = np.nan

    def batched(data: np.ndarray) -> None:
        res = preprocess_batch(data, contract)
        assert res.spectrograms.shape == (args.batch, contract.n_channels, *contract.spectrogram_shape)

    def one_thread(data: np.ndarray) -> None:
        transforms.set_cpu_threads(1)
        try:
            batched(data)
        finally:
            transforms.set_cpu_threads(args.threads)

    def numpy_passes(data: np.ndarray) -> None:
        transforms.FUSED_KERNEL = False
        try:
            batched(data)
        finally:
            transforms.FUSED_KERNEL = True

    def torch_passes(data: np.ndarray) -> None:
        preprocess_tensors(data, contract)

    on_device = {label: torch.from_numpy(data).to(args.device) for label, data in (("finite", x), ("gaps", gaps))}

    def device_run(label: str) -> None:
        res = preprocess_batch(on_device[label], contract)
        if args.device != "cpu":
            torch.cuda.synchronize()
        assert res.spectrograms.shape[0] == args.batch

    # equality checks (also the warm-up)
    ref = np.stack(scipy_loop(x[:8], contract))
    got = preprocess_batch(x[:8], contract).spectrograms
    print(f"max |preprocess_batch - scipy| / max|scipy| = {float(np.abs(got - ref).max() / ref.max()):.2e}")
    for label, data in (("finite", x), ("gaps", gaps)):
        cpu, old = preprocess_batch(data, contract).spectrograms, preprocess_tensors(data, contract).spectrograms
        transforms.FUSED_KERNEL = False
        plain = preprocess_batch(data, contract).spectrograms
        transforms.FUSED_KERNEL = True
        peak = old.max(axis=(-2, -1))
        print(f"[{label}] max |CPU - torch passes| / channel peak = {float((np.abs(cpu - old).max(axis=(-2, -1)) / peak).max()):.2e}, "  # noqa: E501
              f"numpy passes: {float((np.abs(plain - old).max(axis=(-2, -1)) / peak).max()):.2e}")
        one_thread(data)
        if args.device != "cpu":
            dev = preprocess_batch(on_device[label], contract).spectrograms.cpu().numpy()
            print(f"[{label}] max |{args.device} - CPU| / channel peak = "
                  f"{float((np.abs(dev - cpu).max(axis=(-2, -1)) / peak).max()):.2e}")
    extra = {f"on {args.device}": lambda: device_run("finite")} if args.device != "cpu" else {}
    extra_gaps = {f"on {args.device}": lambda: device_run("gaps")} if args.device != "cpu" else {}
    load_start = os.getloadavg()[0]
    finite = timed({
        "scipy per-window loop": lambda: scipy_loop(x, contract),
        "preprocess_batch": lambda: batched(x),
        "preprocess_batch 1 thr": lambda: one_thread(x),
        "numpy passes": lambda: numpy_passes(x),
        "torch passes": lambda: torch_passes(x),
        **extra,
    }, args.repeats)  # fmt: skip
    gapped = timed({
        "preprocess_batch": lambda: batched(gaps),
        "preprocess_batch 1 thr": lambda: one_thread(gaps),
        "torch passes": lambda: torch_passes(gaps),
        **extra_gaps,
    }, args.repeats)  # fmt: skip
    alternatives = timed({
        "alt: torch.stft batch": lambda: torch_stft_batch(x, contract),
        "alt: numpy rfft batch": lambda: numpy_rfft_batch(x, contract),
    }, args.repeats)  # fmt: skip
    print(
        f"windows: {args.batch} x [{contract.n_channels}, {contract.window_samples}] float64, "
        f"STFT nperseg={contract.stft_nperseg} hop={contract.stft_hop}, threads={args.threads}, "
        f"cpus={os.cpu_count()}, load average at start/end={load_start:.2f}/{os.getloadavg()[0]:.2f}, "
        f"repeats={args.repeats}"
    )
    rates = report(args.batch, "finite", finite)
    gap_rates = report(args.batch, "gaps", gapped)
    report(args.batch, "finite", alternatives)
    ratio(rates, "preprocess_batch", "scipy per-window loop", "finite")
    ratio(rates, "preprocess_batch", "torch passes", "finite")
    ratio(rates, "numpy passes", "torch passes", "finite")
    ratio(gap_rates, "preprocess_batch", "torch passes", "gaps")
    ratio(gap_rates, "preprocess_batch 1 thr", "torch passes", "gaps")


if __name__ == "__main__":
    main()
