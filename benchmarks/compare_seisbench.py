"""Peer comparison: the same archive through SeisBench `annotate` (PhaseNet, EQTransformer) and quakemon's replay path.

    .venv/bin/python benchmarks/compare_seisbench.py [--stations 4] [--seconds 600] [--stride-s 1] [--threads 1]

Needs the optional extra `seisbench` (nothing is downloaded: both SeisBench models get random weights, which do
not change their cost). All three run in this process, one after the other, with the same torch thread count,
batch size and window stride (SeisBench: overlap = in_samples - stride), on the same synthetic MiniSEED archive
(`quakemon.tools.bench_common.write_synthetic_archive`: 3-component 100 Hz stations, 512-byte STEIM2 records).
Timed for each: reading/decoding the MiniSEED plus everything up to the model outputs (SeisBench: `obspy.read`
+ `annotate`; quakemon: `ArchiveSource` + windows + preprocessing + HybridViT + trigger, as `quakemon replay` runs
it). Model construction/loading is outside the timing for all three. Prints station-hours of data per second and ratios;
the machine may be shared, so run the comparison more than once (--repeat) and read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def time_seisbench(model, files: list[Path], stride_samples: int, batch_size: int) -> tuple[float, int]:
    """(seconds, output samples) of obspy.read + annotate over all files, with overlap = in_samples - stride."""
    import obspy

    overlap = model.in_samples - stride_samples
    start = time.perf_counter()
    stream = obspy.Stream()
    for f in files:
        stream += obspy.read(str(f))
    out = model.annotate(stream, overlap=overlap, batch_size=batch_size)
    return time.perf_counter() - start, sum(tr.stats.npts for tr in out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stations", type=int, default=4)
    p.add_argument("--seconds", type=float, default=600.0, help="archive length per station")
    p.add_argument("--stride-s", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads for all three (0 = torch's default)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--skip-eqt", action="store_true", help="EQTransformer is slow on a CPU")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    try:
        import seisbench
        import seisbench.models as sbm
    except ImportError:
        print("seisbench is not installed: pip install seisbench (the optional extra quakemon[bench])", file=sys.stderr)
        return 2
    import torch

    from quakemon.base.logs import configure_logging
    from quakemon.tools.bench_common import bench_checkpoint, write_synthetic_archive
    from quakemon.tools.bench_replay import bench_replay

    configure_logging("warning", "console")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="qm-sb-"))
    files = write_synthetic_archive(tmp, args.stations, args.seconds)
    station_hours = args.stations * args.seconds / 3600.0
    stride_samples = round(args.stride_s * 100)
    torch.manual_seed(0)
    models = {"seisbench PhaseNet": sbm.PhaseNet().eval()}
    if not args.skip_eqt:
        models["seisbench EQTransformer"] = sbm.EQTransformer().eval()
    ckpt = bench_checkpoint(tmp / "random.safetensors")
    results: dict[str, list[float]] = {name: [] for name in ["quakemon replay", *models]}
    info = {"seisbench": seisbench.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "stations": args.stations, "seconds": args.seconds, "station_hours": station_hours,
            "stride_s": args.stride_s, "batch_size": args.batch, "loadavg_before": os.getloadavg()}
    for _ in range(args.repeat):
        rep = bench_replay(files, ckpt, stride_s=args.stride_s, batch_size=args.batch,
                           station_seconds=station_hours * 3600)
        results["quakemon replay"].append(rep["seconds"])
        info["quakemon_windows"] = rep["windows"]
        info["quakemon_precision"] = rep["precision"]
        for name, model in models.items():
            seconds, _ = time_seisbench(model, files, stride_samples, args.batch)
            results[name].append(seconds)
    info["loadavg_after"] = os.getloadavg()
    print(f"{station_hours:.2f} station-hours ({args.stations} stations x {args.seconds:g} s), "
          f"stride {args.stride_s:g} s (quakemon: {info['quakemon_windows']} windows), batch {args.batch}, "
          f"{torch.get_num_threads()} torch thread(s), seisbench {seisbench.__version__}, quakemon precision "
          f"{info['quakemon_precision']}, load average {info['loadavg_before']} -> {info['loadavg_after']}")
    best = {name: min(v) for name, v in results.items()}
    qm = station_hours / best["quakemon replay"]
    for name, seconds in best.items():
        rate = station_hours / seconds
        runs = ", ".join(f"{s:.2f}" for s in results[name])
        print(f"  {name:<26} {rate:8.3f} station-hours/s  (best of {len(results[name])}: {seconds:.2f} s; runs {runs})"
              f"  quakemon / this = {qm / rate:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "seconds": results}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
