"""`quakemon train` serves Z-only stations by default; `quakemon evaluate` scores synthetic data never trained on."""

from __future__ import annotations

import json

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from quakemon.cli import app as cli
from quakemon.cli import train as cli_train


def _capture(monkeypatch, module, name, result):
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(module, name, fake)
    return calls


def test_train_defaults_to_component_dropout_and_a_z_accepting_contract(monkeypatch, capsys):
    import quakemon.training.train as tt

    class Result:
        checkpoint, sha256, best_epoch, best = "x", "0" * 64, 1, {}

    calls = _capture(monkeypatch, tt, "train", Result())
    monkeypatch.setattr(cli_train, "load_sources", lambda sources, contract, seed: ("data", contract, seed))
    assert cli.main(["train", "--data", "synthetic:8", "-o", "x.safetensors"]) == 0
    (data, contract, cfg, out), _ = calls[0]
    assert cfg.component_dropout == cli_train.DEFAULT_COMPONENT_DROPOUT > 0 and contract.accepts("Z")
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["train", "--data", "synthetic:8", "-o", "x.safetensors", "--component-dropout", "0"]) == 0
    (data, contract, cfg, out), _ = calls[1]
    assert cfg.component_dropout == 0 and not contract.accepts("Z")
    assert "Z-only stations" in capsys.readouterr().err


def test_evaluate_synthetic_seed_is_disjoint_from_training_unless_asked(monkeypatch):
    seeds = []

    def fake_sources(sources, contract, seed):
        seeds.append(seed)
        raise SystemExit(0)

    monkeypatch.setattr(cli_train, "load_sources", fake_sources)
    for argv in (["evaluate", "--data", "synthetic:8"], ["evaluate", "--data", "synthetic:8", "--seed", "0"]):
        try:
            cli.main(argv)
        except SystemExit:
            pass
    assert seeds == [cli_train.EVALUATION_SEED, 0] and cli_train.EVALUATION_SEED not in range(0, 1000)


def test_evaluate_continuous_noise_reports_model_and_sta_lta(tmp_path, monkeypatch, capsys):
    from quakemon.training import continuous

    monkeypatch.setattr(continuous, "real_event_records", lambda rate: [])  # the catalogue is tested elsewhere
    rng = np.random.default_rng(0)
    tr = Trace(rng.normal(0, 100, 9000).astype(np.int32), {"network": "XX", "station": "NOI", "channel": "HHZ",
                                                          "sampling_rate": 100.0,
                                                          "starttime": UTCDateTime("2020-01-01")})
    path = tmp_path / "noise.mseed"
    Stream([tr]).write(str(path), format="MSEED")
    assert cli.main(["evaluate", "--continuous", str(path), "--synthetic-events", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    day = report["noise"]["noise"][str(path)]
    assert day["windows"] == 71 and {"model", "sta_lta", "sweep_model", "sweep_sta_lta"} <= set(day)
