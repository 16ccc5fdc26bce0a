"""benchmarks/grow_depth.py: a deeper model that starts out computing what the checkpoint computed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from quakemon.models.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import grow_depth  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "support" / "plain-detector.safetensors"


def test_the_grown_model_gives_the_original_outputs_and_names_its_depth(tmp_path: Path) -> None:
    out = tmp_path / "deeper.safetensors"
    assert grow_depth.main(["--init", str(BASE), "--depth", "6", "--output", str(out)]) == 0
    base, grown = load_checkpoint(BASE), load_checkpoint(out)
    assert grown.model.args.depth == 6 and len(grown.model.blocks) == 6
    assert grown.provenance["train_config"]["depth"] == 6
    assert grown.provenance["grown_from"] == {"path": BASE.name, "sha256": base.sha256, "depth": 4}
    assert grown.contract == base.contract
    x = torch.randn(8, 3, *base.model.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(grown.model(x), base.model(x), rtol=0, atol=1e-6)
    new = grown.model.blocks[5]
    assert new.attn.qkv.weight.abs().sum() > 0  # initialised, so it can learn
    assert not new.attn.proj.weight.any() and not new.mlp.fc2.weight.any()


def test_a_depth_that_does_not_grow_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        grow_depth.main(["--init", str(BASE), "--depth", "4", "--output", str(tmp_path / "x.safetensors")])
    assert "--depth must exceed the checkpoint's depth (4)" in capsys.readouterr().err
