"""benchmarks/weight_average.py: tensor-by-tensor interpolation of two checkpoints of one architecture."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from quakemon.models.checkpoint import load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import weight_average  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "support" / "plain-detector.safetensors"


def shifted_copy(path: Path, shift: float, contract=None) -> Path:
    """The base checkpoint with `shift` added to every floating-point tensor, saved at `path`."""
    ckpt = load_checkpoint(BASE)
    with torch.no_grad():
        for value in ckpt.model.state_dict().values():
            if value.is_floating_point():
                value.add_(shift)
    save_checkpoint(path, ckpt.model, ckpt.labels, contract or ckpt.contract)
    return path


def test_the_average_lies_alpha_of_the_way_from_base_to_finetuned(tmp_path: Path) -> None:
    tuned = shifted_copy(tmp_path / "tuned.safetensors", 1.0)
    out = tmp_path / "mix.safetensors"
    assert weight_average.main(["--base", str(BASE), "--finetuned", str(tuned), "--alpha", "0.25",
                                "--output", str(out)]) == 0
    base, mix = load_checkpoint(BASE), load_checkpoint(out)
    for (key, want), got in zip(base.model.state_dict().items(), mix.model.state_dict().values(), strict=True):
        if want.is_floating_point():
            torch.testing.assert_close(got, want + 0.25, msg=key)
        else:
            assert torch.equal(got, want), key
    assert mix.contract == base.contract
    assert mix.provenance["weight_average"]["alpha"] == 0.25
    assert mix.provenance["weight_average"]["finetuned"]["sha256"] == load_checkpoint(tuned).sha256


def test_checkpoints_that_do_not_match_and_a_bad_alpha_are_refused(tmp_path: Path, capsys) -> None:
    contract = load_checkpoint(BASE).contract
    other = shifted_copy(tmp_path / "other.safetensors", 0.0, replace(contract, extra={**contract.extra, "x": 1}))
    out = tmp_path / "mix.safetensors"
    with pytest.raises(SystemExit):
        weight_average.main(["--base", str(BASE), "--finetuned", str(other), "--output", str(out)])
    assert "differ in architecture, labels or input contract" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        weight_average.main(["--base", str(BASE), "--finetuned", str(BASE), "--alpha", "1.5", "--output", str(out)])
    assert "--alpha must lie in [0, 1]" in capsys.readouterr().err
    assert not out.exists()
