"""Grow a checkpoint's transformer to more blocks without changing what it computes (docs/detection-quality.md,
"Tried and dropped"): the new blocks get timm's initialisation with the outputs of their residual branches (the
attention projection and the second MLP layer, weights and biases) zeroed, so each new block starts as the
identity and the grown model gives the original's outputs; fine-tuning then trains them.

    python benchmarks/grow_depth.py --init OLD.safetensors --depth 8 --output old_depth8.safetensors

The stored provenance names the new depth (`train_config`), which `quakemon.training.finetune` reads to build
the model it fine-tunes. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from quakemon.models.checkpoint import load_checkpoint, save_checkpoint
    from quakemon.models.hybrid_vit import HybridViT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new blocks' initialisation")
    args = parser.parse_args(argv)
    base = load_checkpoint(args.init)
    old = base.model.args
    if not old.depth or args.depth <= old.depth:
        parser.error(f"--depth must exceed the checkpoint's depth ({old.depth})")
    torch.manual_seed(args.seed)
    grown = HybridViT(backbone=old.backbone, depth=args.depth, in_channels=old.in_channels,
                      num_classes=old.num_classes, img_size=old.img_size, dropout=old.dropout)
    missing, unexpected = grown.load_state_dict(base.model.state_dict(), strict=False)
    new_blocks = range(old.depth, args.depth)
    if unexpected or any(not name.startswith(tuple(f"blocks.{i}." for i in new_blocks)) for name in missing):
        parser.error(f"the checkpoint does not fit a deeper model of its kind (missing {missing}, extra {unexpected})")
    with torch.no_grad():
        for i in new_blocks:
            block = grown.blocks[i]
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    provenance = {**base.provenance, "train_config": {**base.provenance.get("train_config", {}), "depth": args.depth},
                  "grown_from": {"path": base.path.name, "sha256": base.sha256, "depth": old.depth},
                  "command": " ".join(["python benchmarks/grow_depth.py", *(argv or sys.argv[1:])])}
    sha = save_checkpoint(args.output, grown.eval(), base.labels, base.contract, name=base.name,
                          provenance=provenance)
    print(json.dumps({"checkpoint": args.output, "sha256": sha, "depth": args.depth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
