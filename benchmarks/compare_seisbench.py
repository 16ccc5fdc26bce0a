"""Peer comparison: CPU-seconds per station-hour of SeisBench `annotate` (PhaseNet, EQTransformer) and quakemon's
replay path, on the same archive, in one run.

    .venv/bin/python benchmarks/compare_seisbench.py [--stations 4] [--seconds 300] [--repeat 3] [--threads 1,2]
        [--strides 1,2,5,10] [--screen 4:0.1 ...] [--noise-day UV10 [--hours-apart 4]] [--screen-net FILE]
        [--skip-eqt] [--skip-full-stride] [--json FILE]

Needs the optional extra `seisbench` (nothing is downloaded: both SeisBench models get random weights, which do
not change their cost). Everything runs in this process, one after the other, for each torch thread count of
--threads, on the same MiniSEED archive: by default synthetic (`quakemon.tools.bench_common.write_synthetic_archive`:
3-component 100 Hz stations, 512-byte STEIM2 records); with --noise-day, real noise (`write_noise_archive`:
--stations stretches of --seconds of that msnoise day, `quakemon.data.noise_days`, --hours-apart hours apart from
06:00 UTC, each its own station, vertical only; every program fills the missing horizontal components with zeros,
as it does by default: SeisBench `annotate` with strict=False, quakemon's windowing for a station without N and E):

- SeisBench PhaseNet and EQTransformer `annotate` at their documented default overlap (the class's
  `_annotate_args["overlap"]`: 1500 of PhaseNet's 3001 samples, 3000 of EQTransformer's 6000 in SeisBench 0.12),
  and at the stride of quakemon's first --strides entry (overlap = in_samples - stride); batch size: SeisBench's
  default (256);
- quakemon's replay (`quakemon.tools.bench_replay`, what `quakemon replay` runs) at each stride of --strides,
  every window forwarded;
- with --skip-full-stride, neither SeisBench at quakemon's stride nor quakemon with every window forwarded (the
  costly rows, for large archives where only the default-overlap and cascade rows are wanted);
- with --screen EVERY:THRESHOLD, and only when `DetectionRunner` takes `screen_every` / `screen_threshold`
  (screen and refine: a quiet station's windows forwarded one in EVERY), quakemon at the first stride so screened;
- with --screen-net FILE (repeatable), quakemon's cascade screen at the first stride (`screen_net`: the screen
  net on every window, the detector on those it forwards; the screen must be distilled from the detector
  measured, the bundled model). Outside the timing, one replay with and one without it count the windows
  forwarded and compare the detections.

Timed for each: reading/decoding the MiniSEED plus everything up to the model outputs (SeisBench: `obspy.read` +
`annotate`; quakemon: `ArchiveSource` + windows + preprocessing + HybridViT + trigger and picks). Model
construction and loading are outside the timing. The figure is process CPU time (all threads, user + system)
per station-hour of data, the median over --repeat runs: what a host pays for the work, and far steadier on a
shared machine than wall time (station-hours per second of wall time is printed too, best of the runs).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SAMPLING_RATE = 100.0


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Row:
    """One configuration's runs: CPU seconds and wall seconds of each."""

    name: str
    stride_s: float
    cpu_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    note: str = ""
    sections_cpu_s: list[dict[str, float]] = field(default_factory=list)  # quakemon: `bench_replay`'s sections

    def cpu_per_station_hour(self, station_hours: float) -> float:
        return statistics.median(self.cpu_s) / station_hours

    def station_hours_per_s(self, station_hours: float) -> float:
        return station_hours / min(self.wall_s)


