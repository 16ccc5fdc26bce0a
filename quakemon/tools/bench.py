"""`quakemon bench`: capacity and throughput on this machine, measured side by side in one run.

(a) roof    the bare HybridViT forward (inference_mode, the engine's precision and device), windows/s at each
            batch size; the best one is the roof. Measured before and after (b), since the machine may be shared.
(b) replay  archived MiniSEED through the replay path (`quakemon.pipeline.runner.DetectionRunner` on an `ArchiveSource`,
            exactly what `quakemon replay` runs, minus writing JSON Lines): MiniSEED decode, station buffers,
            windows, preprocessing, inference, trigger. windows/s, station-hours of data per second, the ratio
            to (a) at the replay's own forward batch, the CPU time outside the model forward, and where the time
            goes (wall and thread CPU time of sections around the runner's stages).
(c) live    N synthetic 3-component 100 Hz stations served by `quakemon serve` (`python -m
            quakemon.tools.serve --loop --retime-now`, a subprocess) at `speed` x real time into `quakemon
            run` (a subprocess, its own config), N growing until the daemon falls behind. Measured over a
            steady interval after the first windows: windows/s published by inference (heartbeat
            `windows_out`), drops, growth of the ingest lag, daemon CPU and memory (all its processes, from
            /proc), and latency. Latency: the daemon's own `latency_s` (the window's last sample reaching the
            ingest stage -> PUB send) of every published detection, plus the PUB -> subscriber hop measured on
            heartbeats (their `time` stamp vs. receipt). To publish many detections, the live model is the
            bench model with its head rescaled so that p(trigger label) spreads around 0.5 on these data, and
            trigger on = off = 0.5, min_duration = 0: every window that crosses 0.5 publishes a message. The
            compute per window is that of the unmodified model. With `live_screen_net` (`--live-screen-net`)
            it is the cascade as operators run it instead: the model unmodified, that screen net, the daemon's
            default trigger settings, and the stations' data chosen by `live_data` (synthetic, or real noise of
            the msnoise UV10 day: `bench_live.live_archive`); each step then also reports the windows forwarded
            to the model and the CPU of each stage and of the server.

Synthetic stations: white + microseismic noise with one synthetic local earthquake per station per minute
(`quakemon.data.synthetic.synthesize_event_trace`), int32 counts, 512-byte STEIM2 MiniSEED, one file per station.

Modules: `bench_common` (plan, archive, checkpoints), `bench_roof` (a), `bench_replay` (b), `bench_live` (c); this
one runs them in turn (`run_bench`), prints the table (`format_report`) and is `quakemon bench` (`bench_main`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from quakemon.tools.bench_common import (
    REPLAY_BATCH,
    BenchPlan,
    bench_checkpoint,
    machine_info,
    write_synthetic_archive,
)
from quakemon.tools.bench_live import bench_live
from quakemon.tools.bench_replay import bench_replay
from quakemon.tools.bench_roof import bench_roof_threads, default_threads, streams_config


def run_bench(plan: BenchPlan, workdir: Path | None = None,
              progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the parts of `plan`; returns the report (JSON-able).

    The live daemon runs with `plan.run_threads` torch threads per process (its stage processes get it through
    OMP_NUM_THREADS). The replay, one process alone, runs with `plan.replay_threads` (default: torch's, as
    `quakemon replay` does), `plan.replay_repeats` times, each between two roofs at its own thread count and
    forward batch; its ratio to the roof is the median over the repeats. The roof is measured at every thread count
    for the table.
    """
    import torch

    own = workdir is None
    tmp = Path(tempfile.mkdtemp(prefix="qmb-")) if own else Path(workdir)
    threads_before = torch.get_num_threads()
    threads = plan.run_threads
    replay_threads = plan.replay_threads or threads_before
    try:
        report: dict[str, Any] = {"plan": asdict(plan), "machine_before": machine_info()}
        ckpt = bench_checkpoint(tmp / "random.safetensors")
        report["checkpoint"] = str(ckpt)
        # the replay's inference: on the CPU one single-threaded worker per torch thread (DetectionRunner)
        from quakemon.pipeline.engine import pick_device

        on_cpu = pick_device(plan.device).type == "cpu"
        replay_config = streams_config(replay_threads) if on_cpu and replay_threads > 1 else str(replay_threads)
        if "roof" in plan.parts:
            progress("roof: bare model forward")
            sweep = [str(n) for n in sorted(set(plan.threads or default_threads()) | {threads, replay_threads})]
            if replay_config not in sweep:
                sweep.append(replay_config)
            roof = bench_roof_threads(ckpt, sweep, device=plan.device, precision=plan.precision,
                                      batch_sizes=plan.roof_batches, min_s=plan.roof_min_s)
            report["roof"] = roof
        replay_batch = plan.replay_batch or REPLAY_BATCH
        if "replay" in plan.parts:
            progress(f"replay: writing {plan.replay_stations} stations x {plan.replay_seconds:g} s")
            files = write_synthetic_archive(tmp / "replay", plan.replay_stations, plan.replay_seconds)
            torch.set_num_threads(replay_threads)
            # Around each replay: the roof at the replay's configuration and at the batch of its forwards (on the
            # CPU the runner cuts each pipeline batch into forwards of CPU_FORWARD_BATCH windows), so that the bare
            # forward is the very forward the replay runs. The sweep ran minutes earlier, and a shared machine's
            # speed drifts from one minute to the next. (The best of several batches would be a maximum over
            # noisy samples, biased upwards; the sweep's best, at any batch, gives `ratio_to_best_roof`.)
            forward_batch = replay_forward_batch(replay_batch, on_cpu)
            around_batches = [forward_batch]

            def roof_at_replay_setting() -> float:
                return bench_roof_threads(ckpt, [replay_config], device=plan.device, precision=plan.precision,
                                          batch_sizes=tuple(around_batches),
                                          min_s=plan.replay_roof_s)["best_windows_per_s"]

            if "roof" in report:  # before the first replay, then after each
                progress("roof: at the replay's setting, before the first replay")
                report["roof"]["replay_threads"] = {"threads": replay_config, "batch": forward_batch,
                                                    "batches": around_batches, "seconds_each": plan.replay_roof_s,
                                                    "windows_per_s_around": [roof_at_replay_setting()]}
            runs = []
            for i in range(max(1, plan.replay_repeats)):
                progress(f"replay: run {i + 1} of {plan.replay_repeats} ({replay_threads} torch threads, "
                         f"batch {replay_batch})")
                runs.append(bench_replay(files, ckpt, device=plan.device, precision=plan.precision,
                                         stride_s=plan.stride_s, batch_size=replay_batch, forward_batch=forward_batch))
                if "roof" in report:  # again, so that each replay's ratio uses the roofs measured around it
                    progress("roof: again, after the replay")
                    report["roof"]["replay_threads"]["windows_per_s_around"].append(roof_at_replay_setting())
            # the median run by windows/s is the one reported, with its sections
            order = sorted(range(len(runs)), key=lambda j: runs[j]["windows_per_s"])
            median = order[len(order) // 2]
            rep = {**runs[median], "torch_threads": replay_threads, "roof_config": replay_config, "repeats": len(runs),
                   "windows_per_s_runs": [r["windows_per_s"] for r in runs]}
            if "roof" in report:
                around = report["roof"]["replay_threads"]["windows_per_s_around"]
                ratios = [r["windows_per_s"] / float(np.mean(around[j : j + 2])) for j, r in enumerate(runs)]
                rep["ratio_to_roof_runs"] = ratios
                rep["ratio_to_roof"] = float(np.median(ratios))
                rep["ratio_to_best_roof"] = rep["windows_per_s"] / float(report["roof"]["best_windows_per_s"])
            rep["overhead_cpu_share_runs"] = [r["overhead_cpu_share"] for r in runs]
            rep["overhead_cpu_share"] = float(np.median(rep["overhead_cpu_share_runs"]))
            rep["outside_forward_cpu_s_runs"] = [r["outside_forward_cpu_seconds"] for r in runs]
            report["replay"] = rep
        torch.set_num_threads(threads)
        if "live" in plan.parts:
            report["live"] = bench_live(tmp / "live-archive", ckpt, plan, tmp / "live", progress,
                                        env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        report["machine_after"] = machine_info()
        return report
    finally:
        torch.set_num_threads(threads_before)
        if own:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)



def replay_forward_batch(batch: int, on_cpu: bool) -> int:
    """Windows per model forward of a replay with pipeline batches of `batch` (what `Inference` chooses)."""
    from quakemon.pipeline.engine import CPU_FORWARD_BATCH

    return min(batch, CPU_FORWARD_BATCH) if on_cpu else batch


def _config_text(config: Any) -> str:
    text = str(config)
    if "x" in text:
        streams, per_stream = text.split("x")
        each = "single-threaded" if per_stream == "1" else f"{per_stream}-thread"
        return f"{streams} {each} forwards at once"
    return f"{text} torch thread(s)"


def _f(v: Any, fmt: str = ".0f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = []
    m = report.get("machine_before", {})
    lines.append(f"quakemon bench: {m.get('cpus')} CPUs, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
                 f"load average before {m.get('loadavg')}, after {report.get('machine_after', {}).get('loadavg')}")
    lines.append(f"model: {report.get('checkpoint')}")
    roof = report.get("roof")
    if roof:
        per = ", ".join(f"{b}: {v:.0f}" for b, v in roof["windows_per_s"].items())
        lines.append(f"(a) roof  bare forward on {roof['device']} {roof['precision']} ({roof.get('graph', 'eager')} "
                     f"graph): best "
                     f"{roof['best_windows_per_s']:.0f} windows/s at batch {roof['best_batch']}, "
                     f"{_config_text(roof.get('config', roof['torch_threads']))}  [batch: windows/s  {per}]")
        for th, per_b in roof.get("by_threads", {}).items():
            lines.append(f"          {_config_text(th)}: " + ", ".join(f"{b}: {v:.0f}" for b, v in per_b.items()))
        run = roof.get("replay_threads")
        if run and len(run["windows_per_s_around"]) > 1:
            batches = " and ".join(str(b) for b in run.get("batches", [run["batch"]]))
            lines.append(f"          roof at {_config_text(run['threads'])} (the replay's setting), best of batch "
                         f"{batches}, before, between and after the replays: "
                         + " / ".join(f"{v:.0f}" for v in run["windows_per_s_around"]))
    rep = report.get("replay")
    if rep:
        lines.append(f"(b) replay  {rep['windows']} windows, {rep['station_hours']:.2f} station-hours in "
                     f"{rep['seconds']:.1f} s: {rep['windows_per_s']:.0f} windows/s, "
                     f"{rep['station_hours_per_s']:.2f} station-hours/s, "
                     f"ratio to roof {_f(rep.get('ratio_to_roof'), '.2f')} (to the best roof at any thread count "
                     f"{_f(rep.get('ratio_to_best_roof'), '.2f')})  ({rep.get('torch_threads')} torch threads, "
                     f"batch {rep['batch_size']}, {rep['precision']}"
                     + (f", inference on {rep.get('inference_workers')} worker thread(s) beside the rest: sections are "
                        "busy time summed over threads" if rep.get("overlap") else "") + ")")
        if rep.get("repeats", 1) > 1:
            lines.append(f"          {rep['repeats']} runs (median shown): windows/s "
                         + ", ".join(f"{v:.0f}" for v in rep["windows_per_s_runs"]) + "; ratio to the roofs around "
                         "each: " + ", ".join(f"{v:.2f}" for v in rep.get("ratio_to_roof_runs", [])))
        if "overhead_cpu_share" in rep:
            outside = rep["cpu_seconds"] - rep["model_cpu_seconds"]
            lines.append(f"          CPU time outside the model forward (engine.predict): "
                         f"{100 * rep['overhead_cpu_share']:.1f} % of the process's CPU time (median; runs: "
                         + ", ".join(f"{100 * v:.1f}" for v in rep["overhead_cpu_share_runs"]) + " %); "
                         f"median run: {outside:.2f} of {rep['cpu_seconds']:.2f} CPU-s, "
                         f"{1e6 * outside / max(1, rep['windows']):.0f} us per window; "
                         f"{rep['cpu_seconds'] / rep['seconds']:.2f} cores busy on average")
        cpu_sections = rep.get("sections_cpu_s", {})
        lines.append(f"          {'section':<32} {'busy s':>7}  {'% wall':>6}  {'CPU s':>6}  {'CPU us/window':>13}")
        for k in dict.fromkeys([*rep["sections_s"], *cpu_sections]):
            busy, cpu, share = rep["sections_s"].get(k), cpu_sections.get(k), rep["sections_share"].get(k)
            pct = None if share is None else 100 * share
            per_window = None if cpu is None else 1e6 * cpu / max(1, rep["windows"])
            lines.append(f"          {k:<32} {_f(busy, '7.2f'):>7}  {_f(pct, '5.1f'):>6}  {_f(cpu, '6.2f'):>6}  "
                         f"{_f(per_window, '13.1f'):>13}")
    live = report.get("live")
    if live:
        lines.append(f"(c) live  {live['speed']:g}x real time, stride {live['stride_s']:g} s: largest N sustained "
                     f"{live['max_stations_sustained']}, p99 latency there {_f(live['latency_p99_at_max_s'], '.3f')} s"
                     f"  (daemon env {live.get('env')}, pipeline.queue_hwm = {live.get('queue_s')} s of windows)")
        if live.get("screen_net"):
            lines.append(f"          cascade: screen net {live['screen_net']}, detector {live.get('checkpoint')}, "
                         f"default trigger settings; data {live.get('data')}"
                         + (f", one event per station every {live['event_every_s']:g} s"
                            if live.get("event_every_s") else ""))
        lines.append("          N  ok   win/s (exp)   drop  lag+ s  lat n  p50 s  p99 s  max s  hop p99  cpu cores"
                     "  cpu/sta  ms/win   PSS MB  MB/sta  start s  note")
        for s in live["steps"]:
            lines.append(
                f"      {s['stations']:5d}  {'yes' if s['ok'] else 'no ':3}  {s['windows_per_s']:6.0f} "
                f"({s['expected_windows_per_s']:5.0f})  {s['dropped']:5d}  {_f(s['lag_growth_s'], '6.2f'):>6}  "
                f"{s['latency_n']:5d}  {_f(s['latency_p50_s'], '.3f'):>5}  {_f(s['latency_p99_s'], '.3f'):>5}  "
                f"{_f(s['latency_max_s'], '.3f'):>5}  {_f(s['hop_p99_s'], '.4f'):>7}  {s['cpu_cores']:9.2f}  "
                f"{s['cpu_per_station']:7.4f}  {_f(s.get('cpu_ms_per_window'), '6.3f'):>6}  {s['mem_mb']:7.0f}  "
                f"{s['mem_mb_per_station']:6.2f}  "
                f"{s['startup_s']:7.1f}  {s['reason']}")
        for s in live["steps"]:
            stages = ", ".join(f"{k} {v:.3f}" for k, v in (s.get("stage_cpu_ms_per_window") or {}).items())
            share = s.get("forwarded_share")
            lines.append(f"      {s['stations']:5d}  server {s.get('server_cpu_cores', 0):.2f} cores "
                         f"({_f(s.get('server_cpu_ms_per_window'), '.3f')} ms/win); daemon CPU ms/win by stage: "
                         f"{stages or '-'}; heartbeat lag_s p50 / p99 {_f(s.get('processing_lag_p50_s'), '.3f')} / "
                         f"{_f(s.get('processing_lag_p99_s'), '.3f')} s"
                         + ("" if share is None else f"; forwarded {s['forwarded']} of "
                            f"{s['forwarded'] + s['screened_out']} windows ({100 * share:.2f} %)"))
        for m in live.get("marginal", []):
            lines.append(f"          marginal cost {m['from']} -> {m['to']} stations: "
                         f"{m['cpu_cores_per_station']:.4f} cores and {m['mem_mb_per_station']:.2f} MB per station")
    return "\n".join(lines)


def bench_main(args: argparse.Namespace) -> int:
    """`quakemon bench [--quick] [--json FILE] [--device D]`: print the table, optionally write JSON."""
    from quakemon.base.logs import configure_logging

    configure_logging("warning", "console")
    kw: dict[str, Any] = {"device": getattr(args, "device", "auto") or "auto"}
    for key in ("precision", "stride_s"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if getattr(args, "parts", None):
        parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
        unknown = sorted(set(parts) - {"roof", "replay", "live"})
        if unknown:
            raise SystemExit(f"quakemon bench: --parts: unknown part(s) {unknown}; choose from roof, replay, live")
        kw["parts"] = parts
    for key in ("live_stations", "roof_batches"):
        text = getattr(args, key, None)
        if text:
            try:
                kw[key] = tuple(int(n) for n in text.split(","))
            except ValueError:
                flag = "--" + key.replace("_", "-")
                raise SystemExit(f"quakemon bench: {flag}: expected integers like 64,256,1024, got {text!r}") from None
    for key in ("replay_stations", "replay_batch", "replay_threads", "replay_repeats", "live_batch",
                "live_screen_every", "live_screen_net", "live_data", "live_archive_s", "live_measure_s",
                "live_warmup_s"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if getattr(args, "live_event_every", None) is not None:
        if not args.live_event_every >= 0:
            raise SystemExit(f"quakemon bench: --live-event-every: expected seconds >= 0, got {args.live_event_every}")
        kw["live_event_every_s"] = args.live_event_every or None
        if kw["live_event_every_s"] is None and kw.get("live_data", "synthetic") == "synthetic":
            raise SystemExit("quakemon bench: --live-event-every 0 (no events) needs --live-data uv10 or uv10-z")
    if kw.get("live_screen_net") and not Path(kw["live_screen_net"]).is_file():
        raise SystemExit(f"quakemon bench: --live-screen-net: {kw['live_screen_net']} does not exist")
    plan = BenchPlan.quick(**kw) if getattr(args, "quick", False) else BenchPlan(**kw)

    def progress(text: str) -> None:
        print(f"  ... {text}", file=sys.stderr, flush=True)

    report = run_bench(plan, progress=progress)
    print(format_report(report))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0
