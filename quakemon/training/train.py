"""Training and evaluation of HybridViT on labelled waveforms, through `WaveformDataAdapter`.

AdamW with a cosine learning-rate schedule; optionally `freeze_epochs` with the pretrained transformer
frozen first, then fine-tuning of everything at `lr * finetune_lr_factor`. Validation metrics every epoch;
the best epoch (by validation F1 of the trigger label, ties by loss) is saved as a checkpoint with its full
input contract and provenance. Seeded: the same data, config and seed give the same checkpoint on one machine.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from quakemon.data.datasets import LabelledWaveforms
from quakemon.models.checkpoint import save_checkpoint
from quakemon.models.contract import InputContract
from quakemon.models.hybrid_vit import HybridViT
from quakemon.pipeline.adapter import WaveformDataAdapter
from quakemon.pipeline.engine import autocast, pick_device
from quakemon.training.scoring import BinaryScores, binary_scores

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all stored in the checkpoint's provenance)."""

    backbone: str = "TINY"
    depth: int = 4
    pretrained: str = ""  # "" = random init; a weights file; or "cache" = the local HF/torch hub cache
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    freeze_epochs: int = 0
    finetune_lr_factor: float = 0.1
    label_smoothing: float = 0.0
    component_dropout: float = 0.3  # probability of zeroing the horizontals of a training example (Z-only input)
    init_checkpoint: str = ""  # start from this checkpoint's weights (fine-tuning; same architecture and labels)
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # "bf16": autocast the forward pass (worth it on CUDA and on CPUs with native bf16)
    positive_label: str = "earthquake"


@dataclass
class EpochRecord:
    epoch: int
    phase: str
    lr: float
    train_loss: float
    val_loss: float
    val: dict[str, Any]
    seconds: float


@dataclass
class TrainResult:
    checkpoint: Path
    sha256: str
    best_epoch: int
    best: dict[str, Any]
    history: list[EpochRecord] = field(default_factory=list)


def split_indices(n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, label-stratified train/validation split."""
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        k = int(round(n * val_fraction))
        return np.sort(perm[k:]), np.sort(perm[:k])
    train, val = [], []
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        k = int(round(len(idx) * val_fraction))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def adapter_tensors(adapter: WaveformDataAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of an adapter as one stacked (inputs, labels) pair; the adapter precomputes items anyway."""
    if len(adapter) == 0:
        raise ValueError("no examples left after preprocessing")
    xs = torch.stack([adapter[i][0] for i in range(len(adapter))])
    ys = torch.as_tensor([int(adapter[i][1]) for i in range(len(adapter))], dtype=torch.long)
    return xs, ys


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = [torch.softmax(model(x[i : i + batch_size].to(device)).float(), -1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2)


def evaluate_arrays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, positive: int, device: torch.device
                    ) -> tuple[float, BinaryScores]:
    probs = predict_proba(model, x, device)
    loss = float(nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y)) if len(y) else float("nan")
    return loss, binary_scores(probs[:, positive].numpy(), (y == positive).numpy())


def _component_dropout(x: torch.Tensor, p: float, contract: InputContract, gen: torch.Generator) -> torch.Tensor:
    """Zero the non-vertical channels of a random share of examples, so one model serves Z-only stations."""
    if p <= 0 or "Z" not in contract.component_order:
        return x
    z = contract.component_order.index("Z")
    drop = torch.rand(x.shape[0], generator=gen) < p
    if drop.any():
        x = x.clone()
        keep = torch.zeros(contract.n_channels, dtype=torch.bool)
        keep[z] = True
        x[drop.nonzero(as_tuple=True)[0][:, None], (~keep).nonzero(as_tuple=True)[0]] = 0.0
    return x


