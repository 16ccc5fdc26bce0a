"""Malformed messages on the stage sockets are dropped and counted, never fatal.

A real `quakemon run --stages preprocess,inference` daemon whose windows endpoint the test binds (as the ingest
stage would) gets 10,000 fuzzed messages on the preprocess PULL (windows) and 10,000 on the inference PULL
(spectra): random frames, truncated and extra frames, valid headers with wrong shapes and dtypes, huge declared
sizes, garbage and deeply nested JSON, and valid messages with mutated fields, from a seeded generator.
Afterwards no stage has died, every rejected message was counted (heartbeat `messages_rejected`), and real windows
still reach the inference stage.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from support.pipeline import Subscriber, free_port, start_daemon, wait_for, write_config

from quakemon.models.contract import InputContract
from quakemon.pipeline.detect import WindowMeta
from quakemon.service.stages.messages import SPECTRA, STATUS, WINDOWS, Batch, InvalidMessage, decode, status_frames
from quakemon.wire.schema import ARRAYS_SCHEMA, MessageError, json_bytes

N_MESSAGES = 10_000
START_TIMEOUT = 120.0
CONTRACT = InputContract()
Frames = list[bytes]

_VALUES: list[Any] = [None, True, -1, 0, 2**70, -(2**70), 1.5, float("inf"), float("nan"), "", "x" * 300, "XX.YY.",
                      [], ["Z", 3], {}, {"a": 1}, [[[[]]]]]


def _windows(n: int, t0_s: int, station: str = "XX.FUZZ.") -> list[WindowMeta]:
    return [WindowMeta(station, (t0_s + i) * 10**9, (t0_s + i + 20) * 10**9, "HH", arrival=time.time())
            for i in range(n)]


def _valid(kind: str, rng: random.Random, n: int = 1) -> Frames:
    """A well-formed message of `kind` for the default contract (small noise, n windows)."""
    data = rng.choice(_NOISE)[:n] if n <= 2 else np.zeros((n, CONTRACT.n_channels, CONTRACT.window_samples),
                                                           np.float32)
    metas = _windows(n, 1_700_000_000 + rng.randrange(10**6))
    if kind == WINDOWS:
        return [bytes(f) for f in Batch(WINDOWS, tuple(metas), {"data": data}).frames()]
    done = tuple(WindowMeta(m.station, m.start_ns, m.end_ns, m.instrument, m.arrival, valid=True) for m in metas)
    freq, frames = CONTRACT.spectrogram_shape
    spectra = np.zeros((n, CONTRACT.n_channels, freq, frames), np.float32)
    return [bytes(f) for f in Batch(SPECTRA, done, {"spectra": spectra, "data": data}).frames()]


_NOISE = [np.random.default_rng(i).standard_normal((2, CONTRACT.n_channels, CONTRACT.window_samples))
          .astype(np.float32) for i in range(4)]


def _head(frames: Frames) -> dict[str, Any]:
    return json.loads(frames[0])


def _with_head(head: dict[str, Any], rest: Frames) -> Frames:
    return [json.dumps(head, allow_nan=True).encode(), *rest]


def _random_frames(rng: random.Random, kind: str) -> Frames:
    return [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 5))]  # ZeroMQ sends >= 1 frame


def _truncated(rng: random.Random, kind: str) -> Frames:
    frames = _valid(kind, rng)
    i = rng.randrange(len(frames))
    choice = rng.randrange(3)
    if choice == 0:
        frames[i] = frames[i][: rng.randrange(len(frames[i]))]
    elif choice == 1:
        del frames[i]
    else:
        frames.append(rng.randbytes(rng.randrange(1, 64)))
    return frames


def _wrong_arrays(rng: random.Random, kind: str) -> Frames:
    """A header whose arrays are self-consistent (the frames hold what it declares) but not what the stage takes."""
    frames = _valid(kind, rng, n=rng.choice([1, 2]))
    head = _head(frames)
    spec = rng.choice(head["arrays"])
    choice = rng.randrange(4)
    if choice == 0:  # another allowed dtype
        spec["dtype"] = rng.choice(["<f8", "<i4", "|u1", "<f2", "<c8"])
    elif choice == 1:  # another shape, same count of elements
        spec["shape"] = [int(np.prod(spec["shape"]))]
    elif choice == 2:  # a renamed array
        spec["name"] = rng.choice(["samples", "x", "", "spectra" if spec["name"] == "data" else "data"])
    else:  # one axis off (one window more than the metadata, or a shorter window)
        axis = rng.randrange(len(spec["shape"]))
        spec["shape"][axis] += 1
    arrays = []
    for s, frame in zip(head["arrays"], frames[1:], strict=True):
        size = int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize if s["name"] != "" else len(frame)
        arrays.append((frame * (size // max(1, len(frame)) + 1))[:size])
    return _with_head(head, arrays)


def _huge(rng: random.Random, kind: str) -> Frames:
    frames = _valid(kind, rng)
    head = _head(frames)
    choice = rng.randrange(3)
    if choice == 0:
        head["arrays"][0]["shape"] = [10**12, 3, 2000]
    elif choice == 1:
        head["header"]["windows"] = [{}] * rng.choice([4097, 50_000])
    else:
        head["arrays"][0]["shape"] = [2**62, 2**62]
    return _with_head(head, frames[1:])


def _garbage_json(rng: random.Random, kind: str) -> Frames:
    choice = rng.randrange(6)
    text = [b"{not json", b"[" * rng.randrange(1000, 100_000), b'"a string"', b"null", b"\xff\xfe\x00{",
            json_bytes({"schema": ARRAYS_SCHEMA, "header": [], "arrays": {}})][choice]
    return [text, *([rng.randbytes(8)] if rng.random() < 0.5 else [])]


def _mutated(rng: random.Random, kind: str) -> Frames:
    """A well-formed message with one header field replaced, removed or added."""
    frames = _valid(kind, rng, n=rng.choice([1, 2]))
    head = _head(frames)
    header = head["header"]
    choice = rng.randrange(5)
    if choice == 0:
        header["kind"] = rng.choice([*_VALUES, STATUS, WINDOWS if kind == SPECTRA else SPECTRA])
    elif choice == 1:
        meta = rng.choice(header["windows"])
        meta[rng.choice([*meta, "extra"])] = rng.choice(_VALUES)
    elif choice == 2:
        meta = rng.choice(header["windows"])
        del meta[rng.choice(list(meta))]
    elif choice == 3:
        header["windows"] = rng.choice([*_VALUES, header["windows"][:-1], header["windows"] * 2])
    else:
        head[rng.choice(["schema", "header", "arrays"])] = rng.choice(_VALUES)
    return _with_head(head, frames[1:])


def _status(rng: random.Random, kind: str) -> Frames:
    """A status report, often with a malformed counter or identity."""
    body: dict[str, Any] = {"stage": "ingest", "source": f"fuzz:{rng.randrange(50)}", "pid": 1, "ready": True,
                            "loops": 1, "progress": 1, "stats": {"stations": 1, "windows_out": 5}, "time": 0.0}
    if rng.random() < 0.8:
        target = body["stats"] if rng.random() < 0.5 else body
        key = rng.choice(["stations", "windows_out", "oldest_end_s", "dropped_ingest", "stage", "source", "stats"])
        target[key] = copy.deepcopy(rng.choice(_VALUES))
    try:
        return [bytes(f) for f in status_frames(body)]
    except MessageError:  # NaN / inf: JSON the stages do not send, written anyway
        return _with_head({"schema": ARRAYS_SCHEMA, "header": {"kind": STATUS, "status": body}, "arrays": []}, [])


FUZZERS: list[Callable[[random.Random, str], Frames]] = [_random_frames, _truncated, _wrong_arrays, _huge,
                                                         _garbage_json, _mutated, _status]


def fuzzed(kind: str, seed: int, n: int) -> tuple[list[Frames], int]:
    """n fuzzed messages for a receiver of `kind`, and how many of them the stage must reject."""
    rng = random.Random(seed)
    messages, rejected = [], 0
    for i in range(n):
        frames = FUZZERS[i % len(FUZZERS)](rng, kind)
        try:
            decode(frames, CONTRACT, kind)
        except InvalidMessage:
            rejected += 1
        messages.append(frames)
    return messages, rejected


def test_the_fuzzer_makes_mostly_invalid_messages_that_decode_rejects_with_one_exception_type():
    """decode raises InvalidMessage and nothing else, whatever arrives (checked here, in process, as well)."""
    for kind in (WINDOWS, SPECTRA):
        messages, rejected = fuzzed(kind, seed=7, n=1400)
        assert 0.7 * len(messages) < rejected < len(messages)
        for frames in (_valid(kind, random.Random(1)), _valid(kind, random.Random(2), n=2)):
            assert isinstance(decode(frames, CONTRACT, kind), Batch)


def test_rejections_of_every_receiving_stage_become_one_metric_by_reason():
    from quakemon.service.daemon import MetricsBridge, StageProcess
    from quakemon.service.metrics import Metrics

    class _Proc:
        def __init__(self, pid: int) -> None:
            self.pid = pid

    bridge = MetricsBridge(Metrics())
    pre = StageProcess("preprocess-0", "preprocess", proc=_Proc(1))
    inf = StageProcess("inference", "inference", proc=_Proc(2))
    pre.stats = {"messages_rejected": 3, "messages_rejected_reasons": {"frames": 2, "shape": 1}}
    inf.stats = {"messages_rejected": 1, "messages_rejected_reasons": {"frames": 1}}
    bridge([pre, inf])
    pre.stats = {"messages_rejected": 4, "messages_rejected_reasons": {"frames": 3, "shape": 1}}
    bridge([pre, inf])
    reg = bridge.metrics.registry
    assert reg.get_sample_value("quakemon_messages_rejected_total", {"reason": "frames"}) == 4
    assert reg.get_sample_value("quakemon_messages_rejected_total", {"reason": "shape"}) == 1


def _send_all(sock: zmq.Socket, messages: list[Frames]) -> None:
    for frames in messages:
        sock.send_multipart(frames)  # SNDTIMEO bounds each send


def _push(ctx: zmq.Context, endpoint: str, bind: bool) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 30_000)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def _rejected(sub: Subscriber) -> dict[str, int]:
    beats = sub.bodies("heartbeat")
    return beats[-1].get("messages_rejected", {}) if beats else {}


def _windows_out(sub: Subscriber) -> int:
    beats = sub.bodies("heartbeat")
    return beats[-1]["windows_out"] if beats else -1


def _settled(sub: Subscriber, seconds: float = 1.5) -> int | None:
    """windows_out once it has not changed (and no queue holds windows) for `seconds` of heartbeats."""
    now = time.monotonic()
    recent = [b for t, b in sub.timed("heartbeat") if now - t <= seconds]
    if len(recent) < 2 or len({b["windows_out"] for b in recent}) != 1 or any(recent[-1]["queue_depths"].values()):
        return None
    return recent[-1]["windows_out"]


@pytest.mark.timeout(240)
def test_fuzzed_messages_never_kill_a_stage_and_are_counted(tmp_path: Path, tiny_checkpoint: Path):
    windows_ep, spectra_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publish_port = free_port()
    config = write_config(tmp_path / "fuzz.toml", server_port=free_port(), checkpoint=tiny_checkpoint,
                          runtime_dir=tmp_path / "run", publish_port=publish_port, on=0.99, off=0.5,
                          extra={"pipeline": {"windows_endpoint": windows_ep, "spectra_endpoint": spectra_ep},
                                 "publish": {"journal": ""}})
    ctx = zmq.Context()
    to_preprocess = _push(ctx, windows_ep, bind=True)  # the ingest stage's side of the windows hop
    sub = Subscriber(f"tcp://127.0.0.1:{publish_port}", "heartbeat")
    daemon = start_daemon(config, tmp_path, "fuzz", stages="preprocess,inference")
    to_inference = None
    try:
        windows, rejected_windows = fuzzed(WINDOWS, seed=1, n=N_MESSAGES)  # while the stages start
        spectra, rejected_spectra = fuzzed(SPECTRA, seed=2, n=N_MESSAGES)
        daemon.wait_event("daemon_ready", START_TIMEOUT)
        to_inference = _push(ctx, spectra_ep, bind=False)
        wait_for(lambda: _windows_out(sub) >= 0, 30, "a heartbeat")
        started = time.monotonic()
        for i in range(0, N_MESSAGES, 500):  # both stages at once
            try:
                _send_all(to_preprocess, windows[i : i + 500])
                _send_all(to_inference, spectra[i : i + 500])
            except zmq.Again:
                pytest.fail(f"a stage stopped taking messages after {i}: {daemon.events('stage_died')}")
        expected = {"preprocess": rejected_windows, "inference": rejected_spectra}
        wait_for(lambda: _rejected(sub) == expected, 60, f"rejections counted {expected}, seen {_rejected(sub)}")
        assert time.monotonic() - started < 90
        assert not daemon.events("stage_died") and daemon.proc.poll() is None, daemon.stderr()[-3000:]
        logged = daemon.events("stage_message_rejected")
        assert logged and len(logged) < 50, len(logged)  # rate-limited, with its reason
        assert {e["stage"] for e in logged} == {"preprocess", "inference"} and all(e["reason"] for e in logged)
        # real windows still go through both stages to the model
        before = wait_for(lambda: _settled(sub), 60, "the fuzzed windows to settle")
        real = Batch(WINDOWS, tuple(_windows(2, 1_800_000_000, "XX.REAL.")), {"data": _NOISE[0]})
        to_preprocess.send_multipart(real.frames())
        wait_for(lambda: _windows_out(sub) >= before + 2, 30, "two real windows inferred after the fuzzing")
        assert not daemon.events("stage_died") and daemon.proc.poll() is None
    finally:
        code = daemon.stop()
        sub.close()
        for sock in (to_preprocess, to_inference):
            if sock is not None:
                sock.close(linger=0)
        ctx.term()
    assert code == 0, daemon.stderr()[-3000:]
