"""HybridViT, its backbones, offline pretrained weights and safe checkpoints."""

from quakemon.models.backbones import Backbone
from quakemon.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from quakemon.models.hybrid_vit import HybridViT, ModelArgs, build_model, stem_grid

__all__ = [
    "Backbone", "Checkpoint", "HybridViT", "ModelArgs", "build_model", "load_checkpoint", "save_checkpoint",
    "stem_grid",
]
