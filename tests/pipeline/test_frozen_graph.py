"""The frozen TorchScript graph the inference engine runs on the CPU (`model.graph = "auto"`): same probabilities
as the eager model at any batch size, and a clear fall-back to the eager model when it cannot be built or
disagrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quakemon.models.checkpoint import load_checkpoint
from quakemon.pipeline.engine import InferenceEngine


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def _spectra(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 33, 64)).astype(np.float32)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-6), ("bf16", 1e-2)])
def test_frozen_graph_gives_the_eager_probabilities_at_every_batch_size(ckpt, precision, tolerance):
    frozen = InferenceEngine(ckpt, device="cpu", precision=precision, batch_size=64)
    eager = InferenceEngine(ckpt, device="cpu", precision=precision, batch_size=64, graph="eager")
    assert frozen.graph == "frozen" and isinstance(frozen.model, torch.jit.ScriptModule)
    assert eager.graph == "eager" and not isinstance(eager.model, torch.jit.ScriptModule)
    for batch, seed in ((1, 0), (5, 1), (64, 2), (100, 3)):  # 100: two forwards of 64 and 36
        x = _spectra(batch, seed)
        got, want = frozen.predict(x), eager.predict(x)
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_a_graph_that_cannot_be_traced_falls_back_to_the_eager_model(ckpt, monkeypatch, capsys):
    def refuse(*_a, **_k):
        raise RuntimeError("the tracer cannot follow this model")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    engine = InferenceEngine(ckpt, device="cpu", precision="fp32")
    assert engine.graph == "eager"
    out = capsys.readouterr()
    assert "graph_freeze_failed" in out.out + out.err
    reference = InferenceEngine(ckpt, device="cpu", precision="fp32", graph="eager")
    x = _spectra(4, 7)
    np.testing.assert_array_equal(engine.predict(x), reference.predict(x))
    assert torch._C._jit_set_autocast_mode(True) is True  # the JIT's autocast mode was put back


def test_a_graph_that_disagrees_with_the_eager_model_is_not_used(ckpt, monkeypatch, capsys):
    freeze = torch.jit.freeze

    class Wrong(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * 3.0  # other logits, other probabilities

    monkeypatch.setattr(torch.jit, "freeze", lambda module: Wrong(freeze(module)))
    engine = InferenceEngine(ckpt, device="cpu", precision="fp32")
    assert engine.graph == "eager"
    out = capsys.readouterr()
    assert "graph_freeze_mismatch" in out.out + out.err


def test_an_unknown_graph_setting_is_a_clear_error(ckpt):
    from quakemon.base.errors import QuakemonError

    with pytest.raises(QuakemonError, match="model.graph must be one of auto, eager"):
        InferenceEngine(ckpt, device="cpu", graph="compiled")