def write_noise_archive(directory: str | os.PathLike, day: str, n_stations: int, seconds: float,
                        first_hour: float = 6.0, hours_apart: float = 4.0) -> list[Path]:
    """MiniSEED files (512-byte STEIM2, vertical only, as the day is recorded) of `n_stations` stretches of
    `seconds` of the msnoise noise day `day`, stretch i starting first_hour + i * hours_apart into the day, each
    written as its own station (the day's station code with A, B, ... Z, then AA, AB, ... in place of its last
    character), all relabelled to start at the first stretch's start. Returns the files."""
    from quakemon.data.noise_days import load_day

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (tr,) = [t for t in load_day(day) if t.stats.endtime - t.stats.starttime > 20 * 3600]  # the day's one trace
    t0 = tr.stats.starttime + first_hour * 3600
    files = []
    for i in range(n_stations):
        a = t0 + i * hours_apart * 3600
        if a + seconds > tr.stats.endtime:
            raise ValueError(f"{day}: stretch {i} ({i * hours_apart + first_hour:g} h + {seconds:g} s) is past the day")
        cut = tr.slice(a, a + seconds - 1.0 / tr.stats.sampling_rate).copy()
        cut.stats.station = tr.stats.station[:-1] + station_suffix(i)
        cut.stats.starttime = t0
        cut.data = cut.data.astype(np.int32)
        path = out / f"{cut.id}.mseed"
        cut.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
        files.append(path)
    return files


def station_suffix(i: int) -> str:
    """A, B, ... Z for i = 0 ... 25, then AA, AB, ... (station codes are letters and digits)."""
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("A") + r) + letters
    return letters


def cascade_check(files: list[Path], ckpt_path: Path, screen_net: str, stride: float) -> dict[str, Any]:
    """Untimed: one replay with the cascade and one without; windows forwarded, detections and whether they are
    the same (bodies without the volatile fields)."""
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import replay

    ckpt = load_checkpoint(ckpt_path)
    runs = {name: replay([str(f) for f in files], ckpt, stride_s=stride, progress=False, screen_every=1, **kw)
            for name, kw in (("full", {}), ("cascade", {"screen_net": screen_net}))}
    volatile = ("seq", "topic_seq", "epoch", "latency_s")
    bodies = {k: [{f: v for f, v in b.items() if f not in volatile} for b in r.detections] for k, r in runs.items()}
    stats = runs["cascade"].stats
    return {"windows": runs["cascade"].windows, "forwarded": int(stats.get("forwarded", 0)),
            "screened_out": int(stats.get("screened_out", 0)),
            "forwarded_share": stats.get("forwarded", 0) / max(1, runs["cascade"].windows),
            "detections_full": len(bodies["full"]), "detections_cascade": len(bodies["cascade"]),
            "detections_identical": bodies["full"] == bodies["cascade"]}


def default_stride_samples(model: Any) -> int:
    """in_samples - the class's default overlap (a fraction of the window below 1, else samples), as `annotate`."""
    overlap = model._annotate_args["overlap"][1]
    overlap = int(overlap * model.in_samples) if overlap < 1 else int(overlap)
    return model.in_samples - overlap


def time_seisbench(model: Any, files: list[Path], overlap: int | None) -> tuple[float, float]:
    """(wall s, CPU s) of obspy.read + annotate over all files; overlap None: annotate's default."""
    import obspy

    kw = {} if overlap is None else {"overlap": overlap}
    start, cpu = time.perf_counter(), process_cpu_s()
    stream = obspy.Stream()
    for f in files:
        stream += obspy.read(str(f))
    model.annotate(stream, **kw)
    return time.perf_counter() - start, process_cpu_s() - cpu


def parse_screens(texts: list[str]) -> list[tuple[int, float]]:
    out = []
    for text in texts:
        try:
            every, threshold = text.split(":")
            out.append((int(every), float(threshold)))
        except ValueError:
            raise SystemExit(f"--screen: expected EVERY:THRESHOLD like 4:0.1, got {text!r}") from None
    return out


def runner_keywords() -> set[str]:
    from quakemon.pipeline.runner import DetectionRunner

    return set(inspect.signature(DetectionRunner).parameters)


def replay_keywords(options: dict[str, Any]) -> dict[str, Any]:
    """`bench_replay` keywords for these `DetectionRunner` options: those `bench_replay` names itself go to it
    directly, the rest through its `runner_options`."""
    from quakemon.tools.bench_replay import bench_replay

    own = set(inspect.signature(bench_replay).parameters)
    direct = {k: v for k, v in options.items() if k in own}
    rest = {k: v for k, v in options.items() if k not in own}
    return {**direct, "runner_options": rest} if rest else direct


