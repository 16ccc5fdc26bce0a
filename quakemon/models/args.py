"""The arguments that rebuild a HybridViT, stored in checkpoints (kept free of torch/timm imports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quakemon.models.backbones import Backbone


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild a HybridViT; stored in checkpoints."""

    backbone: str = Backbone.TINY.name
    depth: int | None = 4
    in_channels: int = 3
    num_classes: int = 2
    img_size: tuple[int, int] = (33, 64)
    dropout: float = 0.2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model arguments {sorted(unknown)}")
        d = dict(d)
        if "img_size" in d:
            d["img_size"] = tuple(int(v) for v in d["img_size"])
        return cls(**d)
