"""Benchmark: batched `preprocess_batch` vs a per-window scipy loop, measured side by side in one run.

    .venv/bin/python benchmarks/bench_transforms.py [--batch 256] [--repeats 15] [--threads 2] [--device cpu]

The reference is what one would write per window: numpy z-score + scipy.signal.stft (same parameters) + abs.
preprocess_batch runs with --threads torch threads (on the CPU: the compiled kernel over parts of the batch shared
out to a pool of that many worker threads, see quakemon.pipeline.transforms) and again with one torch thread (one
kernel call in the calling thread), the figure that counts when another process holds the other core; and with
the kernel switched off ("torch passes", the implementation before it, still used off the kernel's path). Runs
alternate (reference, batched, batched 1 thread, torch passes, reference, ...) so that load from other processes
hits all alike; the median and the best run are reported with the ratios. The two alternatives considered
(torch.stft, numpy rfft) are timed afterwards, alternating between themselves: each allocates large
temporaries, and timed between the others they would leave the heap trimmed and the caches cold for whichever run
came next, which would then pay the page faults.
Check `uptime` first: on a 2-core machine the --threads figure needs the second core idle. Not collected by
pytest (no test_ names).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import scipy.signal
import torch

from quakemon.models.contract import InputContract
from quakemon.pipeline import transforms
from quakemon.pipeline.transforms import preprocess_batch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the batched run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    contract = InputContract()
    rng = np.random.default_rng(0)
    shape = (args.batch, contract.n_channels, contract.window_samples)
    x = rng.standard_normal(shape) * rng.uniform(1, 1e4, shape[:2] + (1,)) + rng.uniform(-1e5, 1e5, shape[:2] + (1,))

    def batched() -> None:
        res = preprocess_batch(x, contract, device=args.device)
        assert res.spectrograms.shape == (args.batch, contract.n_channels, *contract.spectrogram_shape)

    def batched_one_thread() -> None:
        torch.set_num_threads(1)
        try:
            batched()
        finally:
            torch.set_num_threads(args.threads)

    def torch_passes() -> None:  # the implementation before the compiled kernel, still used off the fast path
        transforms.FUSED_KERNEL = False
        try:
            batched()
        finally:
            transforms.FUSED_KERNEL = True

    # equality check and warm-up
    ref = np.stack(scipy_loop(x[:8], contract))
    got = preprocess_batch(x[:8], contract, device=args.device).spectrograms
    rel = float(np.abs(got - ref).max() / ref.max())
    batched()
    batched_one_thread()
    torch_passes()
    names = (
        "scipy per-window loop",
        "preprocess_batch",
        "preprocess_batch 1 thr",
        "torch passes (no kernel)",
        "alt: torch.stft batch",
        "alt: numpy rfft batch",
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load_start = os.getloadavg()[0]
    fns = {
        "scipy per-window loop": lambda: scipy_loop(x, contract),
        "preprocess_batch": batched,
        "preprocess_batch 1 thr": batched_one_thread,
        "torch passes (no kernel)": torch_passes,
        "alt: torch.stft batch": lambda: torch_stft_batch(x, contract),
        "alt: numpy rfft batch": lambda: numpy_rfft_batch(x, contract),
    }
    for phase in (names[:4], names[4:]):  # the comparison, then the alternatives (see the module docstring)
        for _ in range(args.repeats):
            for name in phase:
                start, start_cpu = time.perf_counter(), time.process_time()
                fns[name]()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(
        f"windows: {args.batch} x [{contract.n_channels}, {contract.window_samples}] float64, "
        f"STFT nperseg={contract.stft_nperseg} hop={contract.stft_hop}, device={args.device}, "
        f"torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
        f"load average at start/end={load_start:.2f}/{os.getloadavg()[0]:.2f}, repeats={args.repeats}"
    )
    print(f"max |batched - scipy| / max|scipy| = {rel:.2e}")
    for name, alt in (("torch.stft", torch_stft_batch), ("numpy rfft", numpy_rfft_batch)):
        alt_rel = float(np.abs(np.asarray(alt(x[:8], contract)) - ref).max() / ref.max())
        print(f"  (alternative {name}: max rel. difference {alt_rel:.2e})")
    rates = {}
    for name in names:
        med, best, med_cpu = statistics.median(times[name]), min(times[name]), statistics.median(cpu[name])
        rates[name] = (args.batch / med, args.batch / best, args.batch / med_cpu)
        print(
            f"{name:24s} wall median {med * 1e3:7.2f} ms {args.batch / med:8.0f} windows/s | "
            f"wall best {best * 1e3:7.2f} ms {args.batch / best:8.0f} windows/s | "
            f"CPU median {med_cpu * 1e3:7.2f} ms {args.batch / med_cpu:8.0f} windows/CPU-s"
        )
    fast, slow = rates["preprocess_batch"], rates["scipy per-window loop"]
    print(
        f"speed-up batched / scipy loop: wall median {fast[0] / slow[0]:.1f}x, wall best {fast[1] / slow[1]:.1f}x, "
        f"CPU time {fast[2] / slow[2]:.1f}x (CPU time is the load-insensitive figure on a shared machine)"
    )
    one = rates["preprocess_batch 1 thr"]
    print(
        f"speed-up batched with 1 torch thread / scipy loop: wall median {one[0] / slow[0]:.1f}x, "
        f"wall best {one[1] / slow[1]:.1f}x, CPU time {one[2] / slow[2]:.1f}x"
    )
    old = rates["torch passes (no kernel)"]
    print(
        f"compiled kernel / torch passes (both at {args.threads} threads): wall median {fast[0] / old[0]:.1f}x, "
        f"wall best {fast[1] / old[1]:.1f}x, CPU time {fast[2] / old[2]:.1f}x"
    )


if __name__ == "__main__":
    main()