def train(data: LabelledWaveforms, contract: InputContract, cfg: TrainConfig, out: str | Path,
          *, progress: bool = True, provenance: dict[str, Any] | None = None) -> TrainResult:
    """Train on `data` (split into train/validation), save the best checkpoint to `out`."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if (why := z_only_warning(contract, cfg.component_dropout)) is not None:
        log.warning("train_skips_z_only_stations", reason=why)
    device = pick_device(cfg.device)
    labels = list(data.label_names)
    if cfg.positive_label not in labels:
        raise ValueError(f"positive_label {cfg.positive_label!r} is not among the labels {labels}")
    positive = labels.index(cfg.positive_label)

    train_idx, val_idx = split_indices(len(data), cfg.val_fraction, cfg.seed, data.labels)
    events = data.waveforms

    def subset(idx: np.ndarray) -> WaveformDataAdapter:
        ev = events[idx] if isinstance(events, np.ndarray) else [events[i] for i in idx]
        return WaveformDataAdapter.from_contract(contract, ev, data.labels[idx].tolist())

    t0 = time.perf_counter()
    x_train, y_train = adapter_tensors(subset(train_idx))
    x_val, y_val = adapter_tensors(subset(val_idx)) if len(val_idx) else (x_train[:0], y_train[:0])
    log.info("train_data_ready", train=len(y_train), val=len(y_val), seconds=round(time.perf_counter() - t0, 1),
             counts=data.counts())

    pretrained: bool | str = False
    if cfg.pretrained == "cache":
        pretrained = True
    elif cfg.pretrained:
        pretrained = cfg.pretrained
    model = HybridViT(cfg.backbone, depth=cfg.depth, in_channels=contract.n_channels, num_classes=len(labels),
                      img_size=contract.spectrogram_shape, dropout=cfg.dropout, pretrained=pretrained).to(device)
    if cfg.init_checkpoint:
        _load_initial_weights(model, cfg.init_checkpoint, labels, contract)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        drop_last=len(y_train) > cfg.batch_size)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    phases = [("frozen", cfg.freeze_epochs, cfg.lr), ("full", cfg.epochs - cfg.freeze_epochs,
                                                      cfg.lr * (cfg.finetune_lr_factor if cfg.freeze_epochs else 1.0))]
    history: list[EpochRecord] = []
    best: tuple[float, float] | None = None
    best_epoch, best_val, sha = -1, {}, ""
    out = Path(out)
    epoch = 0
    bar = _bar(progress, cfg.epochs * len(loader))
    for phase, n_epochs, lr in phases:
        if n_epochs <= 0:
            continue
        model.freeze_backbone(phase == "frozen")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        total = n_epochs * len(loader)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(total * cfg.warmup_fraction)))
        for _ in range(n_epochs):
            epoch += 1
            start = time.perf_counter()
            model.train()
            losses = []
            for xb, yb in loader:
                xb = _component_dropout(xb, cfg.component_dropout, contract, gen).to(device)
                with autocast(cfg.precision, device):
                    logits = model(xb)
                loss = criterion(logits.float(), yb.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
            val_loss, scores = evaluate_arrays(model, x_val, y_val, positive, device)
            rec = EpochRecord(epoch, phase, sched.get_last_lr()[0], float(np.mean(losses)), val_loss,
                              scores.to_dict(), time.perf_counter() - start)
            history.append(rec)
            log.info("epoch", epoch=epoch, phase=phase, train_loss=round(rec.train_loss, 4),
                     val_loss=round(val_loss, 4), val_f1=round(scores.f1, 4), val_auc=round(scores.roc_auc, 4),
                     seconds=round(rec.seconds, 1))
            key = (scores.f1, -val_loss)
            if best is None or key > best:
                best, best_epoch, best_val = key, epoch, scores.to_dict()
                model.eval()
                sha = save_checkpoint(out, model, labels, contract, name=out.stem, provenance={
                    "trained_by": "quakemon train",
                    "train_config": asdict(cfg),
                    "epoch": epoch,
                    "val": best_val,
                    "train_examples": int(len(y_train)),
                    "val_examples": int(len(y_val)),
                    "counts": data.counts(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "argv": sys.argv,
                    **(provenance or {}),
                })
    if bar is not None:
        bar.close()
    log.info("train_done", checkpoint=str(out), best_epoch=best_epoch, sha256=sha, val=best_val)
    return TrainResult(out, sha, best_epoch, best_val, history)


def z_only_warning(contract: InputContract, component_dropout: float) -> str | None:
    """Why a model trained this way would skip vertical-only stations, or None when it serves them."""
    if contract.accepts("Z") or "Z" not in contract.component_order:
        return None
    if component_dropout <= 0:
        return ("component_dropout is 0: the model never sees vertical-only input and its contract will not "
                "accept Z-only stations, which the detector then skips; use a component dropout such as 0.3")
    return ("the contract does not list Z among its component sets: the model would skip vertical-only stations "
            "although it is trained with component dropout")


def _load_initial_weights(model: nn.Module, path: str, labels: list[str], contract: InputContract) -> None:
    """Copy a checkpoint's weights into `model` (fine-tuning): same labels, same input layout, same tensors."""
    from quakemon.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if list(ckpt.labels) != labels:
        raise ValueError(f"init checkpoint {path} has labels {ckpt.labels}, the data {labels}")
    if (ckpt.contract.n_channels, ckpt.contract.spectrogram_shape) != (contract.n_channels,
                                                                       contract.spectrogram_shape):
        raise ValueError(f"init checkpoint {path} takes another input shape than {contract}")
    model.load_state_dict(ckpt.model.state_dict())
    log.info("train_init_weights", checkpoint=str(path), sha256=ckpt.sha256)


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" batch", file=sys.stderr, dynamic_ncols=True, mininterval=0.5, desc="train")
