"""Stand-ins for an InferenceEngine in DetectionStage tests: what the stage needs (labels, the checkpoint's model
info and input contract, predict), with probabilities chosen by the test instead of a model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from quakemon.models.contract import InputContract

MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}
LABELS = ("noise", "earthquake")


class SpectraAreProbabilities:
    """An engine whose 'spectra' [B, 1] are the earthquake probabilities."""

    labels = LABELS
    checkpoint = SimpleNamespace(model_info=MODEL, contract=InputContract())

    def predict(self, spectra):
        p = np.asarray(spectra, np.float32)[:, 0]
        return np.stack([1 - p, p], axis=1)


class AlwaysEarthquake:
    """An engine that says "earthquake" (p 0.9) for every window."""

    labels = LABELS
    checkpoint = SimpleNamespace(model_info=MODEL, contract=InputContract())

    def predict(self, spectra):
        return np.tile(np.array([[0.1, 0.9]], np.float32), (len(spectra), 1))
