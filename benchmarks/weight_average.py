"""Weight-space interpolation of two checkpoints of one lineage (WiSE-FT: Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022): theta = (1 - alpha) * theta_base + alpha * theta_finetuned, tensor by tensor, for
a fine-tuned model and the model it was fine-tuned from (docs/detection-quality.md, "Tried and dropped").

    python benchmarks/weight_average.py --base stage1.safetensors --finetuned stage2_uv05.safetensors \
        --alpha 0.5 --output soup_uv05.safetensors

Both checkpoints must have the same architecture, labels and input contract (the fine-tuned one's contract is
written). Floating-point tensors are interpolated; integer buffers (BatchNorm's batch counters) are the fine-tuned
model's. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from quakemon.models.checkpoint import load_checkpoint, save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the checkpoint the fine-tune started from")
    parser.add_argument("--finetuned", required=True)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tuned model, in [0, 1]")
    parser.add_argument("--output", "-o", required=True)
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must lie in [0, 1], got {args.alpha}")
    base, tuned = load_checkpoint(args.base), load_checkpoint(args.finetuned)
    if base.args != tuned.args or base.labels != tuned.labels or base.contract != tuned.contract:
        parser.error("the two checkpoints differ in architecture, labels or input contract")
    a = args.alpha
    mixed = {
        key: (1 - a) * base_value + a * value if value.is_floating_point() else value
        for (key, value), base_value in zip(tuned.model.state_dict().items(), base.model.state_dict().values(),
                                            strict=True)
    }
    with torch.no_grad():
        tuned.model.load_state_dict(mixed)
    sha = save_checkpoint(args.output, tuned.model, tuned.labels, tuned.contract, provenance={
        "weight_average": {"alpha": a, "base": {"path": base.path.name, "sha256": base.sha256},
                           "finetuned": {"path": tuned.path.name, "sha256": tuned.sha256}},
        "command": " ".join(["python benchmarks/weight_average.py", *(argv or sys.argv[1:])])})
    print(json.dumps({"checkpoint": args.output, "sha256": sha}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
