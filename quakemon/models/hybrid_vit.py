"""HybridViT: a convolutional stem in front of the blocks of a pretrained timm Vision Transformer.

The ViT "patchify" stem (one 16x16 stride-16 convolution) is replaced by three small strided convolutions,
which Xiao et al. (2021), *Early Convolutions Help Transformers See Better* (arXiv:2106.14881), show makes
optimisation stable and helps on small datasets. The transformer blocks, CLS token, positional embedding and
final norm come from a timm ViT (Dosovitskiy et al. 2020, arXiv:2010.11929; DeiT, Touvron et al. 2021); the
positional embedding is resampled bicubically from the backbone's 14x14 grid to the stem's output grid.

Input: a spectrogram batch [B, in_channels, F, T] (e.g. [B, 3, 33, 64] for Z/N/E, 33 frequency bins, 64 frames).
"""

from __future__ import annotations

import os

import structlog
import timm
import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from quakemon.models.args import ModelArgs
from quakemon.models.backbones import Backbone

log = structlog.get_logger(__name__)

#: (kernel, stride, padding) of the three stem convolutions.
STEM_CONVS: tuple[tuple[int, int, int], ...] = ((7, 2, 3), (3, 2, 1), (3, 2, 1))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def stem_grid(img_size: tuple[int, int]) -> tuple[int, int]:
    """The stem's output grid for an input of img_size, by convolution arithmetic (33x64 -> 5x8)."""
    h, w = img_size
    for k, s, p in STEM_CONVS:
        h, w = conv_out(h, k, s, p), conv_out(w, k, s, p)
    if h < 1 or w < 1:
        raise ValueError(f"img_size {img_size} is too small for the stem (output grid {h}x{w})")
    return h, w


class ConvStem(nn.Module):
    """Three stride-2 convolutions (7x7, 3x3, 3x3), BatchNorm after each, ReLU after the first two; 8x downsampling."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        widths = (in_channels, 64, 128, embed_dim)
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(STEM_CONVS):
            layers += [nn.Conv2d(widths[i], widths[i + 1], k, s, p, bias=False), nn.BatchNorm2d(widths[i + 1])]
            if i < len(STEM_CONVS) - 1:  # no final ReLU: the transformer's GELU supplies the nonlinearity
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class HybridViT(nn.Module):
    """CNN stem + the first `depth` blocks of a timm ViT + LayerNorm + CLS -> dropout -> linear head.

    pretrained: False (random init), True (the backbone's default timm weights from the local Hugging Face or
    torch hub cache; never the network), or a path to a local weights file (.safetensors, .pth/.pt/.bin, .npz).
    freeze_backbone: freeze the pretrained transformer blocks and final norm (see `freeze_backbone`).
    """

    def __init__(
        self,
        backbone: Backbone | str = Backbone.TINY,
        depth: int | None = 4,
        in_channels: int = 3,
        num_classes: int = 2,
        img_size: tuple[int, int] = (33, 64),
        dropout: float = 0.2,
        freeze_backbone: bool = False,
        pretrained: bool | str | os.PathLike = False,
    ) -> None:
        super().__init__()
        self.backbone = Backbone.parse(backbone)
        total = self.backbone.total_blocks
        if depth is not None and not 1 <= depth <= total:
            raise ValueError(f"depth must be in 1..{total} or None, got {depth}")
        self.depth = total if depth is None else depth
        self.args = ModelArgs(self.backbone.name, depth, in_channels, num_classes, tuple(img_size), dropout)
        self.img_size = tuple(img_size)
        self.grid = stem_grid(self.img_size)
        embed_dim = self.backbone.embed_dim

        vit = timm.create_model(self.backbone.timm_name, pretrained=False, num_classes=0)
        self.pretrained_report: dict[str, list[str]] = {}
        if pretrained:
            from quakemon.models.pretrained import load_backbone_weights

            self.pretrained_report = load_backbone_weights(vit, self.backbone, pretrained, self.depth)

        self.stem = ConvStem(in_channels, embed_dim)
        self.cls_token = nn.Parameter(vit.cls_token.detach().clone())
        n_patches = self.grid[0] * self.grid[1]
        if pretrained:
            pos = resample_abs_pos_embed(
                vit.pos_embed.detach(), new_size=list(self.grid), old_size=list(self.backbone.pretrained_grid),
                num_prefix_tokens=1,
            )
        else:
            pos = trunc_normal_(torch.zeros(1, n_patches + 1, embed_dim), std=0.02)
        self.pos_embed = nn.Parameter(pos.clone())
        self.blocks = nn.Sequential(*list(vit.blocks.children())[: self.depth])
        self.norm = vit.norm
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if freeze_backbone:
            self.freeze_backbone()

    def frozen_parameter_names(self) -> list[str]:
        """The tensors `freeze_backbone` freezes: the pretrained transformer blocks and the final LayerNorm.

        The stem and head are new and must learn. The CLS token and positional embedding stay trainable too:
        the positional embedding was resampled onto a frequency x time grid whose meaning differs from the
        image grid it was trained on, and both are tiny (embed_dim x (patches + 1) values).
        """
        return [n for n, _ in self.named_parameters() if n.startswith(("blocks.", "norm."))]

    def freeze_backbone(self, frozen: bool = True) -> None:
        names = set(self.frozen_parameter_names())
        for name, p in self.named_parameters():
            if name in names:
                p.requires_grad_(not frozen)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F, T] -> normalised token sequence [B, patches + 1, embed_dim]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.args.in_channels, *self.img_size):
            raise ValueError(
                f"expected input [B, {self.args.in_channels}, {self.img_size[0]}, {self.img_size[1]}], "
                f"got {list(x.shape)}"
            )
        x = self.stem(x)  # [B, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Token sequence -> class logits [B, num_classes], from the CLS token."""
        return self.head(self.head_drop(x[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(args: ModelArgs, pretrained: bool | str | os.PathLike = False) -> HybridViT:
    """Rebuild a HybridViT from stored arguments."""
    return HybridViT(
        backbone=args.backbone, depth=args.depth, in_channels=args.in_channels, num_classes=args.num_classes,
        img_size=args.img_size, dropout=args.dropout, pretrained=pretrained,
    )
