"""The GPU path: preprocessing and inference on CUDA give what the CPU gives.

These tests need a CUDA device, which CI and the development machine do not have: they are skipped there,
with the reason shown in pytest's summary (`-rs`). They were run on a lent H200 (figures in docs/performance.md).
Everything else in the suite runs the same code on the CPU.
"""

from __future__ import annotations

import numpy as np
import obspy
import pytest
import torch

from quakemon.models import load_checkpoint
from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import WindowMeta, preprocess_windows
from quakemon.pipeline.engine import InferenceEngine
from quakemon.pipeline.runner import DetectionRunner
from quakemon.pipeline.transforms import preprocess_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this host)")


def _windows(n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 3, InputContract().window_samples)
    return (rng.standard_normal(shape) * rng.uniform(1, 1e4, shape[:2] + (1,))).astype(np.float32)


def test_preprocess_on_cuda_equals_cpu() -> None:
    contract = InputContract()
    x = _windows()
    x[3, 1] = 7.0  # a dead channel
    x[5, 0, 100:120] = np.nan  # a repaired gap
    cpu = preprocess_batch(x, contract)
    gpu = preprocess_batch(torch.from_numpy(x).cuda(), contract)
    assert gpu.spectrograms.device.type == "cuda"
    scale = float(np.abs(cpu.spectrograms).max())
    assert np.abs(gpu.spectrograms.cpu().numpy() - cpu.spectrograms).max() <= 1e-5 * scale
    assert np.array_equal(gpu.valid.cpu().numpy(), cpu.valid) and np.array_equal(gpu.dead.cpu().numpy(), cpu.dead)


def test_preprocess_windows_keeps_spectra_on_the_device() -> None:
    contract = InputContract()
    metas = [WindowMeta(f"S{i}", 0, 0) for i in range(8)]
    spectra, metas = preprocess_windows(_windows(8), metas, contract, device="cuda", keep_on_device=True)
    assert isinstance(spectra, torch.Tensor) and spectra.device.type == "cuda"
    host, _ = preprocess_windows(_windows(8), metas, contract, device="cuda")
    assert isinstance(host, np.ndarray) and np.allclose(host, spectra.cpu().numpy())


def test_engine_on_cuda_matches_cpu_fp32(tiny_checkpoint) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    spectra, _ = preprocess_windows(_windows(40), [WindowMeta("S", 0, 0)] * 40, ckpt.contract)
    cpu = InferenceEngine(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32").predict(spectra)
    gpu_engine = InferenceEngine(ckpt, device="cuda", precision="fp32")
    gpu = gpu_engine.predict(torch.from_numpy(spectra).cuda())
    assert np.abs(gpu - cpu).max() < 1e-3
    bf16 = InferenceEngine(load_checkpoint(tiny_checkpoint), device="cuda", precision="auto")
    assert bf16.precision == "bf16" and np.abs(bf16.predict(spectra) - cpu).max() < 0.05


def test_replay_on_cuda_gives_the_cpu_detections(tiny_checkpoint) -> None:
    """Same windows, same probabilities (fp32, within 1e-3), same detection ids and onsets."""
    ckpt = load_checkpoint(tiny_checkpoint)
    probe = DetectionRunner(ckpt, device="cpu", precision="fp32", keep_series=True)
    list(probe.add_traces(obspy.read()))
    probe.finish()
    p = np.asarray(probe.series["BW.RJOB."].probabilities)[:, 1]
    trigger = dict(on=float(np.quantile(p, 0.6)), off=float(np.quantile(p, 0.4)), min_duration_s=0.0)
    out = {}
    for device in ("cpu", "cuda"):
        runner = DetectionRunner(load_checkpoint(tiny_checkpoint), device=device, precision="fp32",
                                 keep_series=True, **trigger)
        bodies = list(runner.add_traces(obspy.read())) + runner.finish()
        out[device] = (bodies, np.asarray(runner.series["BW.RJOB."].probabilities))
    assert np.abs(out["cuda"][1] - out["cpu"][1]).max() < 1e-3
    assert [(b["id"], b["onset"]) for b in out["cuda"][0]] == [(b["id"], b["onset"]) for b in out["cpu"][0]]
