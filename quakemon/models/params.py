"""Print the exact parameter count of every backbone at depth 4 and 12 (the table in docs/model.md).

Run: python -m quakemon.models.params
"""

from __future__ import annotations

from quakemon.models.backbones import Backbone
from quakemon.models.hybrid_vit import HybridViT

DEPTHS = (4, 12)


def parameter_counts(img_size: tuple[int, int] = (33, 64), in_channels: int = 3, num_classes: int = 2) -> dict:
    """{backbone name: {depth: total parameters}} for HybridViT built on each backbone."""
    return {
        b.name: {
            d: sum(p.numel() for p in HybridViT(b, depth=d, in_channels=in_channels, num_classes=num_classes,
                                                img_size=img_size).parameters())
            for d in DEPTHS
        }
        for b in Backbone
    }


def markdown_table(counts: dict) -> str:
    lines = ["| Backbone | timm model | Params (depth=4) | Params (depth=12) |", "|---|---|---:|---:|"]
    for b in Backbone:
        lines.append(f"| {b.name} | {b.timm_name} | {counts[b.name][4]:,} | {counts[b.name][12]:,} |")
    return "\n".join(lines)


def main() -> None:
    print(markdown_table(parameter_counts()))


if __name__ == "__main__":
    main()
