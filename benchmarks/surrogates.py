"""How checkpoints score earthquake windows against the same windows phase-randomised (docs/detection-quality.md).

    nice -n 10 python benchmarks/surrogates.py --model OLD.safetensors --model s3.safetensors --json out.json

A phase-randomised copy (`quakemon.training.finetune.phase_surrogates`) has its window's power spectrum and no
onset. A detector that calls the copy an earthquake as often as the original decides by the spectrum; one that
detects by the onset calls the original an earthquake and the copy noise. Windows (vertical-only, as the noise days
are): synthetic regional/teleseismic (`quakemon.data.distant`) and local (`synthetic.synthesize_event_trace`)
events over the noise of the sprit *validation* sites (never trained on), P from 1 s after the window's start to 5 s
before its end, SNR log-uniform 1.5-50 as in fine-tuning; and plain noise windows of the same sites. Prints, per
checkpoint and part, the share of windows at p >= 0.5 and p >= 0.7 and the median p, for the originals and their
copies. Torch uses at most two threads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SEED = 7100001


def windows(contract, n_per_part: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """{part: vertical windows [m, N]} for parts "distant", "local" and "noise" over the sprit validation sites."""
    from quakemon.data import sprit_noise
    from quakemon.data.distant import KINDS, add_distant_event
    from quakemon.data.synthetic import synthesize_event_trace
    from quakemon.training.multisite import _onsets

    rng = np.random.default_rng(seed)
    fs, n = contract.sampling_rate, contract.window_samples
    pre = int(30 * fs)
    sites = []
    for rec in sprit_noise.recordings("validation"):
        z = sprit_noise.load(rec, fs)[0]
        sites.append((z, sprit_noise.usable_mask(z, fs, _onsets(z, fs))))
    out: dict[str, list[np.ndarray]] = {"distant": [], "local": [], "noise": []}
    for part in out:
        length = n + pre if part == "distant" else n
        for i in range(n_per_part):
            z, usable = sites[i % len(sites)]
            s0 = int(sprit_noise.window_starts(usable, length, 1, rng)[0])
            seg = z[s0 : s0 + length].astype(np.float64)
            snr = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
            onset = rng.uniform(1 * fs, n - 5 * fs)
            if part == "distant":
                y, _ = add_distant_event(seg[None], KINDS[i % len(KINDS)], pre + onset, fs, snr, rng)
                out[part].append(y[0, pre:])
            elif part == "local":
                mag, dist = rng.uniform(0.5, 4.0), float(np.exp(rng.uniform(np.log(5.0), np.log(150.0))))
                out[part].append(synthesize_event_trace(seg[None], onset, mag, dist, rng, snr=snr, component_order="Z",
                                                        sampling_rate=fs)[0])
            else:
                out[part].append(seg)
    return {k: np.stack(v) for k, v in out.items()}


def probabilities(ckpt, z: np.ndarray) -> np.ndarray:
    """The checkpoint's earthquake probability for vertical windows [m, N] (other components zero)."""
    import torch

    from quakemon.pipeline.adapter import WaveformDataAdapter
    from quakemon.training.finetune import _z_only
    from quakemon.training.train import adapter_tensors, predict_proba

    x, _ = adapter_tensors(WaveformDataAdapter.from_contract(ckpt.contract, _z_only(z, ckpt.contract), [0] * len(z)))
    return predict_proba(ckpt.model, x, torch.device("cpu"))[:, ckpt.labels.index("earthquake")].numpy()


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(2)
    from quakemon.base.logs import configure_logging
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.training.finetune import phase_surrogates

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None, help="checkpoint (repeatable; default: bundled)")
    parser.add_argument("--n-per-part", type=int, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    ckpts = [load_checkpoint(resolve_checkpoint(m)) for m in (args.model or [None])]
    parts = windows(ckpts[0].contract, args.n_per_part)
    surr = {k: phase_surrogates(v[:, None], np.random.default_rng(SEED + 1))[:, 0] for k, v in parts.items()}
    report: dict = {"seed": SEED, "n_per_part": args.n_per_part, "models": {}}
    print("| model | part | original: p >= 0.5 / p >= 0.7 / median p | phase-randomised: p >= 0.5 / p >= 0.7 / "
          "median p |\n|---|---|---:|---:|")
    for ckpt, path in zip(ckpts, args.model or ["bundled"], strict=True):
        rows = {}
        for part in parts:
            row = {}
            for kind, z in (("original", parts[part]), ("surrogate", surr[part])):
                p = probabilities(ckpt, z)
                row[kind] = {"p_ge_0.5": float((p >= 0.5).mean()), "p_ge_0.7": float((p >= 0.7).mean()),
                             "median_p": float(np.median(p))}
            rows[part] = row
            o, s = row["original"], row["surrogate"]
            print(f"| {ckpt.sha256[:8]} | {part} | {o['p_ge_0.5']:.0%} / {o['p_ge_0.7']:.0%} / {o['median_p']:.3f} "
                  f"| {s['p_ge_0.5']:.0%} / {s['p_ge_0.7']:.0%} / {s['median_p']:.3f} |")
        report["models"][Path(str(path)).name] = {"sha256": ckpt.sha256, "parts": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
