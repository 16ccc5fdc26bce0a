"""The timm Vision Transformers HybridViT can start from, and the facts the model needs about each."""

from __future__ import annotations

import enum


class Backbone(enum.Enum):
    """A pretrained ViT backbone, named by its timm model (value) with embed dim and heads."""

    TINY = "vit_tiny_patch16_224"
    SMALL = "vit_small_patch16_224"
    BASE = "vit_base_patch16_224"
    DEIT_TINY = "deit_tiny_patch16_224"
    DEIT_SMALL = "deit_small_patch16_224"

    @property
    def timm_name(self) -> str:
        return self.value

    @property
    def embed_dim(self) -> int:
        return _DIMS[self][0]

    @property
    def num_heads(self) -> int:
        return _DIMS[self][1]

    @property
    def total_blocks(self) -> int:
        return 12

    @property
    def pretrained_grid(self) -> tuple[int, int]:
        """The patch grid the pretrained positional embedding was trained on (224 / 16 = 14)."""
        return (14, 14)

    @classmethod
    def parse(cls, value: Backbone | str) -> Backbone:
        """Accept a Backbone, its name ("TINY") or its timm model name ("vit_tiny_patch16_224")."""
        if isinstance(value, Backbone):
            return value
        for member in cls:
            if value in (member.name, member.name.lower(), member.value):
                return member
        choices = ", ".join(f"{m.name} ({m.value})" for m in cls)
        raise ValueError(f"unknown backbone {value!r}; expected one of {choices}")


_DIMS: dict[Backbone, tuple[int, int]] = {
    Backbone.TINY: (192, 3),
    Backbone.SMALL: (384, 6),
    Backbone.BASE: (768, 12),
    Backbone.DEIT_TINY: (192, 3),
    Backbone.DEIT_SMALL: (384, 6),
}