def run_threads(threads: int, files: list[Path], args: argparse.Namespace, station_hours: float,
                screens: list[tuple[int, float]]) -> list[Row]:
    """Every configuration, --repeat times in turn, at `threads` torch threads."""
    import seisbench.models as sbm
    import torch

    from quakemon.tools.bench_common import bench_checkpoint
    from quakemon.tools.bench_replay import bench_replay

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {"PhaseNet": sbm.PhaseNet().eval()}
    if not args.skip_eqt:
        models["EQTransformer"] = sbm.EQTransformer().eval()
    ckpt = bench_checkpoint(Path(args.workdir) / "random.safetensors")
    keywords = runner_keywords()
    screened = {"screen_every", "screen_threshold"} <= keywords
    full = {"screen_every": 1} if screened else {}  # every window forwarded, whatever the runner's default
    stride0 = args.strides[0]
    rows: list[tuple[Row, Any]] = []
    for name, model in models.items():
        default = default_stride_samples(model)
        rows.append((Row(f"SeisBench {name}, default overlap", default / SAMPLING_RATE,
                         note=f"overlap {model.in_samples - default} of {model.in_samples} samples"), (model, None)))
        step = round(stride0 * SAMPLING_RATE)
        if args.skip_full_stride:
            continue
        rows.append((Row(f"SeisBench {name}, quakemon's stride", stride0,
                         note=f"overlap {model.in_samples - step} of {model.in_samples} samples"),
                     (model, model.in_samples - step)))
    for stride in [] if args.skip_full_stride else args.strides:
        rows.append((Row("quakemon replay", stride), ("replay", stride, full)))
    for screen_net in args.screen_net:
        rows.append((Row(f"quakemon cascade, {Path(screen_net).name}", stride0, note="screen_net"),
                     ("replay", stride0, {"screen_every": 1, "screen_net": screen_net})))
    for every, threshold in screens:
        if screened:
            rows.append((Row(f"quakemon replay, screen {every}:{threshold:g}", stride0,
                             note=f"screen_every={every}, screen_threshold={threshold:g}"),
                         ("replay", stride0, {"screen_every": every, "screen_threshold": threshold})))
        else:
            print(f"  (--screen {every}:{threshold:g} skipped: DetectionRunner takes no screen_every / "
                  "screen_threshold here)", file=sys.stderr)
    for i in range(args.repeat):
        for row, how in rows:
            print(f"  ... {threads} thread(s), run {i + 1} of {args.repeat}: {row.name} at {row.stride_s:g} s",
                  file=sys.stderr, flush=True)
            if how[0] == "replay":
                _, stride, options = how
                rep = bench_replay(files, ckpt, stride_s=stride, batch_size=args.batch,
                                   station_seconds=station_hours * 3600, **replay_keywords(options))
                row.cpu_s.append(rep["cpu_seconds"])
                row.wall_s.append(rep["seconds"])
                row.sections_cpu_s.append(rep["sections_cpu_s"])
                row.note = row.note or f"{rep['windows']} windows, {rep['precision']}"
            else:
                model, overlap = how
                wall, cpu = time_seisbench(model, files, overlap)
                row.wall_s.append(wall)
                row.cpu_s.append(cpu)
    return [row for row, _ in rows]


