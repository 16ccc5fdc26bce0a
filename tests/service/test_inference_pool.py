"""The inference stage's forward pool (`quakemon.pipeline.forward_pool`): forwards on worker threads, decided in
order on the caller's thread, with the detections of one forward at a time; and the model.inference_workers key.

Real model forwards (a small HybridViT whose head is scaled so that random spectra open and close triggers
often), real trigger state, real worker threads.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from quakemon.models.checkpoint import load_checkpoint
from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import DetectionResult, DetectionStage, WindowMeta
from quakemon.pipeline.engine import InferenceEngine
from quakemon.pipeline.forward_pool import ForwardPool, inference_pool
from quakemon.service.config import ConfigError, load_config

CONTRACT = InputContract()
STATIONS = [f"XX.S{i:02d}." for i in range(8)]
T0_S = 1_800_000_000


def spread_model(out: Path, seed: int = 0) -> Path:
    """A random TINY depth-1 checkpoint whose head is scaled and centred so that p(earthquake) of random spectra
    spreads over (0, 1): about half of the windows cross 0.5."""
    from quakemon.models import HybridViT, save_checkpoint

    torch.manual_seed(seed)
    model = HybridViT("TINY", depth=1, img_size=CONTRACT.spectrogram_shape, dropout=0.0).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(spectra_batch(np.random.default_rng(99), 64)))
        diff = logits[:, 1] - logits[:, 0]
        gain = 2.0 / float(diff.std())
        model.head.weight.mul_(gain)
        model.head.bias.mul_(gain)
        model.head.bias[1] -= gain * float(diff.median())
    save_checkpoint(out, model, ["noise", "earthquake"], CONTRACT, provenance={"note": "random test weights"})
    return out


def spectra_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, CONTRACT.n_channels, *CONTRACT.spectrogram_shape)).astype(np.float32)


def micro_batches(count: int, seed: int = 1) -> Iterator[tuple[np.ndarray, list[WindowMeta], np.ndarray]]:
    """(spectra, metas, samples) of `count` micro-batches of 2 consecutive window starts of every station; every
    seventh window is invalid (not inferred)."""
    rng = np.random.default_rng(seed)
    k = 0
    for b in range(count):
        metas = []
        for t in (2 * b, 2 * b + 1):
            for station in STATIONS:
                start = (T0_S + t) * 10**9
                metas.append(WindowMeta(station, start, start + 20 * 10**9, "HH", valid=k % 7 != 3))
                k += 1
        data = rng.standard_normal((len(metas), CONTRACT.n_channels, CONTRACT.window_samples)).astype(np.float32)
        yield spectra_batch(rng, len(metas)), metas, data


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return spread_model(tmp_path_factory.mktemp("ckpt") / "spread.safetensors")


def detection_stage(checkpoint: Path, forward: int) -> DetectionStage:
    engine = InferenceEngine(load_checkpoint(checkpoint), device="cpu", precision="fp32", batch_size=forward)
    return DetectionStage(engine, on=0.5, off=0.5, min_duration_s=0.0, trigger_label="earthquake",
                          retrigger_hold_s=0.0)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The reference forwards run on one torch thread, as each pool worker does: the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bodies(results: list[DetectionResult]) -> list[dict]:
    return [body for r in results for body, _ in r.detections]


def test_the_pool_publishes_the_sequential_detections_in_the_same_order(checkpoint: Path, one_torch_thread) -> None:
    batches = list(micro_batches(30))
    reference = detection_stage(checkpoint, forward=8)
    expected = bodies([reference.process(*b) for b in batches])
    assert {"new", "closed"} <= {b["state"] for b in expected} and len(expected) >= 20  # triggers really fire

    stage = detection_stage(checkpoint, forward=8)
    pool, workers = inference_pool(stage.engine.device, 2, 2, "test-infer")
    forwards = ForwardPool(stage, pool, workers)
    assert forwards.task == 8  # each 16-window micro-batch goes out as two forwards
    results = []
    try:
        for b in batches:
            while forwards.full:
                results.append(forwards.next(block=True))
            forwards.submit(*b)
            while (done := forwards.next()) is not None:
                results.append(done)
        while (done := forwards.next(block=True)) is not None:
            results.append(done)
    finally:
        forwards.close()
    assert [len(metas) for metas, _ in results] == [16] * 30
    assert all(isinstance(r, DetectionResult) for _, r in results)
    got = bodies([r for _, r in results])
    assert got == expected
    assert stage.stats == reference.stats and stage.opened == reference.opened


def test_without_workers_the_forwards_run_in_submit(checkpoint: Path, one_torch_thread) -> None:
    batches = list(micro_batches(6, seed=2))
    reference = detection_stage(checkpoint, forward=8)
    expected = bodies([reference.process(*b) for b in batches])
    assert expected  # triggers really fire
    stage = detection_stage(checkpoint, forward=8)
    forwards = ForwardPool(stage, None, 0)
    got = []
    for b in batches:
        assert not forwards.full
        forwards.submit(*b)
        assert forwards.windows == 16 and len(forwards) == 1
        metas, result = forwards.next()  # already finished: nothing to wait for
        got += [body for body, _ in result.detections]
    assert got == expected and forwards.next() is None
    forwards.close()


def test_a_failed_forward_drops_its_micro_batch_only(checkpoint: Path) -> None:
    stage = detection_stage(checkpoint, forward=8)
    pool, workers = inference_pool(stage.engine.device, 2, 2, "test-infer")
    forwards = ForwardPool(stage, pool, workers)
    good, bad, after = micro_batches(3, seed=3)
    real = stage.engine.model
    try:
        forwards.submit(*good)
        first = forwards.next(block=True)
        stage.engine.model = lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("forward broke"))
        forwards.submit(*bad)
        metas, failed = forwards.next(block=True)
        stage.engine.model = real
        forwards.submit(*after)
        last = forwards.next(block=True)
    finally:
        forwards.close()
    assert isinstance(first[1], DetectionResult) and isinstance(last[1], DetectionResult)
    assert isinstance(failed, RuntimeError) and "forward broke" in str(failed) and len(metas) == 16
    assert stage.stats["windows"] == 32  # the failed windows never reached the triggers
    assert stage.engine.stats.failures == 2  # both forwards of the failed micro-batch


def test_a_finished_forward_wakes_a_poller_and_full_stops_submitting(checkpoint: Path) -> None:
    stage = detection_stage(checkpoint, forward=8)
    pool, workers = inference_pool(stage.engine.device, 1, 2, "test-infer")
    forwards = ForwardPool(stage, pool, workers)
    try:
        assert forwards.max_tasks == 2
        spectra, metas, data = next(micro_batches(1, seed=4))
        forwards.submit(spectra, metas, data)  # two tasks of 8: one running, one waiting
        assert forwards.full
        readable, _, _ = select.select([forwards.fileno()], [], [], 60)
        assert readable  # woken by a finished forward, not by a timeout
        while forwards.next(block=True) is not None:
            pass
        assert not forwards.full and forwards.windows == 0
        readable, _, _ = select.select([forwards.fileno()], [], [], 0)
        assert not readable  # the wake-ups were taken with the results
    finally:
        forwards.close()
    forwards.close()  # idempotent


def test_auto_workers_split_the_cores_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    pool, workers = inference_pool(cpu, None, 2, "test-auto")
    assert workers == 2 and pool is not None
    pool.shutdown()
    assert inference_pool(cpu, 0, 2, "test-none") == (None, 0)


def write(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "q.toml"
    path.write_text(f"[seedlink]\nstreams = [\"XX.S..HH?\"]\n[model]\ninference_workers = {value}\n")
    return path


@pytest.mark.parametrize(("value", "expected"), [('"auto"', "auto"), ("2", 2), ("0", 0), ('"3"', 3)])
def test_inference_workers_is_auto_or_a_count(tmp_path: Path, value: str, expected: object) -> None:
    assert load_config(write(tmp_path, value)).model.inference_workers == expected


@pytest.mark.parametrize("value", ["-1", "65", '"many"', "true", "1.5"])
def test_a_bad_inference_workers_is_refused_with_what_was_expected(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r'model\.inference_workers: expected "auto" or an integer 0\.\.64'):
        load_config(write(tmp_path, value))


def published_run(tmp_path: Path, checkpoint: Path, workers: int, batches: list) -> tuple[list[dict], dict]:
    """(detection bodies, last heartbeat) of a real `quakemon run --stages inference` daemon with
    model.inference_workers = `workers` that gets `batches` as spectra messages (one micro-batch each), as the
    preprocess stage sends them, and is stopped once it has inferred them all."""
    import zmq
    from support.pipeline import Subscriber, free_port, start_daemon, wait_for, write_config

    from quakemon.service.stages.messages import SPECTRA, Batch

    spectra_ep, publish_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    config = write_config(tmp_path / f"w{workers}.toml", server_port=free_port(), checkpoint=checkpoint,
                          runtime_dir=tmp_path / f"run{workers}", publish_port=publish_port, on=0.5, off=0.5,
                          extra={"model": {"inference_workers": workers, "batch_size": 16, "screen_every": 1},
                                 "trigger": {"retrigger_hold": 0.0},
                                 "pipeline": {"spectra_endpoint": spectra_ep}, "publish": {"journal": ""}})
    sub = Subscriber(f"tcp://127.0.0.1:{publish_port}")
    daemon = start_daemon(config, tmp_path, f"workers{workers}", stages="inference")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        daemon.wait_event("daemon_ready", 180)
        wait_for(lambda: sub.bodies("heartbeat"), 30, "a heartbeat")
        assert daemon.events("inference_workers")[0]["workers"] == workers
        push.connect(spectra_ep)
        for spectra, metas, data in batches:
            push.send_multipart(Batch(SPECTRA, tuple(metas), {"spectra": spectra, "data": data}).frames())
        total = sum(len(metas) for _, metas, _ in batches)
        beat = wait_for(lambda: next((b for b in sub.bodies("heartbeat")[-1:] if b["windows_out"] == total), None),
                        120, f"{total} windows inferred")
        assert daemon.stop(30) == 0, daemon.stderr()[-3000:]
    finally:
        push.close()
        ctx.term()
        daemon.stop()
        sub.close()
    return sub.bodies("detection."), beat


@pytest.mark.timeout(600)
def test_a_daemon_with_two_workers_publishes_what_one_thread_publishes(tmp_path: Path, checkpoint: Path) -> None:
    """The same spectra through the inference stage's own thread (inference_workers = 0: one forward at a time,
    the stage as it was) and through two forward workers give the same detection bodies in the same order
    (but for their seq stamps, and closes that depend on when the daemon stopped: "gap" and "shutdown")."""
    batches = list(micro_batches(30, seed=5))

    def comparable(bodies: list[dict]) -> list[dict]:
        return [{k: v for k, v in b.items() if k not in ("seq", "topic_seq", "epoch")} for b in bodies
                if b.get("close_reason") not in ("gap", "shutdown")]

    one, beat_one = published_run(tmp_path, checkpoint, 0, batches)
    two, beat_two = published_run(tmp_path, checkpoint, 2, batches)
    assert beat_one["inference"]["failed_batches"] == beat_two["inference"]["failed_batches"] == 0
    assert beat_one["dropped"] == beat_two["dropped"] == 0
    assert len(comparable(one)) >= 20 and any(b["state"] == "closed" for b in comparable(one))
    assert comparable(two) == comparable(one)
