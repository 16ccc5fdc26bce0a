"""WaveformDataAdapter and TransformOP: the documented usage, contracts, drops and errors, on ObsPy example data."""

from __future__ import annotations

import numpy as np
import obspy
import pytest
import torch
from torch.utils.data import DataLoader

from quakemon.base.errors import ContractError
from quakemon.models.contract import KNOWN_TRANSFORMS, InputContract
from quakemon.pipeline.adapter import DEFAULT_TRANSFORMS, TransformOP, WaveformDataAdapter
from quakemon.pipeline.streams import stream_to_array
from quakemon.pipeline.transforms import preprocess_batch


@pytest.fixture(scope="module")
def rjob_events(tmp_path_factory) -> list[obspy.Stream]:
    """Four events read back from MiniSEED written from obspy's bundled BW.RJOB example (3 x 3000 @ 100 Hz)."""
    folder = tmp_path_factory.mktemp("mseed")
    events = []
    for i in range(4):
        st = obspy.read()
        for tr in st:
            tr.data = np.roll(tr.data, 300 * i).astype(np.int32)
        if i % 2:  # Z/1/2 codes, shuffled trace order
            for tr, code in zip(st, "Z12", strict=True):
                tr.stats.channel = "EH" + code
            st.traces = st.traces[::-1]
        path = folder / f"event{i}.mseed"
        st.write(str(path), format="MSEED")
        events.append(obspy.read(str(path)))
    return events


def test_transformop_names_round_trip_in_contract_order():
    op = TransformOP.SPECTROGRAM | TransformOP.DROP_NAN | TransformOP.ZSCORE | TransformOP.TRIMMING
    assert op.to_names() == ("DROP_NAN", "TRIMMING", "ZSCORE", "SPECTROGRAM") == InputContract().transforms
    assert TransformOP.from_names(op.to_names()) == op == DEFAULT_TRANSFORMS
    assert [m.name for m in TransformOP] == list(KNOWN_TRANSFORMS)
    assert TransformOP.from_names([]) == TransformOP(0) and TransformOP(0).to_names() == ()
    with pytest.raises(ContractError, match="unknown transform 'FFT'"):
        TransformOP.from_names(["ZSCORE", "FFT"])


def test_usage_example_runs_as_written(rjob_events):
    events, labels = rjob_events, [0, 1, 1, 0]
    from quakemon.pipeline.adapter import TransformOP, WaveformDataAdapter

    # the usage example in docs/training.md, as written
    # fmt: off
    adapter = WaveformDataAdapter(events=events, labels=labels, stft_nperseg=64, stft_hop=32,
        transforms=TransformOP.DROP_NAN | TransformOP.TRIMMING | TransformOP.ZSCORE | TransformOP.SPECTROGRAM)
    # fmt: on
    assert len(adapter) == 4
    x, y = adapter[1]
    assert x.shape == (3, 33, 64) and x.dtype == torch.float32 and y == 1
    assert torch.isfinite(x).all() and x.abs().sum() > 0
    assert adapter.contract == InputContract()
    batch, ys = next(iter(DataLoader(adapter, batch_size=4)))
    assert batch.shape == (4, 3, 33, 64) and ys.tolist() == labels


def test_items_equal_the_batched_transform_of_the_mapped_streams(rjob_events):
    adapter = WaveformDataAdapter(rjob_events, ["a", "b", "c", "d"])
    arrays = np.stack([stream_to_array(st, adapter.contract) for st in rjob_events])
    expected = preprocess_batch(arrays, adapter.contract).spectrograms
    for i in range(4):
        np.testing.assert_array_equal(adapter[i][0].numpy(), expected[i])
    assert adapter[2][1] == "c"
    # the Z/1/2 event (1) and the Z/N/E event (0) hold the same samples, rolled: the Z/1/2 mapping lined them up
    z = stream_to_array(rjob_events[1], adapter.contract)
    z0 = stream_to_array(rjob_events[0], adapter.contract)
    np.testing.assert_array_equal(z, np.roll(z0, 300, axis=-1))


