"""ScreenNet: shapes, both architectures (format 1 and 2 files), checkpoint round trip and refusals, threshold
logic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quakemon.models.contract import InputContract
from quakemon.models.screen_meta import FORMAT, FORMAT_V1
from quakemon.models.screen_net import (
    ScreenArgs,
    ScreenCheckpointError,
    ScreenNet,
    avg_pool,
    choose_threshold,
    load_screen,
    passes,
    save_screen,
)

SHA = "ab" * 32


#: The first architecture (format 1, and the default): every component a channel, no pooling.
V1 = {"pool": 1, "components": "all"}
#: The pooled architecture: the components' max, 2 x 2 average pooling.
POOLED = {"pool": 2, "components": "max"}


def _net(seed: int = 1, **arch) -> ScreenNet:
    torch.manual_seed(seed)
    net = ScreenNet(ScreenArgs(**arch))
    net.train()
    net(torch.rand(16, 3, 33, 64))  # non-trivial BatchNorm statistics, part of what must survive a round trip
    return net.eval()


def test_shapes():
    x = torch.rand(5, 3, 33, 64)
    assert ScreenArgs() == ScreenArgs(**V1)
    for net, channels in ((_net(**POOLED), 1), (_net(**V1), 3)):
        assert net(x).shape == (5,)
        assert net.features(x).shape == (5, channels, 33, 64)
        assert torch.equal(net.features(torch.zeros(1, 3, 33, 64)),
                           torch.full((1, channels, 33, 64), float(np.log(1e-4))))
        with pytest.raises(ValueError, match=r"expected spectrograms \[B, 3, 33, 64\], got \[2, 1, 33, 64\]"):
            net(torch.rand(2, 1, 33, 64))
    with pytest.raises(ValueError, match="widths must be three positive integers"):
        ScreenArgs(widths=(4, 0, 4))
    with pytest.raises(ValueError, match="pool must be an integer from 1 to 4"):
        ScreenArgs(pool=0)
    with pytest.raises(ValueError, match=r"components must be one of \['all', 'max'\]"):
        ScreenArgs(components="mean")


def test_max_of_components_is_taken_before_the_log_as_training_reduces_it():
    """The "max" features (max, then log) equal the max of the cached log spectra (`reduce`), as training uses
    them; a single-component window (other channels zero) gives the same features as that component alone."""
    net = _net(**POOLED)
    x = torch.rand(4, 3, 33, 64) * 5
    x[0, 1:] = 0.0
    with torch.inference_mode():
        features = net.features(x).numpy()
        reduced = net.reduce(net.log_spectra(x).numpy())
        alone = net.log_spectra(x[:1]).numpy()[0, 0]
    np.testing.assert_array_equal(features, reduced)
    np.testing.assert_array_equal(features[0, 0], alone)
    assert _net(**V1).reduce(reduced) is reduced  # "all": the log spectra are the features


def test_score_does_not_depend_on_the_batch():
    """A window's score does not depend on the other windows of its batch (eval mode)."""
    net = _net()
    x = torch.rand(6, 3, 33, 64)
    with torch.inference_mode():
        assert torch.allclose(net(x)[2:3], net(x[2:3]), atol=1e-6)


@pytest.mark.parametrize("arch", [V1, POOLED, {"pool": 3, "components": "max", "widths": (4, 8, 12)},
                                  {"pool": 2, "components": "all"}])
def test_round_trip_is_bit_identical(tmp_path, arch):
    net = _net(**arch)
    contract = InputContract()
    path = save_screen(tmp_path / "s.safetensors", net, -2.5, SHA, contract, extra={"note": "test"})
    scr = load_screen(path, SHA, contract)
    assert scr.meta["format"] == FORMAT and scr.net.args == net.args
    x = torch.rand(7, 3, 33, 64)
    with torch.inference_mode():
        assert torch.equal(net(x), scr.net(x))
    assert scr.threshold == -2.5 and scr.meta["note"] == "test"
    assert not scr.net.training
    assert scr.passes(x.numpy()).tolist() == (scr.scores(x.numpy()) >= -2.5).tolist()


