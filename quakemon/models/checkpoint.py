"""Checkpoints: safetensors weights with JSON metadata (model arguments, labels, input contract, provenance).

Loading never unpickles: only the safetensors format is read, whose parser handles raw tensor bytes and a
JSON header. Every inconsistency is refused with a message naming the expected and the actual value.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from quakemon import __version__
from quakemon.base.errors import CheckpointError, ContractError
from quakemon.models.args import ModelArgs
from quakemon.models.contract import InputContract

if TYPE_CHECKING:  # torch and timm are imported only by the functions that build models
    import torch

    from quakemon.models.hybrid_vit import HybridViT

log = structlog.get_logger(__name__)

FORMAT = "quakemon.checkpoint/1"
METADATA_KEY = "quakemon"
#: The model shipped inside the package, the default of every command (docs/model.md, "The bundled model").
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "quakemon-detector.safetensors"


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """The checkpoint to use: `path`, or the bundled model when `path` is empty or None."""
    if path:
        return Path(path).expanduser()
    if not BUNDLED_CHECKPOINT.is_file():
        raise CheckpointError(f"the bundled model {BUNDLED_CHECKPOINT} is missing from this installation; "
                              "pass a checkpoint explicitly (--model / [model] checkpoint)")
    return BUNDLED_CHECKPOINT


@dataclass
class Checkpoint:
    """A loaded model with everything needed to feed it and to name it in detections."""

    model: HybridViT
    labels: list[str]
    contract: InputContract
    args: ModelArgs
    sha256: str
    path: Path
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def model_info(self) -> dict[str, str]:
        """The `model` field of detection messages."""
        return {"name": self.name, "sha256": self.sha256}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_contract(args: ModelArgs, contract: InputContract, labels: list[str]) -> None:
    """Refuse a model whose input shape or class count disagrees with its contract and labels."""
    if contract.n_channels != args.in_channels:
        raise ContractError(
            f"component_order {contract.component_order!r} gives {contract.n_channels} channels, "
            f"model expects in_channels={args.in_channels}"
        )
    if "SPECTROGRAM" in contract.transforms and tuple(contract.spectrogram_shape) != tuple(args.img_size):
        raise ContractError(
            f"input contract gives spectrograms of {contract.spectrogram_shape} (window_samples="
            f"{contract.window_samples}, nperseg={contract.stft_nperseg}, hop={contract.stft_hop}), "
            f"model expects img_size={tuple(args.img_size)}"
        )
    if len(labels) != args.num_classes:
        raise ContractError(f"{len(labels)} class labels {labels} for a model with num_classes={args.num_classes}")


def save_checkpoint(
    path: str | os.PathLike,
    model: HybridViT,
    labels: list[str],
    contract: InputContract,
    name: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Write model weights and metadata to one safetensors file atomically; return its sha256."""
    from safetensors.torch import save_file

    check_model_contract(model.args, contract, list(labels))
    path = Path(path)
    meta = {
        "format": FORMAT,
        "name": name or path.stem,
        "quakemon_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model.args.to_dict(),
        "labels": list(labels),
        "contract": contract.to_dict(),
        "provenance": provenance or {},
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return file_sha256(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and parse a checkpoint's metadata without loading its tensors (nor importing torch: the header is read
    with the numpy framework, so that the ingest and preprocessing stages stay free of torch)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt headers
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({type(exc).__name__}: {exc}); quakemon loads "
            "only safetensors and never unpickles"
        ) from None
    if raw is None:
        raise CheckpointError(f"{path} has no '{METADATA_KEY}' metadata; it is not a quakemon checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: metadata format is {got!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", expected_sha256: str | None = None
) -> Checkpoint:
    """Load a checkpoint into an eval-mode HybridViT; check hash, metadata, contract and every tensor."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256.lower():
        raise CheckpointError(f"{path}: sha256 is {sha}, expected {expected_sha256}")
    meta = read_metadata(path)
    try:
        args = ModelArgs.from_dict(meta["model"])
        contract = InputContract.from_dict(meta["contract"])
        labels = [str(x) for x in meta["labels"]]
    except KeyError as exc:
        raise CheckpointError(f"{path}: metadata lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, ContractError) as exc:
        raise CheckpointError(f"{path}: malformed metadata: {exc}") from None
    try:
        check_model_contract(args, contract, labels)
    except ContractError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({type(exc).__name__}: {exc})") from None
    from quakemon.models.hybrid_vit import build_model

    model = build_model(args)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model in its metadata: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    name = str(meta.get("name") or path.stem)
    log.info("checkpoint_loaded", path=str(path), name=name, sha256=sha, labels=labels, device=str(device))
    return Checkpoint(model, labels, contract, args, sha, path, name, dict(meta.get("provenance") or {}))
