"""ScreenNet: a tiny network that scores every window cheaply, so that only windows whose score reaches a
threshold go through the detector (HybridViT); the others are decided at once as quiet (a cascade).

It reads the detector's own input, the window's spectrogram [B, C, F, T] (`quakemon.pipeline.transforms`: |STFT|
of the z-scored window), so it adds no transform of its own. The architecture (`ScreenArgs`): the components are
combined ("all", the default: each component a channel; "max": the largest magnitude of the components per bin,
one channel, the same for a single-component station whose other channels are zero as for a three-component
one), the magnitudes are log-compressed, averaged over `pool` x `pool` bins (frequency x time; default 1: not
pooled), and three strided 3x3 convolutions (8x downsampling), a max and a mean over the remaining grid and a
linear layer give one score, the predicted logit of the detector's trigger probability. It is distilled from the
detector (`quakemon.training.screen_distill`); the threshold that decides "pass" is chosen there, on validation
windows of the training data, and travels in the checkpoint.

Checkpoint: one safetensors file, the weights plus metadata "quakemon_screen" (JSON): format, the architecture
arguments, the threshold (a logit), the sha256 of the detector it was distilled from and the detector's input
contract fields it depends on (sampling rate, window and STFT sizes, component order). `load_screen` checks them
all and raises `ScreenCheckpointError` saying what is wrong. Files of the first format (`screen_meta.FORMAT_V1`,
every component a channel, no pooling) still load, as that architecture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quakemon.models.screen_meta import (  # noqa: F401 - re-exported
    COMPONENTS,
    CONTRACT_KEYS,
    FORMAT,
    FORMAT_V1,
    ScreenCheckpointError,
    check_screen_meta,
    contract_fields,
    read_screen_meta,
)


@dataclass(frozen=True)
class ScreenArgs:
    """Architecture of a ScreenNet: input channels, frequency bins and frames of the spectrogram, the widths of
    its three convolutions, the average pooling of the log magnitudes before the first (`pool` x `pool` bins; 1:
    none; a last row or column that does not fill a pool is dropped) and how the components are combined
    (`screen_meta.COMPONENTS`)."""

    in_channels: int = 3
    freq_bins: int = 33
    frames: int = 64
    widths: tuple[int, int, int] = (16, 32, 48)
    pool: int = 1
    components: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"widths must be three positive integers, got {self.widths!r}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or not 1 <= self.pool <= 4:
            raise ValueError(f"pool must be an integer from 1 to 4, got {self.pool!r}")
        if self.components not in COMPONENTS:
            raise ValueError(f"components must be one of {list(COMPONENTS)}, got {self.components!r}")
        if self.freq_bins < self.pool or self.frames < self.pool:
            raise ValueError(f"a {self.freq_bins} x {self.frames} spectrogram is smaller than the pool {self.pool}")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ScreenArgs:
        """The architecture a checkpoint's (checked) metadata names; a format-1 file: pool 1, components "all"."""
        args = dict(meta["args"])
        if meta.get("format") == FORMAT_V1:
            args.update(pool=1, components="all")
        return cls(**args)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


