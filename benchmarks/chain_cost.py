"""The per-window chain's CPU cost, measured: what a replay costs besides the model, and where it goes
(docs/performance.md, "Where the per-window chain's time goes").

    .venv/bin/python benchmarks/chain_cost.py --repeats 3 --json out.json
    .venv/bin/python benchmarks/chain_cost.py --repeats 3 --baseline /path/to/other/checkout --json out.json

Data: `benchmarks/screen.py`'s 4 station-hour archive (two hours of each msnoise noise day, vertical only, 100 Hz,
two synthetic distant events per hour), written once to a temporary folder and read with ObsPy.

Each measurement runs in a fresh subprocess, given the checkout whose `quakemon` it imports (this one, and with
`--baseline` another checkout, alternating, so both see the same load):

- *replay*: `DetectionRunner` (every window forwarded, two single-threaded forward workers, as `quakemon replay`)
  over the traces, process CPU time of all threads: `chain`, with the model's `infer` replaced by zeros (decoding
  excluded: the traces are read before; windowing, centring, z-score + STFT, triggers, picks and the runner's
  bookkeeping), and `model`, the full replay.
- *parts* (one thread, no runner): the same windows cut by `StationWindower` from the interleaved pieces, then in
  batches of 256 `stack_windows` (centring to float32), `preprocess_windows` (z-score + STFT and the metadata) and
  `DetectionStage.decide` with zero probabilities (triggers, picked components, bodies); plus the MiniSEED reading.

Medians over `--repeats`, per window and per station-hour. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _traces(folder: str) -> list:
    from obspy import read

    return [tr for p in sorted(Path(folder).glob("*.mseed")) for tr in read(str(p))]


def measure_replay(folder: str, mode: str) -> dict[str, Any]:
    """One replay of the archive in this process: {"cpu_s", "windows", "detections"}."""
    import torch

    torch.set_num_threads(2)
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.runner import DetectionRunner, Inference

    ckpt = load_checkpoint(resolve_checkpoint(None))
    traces = _traces(folder)
    inference = Inference(ckpt, device="cpu", precision="fp32")
    runner = DetectionRunner(ckpt, inference=inference, screen_every=1)
    if mode == "chain":
        runner.stage.infer = lambda spectra, metas: np.zeros((len(metas), len(ckpt.labels)), np.float32)
    t0 = time.process_time()
    bodies = list(runner.add_stream(traces))
    bodies += runner.finish()
    cpu = time.process_time() - t0
    out = {"cpu_s": cpu, "windows": runner.windows, "detections": len(bodies)}
    runner.close()
    inference.close()
    return out


def measure_parts(folder: str) -> dict[str, Any]:
    """CPU seconds of each part of the chain on one thread, in this process."""
    import torch

    torch.set_num_threads(1)
    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.detect import DetectionStage, preprocess_windows, stack_windows, warm_up_preprocess
    from quakemon.pipeline.engine import InferenceEngine
    from quakemon.pipeline.runner import interleaved
    from quakemon.pipeline.settings import TRIGGER
    from quakemon.pipeline.transforms import set_cpu_threads
    from quakemon.pipeline.windowing import StationWindower

    set_cpu_threads(1)
    ckpt = load_checkpoint(resolve_checkpoint(None))
    warm_up_preprocess(ckpt.contract)
    clock = time.process_time
    t = clock()
    traces = _traces(folder)
    parts = {"read": clock() - t}
    windower = StationWindower(ckpt.contract, 1.0)
    t = clock()
    windows = []
    for piece in interleaved(traces):
        windows += windower.add_samples(piece)
    windows += windower.flush()
    parts["window"] = clock() - t
    engine = InferenceEngine(ckpt, device="cpu", precision="fp32", batch_size=64)
    label = TRIGGER.label if TRIGGER.label in ckpt.labels else None
    stage = DetectionStage(engine, TRIGGER.on, TRIGGER.off, TRIGGER.min_duration_s, label)
    zeros = np.zeros((256, len(ckpt.labels)), np.float32)
    parts.update(stack=0.0, preprocess=0.0, decide=0.0)
    center = "ZSCORE" in ckpt.contract.transforms
    for i in range(0, len(windows), 256):
        t = clock()
        data, metas = stack_windows(windows[i : i + 256], center=center)
        t1 = clock()
        spectra, metas = preprocess_windows(data, metas, ckpt.contract)
        t2 = clock()
        stage.decide(metas, zeros[: len(metas)], data, spectra)
        t3 = clock()
        parts["stack"] += t1 - t
        parts["preprocess"] += t2 - t1
        parts["decide"] += t3 - t2
    return {"parts_s": parts, "windows": len(windows)}


def _worker(args: argparse.Namespace) -> int:
    from quakemon.base.logs import configure_logging

    configure_logging("warning")
    result = measure_parts(args.folder) if args.worker == "parts" else measure_replay(args.folder, args.worker)
    print(json.dumps(result))
    return 0


def _run(checkout: str, what: str, folder: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": checkout}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", what, "--folder", folder],
                          cwd=checkout, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{what} in {checkout} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="another checkout, measured alternately with this one")
    ap.add_argument("--skip-model", action="store_true", help="leave out the full replay (model included)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, choices=("chain", "model", "parts"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sys.path.insert(0, str(HERE))
    import screen as kscreen  # benchmarks/screen.py: the cost archive

    trees = {"this": str(HERE.parent)}
    if args.baseline:
        trees["baseline"] = str(Path(args.baseline).resolve())
    kinds = ["chain", "parts"] + ([] if args.skip_model else ["model"])
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {k: [] for k in kinds} for t in trees}
    with tempfile.TemporaryDirectory() as folder:
        _, station_hours = kscreen.cost_archive(Path(folder))
        for r in range(args.repeats):
            for kind in kinds:
                for tree, checkout in (trees.items() if r % 2 == 0 else reversed(trees.items())):
                    res = _run(checkout, kind, folder)
                    runs[tree][kind].append(res)
                    print(tree, kind, json.dumps(res), flush=True)
    report: dict[str, Any] = {"station_hours": station_hours, "trees": trees, "runs": runs, "median": {}}
    for tree in trees:
        med: dict[str, Any] = {}
        for kind in ("chain", "model"):
            if kind in runs[tree]:
                cpu = [x["cpu_s"] for x in runs[tree][kind]]
                windows = runs[tree][kind][0]["windows"]
                med[kind] = {"cpu_s": float(np.median(cpu)), "runs": cpu, "windows": windows,
                             "us_per_window": 1e6 * float(np.median(cpu)) / windows,
                             "cpu_s_per_station_hour": float(np.median(cpu)) / station_hours,
                             "detections": [x["detections"] for x in runs[tree][kind]]}
        windows = runs[tree]["parts"][0]["windows"]
        med["parts_us_per_window"] = {
            k: 1e6 * float(np.median([x["parts_s"][k] for x in runs[tree]["parts"]])) / windows
            for k in runs[tree]["parts"][0]["parts_s"]}
        report["median"][tree] = med
    print(json.dumps(report["median"], indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
