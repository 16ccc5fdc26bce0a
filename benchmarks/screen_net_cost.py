"""Per-window CPU cost of ScreenNet architectures (`quakemon.models.screen_net`), the cascade's screen.

    .venv/bin/python benchmarks/screen_net_cost.py [--repeats 5] [--json out.json]

On one batch of 256 real spectrograms (the first station of `benchmarks/screen.py`'s cost archive: UV05 noise,
vertical only, so two of the three components are zero, as on every single-component station), at one torch
thread: each architecture's forward (`ScreenNet.__call__`, random weights: the cost does not depend on them) run
three ways, eager, traced and frozen (`torch.jit.trace` + `torch.jit.freeze`) and with the weights and input in
channels_last; plus the log of the spectrogram alone, every component and the components' max. Process CPU time;
every variant is timed once per round (21 calls, the median), the rounds alternate the variants, and the figure
is the median over --repeats rounds, in microseconds per window. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screen as kscreen  # noqa: E402  (benchmarks/screen.py: its cost archive)

ARCHITECTURES = {  # name: ScreenArgs keywords
    "16,32,48 every component, no pool (format 1)": {"widths": (16, 32, 48), "pool": 1, "components": "all"},
    "16,32,48 every component, pool 2": {"widths": (16, 32, 48), "pool": 2, "components": "all"},
    "16,32,48 max, no pool": {"widths": (16, 32, 48), "pool": 1, "components": "max"},
    "16,32,48 max, pool 2": {"widths": (16, 32, 48), "pool": 2, "components": "max"},
    "16,24,32 max, pool 2": {"widths": (16, 24, 32), "pool": 2, "components": "max"},
    "8,16,24 max, pool 2": {"widths": (8, 16, 24), "pool": 2, "components": "max"},
}


def spectra_batch(n: int = 256) -> np.ndarray:
    from obspy import read

    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.pipeline.detect import preprocess_windows, stack_windows
    from quakemon.pipeline.windowing import StationWindower

    ckpt = load_checkpoint(resolve_checkpoint(None))
    with tempfile.TemporaryDirectory() as tmp:
        paths, _ = kscreen.cost_archive(Path(tmp), hours_per_day=1)
        traces = read(paths[0])
    windows = list(StationWindower(ckpt.contract, 1.0).add_traces(traces))[:n]
    data, metas = stack_windows(windows)
    spectra, _ = preprocess_windows(data, metas, ckpt.contract)
    return np.ascontiguousarray(spectra, np.float32)


def per_window_us(fn, n: int, calls: int = 21) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e6 * float(np.median(times)) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from quakemon.base.logs import configure_logging
    from quakemon.models.screen_net import ScreenArgs, ScreenNet

    configure_logging("warning")
    torch.set_num_threads(1)
    x = torch.from_numpy(spectra_batch())
    n = len(x)
    torch.manual_seed(0)
    calls: dict[str, Any] = {"log, every component": lambda: torch.log(x + 1e-4),
                             "log of the components' max": lambda: torch.log(x.amax(1, keepdim=True) + 1e-4)}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, arch in ARCHITECTURES.items():
            net = ScreenNet(ScreenArgs(x.shape[1], x.shape[2], x.shape[3], **arch)).eval()
            frozen = torch.jit.freeze(torch.jit.trace(net, x[:8]))
            last = ScreenNet(net.args).eval()
            last.load_state_dict(net.state_dict())
            last = last.to(memory_format=torch.channels_last)
            xl = x.contiguous(memory_format=torch.channels_last)
            calls[f"{name}: eager"] = lambda net=net: net(x)
            calls[f"{name}: traced + frozen"] = lambda frozen=frozen: frozen(x)
            calls[f"{name}: channels_last"] = lambda last=last, xl=xl: last(xl)
        rounds: dict[str, list[float]] = {k: [] for k in calls}
        for r in range(args.repeats):
            order = list(calls) if r % 2 == 0 else list(reversed(calls))
            for k in order:
                rounds[k].append(per_window_us(calls[k], n))
    report = {"batch": n, "threads": 1, "repeats": args.repeats,
              "us_per_window_median": {k: round(float(np.median(v)), 1) for k, v in rounds.items()},
              "us_per_window_rounds": {k: [round(t, 1) for t in v] for k, v in rounds.items()},
              "parameters": {name: sum(p.numel() for p in ScreenNet(ScreenArgs(**arch)).parameters())
                             for name, arch in ARCHITECTURES.items()}}
    for k, v in report["us_per_window_median"].items():
        print(f"{v:8.1f} us  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
