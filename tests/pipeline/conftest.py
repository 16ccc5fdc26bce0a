"""Fixtures of the pipeline tests that run the bundled model on real recordings."""

from __future__ import annotations

import shutil

import pytest

from quakemon.models.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Checkpoint:
    """The bundled checkpoint, from a copy (the bundled file may be rewritten while training). A test module may
    define its own `ckpt`."""
    model = tmp_path_factory.mktemp("model") / "model.safetensors"
    shutil.copyfile(resolve_checkpoint(None), model)
    return load_checkpoint(model)


@pytest.fixture(scope="module")
def inference(ckpt):
    """One fp32 CPU `Inference` (model and forward pool) for the module's runners."""
    from quakemon.pipeline.runner import Inference

    with Inference(ckpt, device="cpu", precision="fp32") as inf:
        yield inf