def test_contract_supplies_defaults_and_keywords_override(rjob_events):
    contract = InputContract(window_samples=1000, component_order="ENZ", transforms=("TRIMMING", "SPECTROGRAM"))
    adapter = WaveformDataAdapter(rjob_events[:2], [0, 1], contract=contract)
    assert adapter[0][0].shape == (3, 33, 33) == (3, *contract.spectrogram_shape)
    assert adapter.transforms == TransformOP.TRIMMING | TransformOP.SPECTROGRAM
    overridden = WaveformDataAdapter(
        rjob_events[:2], [0, 1], stft_hop=16, transforms=DEFAULT_TRANSFORMS, contract=contract, max_nan_fraction=0.05
    )
    assert overridden.contract.stft_hop == 16 and overridden.contract.window_samples == 1000
    assert overridden.contract.component_order == "ENZ"
    assert overridden.contract.transforms == InputContract().transforms
    assert overridden.contract.extra["max_nan_fraction"] == 0.05
    assert overridden[0][0].shape == (3, 33, 64) == (3, *overridden.contract.spectrogram_shape)
    # ENZ order: channel 0 of the item is the E component
    arr = stream_to_array(rjob_events[0], overridden.contract)
    np.testing.assert_array_equal(arr[0], rjob_events[0].select(component="E")[0].data)


def test_from_contract_uses_the_contract_exactly(rjob_events):
    contract = InputContract(
        window_samples=1500, transforms=("DROP_NAN", "DETREND", "TRIMMING", "ZSCORE", "SPECTROGRAM")
    )
    adapter = WaveformDataAdapter.from_contract(contract, rjob_events[:1], [1])
    assert adapter.contract == contract
    assert adapter[0][0].shape == (3, *contract.spectrogram_shape)
    assert TransformOP.DETREND in adapter.transforms


def test_nan_events_are_dropped_and_counted_dead_channels_reported():
    rng = np.random.default_rng(0)
    events = [rng.standard_normal((3, 2000)) for _ in range(4)]
    events[1][0, :400] = np.nan  # 20 %: dropped
    events[2][1, 100:120] = np.nan  # 1 %: repaired, kept
    events[3][2] = 7.0  # dead E channel: kept, reported
    adapter = WaveformDataAdapter(events, [0, 1, 2, 3])
    assert len(adapter) == 3 and adapter.kept_indices == [0, 2, 3]
    assert [(d.index, d.nan_fraction) for d in adapter.dropped] == [(1, pytest.approx(0.2))]
    assert [y for _, y in adapter] == [0, 2, 3]
    assert adapter.dead.tolist() == [[False] * 3, [False] * 3, [False, False, True]]
    assert all(torch.isfinite(x).all() for x, _ in adapter)
    assert (adapter[2][0][2] == 0).all()


def test_arrays_of_different_lengths_and_int_counts():
    rng = np.random.default_rng(1)
    events = [(rng.standard_normal((3, n)) * 1000).astype(np.int32) for n in (1800, 2000, 2500, 2000)]
    adapter = WaveformDataAdapter(events, [0, 1, 0, 1], batch_size=1)
    assert len(adapter) == 4 and all(x.shape == (3, 33, 64) for x, _ in adapter)
    untrimmed = WaveformDataAdapter(events[:3], [0, 1, 0], transforms=TransformOP.ZSCORE | TransformOP.SPECTROGRAM)
    assert [x.shape[-1] for x, _ in untrimmed] == [58, 64, 80]


def test_missing_component_names_the_event_and_station(rjob_events):
    broken = rjob_events[0].copy()
    broken.remove(broken.select(component="N")[0])
    with pytest.raises(ContractError) as exc:
        WaveformDataAdapter([rjob_events[1], broken], [0, 1])
    assert "event 1" in str(exc.value) and "BW.RJOB." in str(exc.value) and "['N']" in str(exc.value)


def test_bad_inputs_are_contract_errors():
    with pytest.raises(ContractError, match="2 events, 1 labels"):
        WaveformDataAdapter([np.zeros((3, 2000))] * 2, [0])
    with pytest.raises(ContractError, match=r"event 0: expected an array \[C=3"):
        WaveformDataAdapter([np.zeros(2000)], [0])
    with pytest.raises(ContractError, match="max_nan_fraction"):
        WaveformDataAdapter([np.zeros((3, 2000))], [0], max_nan_fraction=1.5)
