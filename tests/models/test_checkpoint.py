"""Checkpoints: round trip, contract checks, and refusal of pickles, truncation and malformed metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from quakemon.base.errors import CheckpointError, ContractError
from quakemon.models import HybridViT, load_checkpoint, save_checkpoint
from quakemon.models.checkpoint import read_metadata
from quakemon.models.contract import InputContract


def test_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(3)
    contract = InputContract()
    model = HybridViT("TINY", depth=2, img_size=contract.spectrogram_shape).eval()
    # Give BatchNorm non-trivial running statistics so they are part of what must survive.
    model.train()
    model(torch.randn(8, 3, 33, 64))
    model.eval()
    x = torch.randn(5, 3, 33, 64)
    with torch.inference_mode():
        before = model(x)
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(path, model, ["noise", "earthquake"], contract, provenance={"seed": 3})
    ckpt = load_checkpoint(path, expected_sha256=sha)
    with torch.inference_mode():
        after = ckpt.model(x)
    assert torch.equal(before, after)
    assert ckpt.labels == ["noise", "earthquake"]
    assert ckpt.contract == contract
    assert ckpt.provenance == {"seed": 3}
    assert ckpt.model_info == {"name": "m", "sha256": sha}
    assert not ckpt.model.training


def test_wrong_sha_is_refused(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="expected 0000"):
        load_checkpoint(tiny_checkpoint, expected_sha256="0000")


def test_save_refuses_contract_mismatch(tmp_path):
    model = HybridViT("TINY", depth=1, img_size=(33, 64))
    with pytest.raises(ContractError, match=r"img_size=\(33, 64\)"):
        save_checkpoint(tmp_path / "x.safetensors", model, ["a", "b"], InputContract(window_samples=3000))
    with pytest.raises(ContractError, match="num_classes=2"):
        save_checkpoint(tmp_path / "x.safetensors", model, ["a", "b", "c"], InputContract())


def test_pickle_payload_never_runs(tmp_path):
    """A torch.save pickle with a __reduce__ payload is refused, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"

    class Payload:
        def __reduce__(self):  # pickled as a call of os.system: loading the file would run it
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, str(evil))
    assert evil.exists() and not marker.exists()
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    probe = f"""
import sys
from quakemon.models import load_checkpoint
from quakemon.base.errors import CheckpointError
try:
    load_checkpoint({str(evil)!r})
except CheckpointError as e:
    print("refused:", e); sys.exit(3)
sys.exit(0)
"""
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "never unpickles" in proc.stdout
    assert not marker.exists()


def test_truncated_file_is_refused(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)


def test_huge_header_is_refused(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)


def _with_metadata(tmp_path, tiny_checkpoint, meta) -> str:
    from safetensors.torch import load_file

    state = load_file(str(tiny_checkpoint))
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


def test_malformed_metadata_is_refused(tmp_path, tiny_checkpoint):
    good = read_metadata(tiny_checkpoint)
    cases = {
        "no metadata": ({}, "no 'quakemon' metadata"),
        "not json": ({"quakemon": "{oops"}, "not valid JSON"),
        "wrong format": ({"quakemon": json.dumps({**good, "format": "other/9"})}, "expected 'quakemon.checkpoint/1'"),
        "no labels": ({"quakemon": json.dumps({k: v for k, v in good.items() if k != "labels"})}, "lacks 'labels'"),
        "bad contract": (
            {"quakemon": json.dumps({**good, "contract": {**good["contract"], "window_samples": 3000}})},
            r"model expects img_size=\(33, 64\)",
        ),
        "bad rate": ({"quakemon": json.dumps({**good, "contract": {**good["contract"], "sampling_rate": -1}})},
                     "sampling_rate must be > 0"),
        "wrong depth": ({"quakemon": json.dumps({**good, "model": {**good["model"], "depth": 2}})}, "missing"),
    }
    for name, (meta, message) in cases.items():
        path = _with_metadata(tmp_path, tiny_checkpoint, meta)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
        assert name


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