class ScreenNet(nn.Module):
    """Spectrogram [B, C, F, T] -> one score (a logit) per window [B]."""

    #: Names the log spectra (`log_spectra`), so that cached log spectra of another version are never reused.
    FEATURES = "logspec1"

    def __init__(self, args: ScreenArgs = ScreenArgs()) -> None:
        super().__init__()
        self.args = args
        w1, w2, w3 = args.widths
        channels = 1 if args.components == "max" else args.in_channels
        self.norm = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, w1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(w2, w3, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * w3, 1)

    def _check(self, spectra: torch.Tensor) -> None:
        shape = (self.args.in_channels, self.args.freq_bins, self.args.frames)
        if spectra.ndim != 4 or tuple(spectra.shape[1:]) != shape:
            raise ValueError(f"expected spectrograms [B, {', '.join(map(str, shape))}], got {list(spectra.shape)}")

    def log_spectra(self, spectra: torch.Tensor) -> torch.Tensor:
        """[B, C, F, T] -> log magnitudes [B, C, F, T], every component (what training caches, for any
        architecture; `reduce` turns them into `features`)."""
        self._check(spectra)
        return torch.log(spectra.float() + 1e-4)

    def reduce(self, log_spectra: np.ndarray) -> np.ndarray:
        """Cached log spectra [n, C, F, T] -> this architecture's features (numpy; "max": the components' max,
        [n, 1, F, T], the same values `features` gives, as the log is monotonic)."""
        if self.args.components == "max":
            return np.max(log_spectra, axis=1, keepdims=True)
        return log_spectra

    def features(self, spectra: torch.Tensor) -> torch.Tensor:
        """[B, C, F, T] -> the fixed part: log magnitudes, [B, C, F, T], or [B, 1, F, T] with components "max"
        (the max is taken before the log, on a third of the values)."""
        self._check(spectra)
        x = spectra.float()
        if self.args.components == "max":
            x = x.amax(1, keepdim=True)
        return torch.log(x + 1e-4)

    def score_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features (`features`) -> scores [B]."""
        if self.args.pool > 1:
            x = avg_pool(x, self.args.pool)
        x = torch.relu(self.conv1(self.norm(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x)).flatten(2)
        return self.head(torch.cat([x.amax(-1), x.mean(-1)], 1))[:, 0]

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.features(spectra))


@dataclass
class Screen:
    """A loaded screen: the network (eval mode), its pass threshold (a logit) and its metadata."""

    net: ScreenNet
    threshold: float
    meta: dict[str, Any]

    @torch.inference_mode()
    def scores(self, spectra: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scores [B] float32 of spectrograms [B, C, F, T]."""
        return self.net(torch.as_tensor(spectra)).float().numpy()

    def passes(self, spectra: np.ndarray | torch.Tensor) -> np.ndarray:
        """bool [B]: the windows that go on to the detector (score >= threshold)."""
        return passes(self.scores(spectra), self.threshold)


def avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """`nn.functional.avg_pool2d(x, k)` (k x k, stride k, the last rows and columns that do not fill a k x k
    block dropped), the same float32 values for input free of -0.0 (the log features are): each block summed in
    the kernel's order (row by row) and divided by k * k; as k * k strided additions, several times faster on the
    CPU for a batch of small maps."""
    h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
    out = x[..., 0:h:k, 0:w:k]
    for i in range(k):
        for j in range(k):
            if i or j:
                out = out + x[..., i:h:k, j:w:k]
    return out / (k * k)


def passes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """bool mask of the scores at or above the threshold (a NaN score passes: never decide quiet on no score)."""
    s = np.asarray(scores, dtype=np.float64)
    return ~(s < threshold)


def choose_threshold(scores: np.ndarray, teacher_p: np.ndarray, p_min: float, margin: float = 0.0) -> float:
    """The highest threshold that passes every window whose teacher probability is >= p_min, lowered by `margin`
    (in logit units): min(score over those windows) - margin. Raises ValueError with no such window."""
    s, p = np.asarray(scores, np.float64), np.asarray(teacher_p, np.float64)
    if s.shape != p.shape:
        raise ValueError(f"scores {s.shape} and teacher probabilities {p.shape} differ in shape")
    sel = s[p >= p_min]
    if sel.size == 0:
        raise ValueError(f"no window with teacher probability >= {p_min}: cannot choose a threshold")
    return float(sel.min() - margin)


def save_screen(path: str | os.PathLike, net: ScreenNet, threshold: float, teacher_sha256: str,
                contract: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write the screen (weights + metadata) to one safetensors file; return its path."""
    from safetensors.torch import save_file

    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    meta = {"format": FORMAT, "args": net.args.to_dict(), "threshold": float(threshold),
            "teacher_sha256": teacher_sha256, "contract": contract_fields(contract), **(extra or {})}
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"quakemon_screen": json.dumps(meta, sort_keys=True)})
    return path


def load_screen(path: str | os.PathLike, teacher_sha256: str | None = None, contract: Any = None) -> Screen:
    """Load a screen checkpoint from a local file. With `teacher_sha256` / `contract`, also check that it was
    distilled from that detector and for that input contract. Raises ScreenCheckpointError."""
    from safetensors import safe_open

    meta = read_screen_meta(path, teacher_sha256, contract)
    try:
        args = ScreenArgs.from_meta(meta)
        threshold = float(meta["threshold"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ScreenCheckpointError(f"{path}: malformed screen metadata ({type(exc).__name__}: {exc})") from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise ScreenCheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc})"
                                    ) from None
    net = ScreenNet(args)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScreenCheckpointError(f"{path}: weights do not fit the architecture {args}: {exc}") from None
    return Screen(net.eval(), threshold, meta)
