"""`quakemon replay` and the Python API on real MiniSEED (ObsPy's bundled BW.RJOB example)."""

from __future__ import annotations

import json

import numpy as np
import obspy
import pytest

from quakemon.api import Detector
from quakemon.cli.app import main
from quakemon.models import load_checkpoint
from quakemon.pipeline.runner import DetectionRunner, replay
from quakemon.wire.schema import validate_detection


@pytest.fixture(scope="module")
def rjob_file(tmp_path_factory):
    st = obspy.read()
    for tr in st:
        tr.data = tr.data.astype(np.int32)
    path = tmp_path_factory.mktemp("mseed") / "rjob.mseed"
    st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
    return path


def _calibrated_runner(ckpt, **kw):
    """Thresholds between the observed probabilities of a random-weight model, so that triggers happen."""
    runner = DetectionRunner(ckpt, keep_series=True, precision="fp32", **kw)
    list(runner.add_traces(obspy.read()))
    runner.finish()
    p = np.asarray(runner.series["BW.RJOB."].probabilities)[:, 1]
    return np.quantile(p, 0.6), np.quantile(p, 0.4)


def test_replay_writes_valid_json_lines_and_matches_record_by_record_feed(tiny_checkpoint, rjob_file, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    on, off = _calibrated_runner(ckpt)
    trigger = {"on": float(on), "off": float(off), "min_duration_s": 0.0}
    out = tmp_path / "out.jsonl"
    with open(out, "w") as fh:
        result = replay([str(rjob_file)], ckpt, output=fh, trigger=trigger, precision="fp32", progress=False,
                        keep_series=True)
    bodies = [json.loads(line) for line in out.read_text().splitlines()]
    assert bodies == result.detections and bodies, "calibrated thresholds must trigger"
    for b in bodies:
        validate_detection(b)
    assert [b["seq"] for b in bodies] == list(range(1, len(bodies) + 1))
    assert result.windows == 11  # 30 s of data, 20 s windows, 1 s stride
    # the same archive fed record by record (as a live stream would deliver it) gives the same detections
    runner = DetectionRunner(ckpt, precision="fp32", **trigger, batch_size=3)
    records = obspy.read(str(rjob_file), details=True)
    live = list(runner.add_traces(sorted(records, key=lambda tr: tr.stats.endtime))) + runner.finish()
    strip = ("seq", "topic_seq", "epoch")
    assert [{k: v for k, v in b.items() if k not in strip} for b in live] == \
        [{k: v for k, v in b.items() if k not in strip} for b in bodies]


def test_replay_cli_with_plot(tiny_checkpoint, rjob_file, tmp_path, capsys):
    out, png = tmp_path / "d.jsonl", tmp_path / "p.png"
    code = main(["replay", str(rjob_file), "--model", str(tiny_checkpoint), "--output", str(out), "--plot", str(png),
                 "--quiet"])
    assert code == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "replay: 11 windows" in capsys.readouterr().err


def test_replay_cli_bad_model_is_a_clean_error(rjob_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["replay", str(rjob_file), "--model", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not a readable safetensors" in err and "Traceback" not in err


def test_api_annotate_and_detect(tiny_checkpoint):
    det = Detector.from_checkpoint(tiny_checkpoint, precision="fp32", min_duration_s=0.0)
    probs = det.annotate(obspy.read())
    assert len(probs) == 2 and {tr.stats.quakemon_label for tr in probs} == {"noise", "earthquake"}
    assert all(tr.stats.npts == 11 and tr.stats.delta == 1.0 for tr in probs)
    assert probs[0].stats.starttime == obspy.UTCDateTime("2009-08-24T00:20:13")  # centre of the first window
    np.testing.assert_allclose(probs[0].data + probs[1].data, 1.0, rtol=1e-5)
    p = probs.select(channel="PR1")[0].data
    det.on, det.off = float(np.quantile(p, 0.6)), float(np.quantile(p, 0.4))
    bodies = det.detect(obspy.read())
    assert bodies and {b["state"] for b in bodies} <= {"new", "closed"}
    assert bodies[0]["model"]["sha256"] == det.checkpoint.sha256


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_overlapped_inference_gives_the_same_detections_and_series(tiny_checkpoint, workers):
    """overlap=True (preprocessing + inference on `workers` worker threads, triggers in batch order) == overlap=False,
    window for window."""
    ckpt = load_checkpoint(tiny_checkpoint)
    on, off = _calibrated_runner(ckpt)
    out = {}
    for overlap in (False, True):
        runner = DetectionRunner(load_checkpoint(tiny_checkpoint), precision="fp32", keep_series=True, on=float(on),
                                 off=float(off), min_duration_s=0.0, batch_size=2, overlap=overlap,
                                 inference_workers=workers, screen_every=1)  # (every window: forwards as cut)
        assert runner.inference_workers == (workers if overlap else 0)
        bodies = list(runner.add_traces(obspy.read())) + runner.finish()
        series = runner.series["BW.RJOB."]
        out[overlap] = ([(b["id"], b["onset"], b["seq"]) for b in bodies], series.start_ns,
                        np.asarray(series.probabilities), runner.windows, runner.stats)
    assert out[True][0] == out[False][0] and out[True][0], "calibrated thresholds must trigger"
    assert out[True][1] == out[False][1] and out[True][3] == out[False][3] == 11
    assert np.array_equal(out[True][2], out[False][2])
    assert out[True][4] == out[False][4]


def test_idle_workers_start_on_a_forward_worth_and_share_the_tail(tiny_checkpoint):
    """With batch_size 8 and forwards of 2: the first batch starts at 2 windows (the workers are idle), every
    batch goes to the workers in forward-sized tasks, at most a batch's worth waits, the tail goes out in
    forward-sized tasks too, and the results equal the serial run's."""
    ckpt = load_checkpoint(tiny_checkpoint)
    st = obspy.read()
    t0 = st[0].stats.starttime
    pieces = [tr.slice(t0 + s, t0 + s + 1 - tr.stats.delta) for s in range(30) for tr in st]  # 1 s, in time order
    serial = DetectionRunner(ckpt, precision="fp32", keep_series=True, batch_size=8, overlap=False)
    list(serial.add_traces(pieces))
    serial.finish()

    runner = DetectionRunner(load_checkpoint(tiny_checkpoint), precision="fp32", keep_series=True, batch_size=8,
                             forward_batch=2, inference_workers=2)
    assert runner.stage.engine.batch_size == 2
    sizes: list[int] = []
    waiting: list[int] = []
    start = runner._start

    def record(task):
        sizes.append(len(task))
        waiting.append(len(runner._inflight))
        start(task)

    runner._start = record  # type: ignore[method-assign]
    list(runner.add_traces(pieces[:-9]))  # the last 3 s held back: their 3 windows become the tail below
    assert sizes[0] == 2 and set(sizes) == {2}
    assert max(waiting) < 2 + 8 // 2  # the workers' tasks and a batch's worth queued
    fed = len(sizes)
    runner._pending += [w for tr in pieces[-9:] for w in runner.windower.add_trace(tr)]
    tail = len(runner._pending)
    runner.finish()
    assert tail >= 3 and sizes[fed:] == [2] * (tail // 2) + [tail % 2] * (tail % 2)
    assert sum(sizes) == runner.windows == serial.windows == 11
    a, b = runner.series["BW.RJOB."], serial.series["BW.RJOB."]
    assert a.start_ns == b.start_ns
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-7)  # other batch groupings


def test_gil_switch_interval_is_restored():
    import sys

    from quakemon.pipeline.runner import gil_switch_interval

    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError), gil_switch_interval(1e-4):
        assert sys.getswitchinterval() == pytest.approx(1e-4)
        raise RuntimeError("inside")
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize(("threads", "workers", "each"), [(2, 2, 1), (6, 3, 2)])
def test_cpu_inference_workers_share_out_the_torch_threads(tiny_checkpoint, threads, workers, each):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = DetectionRunner(load_checkpoint(tiny_checkpoint), device="cpu", precision="fp32")
        assert runner.inference_workers == workers
        counts = {runner._worker.submit(torch.get_num_threads).result() for _ in range(4 * workers)}
        assert counts == {each}
        assert torch.get_num_threads() == threads  # the caller's count is left alone
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ the Detector's model
def test_detector_prepares_the_model_once_and_close_stops_its_threads(tiny_checkpoint, monkeypatch):
    """Two calls share one engine: one copy of the model, one traced graph, one set of worker threads; close()
    (leaving the with block) stops the threads, and a closed Detector says so."""
    import threading

    import torch

    from quakemon.base.errors import QuakemonError
    from quakemon.pipeline import engine

    counts = {"engines": 0, "traces": 0}
    prepare, trace = engine.prepare_for_inference, torch.jit.trace

    def counting_prepare(*a, **k):
        counts["engines"] += 1
        return prepare(*a, **k)

    def counting_trace(*a, **k):
        counts["traces"] += 1
        return trace(*a, **k)

    monkeypatch.setattr(engine, "prepare_for_inference", counting_prepare)
    monkeypatch.setattr(torch.jit, "trace", counting_trace)
    before = set(threading.enumerate())
    with Detector.from_checkpoint(tiny_checkpoint, precision="fp32", device="cpu") as det:
        first = det.annotate(obspy.read())
        det.detect(obspy.read())
        again = det.annotate(obspy.read())
        assert counts == {"engines": 1, "traces": 1}
        workers = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        assert workers, "the CPU inference workers run while the Detector is open"
    assert [t for t in workers if t.is_alive()] == []
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(QuakemonError, match="closed"):
        det.detect(obspy.read())
    det.close()  # idempotent


def test_detector_builds_the_model_again_when_its_device_settings_change(tiny_checkpoint, monkeypatch):
    from quakemon.pipeline import runner as runner_mod

    built = []
    real = runner_mod.Inference

    class Counting(real):
        def __init__(self, *a, **k):
            built.append(k.get("precision"))
            super().__init__(*a, **k)

    monkeypatch.setattr("quakemon.api.Inference", Counting)
    with Detector.from_checkpoint(tiny_checkpoint, precision="fp32", device="cpu") as det:
        det.detect(obspy.read())
        det.on, det.off = 0.9, 0.8  # trigger settings: the same model
        det.detect(obspy.read())
        det.precision = "bf16"
        det.detect(obspy.read())
    assert built == ["fp32", "bf16"]


def test_the_api_logs_to_stderr_not_stdout(tiny_checkpoint, capsys):
    """A library must not write its logs into the program's stdout (structlog's default when unconfigured)."""
    import structlog

    structlog.reset_defaults()
    try:
        with Detector.from_checkpoint(tiny_checkpoint, precision="fp32") as det:
            det.detect(obspy.read())
        out = capsys.readouterr()
        assert out.out == ""
        assert "checkpoint_loaded" in out.err and "graph_frozen" in out.err
    finally:
        structlog.reset_defaults()


def test_an_application_that_configured_structlog_keeps_its_configuration(tiny_checkpoint):
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        Detector.from_checkpoint(tiny_checkpoint, precision="fp32").close()
    assert [e["event"] for e in logs] == ["checkpoint_loaded"]


# -------------------------------------------------------------------------------- long multi-component streams
@pytest.fixture(scope="module")
def z_capable_checkpoint(tmp_path_factory):
    """A random TINY checkpoint whose contract also accepts vertical-only stations (like the bundled model)."""
    import torch

    from quakemon.models import HybridViT, save_checkpoint
    from quakemon.models.contract import InputContract

    torch.manual_seed(1)
    contract = InputContract(component_sets=("Z",))
    model = HybridViT("TINY", depth=1, img_size=contract.spectrogram_shape, dropout=0.0)
    path = tmp_path_factory.mktemp("ckpt-z") / "tiny-z.safetensors"
    save_checkpoint(path, model.eval(), ["noise", "earthquake"], contract, provenance={"note": "random test weights"})
    return path


def _long_stream(hours: float, seed: int = 0) -> obspy.Stream:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * 100)
    t0 = obspy.UTCDateTime("2021-03-04T05:06:00")
    return obspy.Stream([obspy.Trace(rng.normal(0, 100, n).astype(np.int32),
                                     header={"network": "XX", "station": "LONG", "channel": f"HH{c}",
                                             "sampling_rate": 100.0, "starttime": t0})
                         for c in "ZNE"])


@pytest.mark.parametrize("contract", ["full", "z-capable"])
def test_annotate_a_long_three_component_stream_uses_every_component(tiny_checkpoint, z_capable_checkpoint,
                                                                     contract):
    """An hour of 3 x 100 Hz as three whole traces: every window is cut from all three components, with no
    station reset (clock_jump) and no vertical-only fallback, and none is missing."""
    from structlog.testing import capture_logs

    st = _long_stream(1.0)
    path = tiny_checkpoint if contract == "full" else z_capable_checkpoint
    with capture_logs() as logs, Detector.from_checkpoint(path, precision="fp32") as det:
        probs = det.annotate(st)
        stats = det.last_stats
    events = {e["event"] for e in logs}
    assert "clock_jump" not in events and "station_components" not in events, events
    assert stats.get("clock_jumps", 0) == 0 and stats.get("windows_reduced", 0) == 0
    assert stats.get("late_records", 0) == 0 and stats.get("windows_skipped", 0) == 0, stats
    expected = 3600 - 20 + 1
    assert stats["windows"] == expected
    assert len(probs) == 2 and all(tr.stats.npts == expected for tr in probs)
    assert not np.isnan(probs[0].data).any()
    assert probs[0].stats.starttime == st[0].stats.starttime + 10  # the first window's centre


def test_interleaved_cuts_and_merges_channels_in_time():
    from quakemon.pipeline.runner import interleaved

    st = _long_stream(0.05)  # 180 s
    st[1].stats.starttime += 7.3
    pieces = list(interleaved(st, chunk_s=20.0))
    starts = [p.start_ns for p in pieces]
    assert starts == sorted(starts)
    assert max(len(p.data) for p in pieces) == 2000
    for tr in st:
        mine = [p for p in pieces if p.seed_id == tr.id]
        assert mine[0].start_ns == tr.stats.starttime.ns
        np.testing.assert_array_equal(np.concatenate([p.data for p in mine]), tr.data)
        assert all(np.shares_memory(p.data, tr.data) for p in mine)  # views, no copies
    with pytest.raises(ValueError, match="chunk_s"):
        list(interleaved(st, chunk_s=0))


def test_api_catalog_holds_one_pick_per_detection(tiny_checkpoint):
    """`Detector.catalog` is `detect` as an ObsPy Catalog: each detection's P pick with its waveform id."""
    with Detector.from_checkpoint(tiny_checkpoint, precision="fp32", min_duration_s=0.0) as det:
        p = det.annotate(obspy.read()).select(channel="PR1")[0].data
        det.on, det.off = float(np.quantile(p, 0.6)), float(np.quantile(p, 0.4))
        bodies = det.detect(obspy.read())
        catalog = det.catalog(obspy.read())
    picks = [pick for event in catalog for pick in event.picks]
    detections = {b["id"]: b for b in bodies}
    assert detections and len(picks) == len(detections)
    for pick in picks:
        body = detections[str(pick.resource_id).rsplit("/", 1)[-1]]
        assert pick.time == obspy.UTCDateTime(body["pick"]["time"])
        assert (pick.waveform_id.network_code, pick.waveform_id.station_code) == ("BW", "RJOB")
