"""The public Python API: the names `quakemon` exports, that `import quakemon` stays light, and that the
API, the replay, the associator and the daemon's configuration share their defaults."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import quakemon

PUBLIC = [
    "__version__",
    "Associator",
    "Checkpoint",
    "DetectionRunner",
    "Detector",
    "HybridViT",
    "InputContract",
    "QuakemonError",
    "ReplayResult",
    "TransformOP",
    "WaveformDataAdapter",
    "load_checkpoint",
    "preprocess_batch",
    "replay",
    "save_checkpoint",
]


def test_all_is_pinned():
    assert sorted(quakemon.__all__) == sorted(PUBLIC)
    assert len(set(quakemon.__all__)) == len(quakemon.__all__)


def test_every_public_name_resolves():
    for name in quakemon.__all__:
        value = getattr(quakemon, name)
        assert value is not None, name
        if name != "__version__":
            assert getattr(value, "__name__", name) == name, (name, value)
    assert set(quakemon.__all__) <= set(dir(quakemon))
    try:
        quakemon.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def _imports(code: str) -> list[str]:
    """Heavy modules loaded by running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in ('torch', 'timm', 'obspy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_quakemon_does_not_import_torch():
    assert _imports("import quakemon; quakemon.__version__") == []
    assert _imports("import quakemon.pipeline.settings") == []
    assert "torch" in _imports("import quakemon; quakemon.Detector")  # the check can see torch when it is there


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_detector_runner_replay_associator_and_config_share_their_defaults():
    from quakemon.api import Detector
    from quakemon.pipeline.associate import Associator
    from quakemon.pipeline.runner import DetectionRunner, Inference, replay
    from quakemon.pipeline.settings import (
        ASSOCIATION,
        INFERENCE,
        REPLAY_BATCH_SIZE,
        TRIGGER,
        WINDOW,
        AssociationSettings,
        InferenceSettings,
        TriggerSettings,
        WindowSettings,
    )
    from quakemon.service.config import Config

    assert (WINDOW, TRIGGER, INFERENCE, ASSOCIATION) == (WindowSettings(), TriggerSettings(), InferenceSettings(),
                                                         AssociationSettings())
    cfg = Config()
    from_config = {
        "stride_s": cfg.window.stride_s, "max_missing": cfg.window.max_missing_fraction,
        "on": cfg.trigger.on, "off": cfg.trigger.off, "min_duration_s": cfg.trigger.min_duration,
        "trigger_label": cfg.trigger.label,
        "device": cfg.model.device, "precision": cfg.model.precision, "graph": cfg.model.graph,
    }
    settings = {
        "stride_s": WINDOW.stride_s, "max_missing": WINDOW.max_missing, "on": TRIGGER.on, "off": TRIGGER.off,
        "min_duration_s": TRIGGER.min_duration_s, "trigger_label": TRIGGER.label, "device": INFERENCE.device,
        "precision": INFERENCE.precision, "graph": INFERENCE.graph,
    }
    assert from_config == settings

    detector = {f.name: f.default for f in dataclasses.fields(Detector) if f.init and f.name != "checkpoint"}
    assert {k: detector[k] for k in settings} == settings
    assert detector["batch_size"] == REPLAY_BATCH_SIZE

    runner = _defaults(DetectionRunner.__init__)
    assert {k: runner[k] for k in settings} == settings
    assert runner["batch_size"] == REPLAY_BATCH_SIZE

    inference = _defaults(Inference.__init__)
    assert {k: inference[k] for k in ("device", "precision", "graph")} == {
        "device": INFERENCE.device, "precision": INFERENCE.precision, "graph": INFERENCE.graph}

    rep = _defaults(replay)
    assert {k: rep[k] for k in ("stride_s", "device", "precision", "graph")} == {
        k: settings[k] for k in ("stride_s", "device", "precision", "graph")}
    assert rep["batch_size"] == REPLAY_BATCH_SIZE

    association = dataclasses.asdict(ASSOCIATION)
    assoc_cfg = {k: getattr(cfg.associate, k) for k in association}
    assert assoc_cfg == association
    assoc = _defaults(Associator.__init__)
    assert {k: assoc[k] for k in association} == association
