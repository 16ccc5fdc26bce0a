"""ScreenNet: shapes, the fixed band pooling, checkpoint round trip and refusals, threshold logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quakemon.models.contract import InputContract
from quakemon.models.screen_net import (
    ScreenArgs,
    ScreenCheckpointError,
    ScreenNet,
    choose_threshold,
    load_screen,
    passes,
    save_screen,
)

SHA = "ab" * 32


def _net(seed: int = 1) -> ScreenNet:
    torch.manual_seed(seed)
    net = ScreenNet(ScreenArgs())
    net.train()
    net(torch.rand(16, 3, 33, 64))  # non-trivial BatchNorm statistics, part of what must survive a round trip
    return net.eval()


def test_shapes():
    net = _net()
    x = torch.rand(5, 3, 33, 64)
    assert net(x).shape == (5,)
    assert net.features(x).shape == (5, 3, 33, 64)
    assert torch.equal(net.features(torch.zeros(1, 3, 33, 64)), torch.full((1, 3, 33, 64), float(np.log(1e-4))))
    with pytest.raises(ValueError, match=r"expected spectrograms \[B, 3, 33, 64\], got \[2, 1, 33, 64\]"):
        net(torch.rand(2, 1, 33, 64))
    with pytest.raises(ValueError, match="widths must be three positive integers"):
        ScreenArgs(widths=(4, 0, 4))


def test_score_does_not_depend_on_the_batch():
    """A window's score does not depend on the other windows of its batch (eval mode)."""
    net = _net()
    x = torch.rand(6, 3, 33, 64)
    with torch.inference_mode():
        assert torch.allclose(net(x)[2:3], net(x[2:3]), atol=1e-6)


def test_round_trip_is_bit_identical(tmp_path):
    net = _net()
    contract = InputContract()
    path = save_screen(tmp_path / "s.safetensors", net, -2.5, SHA, contract, extra={"note": "test"})
    scr = load_screen(path, SHA, contract)
    x = torch.rand(7, 3, 33, 64)
    with torch.inference_mode():
        assert torch.equal(net(x), scr.net(x))
    assert scr.threshold == -2.5 and scr.meta["note"] == "test"
    assert not scr.net.training
    assert scr.passes(x.numpy()).tolist() == (scr.scores(x.numpy()) >= -2.5).tolist()


def test_refusals(tmp_path):
    net, contract = _net(), InputContract()
    path = save_screen(tmp_path / "s.safetensors", net, -1.0, SHA, contract)
    with pytest.raises(ScreenCheckpointError, match="does not exist"):
        load_screen(tmp_path / "missing.safetensors")
    with pytest.raises(ScreenCheckpointError, match="distilled from detector abababab"):
        load_screen(path, "cd" * 32)
    with pytest.raises(ScreenCheckpointError, match="built for input"):
        load_screen(path, SHA, InputContract(window_samples=3000))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ScreenCheckpointError, match="not a readable safetensors file"):
        load_screen(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ScreenCheckpointError, match="no 'quakemon_screen' metadata"):
        load_screen(plain)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"format": "quakemon.screen/1", "args": {**ScreenArgs().to_dict(), "widths": [8, 8, 8]}, "threshold": -1.0,
            "teacher_sha256": SHA, "contract": {}}
    other = tmp_path / "other.safetensors"
    save_file(state, str(other), metadata={"quakemon_screen": json.dumps(meta)})
    with pytest.raises(ScreenCheckpointError, match="weights do not fit"):
        load_screen(other)
    for change, match in (({"format": "x/9"}, "format 'x/9'"), ({"threshold": "nan"}, "not finite"),
                          ({"args": {"bogus": 1}}, "malformed screen metadata")):
        p = tmp_path / "m.safetensors"
        save_file(state, str(p), metadata={"quakemon_screen": json.dumps({**meta, **change})})
        with pytest.raises(ScreenCheckpointError, match=match):
            load_screen(p)
    with pytest.raises(ValueError, match="finite"):
        save_screen(tmp_path / "n.safetensors", net, float("inf"), SHA, contract)


def test_threshold_logic():
    scores = np.array([-5.0, -3.0, -1.0, 0.5, 2.0, np.nan])
    teacher = np.array([0.001, 0.2, 0.05, 0.6, 0.9, 0.0])
    assert choose_threshold(scores[:5], teacher[:5], 0.1) == -3.0
    assert choose_threshold(scores[:5], teacher[:5], 0.5, margin=0.5) == 0.0
    t = choose_threshold(scores[:5], teacher[:5], 0.1, margin=0.25)
    assert passes(scores[:5], t)[teacher[:5] >= 0.1].all()
    assert passes(scores, -3.0).tolist() == [False, True, True, True, True, True]  # NaN passes
    with pytest.raises(ValueError, match="no window with teacher probability >= 0.95"):
        choose_threshold(scores[:5], teacher[:5], 0.95)
    with pytest.raises(ValueError, match="differ in shape"):
        choose_threshold(scores, teacher[:3], 0.1)
