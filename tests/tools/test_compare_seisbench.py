"""benchmarks/compare_seisbench.py without SeisBench: its option parsing, the runner-feature guard, the table, and
the replay it times (with runner options passed through). No timing assertions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quakemon.tools import bench_common, bench_replay

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare_seisbench  # noqa: E402


def test_screen_options_parse_and_bad_ones_say_what_is_expected() -> None:
    assert compare_seisbench.parse_screens(["4:0.1", "8:0.25"]) == [(4, 0.1), (8, 0.25)]
    with pytest.raises(SystemExit, match="EVERY:THRESHOLD like 4:0.1, got '4'"):
        compare_seisbench.parse_screens(["4"])
    with pytest.raises(SystemExit, match="--strides and --threads"):
        compare_seisbench.main(["--strides", "1,x"])


def test_the_runner_guard_reads_the_runner_signature() -> None:
    import inspect

    from quakemon.pipeline.runner import DetectionRunner

    keywords = compare_seisbench.runner_keywords()
    assert keywords == set(inspect.signature(DetectionRunner).parameters)
    assert {"stride_s", "batch_size", "forward_batch"} <= keywords


def test_runner_options_go_through_bench_replay_however_it_takes_them() -> None:
    # bench_replay names forward_batch itself; anything else travels in runner_options
    assert compare_seisbench.replay_keywords({"forward_batch": 8, "max_missing": 0.5}) == {
        "forward_batch": 8, "runner_options": {"max_missing": 0.5}}
    assert compare_seisbench.replay_keywords({"forward_batch": 8}) == {"forward_batch": 8}
    assert compare_seisbench.replay_keywords({}) == {}


def test_default_stride_resolves_fractions_and_samples_as_annotate_does() -> None:
    class Model:  # the two attributes SeisBench's annotate reads for the overlap
        in_samples = 3001
        _annotate_args = {"overlap": ("...", 1500)}

    assert compare_seisbench.default_stride_samples(Model()) == 1501
    Model._annotate_args = {"overlap": ("...", 0.5)}
    assert compare_seisbench.default_stride_samples(Model()) == 3001 - 1500


def test_table_gives_the_cost_both_ways() -> None:
    rows = [compare_seisbench.Row("SeisBench PhaseNet, default overlap", 15.01, [2.0, 4.0, 3.0], [1.0, 2.0, 3.0]),
            compare_seisbench.Row("SeisBench PhaseNet, quakemon's stride", 1.0, [6.0], [4.0]),
            compare_seisbench.Row("quakemon replay", 1.0, [12.0], [8.0])]
    lines = compare_seisbench.format_table(2, rows, station_hours=0.5)
    text = "\n".join(lines)
    assert lines[0] == "2 torch thread(s)"
    # PhaseNet: median 3 CPU-s over 0.5 station-hours = 6 per station-hour; quakemon: 24, i.e. 4x and 0.25x
    quakemon = next(line for line in lines if line.strip().startswith("quakemon replay"))
    assert quakemon.split()[3:6] == ["24.00", "4.000", "0.25"]
    assert "quakemon / PhaseNet = 2.000, PhaseNet / quakemon = 0.50" in text


def test_replay_takes_runner_options(tmp_path: Path) -> None:
    ckpt = bench_common.random_checkpoint(tmp_path / "random.safetensors")
    archive = bench_common.write_synthetic_archive(tmp_path / "arch", 1, 30.0)
    one = bench_replay.bench_replay(archive, ckpt, device="cpu", precision="fp32", batch_size=8,
                                    runner_options={"inference_workers": 1})
    two = bench_replay.bench_replay(archive, ckpt, device="cpu", precision="fp32", batch_size=8,
                                    runner_options={"inference_workers": 2})
    assert (one["inference_workers"], two["inference_workers"]) == (1, 2)
    assert one["windows"] == two["windows"] == 11 and one["detections"] == two["detections"]
    for rep in (one, two):  # the CPU outside the forward is the process's CPU less the forward's
        assert rep["outside_forward_cpu_seconds"] == pytest.approx(rep["cpu_seconds"] - rep["model_cpu_seconds"])
        assert set(rep["sections_cpu_s"]) == {*rep["sections_s"], "other"}
        assert all(v >= 0 for v in rep["sections_cpu_s"].values())
