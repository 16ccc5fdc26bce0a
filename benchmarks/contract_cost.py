"""Benchmark: what a model's input contract costs on the CPU, per window, beside the model's forward.

    .venv/bin/python benchmarks/contract_cost.py --model A.safetensors --model B.safetensors [--batch 256]
        [--repeats 7] [--threads 2] [--precision fp32]

For each checkpoint, on the same batch of 20 s three-component windows of real noise (UV10's vertical, the
msnoise day in the user cache, with two more stretches of it as the horizontals): `preprocess_arrays` with the
checkpoint's own contract (the compiled one-pass kernel for the plain contract; scipy band-pass and numpy passes for
a band-passed one), the model's forward on the result, and both, as process CPU milliseconds per window. Runs
alternate between the checkpoints so that load from other processes hits all alike; the median of the repeats is
reported, with each checkpoint's total over the first one's. Not collected by pytest (no test_ names).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def windows(batch: int, n: int) -> np.ndarray:
    from quakemon.data.noise_days import load_day

    z = load_day("UV10")[0].data.astype(np.float64)
    rng = np.random.default_rng(5)
    starts = rng.integers(0, z.size - n, size=(batch, 3))
    return np.stack([[z[s : s + n] for s in row] for row in starts]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    import torch

    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.engine import InferenceEngine
    from quakemon.pipeline.transforms import preprocess_arrays, set_cpu_threads

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    set_cpu_threads(args.threads)
    ckpts = [load_checkpoint(m) for m in args.model]
    x = windows(args.batch, ckpts[0].contract.window_samples)
    engines = [InferenceEngine(c, device="cpu", precision=args.precision) for c in ckpts]
    times: dict[str, dict[str, list[float]]] = {c.sha256[:8]: {"pre": [], "fwd": []} for c in ckpts}
    for r in range(args.repeats + 1):  # the first round warms up
        for c, eng in zip(ckpts, engines, strict=True):
            t0 = time.process_time()
            spectra = preprocess_arrays(x, c.contract).spectrograms
            t1 = time.process_time()
            eng.predict(spectra)
            t2 = time.process_time()
            if r:
                times[c.sha256[:8]]["pre"].append((t1 - t0) * 1e3 / args.batch)
                times[c.sha256[:8]]["fwd"].append((t2 - t1) * 1e3 / args.batch)
    rows, first = [], None
    for c in ckpts:
        t = times[c.sha256[:8]]
        pre, fwd = float(np.median(t["pre"])), float(np.median(t["fwd"]))
        first = first or pre + fwd
        rows.append({"sha256": c.sha256[:8], "transforms": ",".join(c.contract.transforms),
                     "preprocess_ms": pre, "forward_ms": fwd, "total_ms": pre + fwd,
                     "total_over_first": (pre + fwd) / first})
    print("| checkpoint | transforms | preprocess CPU ms/window | forward CPU ms/window | total | / first |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sha256']} | {r['transforms']} | {r['preprocess_ms']:.3f} | {r['forward_ms']:.3f} | "
              f"{r['total_ms']:.3f} | {r['total_over_first']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
