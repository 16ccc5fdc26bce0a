"""Cascade screens for tests, built from `ScreenNet` with fixed weights (no screen checkpoint ships with the
repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from quakemon.data import realdata
from quakemon.models.screen_net import ScreenArgs, ScreenNet, choose_threshold
from quakemon.pipeline.runner import DetectionRunner

#: The detector shipped before the band-passed input contract (sha256 c9f26a24...; plain contract): the teacher of
#: the cascade tests. Their hand-built screens score a window by its log spectrogram's peakedness, which follows
#: this detector's probabilities on the catalogue's records; the band-passed model's spectrograms are all peaked
#: (empty bins above its band), so a peakedness screen cannot stand in for a distilled one there.
PLAIN_DETECTOR = Path(__file__).with_name("plain-detector.safetensors")

#: The first architecture (format-1 files, and the default): every component a channel, no pooling. Its
#: peakedness score separates the quiet windows of the catalogue's records from those the detector scores high;
#: pooled over the components' max, it does not (the pipeline's rule and plumbing do not depend on which network
#: scores).
FIRST = {"pool": 1, "components": "all"}
#: The pooled architecture: the components' max, 2 x 2 average pooling.
POOLED = {"pool": 2, "components": "max"}

#: Detection fields that differ between two replays of the same data.
VOLATILE = ("seq", "topic_seq", "epoch", "latency_s")

#: The threshold the test screens are saved with: sigmoid(-2.5) = 0.076, below any trigger off used in the tests.
FILL_LOGIT = -2.5


def plain_teacher(directory: Path) -> Any:
    """`PLAIN_DETECTOR`, loaded from a copy in `directory` (as the pipeline tests' `ckpt` fixture copies the
    bundled model)."""
    import shutil

    from quakemon.models.checkpoint import load_checkpoint

    return load_checkpoint(shutil.copyfile(PLAIN_DETECTOR, directory / PLAIN_DETECTOR.name))


def peakedness_net(contract: Any, bias: float = 0.0, **arch: Any) -> ScreenNet:
    """A ScreenNet whose score is the peakedness of the window's log spectrogram: channel 0 of each convolution
    averages its 3x3 neighbourhood of channel 0 (the first averages all its input channels, +10 so that every
    value stays positive through the ReLUs), the other channels are zero; the head takes max - mean of channel 0,
    + `bias`. arch: `ScreenArgs` keywords (pool, components; default: ScreenArgs' defaults)."""
    f, t = contract.spectrogram_shape
    net = ScreenNet(ScreenArgs(contract.n_channels, f, t, (2, 2, 2), **arch)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.norm.weight.fill_(1.0)
        net.conv1.weight[0].fill_(1.0 / (9 * net.conv1.in_channels))
        net.conv1.bias[0] = 10.0
        net.conv2.weight[0, 0].fill_(1.0 / 9)
        net.conv3.weight[0, 0].fill_(1.0 / 9)
        net.head.weight[0, 0], net.head.weight[0, 2] = 1.0, -1.0  # [amax(ch0), amax(ch1), mean(ch0), mean(ch1)]
        net.head.bias[0] = bias
    return net


def clear_threshold(scores: np.ndarray, p: np.ndarray, p_min: float, clearance: float = 1e-4) -> float:
    """The distillation's threshold (`choose_threshold`) lowered until no score lies within `clearance` of it:
    two forwards of a window in other batches may differ in the last bits."""
    t = choose_threshold(scores, p, p_min)
    while np.abs(scores - t).min() < clearance:
        t -= clearance
    return t


def two_stations():
    """manz_regional, and the same samples as a second station (so the two stations' windows interleave)."""
    (rec,) = [r for r in realdata.local_events() if r.name == "manz_regional"]
    stream = realdata.load(rec)
    twin = stream.copy()
    for tr in twin:
        tr.stats.station = "MANY"
    return stream + twin


def full_stride_scores(ckpt: Any, stream: Any, net: ScreenNet) -> tuple[list[dict[str, Any]], np.ndarray]:
    """A full-stride replay of `stream` (fp32, on the calling thread) with `net` scoring every window beside it:
    the detections (without the `VOLATILE` fields) and the scores in the order the windows were inferred."""
    scores: list[float] = []
    with DetectionRunner(ckpt, device="cpu", precision="fp32", overlap=False, screen_every=1) as runner:
        infer = runner.stage.infer

        def hooked(spectra, metas):
            with torch.inference_mode():
                scores.extend(net(torch.as_tensor(np.asarray(spectra))).numpy().tolist())
            return infer(spectra, metas)

        runner.stage.infer = hooked
        bodies = [{k: v for k, v in b.items() if k not in VOLATILE} for b in
                  [*runner.add_stream(stream.copy(), chunk_s=5.0), *runner.finish()]]
    return bodies, np.array(scores)