def _write(path, state, meta):
    save_file(state, str(path), metadata={"quakemon_screen": json.dumps(meta)})
    return path


@pytest.mark.parametrize("k", [2, 3, 4])
def test_avg_pool_gives_the_values_of_torch_avg_pool2d(k):
    """The pooled screens were distilled with `avg_pool2d`: the cheaper pooling must give their scores bit for
    bit (log features of spectra over 12 decades, odd and even map sizes, a gradient too)."""
    rng = np.random.default_rng(k)
    for shape in ((64, 1, 33, 64), (5, 3, 17, 30), (1, 1, k, k)):
        spectra = np.abs(rng.standard_normal(shape)) * 10.0 ** rng.uniform(-6, 6, shape[:1] + (1, 1, 1))
        x = torch.log(torch.from_numpy(spectra.astype(np.float32)) + 1e-4).requires_grad_()
        a, b = torch.nn.functional.avg_pool2d(x, k), avg_pool(x, k)
        assert a.shape == b.shape and torch.equal(a, b)
        (ga,) = torch.autograd.grad(a.square().sum(), x)
        (gb,) = torch.autograd.grad(b.square().sum(), x)
        assert torch.equal(ga, gb)


def test_a_format_1_file_loads_as_the_first_architecture(tmp_path):
    """A file of the first format (its args: the input shape and the widths only, as written before the
    architecture arguments existed) loads as every component a channel, no pooling: the same scores."""
    net = _net(**V1)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {"format": FORMAT_V1, "args": {"in_channels": 3, "freq_bins": 33, "frames": 64, "widths": [16, 32, 48]},
            "threshold": -1.5, "teacher_sha256": SHA, "contract": {}}
    scr = load_screen(_write(tmp_path / "v1.safetensors", state, meta))
    assert scr.net.args == ScreenArgs(**V1) and scr.threshold == -1.5
    x = torch.rand(3, 3, 33, 64)
    with torch.inference_mode():
        assert torch.equal(net(x), scr.net(x))
    # a format-1 file with the new arguments, a format-2 file without them, an unknown architecture: refused
    for change, match in (({"args": {**meta["args"], "pool": 2, "components": "max"}}, "format quakemon.screen/1 has"),
                          ({"format": FORMAT}, r"architecture arguments \['frames', 'freq_bins', 'in_channels', "
                                               r"'widths'\], format quakemon.screen/2 has"),
                          ({"format": FORMAT, "args": {**meta["args"], "pool": 1, "components": "fft"}},
                           "unknown screen architecture \\(components 'fft'"),
                          ({"format": FORMAT, "args": {**meta["args"], "pool": 9, "components": "all"}},
                           "malformed screen metadata .*pool must be")):
        with pytest.raises(ScreenCheckpointError, match=match):
            load_screen(_write(tmp_path / "m.safetensors", state, {**meta, **change}))
    # the other architecture's weights under this one's arguments
    other = {k: v.contiguous() for k, v in _net(**POOLED).state_dict().items()}
    with pytest.raises(ScreenCheckpointError, match="weights do not fit the architecture"):
        load_screen(_write(tmp_path / "w.safetensors", other, meta))


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
    meta = {"format": FORMAT, "args": {**ScreenArgs().to_dict(), "widths": [8, 8, 8]}, "threshold": -1.0,
            "teacher_sha256": SHA, "contract": {}}
    other = tmp_path / "other.safetensors"
    save_file(state, str(other), metadata={"quakemon_screen": json.dumps(meta)})
    with pytest.raises(ScreenCheckpointError, match="weights do not fit"):
        load_screen(other)
    for change, match in (({"format": "x/9"}, "format 'x/9', expected one of .*distil it again"),
                          ({"threshold": "nan"}, "not finite"), ({"args": {"bogus": 1}}, "malformed screen metadata")):
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
