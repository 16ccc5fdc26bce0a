"""Fine-tuning data: hard negatives where the starting model fires, clean of STA/LTA triggers; labelled events."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.base.errors import QuakemonError
from quakemon.data import noise_days
from quakemon.models.contract import InputContract
from quakemon.training import continuous, finetune

T0 = UTCDateTime("2010-09-01")


def _fake_day(monkeypatch) -> None:
    """UV05 as one hour of noise with an "event" at 1800 s; the model "fires" at 100-130 s and on the event."""
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


def test_day_parts_mines_hard_negatives_away_from_sta_lta_triggers(monkeypatch):
    _fake_day(monkeypatch)
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


def test_multisite_parts_come_from_the_training_sites_only_and_keep_events_out_of_the_noise(tmp_path):
    import zipfile

    from quakemon.data import sprit_noise
    from quakemon.training import multisite

    fs, seconds = 128.0, 900
    rng = np.random.default_rng(0)
    recs = (sprit_noise.SpritRecording("SiteA", "TR.AAA01", "sprit/a.MSEED", "train"),
            sprit_noise.SpritRecording("SiteB", "TR.BBB01", "sprit/b.MSEED", "train"))
    wheel = tmp_path / sprit_noise.SPRIT_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        for rec in recs:
            data = rng.normal(0, 300, (3, int(seconds * fs)))
            t = np.arange(512) / fs
            data[:, int(450 * fs) : int(450 * fs) + 512] += 30000 * np.sin(2 * np.pi * 6 * t) * np.exp(-t)  # "event"
            net, sta = rec.station.split(".")
            st = Stream([Trace(data[i], {"network": net, "station": sta, "channel": f"HH{c}", "sampling_rate": fs,
                                         "starttime": T0}) for i, c in enumerate("ZNE")])
            st.write(str(tmp_path / "x.mseed"), format="MSEED", encoding="FLOAT64")
            zf.write(tmp_path / "x.mseed", rec.member)

    def series(ckpt, rec, data, fs):  # the model "fires" on clean noise at 100-130 s and on the event
        starts = np.arange(0, data.shape[1] / fs - 20, 1.0)
        p = np.zeros(starts.size)
        p[100:130] = 0.97
        p[440:452] = 0.99
        return continuous.Series(starts, starts + 20, p)

    contract = InputContract(component_sets=("Z",))
    sizes = finetune.FinetuneSizes(replay=0, hard_negatives=1000, noise=40, transients=12, distant=10, local=8,
                                   microseism=5)
    waves, labels, meta = multisite.sprit_parts(contract, None, sizes, 1, recs=recs, wheel=wheel, series_fn=series)
    parts = np.array([m["part"] for m in meta])
    assert waves.shape == (len(labels), 3, 2000) and len(meta) == len(labels) and np.isfinite(waves).all()
    counts = {p: int((parts == p).sum()) for p in set(parts)}
    assert counts == {"hard_negative": 60, "noise": 40, "transient": 12, "microseism": 5, "distant": 10, "local": 8}
    assert set(labels[np.isin(parts, ["hard_negative", "noise", "transient", "microseism"])]) == {0}
    assert set(labels[np.isin(parts, ["distant", "local"])]) == {1}
    assert {m["site"] for m in meta if "site" in m} == {"SiteA", "SiteB"}
    vertical_only = np.all(waves[:, 1:] == 0, axis=(1, 2))
    assert vertical_only[np.isin(parts, ["hard_negative", "transient", "microseism"])].all()
    assert vertical_only[parts == "noise"].any() and not vertical_only[parts == "noise"].all()
    assert np.array_equal(vertical_only, [m.get("z_only", True) for m in meta])
    plain = np.array([m.get("broadband", 0) is None and m.get("lowpass_hz", 0) is None for m in meta])
    quiet = np.isin(parts, ["hard_negative", "noise"]) & plain
    assert quiet.sum() > 20 and np.abs(waves[quiet]).max() < 5000, "noise windows must stay away from the event"
    for cls in (0, 1):  # the broadband background goes to both classes alike
        mixed = np.array([m.get("broadband") is not None for m in meta]) & (labels == cls)
        assert 0.2 < mixed.sum() / (labels == cls).sum() < 0.8 or cls == 0 and mixed.sum() > 30
    with pytest.raises(ValueError, match="training sites"):
        multisite.sprit_parts(contract, None, sizes, 1, recs=sprit_noise.recordings("validation"), wheel=wheel)


def test_sprit_noise_with_a_day_adds_that_days_noise_but_not_its_events(monkeypatch):
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training import bundle, multisite

    _fake_day(monkeypatch)
    contract = InputContract(component_sets=("Z",))
    sizes = finetune.FinetuneSizes(replay=0, hard_negatives=100, noise=20, transients=12, distant=6, local=4,
                                   microseism=5)
    sprit = (np.ones((7, 3, 2000), np.float32), np.array([0, 0, 0, 1, 1, 1, 1]),
             [{"label": "x", "part": "sprit"} for _ in range(7)])
    monkeypatch.setattr(multisite, "sprit_parts", lambda contract, ckpt, sizes, seed: sprit)
    monkeypatch.setattr(bundle, "training_data", lambda contract, n, seed: LabelledWaveforms(
        np.zeros((0, 3, 2000), np.float32), np.zeros(0, np.int64), ["noise", "earthquake"], []))
    data = finetune.finetune_data("UV05", contract, None, sizes, seed=1, noise="sprit")
    parts = [m["part"] for m in data.meta]
    assert data.waveforms.shape == (len(parts), 3, 2000) and len(data.labels) == len(parts)
    assert parts.count("sprit") == 7 and parts.count("hard_negative") == 30
    assert parts.count("noise") == 20 and parts.count("transient") == 12
    assert not {"distant", "local", "microseism"} & set(parts), "events come from the multi-site part only"
    assert list(data.labels[:7]) == list(sprit[1]) and set(data.labels[7:]) == {0}
    assert {m["day"] for m in data.meta[7:]} == {"UV05"}
    assert np.abs(data.waveforms[7:][np.array(parts[7:]) == "hard_negative"]).max() < 5000
    assert len(finetune.finetune_data(None, contract, None, sizes, seed=1, noise="sprit").meta) == 7
    with_local = finetune.finetune_data("UV05", contract, None, replace(sizes, day_local=3, low_rate=2), seed=1,
                                        noise="sprit")
    local = [i for i, m in enumerate(with_local.meta) if m["part"] == "local"]  # opt-in: events over the day
    assert len(local) == 3 and set(with_local.labels[local]) == {1}
    low = [i for i, m in enumerate(with_local.meta) if m["part"] == "low_rate"]  # opt-in: low-passed copies
    assert len(low) == 2 and len(with_local.meta) == len(data.meta) + 5 == len(with_local.labels)


def test_the_cli_wants_a_day_for_day_noise_and_passes_sprit_with_or_without_one(monkeypatch):
    with pytest.raises(SystemExit) as exc:
        finetune.main(["--output", "x"])
    assert exc.value.code == 2
    calls = []

    class Result:
        checkpoint, sha256, best_epoch, best = "x", "0" * 64, 0, {}

    monkeypatch.setattr(finetune, "finetune", lambda day, output, init, **kw: calls.append(
        (day, kw["noise"], kw["bandpass"])) or Result())
    for argv in (["--noise", "sprit", "--day", "UV05"], ["--noise", "sprit", "--bandpass", "0.7", "25"],
                 ["--day", "UV10"]):
        assert finetune.main([*argv, "--output", "x"]) == 0
    assert calls == [("UV05", "sprit", None), (None, "sprit", (0.7, 25.0)), ("UV10", "day", None)]
    calls.clear()
    for argv in (["--noise-file", "station/"], ["--noise", "sprit", "--noise-file", "a.mseed"]):
        assert finetune.main([*argv, "--output", "x"]) == 0
    assert finetune.main(["--noise-file", "a.mseed", "--noise-file", "b/", "--output", "x"]) == 0  # two stations
    assert calls == [(Path("station"), "day", None), (Path("a.mseed"), "sprit", None),
                     ([Path("a.mseed"), Path("b")], "day", None)]
    with pytest.raises(SystemExit) as exc:  # one noise source or the other
        finetune.main(["--day", "UV05", "--noise-file", "a.mseed", "--output", "x"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------- a station's own noise (--noise-file)
def _station_file(path, seconds, *, station="ABC", channels=("HHZ", "HHN", "HHE"), fs=50.0, start=T0, seed=0):
    rng = np.random.default_rng(seed)
    st = Stream([Trace(rng.normal(0, 200, int(seconds * fs)).astype(np.int32),
                       {"network": "XX", "station": station, "location": "", "channel": ch, "sampling_rate": fs,
                        "starttime": start}) for ch in channels])
    st.write(str(path), format="MSEED")
    return st


def test_station_noise_takes_the_vertical_channel_of_one_station_at_the_models_rate(tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    first = _station_file(folder / "day1.mseed", 2400)  # 50 Hz, three components; the files join without a gap
    _station_file(folder / "day2.mseed", 2400, start=T0 + 2400, seed=1)
    (folder / ".DS_Store").write_bytes(b"\0\1")  # hidden files are skipped, as a replay skips them
    tr = finetune.station_noise(folder, 100.0)
    assert tr.id == "XX.ABC..HHZ" and tr.stats.sampling_rate == 100.0 and tr.data.dtype == np.float64
    assert abs(tr.stats.npts - 4800 * 100) <= 2 and tr.stats.starttime == T0
    # resample_poly, as the daemon resamples: the first 50 Hz samples are kept at the even 100 Hz samples
    z = first.select(component="Z")[0].data.astype(np.float64)
    assert np.corrcoef(tr.data[200:4200:2], z[100:2100])[0, 1] > 0.99
    assert finetune.station_noise(folder, 50.0).stats.npts == 4800 * 50  # at its own rate: no resampling


def test_station_noise_refuses_what_it_cannot_learn_a_stations_noise_from(tmp_path):
    cases = [("no such file", tmp_path / "missing.mseed")]
    (tmp_path / "empty").mkdir()
    cases.append(("a folder without files", tmp_path / "empty"))
    (tmp_path / "text.mseed").write_text("not MiniSEED\n")
    cases.append(("not readable as MiniSEED", tmp_path / "text.mseed"))
    _station_file(tmp_path / "horizontal.mseed", 3700, channels=("HHN", "HHE"))
    cases.append(("no vertical channel", tmp_path / "horizontal.mseed"))
    two = tmp_path / "two"
    two.mkdir()
    _station_file(two / "a.mseed", 3700, channels=("HHZ",))
    _station_file(two / "b.mseed", 3700, station="DEF", channels=("HHZ",))
    cases.append(("2 vertical channels", two))
    _station_file(tmp_path / "short.mseed", 1800)
    cases.append(("longest gap-free stretch", tmp_path / "short.mseed"))
    gaps = tmp_path / "gaps"  # 2 x 40 min with a 10 min gap: more than an hour, but no hour without a gap
    gaps.mkdir()
    _station_file(gaps / "a.mseed", 2400, channels=("HHZ",))
    _station_file(gaps / "b.mseed", 2400, channels=("HHZ",), start=T0 + 3000)
    cases.append(("longest gap-free stretch", gaps))
    for message, path in cases:
        with pytest.raises(QuakemonError, match=message):
            finetune.station_noise(path, 100.0)


def test_day_parts_mines_a_station_file_with_the_starting_models_probabilities_on_it(monkeypatch, tmp_path):
    """A noise file goes the way of a noise day: hard negatives where the starting model fires, away from the
    STA/LTA's triggers, and every window vertical-only at the model's rate."""
    path = tmp_path / "station.mseed"
    st = _station_file(path, 3700, channels=("HHZ",), fs=100.0)
    seen = []

    def fake_series(ckpt, streams):
        (s,) = streams
        seen.append((s[0].id, s[0].stats.sampling_rate, s[0].stats.npts))
        starts = T0.timestamp + np.arange(0, 3680, 1.0)
        p = np.zeros(starts.size)
        p[500:540] = 0.9
        return {"XX.ABC.": continuous.Series(starts, starts + 20, p)}

    monkeypatch.setattr(continuous, "model_series", fake_series)
    contract = InputContract(component_sets=("Z",))
    sizes = finetune.FinetuneSizes(replay=0, hard_negatives=100, noise=10, transients=4, distant=2, local=2,
                                   microseism=0)
    waves, labels, meta = finetune.day_parts(path, contract, None, sizes, seed=1)
    assert seen == [("XX.ABC..HHZ", 100.0, st[0].stats.npts)]
    parts = [m["part"] for m in meta]
    assert parts.count("hard_negative") == 40 and parts.count("noise") == 10 and {m["day"] for m in meta
                                                                                  if "day" in m} == {"station.mseed"}
    assert waves.shape == (len(labels), 3, 2000) and np.all(waves[:, 1:] == 0)

    # several stations share each part's windows equally: the set stays the size of one station's
    other = tmp_path / "other.mseed"
    _station_file(other, 3700, station="DEF", channels=("HHZ",), fs=100.0, seed=3)
    seen.clear()
    waves2, labels2, meta2 = finetune.own_noise_parts([path, other], contract, None, sizes, seed=1)
    assert [s[0] for s in seen] == ["XX.ABC..HHZ", "XX.DEF..HHZ"]
    by_day = {d: [m["part"] for m in meta2 if m.get("day") == d] for d in ("station.mseed", "other.mseed")}
    assert by_day["station.mseed"].count("noise") == 5 == by_day["other.mseed"].count("noise")
    assert by_day["station.mseed"].count("transient") == 2 == by_day["other.mseed"].count("transient")
    assert len(labels2) == len(meta2) == waves2.shape[0] and np.all(waves2[:, 1:] == 0)
    assert sum(m["part"] == "local" for m in meta2) == 2 and sum(m["part"] == "distant" for m in meta2) == 2


def test_the_cli_refuses_an_unknown_or_malformed_size():
    for size in ("bogus=3", "distant=x", "distant"):
        with pytest.raises(SystemExit) as exc:
            finetune.main(["--noise", "sprit", "--output", "x", "--size", size])
        assert exc.value.code == 2


def test_a_band_passed_contract_keeps_the_input_shape_and_takes_its_scale_from_the_band():
    from quakemon.base.errors import ContractError
    from quakemon.pipeline.transforms import preprocess_arrays

    base = InputContract(component_sets=("Z",))
    bp = finetune.band_passed_contract(base, (0.7, 25))
    assert bp.transforms == ("DROP_NAN", "DETREND", "TRIMMING", "BANDPASS", "ZSCORE", "SPECTROGRAM")
    assert bp.extra["bandpass_hz"] == [0.7, 25.0] and bp.extra["bandpass_taper"] == finetune.BANDPASS_TAPER
    assert bp.spectrogram_shape == base.spectrogram_shape
    assert bp.component_sets == base.component_sets
    with pytest.raises(ContractError):
        finetune.band_passed_contract(base, (0.7, 60))  # above the 50 Hz Nyquist frequency
    # a 5 Hz burst under a microseism 50 times larger: the microseism's bin is the spectrogram's peak without the
    # band-pass, the burst's with it
    t = np.arange(2000) / 100.0
    micro = 500 * np.sin(2 * np.pi * 0.2 * t + 0.3) + np.random.default_rng(3).normal(0, 1.0, 2000)
    burst = 10 * np.sin(2 * np.pi * 5 * t) * np.exp(-(t - 10) / 1.5) * (t >= 10)
    x = np.zeros((1, 3, 2000))
    x[0, 0] = micro + burst
    bin5 = round(5 / (100 / 64))
    share = [(s[bin5].max() / s.max()) for s in (preprocess_arrays(x, c).spectrograms[0, 0] for c in (base, bp))]
    assert share[0] < 0.1 and share[1] == 1.0


def _onset_window(rng: np.random.Generator) -> np.ndarray:
    """[3, 2000] at 100 Hz: weak noise, then from 8 s a strong decaying 5 Hz burst on Z and N; E is all zero."""
    t = np.arange(2000) / 100.0
    x = rng.normal(0, 1.0, (3, 2000))
    burst = 200 * np.sin(2 * np.pi * 5 * t) * np.exp(-(t - 8) / 2) * (t >= 8)
    x[0] += burst
    x[1] += 0.5 * burst
    x[2] = 0.0
    return x


def test_phase_surrogates_keep_each_components_spectrum_and_coherence_but_remove_the_onset():
    from scipy.signal import hilbert

    rng = np.random.default_rng(3)
    x = np.stack([_onset_window(rng) for _ in range(4)])
    s = finetune.phase_surrogates(x, np.random.default_rng(5))
    assert s.shape == x.shape and s.dtype == np.float32
    fx, fs_ = np.fft.rfft(x, axis=-1), np.fft.rfft(s.astype(np.float64), axis=-1)
    power = np.abs(fx) ** 2
    np.testing.assert_allclose(np.abs(fs_) ** 2, power, rtol=1e-4, atol=1e-6 * power.max())
    cross_x, cross_s = fx[:, 0] * np.conj(fx[:, 1]), fs_[:, 0] * np.conj(fs_[:, 1])  # Z-N cross-spectrum kept
    np.testing.assert_allclose(cross_s, cross_x, rtol=1e-3, atol=1e-6 * np.abs(cross_x).max())
    assert np.all(s[:, 2] == 0), "a zero component stays zero"

    def peak_to_median(w):
        env = np.abs(hilbert(w, axis=-1))
        return env.max(axis=-1) / np.median(env, axis=-1)

    before, after = peak_to_median(x[:, 0]), peak_to_median(s[:, 0].astype(np.float64))
    assert np.all(before > 20) and np.all(after < 6), (before, after)  # the onset's envelope is gone
    assert not np.allclose(s, finetune.phase_surrogates(x, np.random.default_rng(6)), atol=1e-3)


def test_surrogate_part_copies_earthquake_windows_as_noise_and_finetune_data_adds_them(monkeypatch):
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training import bundle, multisite

    rng = np.random.default_rng(0)
    waves = np.stack([_onset_window(rng) for _ in range(7)]).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    meta = [{"part": "noise"}] * 3 + [{"part": "local"}, {"part": "distant"}, {}, {"part": "local"}]
    w, lab, rows = finetune.surrogate_part(waves, labels, meta, 6, np.random.default_rng(1))
    assert w.shape == (6, 3, 2000) and list(lab) == [0] * 6 and len(rows) == 6
    src = [r["source_index"] for r in rows]
    assert set(src[:4]) == {3, 4, 5, 6} and set(src) <= {3, 4, 5, 6}, "every earthquake window once, then again"
    assert [r["source_part"] for r in rows] == [meta[i].get("part", "replay") for i in src]
    assert {r["part"] for r in rows} == {"surrogate"} and {r["label"] for r in rows} == {"noise"}
    for out, i in zip(w, src, strict=True):  # each copy has its own source's spectrum
        np.testing.assert_allclose(np.abs(np.fft.rfft(out[0])), np.abs(np.fft.rfft(waves[i, 0])), rtol=1e-3,
                                   atol=1e-3 * np.abs(np.fft.rfft(waves[i, 0])).max())
    assert len(finetune.surrogate_part(waves, np.zeros(7), meta, 6, rng)[0]) == 0

    monkeypatch.setattr(multisite, "sprit_parts", lambda contract, ckpt, sizes, seed: (waves, labels, meta))
    monkeypatch.setattr(bundle, "training_data", lambda contract, n, seed: LabelledWaveforms(
        waves[:2], np.array([0, 1]), ["noise", "earthquake"], [{"label": "noise"}, {"label": "earthquake"}]))
    contract = InputContract(component_sets=("Z",))
    data = finetune.finetune_data(None, contract, None, finetune.FinetuneSizes(surrogates=10), seed=1,
                                  noise="sprit")
    parts = [m.get("part") for m in data.meta]
    assert len(data) == 2 + 7 + 10 and parts.count("surrogate") == 10
    assert set(data.labels[9:]) == {0} and list(data.labels[:9]) == [0, 1, *labels]
    assert {m["source_part"] for m in data.meta[9:]} <= {"replay", "local", "distant"}
    assert "replay" in {m["source_part"] for m in data.meta[9:]}, "the replay's earthquakes are copied too"
    assert finetune.FinetuneSizes().surrogates == 0


def test_tremor_bursts_add_a_symmetric_low_frequency_burst_to_copies_of_real_noise(monkeypatch):
    from scipy.signal import butter, sosfiltfilt

    from quakemon.data.artefacts import add_tremor_bursts
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training import bundle, multisite

    rng = np.random.default_rng(4)
    x = rng.normal(0, 1.0, (64, 3, 2000)).astype(np.float32)
    x[:32, 1:] = 0.0  # vertical-only windows stay vertical-only
    y = x.copy()
    snr, _ = add_tremor_bursts(y, 100.0, np.random.default_rng(5))
    assert (y[:32, 1:] == 0).all()
    added = (y - x)[:, 0].astype(np.float64)
    spec = np.abs(np.fft.rfft(added, axis=-1)) ** 2
    freq = np.fft.rfftfreq(2000, 0.01)
    assert spec[:, (freq >= 0.7) & (freq <= 4.0)].sum() > 0.95 * spec.sum()  # the burst lies in 0.7-4 Hz
    band = sosfiltfilt(butter(4, [0.7, 4.0], btype="bandpass", fs=100.0, output="sos"), x[:, 0], axis=-1)
    peak = np.abs(added).max(-1) / np.sqrt((band**2).mean(-1))
    assert ((snr >= 1.5) & (snr <= 10)).all() and np.corrcoef(np.log(peak), np.log(snr))[0, 1] > 0.6
    w, lab, rows = finetune.tremor_part(x, [{"part": "noise"}] * 64, 5, 100.0, np.random.default_rng(6))
    assert w.shape == (5, 3, 2000) and not np.shares_memory(w, x) and list(lab) == [0] * 5
    assert {r["part"] for r in rows} == {"tremor"} and {r["label"] for r in rows} == {"noise"}

    labels = np.array([0] * 3 + [1] * 2)
    meta = [{"part": "noise"}, {"part": "noise"}, {"part": "hard_negative"}, {"part": "local"}, {"part": "local"}]
    monkeypatch.setattr(multisite, "sprit_parts", lambda contract, ckpt, sizes, seed: (x[:5], labels, meta))
    monkeypatch.setattr(bundle, "training_data", lambda contract, n, seed: LabelledWaveforms(
        x[:2], np.array([0, 1]), ["noise", "earthquake"], [{"label": "noise"}, {"label": "earthquake"}]))
    data = finetune.finetune_data(None, InputContract(component_sets=("Z",)), None,
                                  finetune.FinetuneSizes(tremor=6), seed=1, noise="sprit")
    assert len(data) == 2 + 5 + 6 and [m.get("part") for m in data.meta].count("tremor") == 6
    assert set(data.labels[7:]) == {0} and finetune.FinetuneSizes().tremor == 0


def test_the_bundle_chains_its_fine_tuning_stages_and_moves_the_last_to_the_output(monkeypatch, tmp_path):
    from quakemon.training import bundle

    calls = []

    def fake(day, output, init, **kw):
        calls.append((day, output.name, init.name, kw["epochs"], kw["bandpass"], kw["sizes"].surrogates,
                      kw["command"]))
        output.write_text(f"from {init.name}")

    monkeypatch.setattr(finetune, "finetune", fake)
    base = tmp_path / "base.safetensors"
    base.write_text("base")
    out = tmp_path / "shipped.safetensors"
    bundle.finetune_stages(base, out)
    assert calls == [
        (None, "shipped.stage1.safetensors", "base.safetensors", 2, (0.7, 25.0), 5000,
         "python -m quakemon.training.bundle finetune (stage 1 of 2)"),
        ("UV05", "shipped.safetensors", "shipped.stage1.safetensors", 1, None, 5000,
         "python -m quakemon.training.bundle finetune (stage 2 of 2)")]
    assert out.read_text() == "from shipped.stage1.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "shipped.safetensors",
                                                         "shipped.stage1.safetensors"]
    with pytest.raises(SystemExit):
        bundle.main(["finetune", "--epochs", "3", "--output", str(out)])


def test_bundle_train_builds_a_base_next_to_the_output_then_the_stages_from_it(monkeypatch, tmp_path):
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training import bundle, train

    calls = []
    monkeypatch.setattr(bundle, "training_data", lambda contract, n, seed: LabelledWaveforms(
        np.zeros((2, 3, contract.window_samples), np.float32), np.array([0, 1]), ["noise", "earthquake"]))
    monkeypatch.setattr(train, "train", lambda data, contract, cfg, out, **kw: calls.append(
        ("train", out.name, cfg.precision, kw["provenance"]["command"])))
    monkeypatch.setattr(bundle, "finetune_stages", lambda init, out, precision: calls.append(
        ("stages", init.name, out.name, precision)))
    monkeypatch.setattr(bundle, "evaluate_real", lambda ckpt: {k: {} for k in (
        "events_all", "events_3c", "events_3c_as_z", "events_z", "noise", "event_recordings")} | {"recordings": []})
    monkeypatch.setattr(bundle, "continuous_summary", lambda ckpt: {"noise": {}})
    monkeypatch.setattr(bundle, "load_checkpoint", lambda path: path)
    assert bundle.main(["train", "--output", str(tmp_path / "q.safetensors")]) == 0
    assert calls == [("train", "q.base.safetensors", "bf16", "python -m quakemon.training.bundle train (base)"),
                     ("stages", "q.base.safetensors", "q.safetensors", "fp32")]
    assert "continuous" in json.loads((tmp_path / "q.eval.json").read_text())


def test_low_rate_copies_keep_their_labels_and_lose_everything_above_a_few_hertz():
    rng = np.random.default_rng(3)
    fs, n = 100.0, 2000
    t = np.arange(n) / fs
    waves = np.stack([np.stack([np.sin(2 * np.pi * 1.0 * t) + np.sin(2 * np.pi * 15.0 * t)] * 3) for _ in range(10)])
    labels = np.array([0, 1] * 5)
    meta = [{"label": "noise" if y == 0 else "earthquake", "part": "noise" if y == 0 else "distant"} for y in labels]
    out, lab, rows = finetune.low_rate_part(waves.astype(np.float32), labels, meta, 6, fs, rng)
    assert out.shape == (6, 3, n) and len(rows) == 6 and waves.shape == (10, 3, n)  # copies; the set is untouched
    assert [r["label"] for r in rows] == ["earthquake" if y else "noise" for y in lab]
    assert all(r["part"] == "low_rate" and 1.5 <= r["band_limit_hz"] <= 3.5 for r in rows)
    spec = np.abs(np.fft.rfft(out[:, 0, 500:1500], axis=-1))
    f = np.fft.rfftfreq(1000, 1 / fs)
    assert spec[:, np.argmin(np.abs(f - 15.0))].max() < 1e-3 * spec[:, np.argmin(np.abs(f - 1.0))].min()


def test_the_cli_names_a_noise_file_it_cannot_use_before_building_anything_else(monkeypatch, tmp_path, capsys):
    from quakemon.training import bundle, multisite

    def never(*args, **kwargs):
        raise AssertionError("the rest of the set is built before the noise file is checked")

    monkeypatch.setattr(bundle, "training_data", never)
    monkeypatch.setattr(multisite, "sprit_parts", never)
    _station_file(tmp_path / "horizontal.mseed", 3700, channels=("HHN", "HHE"))
    for path, message in ((tmp_path / "missing", "no such file"), (tmp_path / "horizontal.mseed", "no vertical")):
        with pytest.raises(SystemExit) as exc:
            finetune.main(["--noise", "sprit", "--noise-file", str(path), "--output", str(tmp_path / "out")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_the_provenance_names_the_noise_as_the_command_line_gives_it(monkeypatch, tmp_path):
    """The checkpoint's provenance holds the command that rebuilds it: --day, --noise-file once per station."""
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training import train

    seen = []
    monkeypatch.setattr(finetune, "finetune_data", lambda day, contract, base, sizes, seed, noise: LabelledWaveforms(
        np.zeros((0, 3, 2000), np.float32), np.zeros(0, np.int64), ["noise", "earthquake"], []))
    monkeypatch.setattr(train, "train", lambda data, contract, cfg, out, **kw: seen.append(kw["provenance"]))
    cases = [("UV05", "day", "--day UV05"), ("UV05", "sprit", "--noise sprit --day UV05"),
             (None, "sprit", "--noise sprit"), (Path("a.mseed"), "sprit", "--noise sprit --noise-file a.mseed"),
             ([Path("a.mseed"), Path("b")], "day", "--noise-file a.mseed --noise-file b")]
    for day, noise, args in cases:
        finetune.finetune(day, tmp_path / "x.safetensors", noise=noise, epochs=1)
        assert seen[-1]["command"] == f"python -m quakemon.training.finetune {args} --epochs 1"
    assert "day=['a.mseed', 'b']" in seen[-1]["data"] and "day='UV05'" in seen[0]["data"]
