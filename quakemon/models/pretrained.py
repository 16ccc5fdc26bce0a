"""Offline loading of pretrained ViT weights: a local file, or the local Hugging Face / torch hub cache.

Nothing here touches the network. With no weights available it fails at once with a message naming the
backbone, where it looked, and how to provide a file. Missing and unexpected keys are reported, never dropped
silently: keys the model needs (CLS token, positional embedding, the used blocks, final norm) must be present.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
import torch
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

from quakemon.base.errors import PretrainedWeightsError
from quakemon.models.backbones import Backbone

log = structlog.get_logger(__name__)

_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def find_cached_weights(vit: VisionTransformer, backbone: Backbone) -> Path:
    """Locate the backbone's default pretrained weights in a local cache, or raise PretrainedWeightsError."""
    from huggingface_hub import try_to_load_from_cache

    cfg = vit.pretrained_cfg
    looked: list[str] = []
    repo = cfg.get("hf_hub_id")
    if repo:
        cache = hf_cache_dir()
        for filename in _HF_FILENAMES:
            found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        looked.append(f"Hugging Face cache {cache} (repo {repo})")
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return candidate
        looked.append(f"torch hub cache {candidate}")
    raise PretrainedWeightsError(
        f"no pretrained weights for backbone {backbone.name} ({backbone.timm_name}) are available offline; "
        f"looked in: {'; '.join(looked) or 'nowhere (no known source)'}. quakemon never downloads at run time. "
        f"Provide a local file: HybridViT(pretrained='/path/to/{backbone.timm_name}.safetensors') or "
        f"`--pretrained PATH`; a file saved from timm works, e.g. "
        f"`safetensors.torch.save_file(timm.create_model('{backbone.timm_name}', pretrained=True).state_dict(), PATH)` "
        f"on a machine with network access."
    )


def read_state_dict(path: Path, vit: VisionTransformer) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif suffix == ".npz":  # big_vision / original ViT release format, read by timm with numpy
        _load_weights(vit, str(path))
        return dict(vit.state_dict())
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corrupt file
            raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a flat dict of tensors")
    return checkpoint_filter_fn(state, vit)


def load_backbone_weights(
    vit: VisionTransformer, backbone: Backbone, source: bool | str | os.PathLike, depth: int
) -> dict[str, list[str]]:
    """Load pretrained weights into `vit` in place; return {"source", "missing", "unexpected"} for the record."""
    if source is True:
        path = find_cached_weights(vit, backbone)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights file for backbone {backbone.name} not found: {path}")
    try:
        state = read_state_dict(path, vit)
    except PretrainedWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt file, wrong format
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc

    model_keys = set(vit.state_dict())
    ignored = ("head.", "fc_norm.")  # classifier of the source task: replaced by our own head
    missing = sorted(k for k in model_keys - set(state) if not k.startswith(ignored))
    unexpected = sorted(k for k in set(state) - model_keys if not k.startswith(ignored))
    needed_prefixes = ("cls_token", "pos_embed", "norm.", *(f"blocks.{i}." for i in range(depth)))
    needed_missing = [k for k in missing if k.startswith(needed_prefixes)]
    if needed_missing:
        raise PretrainedWeightsError(
            f"pretrained weights {path} for backbone {backbone.name} lack {len(needed_missing)} tensors the model "
            f"uses, e.g. {needed_missing[:5]}"
        )
    shape_errors = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in vit.state_dict().items()
        if k in state and k.startswith(needed_prefixes) and state[k].shape != v.shape
    ]
    if shape_errors:
        raise PretrainedWeightsError(
            f"pretrained weights {path} do not fit backbone {backbone.name}: {shape_errors[:5]}"
        )
    usable = {k: v for k, v in state.items() if k in model_keys and state[k].shape == vit.state_dict()[k].shape}
    vit.load_state_dict(usable, strict=False)
    if missing or unexpected:
        log.warning(
            "pretrained_keys_mismatch", backbone=backbone.name, path=str(path),
            missing=missing, unexpected=unexpected,
        )
    log.info("pretrained_loaded", backbone=backbone.name, path=str(path), tensors=len(usable))
    return {"source": [str(path)], "missing": missing, "unexpected": unexpected}
