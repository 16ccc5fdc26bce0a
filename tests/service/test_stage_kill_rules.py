"""The rules behind a lossless stage restart, one by one: the ingest stage's rewind of the batches it sent (real
ZeroMQ sockets), the preprocess stage's reset ahead of it (the re-sent windows reach the new inference process in
window order), and the inference stage holding silent-station expiry while no ingest status arrives.

The daemon-level behaviour (real processes, SIGKILL) is in tests/service/test_stage_kill_lossless.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import zmq
from support.engines import AlwaysEarthquake

from quakemon.base.signals import StopFlag
from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import DetectionStage, WindowMeta
from quakemon.service.config import load_config
from quakemon.service.stages.ingest import IngestStage
from quakemon.service.stages.messages import SPECTRA, WINDOWS, Batch, decode
from quakemon.service.stages.preprocess import PreprocessStage

T0 = 1_700_000_000.0


def _batch(first: int, n: int) -> Batch:
    metas = tuple(WindowMeta("XX.STA.", (first + i) * 10**9, (first + i + 20) * 10**9) for i in range(n))
    return Batch(WINDOWS, metas, {"data": np.zeros((n, 3, InputContract().window_samples), np.float32)})


def _starts(pull: zmq.Socket, contract: InputContract, kind: str = WINDOWS) -> list[int]:
    out: list[int] = []
    while pull.poll(200):
        msg = decode(pull.recv_multipart(), contract, kind)
        if isinstance(msg, Batch):  # (status reports pass too)
            out += [m.start_ns // 10**9 for m in msg.metas]
    return out


def test_ingest_rewind_sends_the_kept_batches_again_oldest_first_ahead_of_newer_ones() -> None:
    cfg = load_config(None, {"pipeline.queue_hwm": 8})  # keeps the newest 4 windows
    contract = InputContract()
    stage = IngestStage(cfg, contract, StopFlag(), None)
    ctx = zmq.Context.instance()
    stage.push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        stage.push.bind("inproc://rewind-test")
        pull.connect("inproc://rewind-test")
        for first in (0, 2, 4):
            stage.queue.put(_batch(first, 2))
        stage.send()
        assert _starts(pull, contract) == [0, 1, 2, 3, 4, 5]
        assert [m.start_ns // 10**9 for b in stage.kept for m in b.metas] == [2, 3, 4, 5]  # the newest 4
        stage.queue.put(_batch(6, 2))  # cut meanwhile, not yet sent
        stage.rewind.set()  # what SIGUSR2 does
        stage.send()
        assert _starts(pull, contract) == [2, 3, 4, 5, 6, 7]
        assert stage.rewinds == 1 and not stage.resend
        stage.rewind.set()  # a second restart: the re-sent batches are kept again
        stage.send()
        assert _starts(pull, contract) == [4, 5, 6, 7]
    finally:
        stage.push.close(linger=0)
        pull.close(linger=0)


def test_windows_sent_before_the_rewind_do_not_overtake_the_re_sent_ones(tmp_path) -> None:
    """The inference stage was killed; on a loaded machine the preprocess process handles its reset with a batch
    the ingest stage sent before the rewind still in its socket, and another one is sent before the rewind comes.
    Passed on, they would reach the new inference process ahead of the older re-sent windows, which it would drop
    as late (decided after newer windows of their station): every window must arrive, in window order."""
    cfg = load_config(None, {"pipeline.runtime_dir": str(tmp_path / "rt")})
    contract = InputContract()
    ingest = IngestStage(cfg, contract, StopFlag(), None)
    pre = PreprocessStage(cfg, contract, StopFlag(), None)
    ingest.push = ingest.socket(zmq.PUSH, cfg.pipeline.windows_endpoint, bind=True)
    inference = None
    try:
        assert pre.start()
        assert ingest.push.poll(5000, zmq.POLLOUT)  # connected: a batch sent now is not left queued

        def ingest_sends(*firsts: int) -> None:
            for first in firsts:
                ingest.queue.put(_batch(first, 2))
            for _ in range(400):  # as the stage's loop does: ZeroMQ may report the pipe full until its I/O
                ingest.send()     # thread has passed on that the earlier batches were read
                if pre.pull.poll(5):
                    return  # arrived, not yet received
            raise AssertionError("no batch reached the preprocess stage")

        ingest_sends(0, 2)
        while pre.windows < 4:
            pre.step()  # transformed and sent or queued for the inference process, which is killed now
        ingest_sends(4)  # not yet received (the preprocess process lags) ...
        pre.reset.set()  # ... when the supervisor's reset signal comes
        pre.step()
        ingest_sends(6)  # sent before the rewind reaches the ingest stage
        pre.step()
        ingest.rewind.set()
        ingest_sends(8)
        inference = pre.ctx.socket(zmq.PULL)  # the new process binds
        inference.bind(cfg.pipeline.spectra_endpoint)
        got: list[int] = []
        for _ in range(50):
            ingest.send()
            pre.step()
            got += _starts(inference, contract, SPECTRA)
            if got and got[-1] == 9:
                break
        assert got == list(range(10))
        assert pre.resets == 1 and pre.discarded >= 4  # (4-7: sent before the rewind)
    finally:
        if inference is not None:
            inference.close(linger=0)
        ingest.push.close(linger=0)
        ingest.ctx.term()
        pre.stop()


def test_deferred_silence_is_not_counted_against_a_station() -> None:
    stage = DetectionStage(AlwaysEarthquake(), 0.8, 0.5, 0.0, "earthquake")
    opened = stage.process(np.zeros((1, 1)), [WindowMeta("XX.STA.", round(T0 * 1e9), round((T0 + 1) * 1e9))])
    assert [b["state"] for b, _ in opened.detections] == ["new"]
    decided = time.monotonic()
    stage.defer_silence(10.0, now=decided + 10.5)  # the ingest stage was down for those 10 s
    assert stage.expire_silent(decided + 10.5) == []  # 0.5 s of silence counted: less than the 1 s window
    assert [b["close_reason"] for b, _ in stage.expire_silent(decided + 12.0)] == ["gap"]


def test_inference_holds_expiry_while_the_ingest_stage_is_quiet() -> None:
    """The publisher is a stand-in collecting bodies (the expiry rule is under test, not the PUB socket)."""
    from quakemon.service.stages.inference import UPSTREAM_QUIET_S, InferenceStage

    inf = InferenceStage(load_config(None), StopFlag(), None, "unused.safetensors")
    inf.stage = DetectionStage(AlwaysEarthquake(), 0.8, 0.5, 0.0, "earthquake")
    sent: list[dict] = []
    inf.publisher = SimpleNamespace(publish_detection=lambda body, arrival=None: sent.append(body))
    inf.stage.process(np.zeros((1, 1)), [WindowMeta("XX.STA.", round(T0 * 1e9), round((T0 + 1) * 1e9))])
    now = time.monotonic()
    inf.upstream.update({"stage": "ingest", "source": "h:1", "stats": {}}, now)
    inf.expire_silent(now + UPSTREAM_QUIET_S + 5.0)  # ingest quiet: nothing closes however long
    assert sent == [] and inf.quiet_since == now
    back = now + UPSTREAM_QUIET_S + 6.0
    inf.upstream.update({"stage": "ingest", "source": "h:2", "stats": {}}, back)  # the restarted ingest
    inf.expire_silent(back + 0.5)  # the quiet time is not silence: 0.5 s counts, less than the window
    assert sent == [] and inf.quiet_since is None
    inf.expire_silent(back + 2.0)
    assert [b["close_reason"] for b in sent] == ["gap"]
