"""Training: a short run on synthetic data lowers the loss and writes a checkpoint that loads; train/evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quakemon.cli.app import main
from quakemon.data.datasets import load_synthetic
from quakemon.models import load_checkpoint
from quakemon.models.contract import InputContract
from quakemon.training.train import TrainConfig, _component_dropout, split_indices, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    contract = InputContract()
    data = load_synthetic(240, contract, seed=5)
    out = tmp_path_factory.mktemp("train") / "m.safetensors"
    cfg = TrainConfig(depth=1, epochs=3, batch_size=32, lr=1e-3, seed=3, val_fraction=0.25, dropout=0.0)
    return train(data, contract, cfg, out, progress=False), out, cfg


def test_short_run_lowers_loss_and_saves_loadable_checkpoint(trained):
    result, out, cfg = trained
    losses = [r.train_loss for r in result.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0], losses
    ckpt = load_checkpoint(out)
    assert ckpt.sha256 == result.sha256
    assert ckpt.labels == ["noise", "earthquake"]
    assert ckpt.contract == InputContract()
    assert ckpt.provenance["train_config"]["seed"] == cfg.seed
    assert ckpt.provenance["epoch"] == result.best_epoch
    assert 0.0 <= result.best["roc_auc"] <= 1.0


def test_training_is_reproducible(trained, tmp_path):
    result, _, cfg = trained
    again = train(load_synthetic(240, InputContract(), seed=5), InputContract(), cfg, tmp_path / "again.safetensors",
                  progress=False)
    assert [r.train_loss for r in again.history] == [r.train_loss for r in result.history]


def test_freeze_then_finetune_schedule(tmp_path):
    contract = InputContract()
    data = load_synthetic(64, contract, seed=1)
    cfg = TrainConfig(depth=1, epochs=2, freeze_epochs=1, batch_size=32, seed=0, val_fraction=0.25)
    result = train(data, contract, cfg, tmp_path / "f.safetensors", progress=False)
    assert [r.phase for r in result.history] == ["frozen", "full"]
    assert result.history[1].lr <= cfg.lr * cfg.finetune_lr_factor + 1e-12


def test_split_is_stratified_and_seeded():
    labels = np.array([0] * 80 + [1] * 20)
    tr, va = split_indices(100, 0.25, 7, labels)
    assert len(va) == 25 and (labels[va] == 1).sum() == 5
    assert set(tr) | set(va) == set(range(100)) and not set(tr) & set(va)
    assert np.array_equal(split_indices(100, 0.25, 7, labels)[1], va)


def test_component_dropout_zeroes_horizontals_only():
    x = torch.ones(400, 3, 2, 2)
    out = _component_dropout(x, 0.5, InputContract(), torch.Generator().manual_seed(0))
    dropped = out[:, 1:].sum(dim=(1, 2, 3)) == 0
    assert 120 < int(dropped.sum()) < 280
    assert torch.all(out[:, 0] == 1)
    assert torch.all(out[~dropped] == 1)


def test_train_and_evaluate_cli(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = main(["train", "--data", "synthetic:96", "--output", str(out), "--depth", "1", "--epochs", "1",
                 "--batch-size", "32", "--quiet"])
    assert code == 0 and out.is_file()
    printed = json.loads(capsys.readouterr().out)
    assert printed["sha256"] == load_checkpoint(out).sha256
    code = main(["evaluate", "--model", str(out), "--data", "synthetic:64", "--seed", "9", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["windows"]["n"] == 64 and report["windows"]["positives"] == 32


def test_evaluate_without_data_is_a_usage_error(tiny_checkpoint, capsys):
    assert main(["evaluate", "--model", str(tiny_checkpoint)]) == 1
    assert "needs --data" in capsys.readouterr().err
