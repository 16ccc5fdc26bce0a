"""Smoke tests of `quakemon bench`'s pieces at a tiny size: data, report structure, the keep-up criterion.

No timing assertions: the figures depend on the machine; only their presence, consistency and units are checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from obspy import read

from quakemon.pipeline.engine import CPU_FORWARD_BATCH
from quakemon.tools import bench, bench_common, bench_live, bench_replay, bench_roof


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench_common.random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.safetensors")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return bench_common.write_synthetic_archive(tmp_path_factory.mktemp("arch"), 2, 40.0, event_every_s=30.0)


def test_synthetic_archive_is_512_byte_steim2_per_channel(archive: list[Path], tmp_path: Path) -> None:
    from obspy import read

    assert [p.name for p in archive] == [f"XB.S000{i}..HH{c}.mseed" for i in range(2) for c in "ZNE"]
    for p in archive:
        assert p.stat().st_size % 512 == 0
        st = read(str(p), details=True)
        assert {tr.stats.mseed.record_length for tr in st} == {512}
        assert {tr.stats.mseed.encoding for tr in st} == {"STEIM2"}
        assert sum(tr.stats.npts for tr in st) == 4000
        assert st[0].data.dtype == np.int32
    station = bench_common.write_synthetic_archive(tmp_path, 1, 40.0, layout="station", first=7)
    assert [p.name for p in station] == ["XB.S0007.mseed"]
    assert sorted(tr.stats.channel for tr in read(str(station[0])).merge()) == ["HHE", "HHN", "HHZ"]
    # an event is in the data: the 30 s event window is louder than the first seconds of noise
    z = read(str(archive[0]))[0].data.astype(float)
    assert np.abs(z - z.mean()).max() > 3 * np.std(z[:300])


def test_roof_reports_every_batch_size_and_the_best(ckpt: Path) -> None:
    roof = bench_roof.bench_roof_threads(ckpt, (1,), device="cpu", precision="fp32", batch_sizes=(1, 4), min_s=0.01)
    assert roof["device"] == "cpu" and roof["precision"] == "fp32" and roof["torch_threads"] == 1
    assert roof["graph"] == "frozen"  # the roof runs the graph the engine runs
    assert set(roof["windows_per_s"]) == {"1", "4"} and set(roof["by_threads"]) == {"1"}
    assert roof["best_windows_per_s"] == max(roof["windows_per_s"].values()) > 0
    assert roof["windows_per_s"][str(roof["best_batch"])] == roof["best_windows_per_s"]


def test_replay_counts_windows_station_hours_and_sections(ckpt: Path, archive: list[Path]) -> None:
    serial = bench_replay.bench_replay(archive, ckpt, device="cpu", precision="fp32", batch_size=8, overlap=False)
    overlapped = bench_replay.bench_replay(archive, ckpt, device="cpu", precision="fp32", batch_size=8)
    assert overlapped["overlap"] and not serial["overlap"]
    for rep in (serial, overlapped):
        # 40 s per station, 20 s windows on a 1 s grid starting at the first sample: 21 windows per station
        assert rep["windows"] == 2 * 21
        assert rep["station_hours"] == pytest.approx(2 * 40.0 / 3600, rel=1e-3)
        assert rep["station_hours_per_s"] == pytest.approx(rep["station_hours"] / rep["seconds"])
        assert rep["windows_per_s"] == pytest.approx(rep["windows"] / rep["seconds"])
        assert rep["records"] > 6 and rep["inference_batches"] >= 1
        assert all(v >= 0 for v in rep["sections_s"].values()) and rep["sections_s"]["inference (engine.predict)"] > 0
    assert overlapped["detections"] == serial["detections"]
    # one thread: the timed sections are (nearly) all of the elapsed time, never more
    assert 0.5 * serial["seconds"] <= sum(serial["sections_s"].values()) <= serial["seconds"] + 0.01


def _beat(windows_out: int, dropped: int = 0, lag: float | None = 0.5) -> dict:
    return {"windows_out": windows_out, "dropped": dropped, "lag_s": lag, "time": "2026-01-01T00:00:00.000000Z"}


@pytest.mark.parametrize(
    ("last", "ok", "reason"),
    [
        (_beat(1000 + 100 * 10), True, "kept up"),
        (_beat(1000 + 80 * 10), False, "80 windows/s < 90 % of 100"),
        (_beat(2000, dropped=5), False, "5 windows dropped"),
        (_beat(2000, lag=3.0), False, "ingest lag grew by 2.5 s"),
        (_beat(2000, lag=None), False, "ingest lag grew by None"),
        ({**_beat(2000), "data_age_s": 4.0}, False, "ingest lag grew by 3.5 s"),  # processing keeps up, data ages
    ],
)
def test_keep_up_criterion(last: dict, ok: bool, reason: str) -> None:
    step = bench_live.LiveStep(stations=100, speed=1.0, expected_windows_per_s=100.0)
    bench_live._finish_step(step, (0.0, _beat(1000), (1.0, 0)), (10.0, last, (6.0, 200 * 2**20)),
                       latencies=[0.1, 0.2, 0.3], hops=[0.001], lag_growth_limit_s=2.0)
    assert step.ok is ok
    assert reason in step.reason
    assert step.cpu_cores == pytest.approx(0.5) and step.cpu_per_station == pytest.approx(0.005)
    assert step.cpu_ms_per_window == pytest.approx(1000 * 0.5 / step.windows_per_s)  # CPU time per window
    assert step.mem_mb == pytest.approx(200) and step.latency_n == 3
    assert step.latency_p50_s == pytest.approx(0.2) and step.latency_max_s == pytest.approx(0.3)


def test_daemon_config_is_valid(tmp_path: Path, ckpt: Path) -> None:
    from quakemon.pipeline.settings import SCREEN
    from quakemon.service.config import load_config

    path = bench_live.daemon_config(tmp_path / "b.toml", server="127.0.0.1:18000", stations=["S0000", "S0001"],
                               checkpoint=ckpt, runtime_dir=tmp_path, publish="tcp://127.0.0.1:5999", batch_size=32)
    cfg = load_config(path)
    assert cfg.seedlink.streams == ("XB.S0000..HH?", "XB.S0001..HH?")
    assert (cfg.trigger.on, cfg.trigger.off, cfg.trigger.min_duration) == (0.5, 0.5, 0.0)
    assert cfg.model.batch_size == 32 and cfg.seedlink.state_file == ""
    assert cfg.model.screen_every == SCREEN.every  # the daemon's default unless the bench is told
    assert bench_common.BenchPlan().live_screen_every == 1  # every station busy: the screen cannot help
    screened = bench_live.daemon_config(tmp_path / "s.toml", server="127.0.0.1:18000", stations=["S0000"],
                                        checkpoint=ckpt, runtime_dir=tmp_path, publish="tcp://127.0.0.1:5999",
                                        screen_every=1)
    assert load_config(screened).model.screen_every == 1


def test_proc_usage_sees_this_process() -> None:
    cpu, mem = bench_live.proc_usage(os.getpid())
    assert cpu > 0 and mem > 10 * 2**20


def test_run_bench_report_is_json_and_printable(tmp_path: Path) -> None:
    plan = bench_common.BenchPlan(device="cpu", precision="fp32", roof_batches=(2,), roof_min_s=0.01, threads=(1,),
                           replay_stations=1, replay_seconds=30.0, replay_batch=4, replay_threads=1, replay_repeats=2,
                           parts=("roof", "replay"))
    report = bench.run_bench(plan, workdir=tmp_path)
    rep = report["replay"]
    assert rep["windows"] == 11 and rep["repeats"] == 2 and len(rep["windows_per_s_runs"]) == 2
    run = report["roof"]["replay_threads"]
    # a roof before the first replay (at batch 4, which the sweep lacks), one after each
    assert run["threads"] == "1" and run["batch"] == 4 and len(run["windows_per_s_around"]) == 3
    assert rep["torch_threads"] == 1 and rep["batch_size"] == 4
    around = run["windows_per_s_around"]
    expected = [w / float(np.mean(around[j : j + 2])) for j, w in enumerate(rep["windows_per_s_runs"])]
    assert rep["ratio_to_roof_runs"] == pytest.approx(expected)
    assert rep["ratio_to_roof"] == pytest.approx(float(np.median(expected)))
    assert rep["windows_per_s"] in rep["windows_per_s_runs"]
    json.loads(json.dumps(report, default=float))
    text = bench.format_report(report)
    assert "(a) roof" in text and "(b) replay" in text and "(c) live" not in text and "2 runs" in text
    assert "(frozen graph)" in text and rep["graph"] == "frozen"
    assert not any(math.isnan(v) for v in rep["sections_s"].values())
    assert len(rep["outside_forward_cpu_s_runs"]) == 2 and all(v >= 0 for v in rep["outside_forward_cpu_s_runs"])
    assert "us per window" in text and "CPU us/window" in text


def test_roof_streams_and_the_replay_on_two_inference_workers(tmp_path: Path, ckpt: Path) -> None:
    """Two single-threaded forwards at once are a roof configuration of their own ("2x1"), and the replay with two
    torch threads runs two inference workers, its ratio taken against that configuration."""
    roof = bench_roof.bench_roof(ckpt, device="cpu", precision="fp32", batch_sizes=(2, 4), min_s=0.01, streams=2)
    assert roof["streams"] == 2 and roof["torch_threads"] == 1 and set(roof["windows_per_s"]) == {"2", "4"}
    assert all(v > 0 for v in roof["windows_per_s"].values())
    plan = bench_common.BenchPlan(device="cpu", precision="fp32", roof_batches=(2,), roof_min_s=0.01, threads=(1,),
                           replay_stations=1, replay_seconds=30.0, replay_threads=2, replay_repeats=1,
                           parts=("roof", "replay"))
    report = bench.run_bench(plan, workdir=tmp_path)
    assert "2x1" in report["roof"]["by_threads"] and report["roof"]["replay_threads"]["threads"] == "2x1"
    assert report["replay"]["inference_workers"] == 2 and report["replay"]["windows"] == 11
    assert report["replay"]["batch_size"] == bench_common.REPLAY_BATCH == 256
    # the roof around the replay is the forward the replay runs: its pipeline batch cut into CPU forwards
    assert report["replay"]["forward_batch"] == CPU_FORWARD_BATCH == 64
    assert report["roof"]["replay_threads"]["batches"] == [64] and report["roof"]["replay_threads"]["batch"] == 64
    assert "2 single-threaded forwards at once" in bench.format_report(report)


def test_bench_parts_never_import_the_bench_runner() -> None:
    """Imports run one way: the runner (`bench`) uses the parts, the parts use `bench_common` and nothing above."""
    import ast

    for module in (bench_common, bench_roof, bench_replay, bench_live):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert "quakemon.tools.bench" not in imported, module.__name__
        if module is bench_common:
            assert not {m for m in imported if m and m.startswith("quakemon.tools")}, imported


def test_worker_split_uses_every_core_with_at_most_four_workers() -> None:
    from quakemon.pipeline.threads import worker_split

    assert [worker_split(n) for n in (1, 2, 4, 5, 6, 16, 64)] == [(1, 1), (2, 1), (4, 1), (2, 2), (3, 2), (4, 4),
                                                                  (4, 16)]
    assert bench_roof.streams_config(2) == "2x1" and bench_roof.streams_config(16) == "4x4"
    assert bench._config_text("4x4") == "4 4-thread forwards at once"


def test_live_step_measures_a_running_daemon(tmp_path: Path, ckpt: Path) -> None:
    """Two stations at 5x real time through `quakemon serve` and `quakemon run`: windows, latency, CPU, memory."""
    files = bench_common.write_synthetic_archive(tmp_path / "arch", 2, 40.0, layout="station")
    step = bench_live.live_step(files, ckpt, tmp_path / "live", speed=5.0, measure_s=3.0, timeout_s=150.0,
                           env={"OMP_NUM_THREADS": "1"})
    log = (tmp_path / "live" / "processes.log").read_text(errors="replace")[-3000:]
    assert step.measure_s >= 3.0, f"{step.reason}\n{log}"
    assert step.windows_per_s > 0 and step.expected_windows_per_s == 10.0
    assert step.cpu_cores > 0 and step.mem_mb > 0
    assert step.heartbeat["stations"] == 2
    assert step.daemon_exit == 0


def fake_noise_day(cache: Path, seconds: float = 86400.0) -> Path:
    """A stand-in for the msnoise UV10 day in `cache` (where `noise_days.day_path` finds it extracted): one
    gap-free HHZ trace of seeded random counts, so that no test reads or fetches the real wheel."""
    from obspy import Trace, UTCDateTime

    from quakemon.data import noise_days

    path = cache / "noise_days" / Path(noise_days.NOISE_DAYS["UV10"]).name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(5).normal(0, 900, int(seconds * 100)).astype(np.int32)
    Trace(data, header={"network": "YA", "station": "UV10", "location": "00", "channel": "HHZ",
                        "sampling_rate": 100.0, "starttime": UTCDateTime(2010, 9, 1)}).write(
        str(path), format="MSEED", reclen=4096, encoding="STEIM2")
    return path


def test_noise_archive_cuts_three_components_from_other_hours_and_adds_rare_events(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    day = read(str(fake_noise_day(cache)))[0].data
    files = bench_common.write_noise_archive(tmp_path / "a", 3, 40.0, cache=cache, first=4)
    assert [p.name for p in files] == ["XB.S0004.mseed", "XB.S0005.mseed", "XB.S0006.mseed"]
    st = read(str(files[1]))
    assert [tr.stats.channel for tr in st] == ["HHZ", "HHN", "HHE"] and {tr.stats.npts for tr in st} == {4000}
    seam = int(bench_common.NOISE_SEAM_S * 100)
    origin = seam + int(5 * bench_common.NOISE_STATION_STEP_S * 100)
    for tr, hours in zip(st, (0, 8, 16), strict=True):  # the day's own counts, each channel from its hour
        start = origin + hours * 360_000
        np.testing.assert_array_equal(tr.data[:-seam], day[start:][: 4000 - seam])
        # the end fades into the samples before the start: served in a loop, the seam continues the day
        w = (seam // 2 + 1) / seam  # halfway through the fade
        assert tr.data[-1] == day[start - 1]
        assert tr.data[-seam // 2] == round((1 - w) * day[start + 4000 - seam // 2] + w * day[start - seam // 2])
    # one event per 80 s over a 40 s archive: stations 4 and 6 (multiples of 2) get one, station 5 none
    with_events = bench_common.write_noise_archive(tmp_path / "e", 3, 40.0, cache=cache, first=4, event_every_s=80.0)
    changed = [not all(np.array_equal(a.data, b.data) for a, b in zip(read(str(p)), read(str(q)), strict=True))
               for p, q in zip(files, with_events, strict=True)]
    assert changed == [True, False, True]
    with pytest.raises(ValueError, match="duration_s"):
        bench_common.write_noise_archive(tmp_path / "x", 1, 9 * 3600.0, cache=cache)


def test_live_step_runs_the_cascade_with_the_default_trigger(tmp_path: Path, ckpt: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real-noise-like stations through `quakemon serve` and `quakemon run` with a screen net:
    the heartbeat's forwarded / screened_out, per-stage CPU and the server's are reported."""
    from support.screens import peakedness_net

    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.models.screen_net import save_screen
    from quakemon.service.config import load_config

    monkeypatch.setenv("QUAKEMON_CACHE", str(tmp_path / "cache"))
    fake_noise_day(tmp_path / "cache")
    detector = load_checkpoint(ckpt)
    screen = save_screen(tmp_path / "screen.safetensors", peakedness_net(detector.contract), -1.0, detector.sha256,
                         detector.contract)
    plan = bench_common.BenchPlan(live_data="uv10-z", live_archive_s=40.0, live_event_every_s=None,
                                  live_screen_net=str(screen))
    assert all([tr.stats.channel for tr in read(str(p))] == ["HHZ"]
               for p in bench_live.live_archive(tmp_path / "z", plan, 2))
    files = bench_live.live_archive(tmp_path / "arch", dataclasses.replace(plan, live_data="uv10"), 2)
    bench_live.check_screen(screen, ckpt)
    with pytest.raises(ValueError, match="not a screen for"):
        bench_live.check_screen(screen, bench_common.random_checkpoint(tmp_path / "other.safetensors", seed=1))
    step = bench_live.live_step(files, ckpt, tmp_path / "live", speed=5.0, measure_s=3.0, timeout_s=150.0,
                                env={"OMP_NUM_THREADS": "1"}, screen_net=screen, trigger=None)
    log = (tmp_path / "live" / "processes.log").read_text(errors="replace")[-3000:]
    cfg = load_config(tmp_path / "live" / "bench.toml")
    assert cfg.model.screen_net == str(screen) and cfg.model.screen_every == 1
    assert (cfg.trigger.on, cfg.trigger.off) == (0.7, 0.5)  # the daemon's defaults, what an operator runs
    assert step.measure_s >= 3.0, f"{step.reason}\n{log}"
    assert step.forwarded is not None and step.screened_out is not None and step.forwarded + step.screened_out > 0
    assert step.forwarded_share == step.forwarded / (step.forwarded + step.screened_out)
    assert {"supervisor", "ingest", "preprocess", "inference"} <= set(step.stage_cpu_cores)
    assert step.stage_cpu_ms_per_window["inference"] > 0 and step.server_cpu_ms_per_window is not None
    assert step.processing_lag_p99_s is not None and step.daemon_exit == 0
    text = bench.format_report({"live": {"speed": 5.0, "stride_s": 1.0, "max_stations_sustained": 2,
                                         "latency_p99_at_max_s": None, "screen_net": str(screen), "data": "uv10-z",
                                         "steps": [dataclasses.asdict(step)]}})
    assert "cascade: screen net" in text and "forwarded" in text and "inference" in text


@pytest.mark.parametrize("argv, message", [
    (["--live-event-every", "0"], "needs --live-data uv10"),
    (["--live-event-every", "-1"], "expected seconds >= 0"),
    (["--live-screen-net", "/nonexistent/screen.safetensors"], "does not exist"),
])
def test_bench_live_cascade_options_are_checked(argv: list[str], message: str) -> None:
    from quakemon.cli.app import build_parser

    args = build_parser().parse_args(["bench", "--parts", "live", *argv])
    with pytest.raises(SystemExit, match=message):
        bench.bench_main(args)
