"""HybridViT, its backbones, offline pretrained weights and safe checkpoints.

Names are imported lazily, so that reading a checkpoint's metadata (the ingest and preprocessing stages) does
not pay for importing timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backbone": "quakemon.models.backbones",
    "Checkpoint": "quakemon.models.checkpoint",
    "load_checkpoint": "quakemon.models.checkpoint",
    "save_checkpoint": "quakemon.models.checkpoint",
    "ModelArgs": "quakemon.models.args",
    "HybridViT": "quakemon.models.hybrid_vit",
    "build_model": "quakemon.models.hybrid_vit",
    "stem_grid": "quakemon.models.hybrid_vit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'quakemon.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
