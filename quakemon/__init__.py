"""quakemon: a streaming seismic event detector.

SeedLink (or archived MiniSEED) -> per-station buffers -> aligned windows -> STFT spectrograms ->
HybridViT -> trigger logic -> detections published over ZeroMQ.

The names below are the public Python API (`Detector` for notebooks; `replay`, `DetectionRunner` and
`Associator` for archives; the model, its checkpoint and input contract; the training data adapter). They are
imported lazily, so that `import quakemon` (and the daemon's stages, which import only what they run) do not pay
for torch or timm until a name is used::

    from quakemon import Detector
    with Detector.from_checkpoint() as det:        # the bundled model
        detections = det.detect(stream)             # an ObsPy Stream in, detection bodies out
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Detector": "quakemon.api",
    "Checkpoint": "quakemon.models.checkpoint",
    "load_checkpoint": "quakemon.models.checkpoint",
    "save_checkpoint": "quakemon.models.checkpoint",
    "InputContract": "quakemon.models.contract",
    "HybridViT": "quakemon.models.hybrid_vit",
    "WaveformDataAdapter": "quakemon.pipeline.adapter",
    "TransformOP": "quakemon.pipeline.adapter",
    "preprocess_batch": "quakemon.pipeline.transforms",
    "DetectionRunner": "quakemon.pipeline.runner",
    "replay": "quakemon.pipeline.runner",
    "ReplayResult": "quakemon.pipeline.runner",
    "Associator": "quakemon.pipeline.associate",
    "QuakemonError": "quakemon.base.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'quakemon' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
