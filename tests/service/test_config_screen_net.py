"""`[model] screen_net` (the cascade screen): checked at load, without torch, against the configured detector; it
excludes screen_every > 1 and makes screen_every 1 when that was not given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from quakemon.base.errors import ConfigError
from quakemon.models.checkpoint import file_sha256, read_metadata, resolve_checkpoint
from quakemon.models.contract import InputContract
from quakemon.models.screen_meta import FORMAT, FORMAT_V1, contract_fields
from quakemon.service.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


def screen_file(path: Path, sha256: str | None = None, **meta_changes) -> Path:
    """A screen checkpoint's file for the bundled detector (metadata as `save_screen` writes it; one tensor:
    the config reads only the metadata)."""
    detector = resolve_checkpoint(None)
    contract = InputContract.from_dict(read_metadata(detector)["contract"])
    meta = {"format": FORMAT, "args": {"in_channels": 3, "freq_bins": 33, "frames": 64, "widths": [16, 32, 48],
                                       "pool": 2, "components": "max"},
            "threshold": -4.5, "teacher_sha256": sha256 or file_sha256(detector),
            "contract": contract_fields(contract), **meta_changes}
    import numpy as np

    save_file({"head.bias": np.zeros(1, np.float32)}, str(path), metadata={"quakemon_screen": json.dumps(meta)})
    return path


def config(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "q.toml"
    path.write_text("[model]\n" + model)
    return path


def test_a_screen_for_the_detector_turns_the_k_screen_off(tmp_path: Path) -> None:
    screen = screen_file(tmp_path / "s.safetensors")
    cfg = load_config(config(tmp_path, f'screen_net = "{screen}"\n'))
    assert cfg.model.screen_net == str(screen) and cfg.model.screen_every == 1
    v1 = screen_file(tmp_path / "v1.safetensors", format=FORMAT_V1,  # a file of the first format is accepted
                     args={"in_channels": 3, "freq_bins": 33, "frames": 64, "widths": [16, 32, 48]})
    assert load_config(config(tmp_path, f'screen_net = "{v1}"\n')).model.screen_net == str(v1)
    cfg = load_config(config(tmp_path, f'screen_net = "{screen}"\nscreen_every = 1\n'))
    assert cfg.model.screen_every == 1
    assert load_config(None).model.screen_net == "" and load_config(None).model.screen_every == 4


@pytest.mark.parametrize(("make", "needles"), [
    (lambda d: d / "missing.safetensors", ["does not exist", "missing.safetensors"]),
    (lambda d: screen_file(d / "other.safetensors", sha256="cd" * 32), ["distilled from detector cdcdcdcd"]),
    (lambda d: screen_file(d / "rate.safetensors", contract={"sampling_rate": 50.0}), ["built for input"]),
    (lambda d: screen_file(d / "fmt.safetensors", format="quakemon.screen/0"), ["format 'quakemon.screen/0'"]),
    (lambda d: screen_file(d / "arch.safetensors", args={"in_channels": 3, "freq_bins": 33, "frames": 64,
                                                          "widths": [8, 8, 8], "pool": 2, "components": "fft"}),
     ["unknown screen architecture (components 'fft'"]),
    (lambda d: (d / "junk.safetensors").write_bytes(b"not a file") and d / "junk.safetensors",
     ["not a readable safetensors file"]),
])
def test_an_unusable_screen_is_a_config_error_naming_the_key(tmp_path: Path, make, needles) -> None:
    path = config(tmp_path, f'screen_net = "{make(tmp_path)}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "model.screen_net: expected" in msg and info.value.exit_code == 2
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_both_screens_are_refused(tmp_path: Path) -> None:
    screen = screen_file(tmp_path / "s.safetensors")
    with pytest.raises(ConfigError, match=r"model\.screen_net: expected model\.screen_every = 1.*got screen_every = 4"):
        load_config(config(tmp_path, f'screen_net = "{screen}"\nscreen_every = 4\n'))
    with pytest.raises(ConfigError, match=r"model\.screen_net: expected model\.screen_every = 1"):
        load_config(config(tmp_path, f'screen_net = "{screen}"\n'), {"model.screen_every": "2"})


def another_detector(path: Path) -> Path:
    """The bundled detector's weights and contract under another name: another file, another sha256."""
    raw = resolve_checkpoint(None).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["quakemon"])
    meta["name"] = "another-detector"
    header["__metadata__"]["quakemon"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return path


def test_the_screen_is_checked_for_the_configured_detector(tmp_path: Path) -> None:
    screen = screen_file(tmp_path / "s.safetensors")
    same = tmp_path / "same.safetensors"
    same.write_bytes(resolve_checkpoint(None).read_bytes())
    assert load_config(config(tmp_path, f'checkpoint = "{same}"\nscreen_net = "{screen}"\n')).model.screen_net
    other = another_detector(tmp_path / "other.safetensors")
    assert read_metadata(other)["name"] == "another-detector"
    bundled = file_sha256(resolve_checkpoint(None))[:8]
    with pytest.raises(ConfigError, match=rf"model\.screen_net: expected .*distilled from detector {bundled}"):
        load_config(config(tmp_path, f'checkpoint = "{other}"\nscreen_net = "{screen}"\n'))


def test_the_check_does_not_import_torch(tmp_path: Path) -> None:
    screen = screen_file(tmp_path / "s.safetensors")
    path = config(tmp_path, f'screen_net = "{screen}"\n')
    code = ("import sys; from quakemon.service.config import load_config; "
            f"cfg = load_config({str(path)!r}); assert cfg.model.screen_every == 1; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "RUNTIME_DIRECTORY": str(tmp_path / "run"),
                              "STATE_DIRECTORY": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