def format_table(threads: int, rows: list[Row], station_hours: float) -> list[str]:
    ref = next(r for r in rows if r.name.startswith("SeisBench PhaseNet, default"))
    ref_cost = ref.cpu_per_station_hour(station_hours)
    lines = [f"{threads} torch thread(s)",
             f"  {'':<44} {'stride s':>8}  {'CPU-s per station-hour':>22}  {'this / PhaseNet':>15}  "
             f"{'PhaseNet / this':>15}  {'station-hours/s':>15}  note"]
    for row in rows:
        cost = row.cpu_per_station_hour(station_hours)
        lines.append(f"  {row.name:<44} {row.stride_s:8g}  {cost:22.2f}  {cost / ref_cost:15.3f}  "
                     f"{ref_cost / cost:15.2f}  {row.station_hours_per_s(station_hours):15.3f}  {row.note}")
    same = next((r for r in rows if r.name.startswith("SeisBench PhaseNet, quakemon")), None)
    own = next((r for r in rows if r.name == "quakemon replay"), None)
    cascades = [r for r in rows if r.name.startswith("quakemon cascade")]
    if same is not None and own is not None:
        a, b = own.cpu_per_station_hour(station_hours), same.cpu_per_station_hour(station_hours)
        lines.append(f"  at the same {own.stride_s:g} s stride: quakemon / PhaseNet = {a / b:.3f}, "
                     f"PhaseNet / quakemon = {b / a:.2f}")
    for cascade in cascades:
        c = cascade.cpu_per_station_hour(station_hours)
        lines.append(f"  {cascade.name} at {cascade.stride_s:g} s against PhaseNet at its default overlap: "
                     f"cascade / PhaseNet = {c / ref_cost:.3f}, PhaseNet / cascade = {ref_cost / c:.2f}")
    lines.append(f"  (\"PhaseNet\": SeisBench PhaseNet at its default overlap; CPU: median of {len(ref.cpu_s)} runs; "
                 "station-hours/s: best run)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stations", type=int, default=4)
    p.add_argument("--seconds", type=float, default=300.0, help="archive length per station")
    p.add_argument("--strides", default="1,2,5,10", help="quakemon's window strides, s (the first: SeisBench's too)")
    p.add_argument("--batch", type=int, default=256, help="quakemon's pipeline batch (`quakemon replay`'s)")
    p.add_argument("--threads", default="1,2", help="torch thread counts, each a table")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--screen", action="append", default=[], metavar="EVERY:THRESHOLD",
                   help="also quakemon screened so (if the runner supports it); repeatable")
    p.add_argument("--noise-day", choices=("UV05", "UV10"), default=None,
                   help="archive: stretches of this real noise day (vertical only) instead of synthetic data")
    p.add_argument("--screen-net", action="append", default=[], metavar="FILE",
                   help="also quakemon's cascade with this screen checkpoint; repeatable")
    p.add_argument("--hours-apart", type=float, default=4.0,
                   help="--noise-day: hours between the stretches' starts (4 fits 4 stations of 600 s in the day)")
    p.add_argument("--skip-eqt", action="store_true", help="EQTransformer is slow on a CPU")
    p.add_argument("--skip-full-stride", action="store_true",
                   help="leave out SeisBench at quakemon's stride and quakemon with every window forwarded")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    try:
        args.strides = [float(s) for s in args.strides.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise SystemExit("--strides and --threads take comma-separated numbers") from None
    screens = parse_screens(args.screen)
    try:
        import seisbench
    except ImportError:
        print("seisbench is not installed: pip install seisbench (the optional extra quakemon[bench])", file=sys.stderr)
        return 2
    import torch

    from quakemon.base.logs import configure_logging
    from quakemon.tools.bench_common import write_synthetic_archive

    configure_logging("warning", "console")
    args.workdir = tempfile.mkdtemp(prefix="qm-sb-")
    if args.noise_day:
        files = write_noise_archive(Path(args.workdir) / "archive", args.noise_day, args.stations, args.seconds,
                                    hours_apart=args.hours_apart)
    else:
        files = write_synthetic_archive(Path(args.workdir) / "archive", args.stations, args.seconds)
    station_hours = args.stations * args.seconds / 3600.0
    info = {"seisbench": seisbench.__version__, "torch": torch.__version__, "stations": args.stations,
            "seconds": args.seconds, "station_hours": station_hours, "batch": args.batch,
            "archive": (f"noise day {args.noise_day}, vertical only, {args.hours_apart:g} h apart" if args.noise_day
                        else "synthetic, 3 components"),
            "loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}
    tables = {t: run_threads(t, files, args, station_hours, screens) for t in threads}
    info["loadavg_after"] = os.getloadavg()
    if args.screen_net:
        from quakemon.tools.bench_common import bench_checkpoint

        ckpt = bench_checkpoint(Path(args.workdir) / "random.safetensors")
        info["cascade_check"] = {s: cascade_check(files, ckpt, s, args.strides[0]) for s in args.screen_net}
        for s, check in info["cascade_check"].items():
            print(f"cascade with {s} (untimed check): {json.dumps(check)}")
    print(f"{station_hours:.3f} station-hours ({args.stations} stations x {args.seconds:g} s, {info['archive']}), "
          f"seisbench {seisbench.__version__}, torch {torch.__version__}, {info['cpus']} CPUs, load average "
          f"{info['loadavg_before']} -> {info['loadavg_after']}")
    for t, rows in tables.items():
        print("\n".join(format_table(t, rows, station_hours)))
    if args.json:
        out = {"info": info, "threads": {str(t): [vars(r) for r in rows] for t, rows in tables.items()}}
        Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
