"""Fine-tuning data: hard negatives where the starting model fires, clean of STA/LTA triggers; labelled events."""

from __future__ import annotations

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from quakemon.data import noise_days
from quakemon.models.contract import InputContract
from quakemon.training import continuous, finetune

T0 = UTCDateTime("2010-09-01")


def test_day_parts_mines_hard_negatives_away_from_sta_lta_triggers(monkeypatch):
    rng = np.random.default_rng(0)
    fs, seconds = 100.0, 3600
    data = rng.normal(0, 300, int(seconds * fs))
    t = np.arange(400) / fs
    data[int(1800 * fs) : int(1800 * fs) + 400] += 30000 * np.sin(2 * np.pi * 6 * t) * np.exp(-t)  # an "event"
    tr = Trace(data.astype(np.int32), {"network": "YA", "station": "UV05", "location": "00", "channel": "HHZ",
                                       "sampling_rate": fs, "starttime": T0})
    starts = T0.timestamp + np.arange(0, seconds - 20, 1.0)
    p = np.zeros(starts.size)
    p[100:130] = 0.97  # the model fires on clean noise here ...
    p[1790:1800] = 0.99  # ... and on the event, whose windows must not become noise examples
    monkeypatch.setattr(noise_days, "load_day", lambda day: Stream([tr.copy()]))
    monkeypatch.setattr(continuous, "day_series", lambda ckpt, day: {"YA.UV05.00": continuous.Series(
        starts, starts + 20, p)})
    contract = InputContract(component_sets=("Z",))
    sizes = finetune.FinetuneSizes(replay=0, hard_negatives=100, noise=20, transients=12, distant=6, local=4,
                                   microseism=5)
    waves, labels, meta = finetune.day_parts("UV05", contract, None, sizes, seed=1)
    parts = [m["part"] for m in meta]
    assert waves.shape == (len(labels), 3, 2000) and len(meta) == len(labels)
    assert parts.count("hard_negative") == 30 and parts.count("noise") == 20 and parts.count("transient") == 12
    assert parts.count("distant") == 6 and parts.count("local") == 4 and parts.count("microseism") == 5
    assert set(labels[np.isin(parts, ["hard_negative", "noise", "transient", "microseism"])]) == {0}
    assert set(labels[np.isin(parts, ["distant", "local"])]) == {1}
    assert np.all(waves[:, 1:] == 0) and np.all(np.abs(waves[:, 0]).max(axis=1) > 0)  # Z-only: horizontals zero
    hard = waves[np.array(parts) == "hard_negative", 0]
    assert np.abs(hard).max() < 5000, "hard negatives must come from the clean noise, not the event"
    assert {m["kind"] for m in meta if m["part"] == "distant"} == {"regional", "teleseismic"}


def test_training_warns_when_the_model_would_skip_vertical_only_stations():
    from quakemon.training.train import TrainConfig, z_only_warning

    assert TrainConfig().component_dropout > 0
    assert z_only_warning(InputContract(component_sets=("Z",)), 0.3) is None
    assert "component_dropout is 0" in z_only_warning(InputContract(), 0.0)
    assert "does not list Z" in z_only_warning(InputContract(), 0.3)
    assert z_only_warning(InputContract(component_order="Z"), 0.0) is None  # a Z-only model serves Z stations
