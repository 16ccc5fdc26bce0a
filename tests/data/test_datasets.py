"""Dataset loaders: SeisBench format (plain and bucketed, CW and WC), MiniSEED + CSV (whole-file labels and
picks), the synthetic wrapper, the dispatcher, and the error messages for malformed input."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import obspy
import pytest

from quakemon.data.datasets import (
    DatasetError,
    LabelledWaveforms,
    load_labelled,
    load_mseed_labels,
    load_mseed_picks,
    load_seisbench,
    load_synthetic,
    parse_label,
)
from quakemon.models.contract import InputContract

CONTRACT = InputContract()
N = CONTRACT.window_samples
NPTS = 6000


def ramp_trace(k: int, npts: int = NPTS) -> np.ndarray:
    """[3, npts] whose values encode trace k, component c and sample j: k*1e6 + c*1e5 + j (crop is readable)."""
    return (k * 1e6 + np.arange(3)[:, None] * 1e5 + np.arange(npts)[None, :]).astype(np.float32)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_seisbench(
    root: Path,
    *,
    bucketed: bool = False,
    dim: str = "CW",
    order: str = "ZNE",
    rows_extra: list[dict] | None = None,
    categories: bool = True,
    sampling_rate: float = 100.0,
    npts: int = NPTS,
) -> Path:
    """Four traces: 0, 1 earthquakes with P at 3000 and S at 3500 (at 100 Hz); 2, 3 noise."""
    root.mkdir(parents=True, exist_ok=True)
    traces = [ramp_trace(k, npts) for k in range(4)]
    scale = sampling_rate / 100.0
    rows = []
    with h5py.File(root / "waveforms.hdf5", "w") as f:
        fmt = f.create_group("data_format")
        fmt.create_dataset("component_order", data=order)
        fmt.create_dataset("dimension_order", data=dim)
        fmt.create_dataset("sampling_rate", data=sampling_rate)
        data = f.create_group("data")
        if bucketed:
            block = np.stack([t if dim == "CW" else t.T for t in traces])
            data.create_dataset("bucket0", data=block)
            loc = f":3,:{npts}" if dim == "CW" else f":{npts},:3"
            names = [f"bucket0${k},{loc}" for k in range(4)]
        else:
            names = [f"trace_{k}" for k in range(4)]
            for name, t in zip(names, traces, strict=True):
                data.create_dataset(name, data=t if dim == "CW" else t.T)
    for k, name in enumerate(names):
        quake = k < 2
        row = {
            "trace_name": name,
            "trace_sampling_rate_hz": sampling_rate,
            "trace_p_arrival_sample": 3000 * scale if quake else "",
            "trace_s_arrival_sample": 3500 * scale if quake else "",
            "split": "train" if k % 2 == 0 else "test",
        }
        if categories:
            row["trace_category"] = "earthquake_local" if quake else "noise"
        rows.append(row)
    for row, extra in zip(rows, rows_extra or [], strict=False):
        row.update(extra)
    write_csv(root / "metadata.csv", rows)
    return root


def check_crops(data: LabelledWaveforms, order: str = "ZNE") -> None:
    assert data.waveforms.shape == (4, 3, N) and data.waveforms.dtype == np.float32
    assert data.labels.tolist() == [1, 1, 0, 0] and data.label_names == ["noise", "earthquake"]
    for k, (x, m) in enumerate(zip(data.waveforms, data.meta, strict=True)):
        start = m["window_start_sample"]
        # Contract order ZNE from the stored order: component index of Z/N/E in the file.
        expected = np.stack([ramp_trace(k)[order.index(c), start : start + N] for c in "ZNE"])
        np.testing.assert_array_equal(x, expected)
        if k < 2:
            assert m["p_sample"] == 3000 - start and 100 <= m["p_sample"] <= 1500  # P 1-15 s into the window
            assert m["s_sample"] == 3500 - start


@pytest.mark.parametrize("bucketed", [False, True])
@pytest.mark.parametrize("dim", ["CW", "WC"])
def test_seisbench_plain_and_bucketed(tmp_path: Path, bucketed: bool, dim: str) -> None:
    root = write_seisbench(tmp_path / "ds", bucketed=bucketed, dim=dim)
    check_crops(load_seisbench(root, CONTRACT, seed=1))


def test_seisbench_component_order_mapped(tmp_path: Path) -> None:
    root = write_seisbench(tmp_path / "ds", order="ENZ")
    check_crops(load_seisbench(root, CONTRACT, seed=1), order="ENZ")


def test_seisbench_crop_is_seeded(tmp_path: Path) -> None:
    root = write_seisbench(tmp_path / "ds")
    starts = [[m["window_start_sample"] for m in load_seisbench(root, CONTRACT, seed=s).meta] for s in (1, 1, 2)]
    assert starts[0] == starts[1] and starts[0] != starts[2]
    fixed = load_seisbench(root, CONTRACT, seed=3, p_offset_s=(5.0, 5.0))
    assert [m["p_sample"] for m in fixed.meta[:2]] == [500, 500]


def test_seisbench_label_from_p_pick_and_split(tmp_path: Path) -> None:
    root = write_seisbench(tmp_path / "ds", categories=False)
    data = load_seisbench(root, CONTRACT, split="train")
    assert data.labels.tolist() == [1, 0]  # trace 0 (P pick) and trace 2 (none)
    assert [m["trace_name"] for m in data.meta] == ["trace_0", "trace_2"]
    assert [m["row"] for m in data.meta] == [2, 4]  # line numbers in metadata.csv, for error hunting
    assert len(load_seisbench(root, CONTRACT, limit=3)) == 3


def test_seisbench_earliest_of_several_p_columns(tmp_path: Path) -> None:
    extra = [{"trace_Pg_arrival_sample": ""}, {"trace_Pg_arrival_sample": 2800}]
    root = write_seisbench(tmp_path / "ds", rows_extra=extra)
    data = load_seisbench(root, CONTRACT, seed=1)
    assert [m["p_sample"] + m["window_start_sample"] for m in data.meta[:2]] == [3000, 2800]


def test_seisbench_resamples_to_contract_rate(tmp_path: Path) -> None:
    root = write_seisbench(tmp_path / "ds", sampling_rate=200.0, npts=12000)
    data = load_seisbench(root, CONTRACT, seed=0)
    assert data.waveforms.shape == (4, 3, N)
    for m in data.meta[:2]:
        assert m["p_sample"] == 3000 - m["window_start_sample"]  # 6000 at 200 Hz -> 3000 at 100 Hz


def test_seisbench_short_traces_skipped(tmp_path: Path) -> None:
    root = write_seisbench(tmp_path / "ds", npts=N - 1)
    assert len(load_seisbench(root, CONTRACT)) == 0


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"trace_name": "nope"}, r"metadata\.csv row 2: trace 'nope' not found"),
        ({"trace_category": "volcano"}, r"row 2 column 'trace_category': unknown category 'volcano'"),
        ({"trace_p_arrival_sample": "abc"}, r"row 2 column 'trace_p_arrival_sample': expected a number"),
        ({"trace_component_order": "ZN"}, r"row 2: component order 'ZN' but trace"),
        ({"trace_component_order": "ZNH"}, r"row 2: component order 'ZNH' lacks 'E'"),
    ],
)
def test_seisbench_errors_name_file_row_column(tmp_path: Path, extra: dict, match: str) -> None:
    root = write_seisbench(tmp_path / "ds", rows_extra=[extra])
    with pytest.raises(DatasetError, match=match):
        load_seisbench(root, CONTRACT)


def test_seisbench_missing_files_and_columns(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="waveforms.hdf5: file not found"):
        load_seisbench(tmp_path, CONTRACT)
    root = write_seisbench(tmp_path / "ds")
    write_csv(root / "metadata.csv", [{"name": "trace_0"}])
    with pytest.raises(DatasetError, match=r"metadata\.csv: missing column\(s\) \['trace_name'\]"):
        load_seisbench(root, CONTRACT)


def rjob_noise(seed: int = 0) -> obspy.Stream:
    """obspy.read()'s BW.RJOB stream with its data replaced by noise (same ids, rate, length)."""
    st = obspy.read()
    rng = np.random.default_rng(seed)
    for tr in st:
        tr.data = rng.normal(0, 100, tr.stats.npts).astype(np.float32)
    return st


def test_mseed_whole_file_labels(tmp_path: Path) -> None:
    obspy.read().write(str(tmp_path / "event.mseed"), format="MSEED")
    rjob_noise().write(str(tmp_path / "quiet.mseed"), format="MSEED")
    write_csv(
        tmp_path / "labels.csv", [{"file": "event.mseed", "label": "earthquake"}, {"file": "quiet.mseed", "label": "0"}]
    )
    data = load_mseed_labels(tmp_path / "labels.csv")
    assert data.labels.tolist() == [1, 0] and len(data.waveforms) == 2
    assert all(isinstance(s, obspy.Stream) and len(s) == 3 for s in data.waveforms)
    assert data.waveforms[0][0].id == "BW.RJOB..EHZ"
    assert load_labelled(tmp_path / "labels.csv", CONTRACT).labels.tolist() == [1, 0]


def test_mseed_whole_file_errors(tmp_path: Path) -> None:
    obspy.read().write(str(tmp_path / "event.mseed"), format="MSEED")
    write_csv(tmp_path / "bad.csv", [{"file": "event.mseed", "label": "quake"}])
    with pytest.raises(DatasetError, match=r"bad\.csv row 2 column 'label': expected one of"):
        load_mseed_labels(tmp_path / "bad.csv")
    write_csv(tmp_path / "missing.csv", [{"file": "nope.mseed", "label": "noise"}])
    with pytest.raises(DatasetError, match=r"missing\.csv row 2: waveform file .*nope\.mseed.* not found"):
        load_mseed_labels(tmp_path / "missing.csv")
    write_csv(tmp_path / "cols.csv", [{"path": "event.mseed", "label": "noise"}])
    with pytest.raises(DatasetError, match=r"cols\.csv: missing column\(s\) \['file'\]"):
        load_mseed_labels(tmp_path / "cols.csv")


def continuous_with_event(tmp_path: Path, gap: bool = False) -> tuple[obspy.Stream, obspy.UTCDateTime]:
    """200 s of 3-component noise at BW.RJOB with obspy.read()'s event added at 100 s; returns (stream, P time)."""
    event = obspy.read()
    start = event[0].stats.starttime - 100.0
    rng = np.random.default_rng(1)
    st = obspy.Stream()
    for ev in event:
        tr = ev.copy()
        data = rng.normal(0, 20, 20000)
        data[10000 : 10000 + ev.stats.npts] += ev.data
        tr.data = data.astype(np.float32)
        tr.stats.starttime = start
        st.append(tr)
    if gap:  # 10 s missing on N, 20-30 s after the start
        n = st.select(channel="EHN")[0]
        st.remove(n)
        st.extend([n.slice(start, start + 20.0 - 0.01), n.slice(start + 30.0, n.stats.endtime)])
    st.write(str(tmp_path / "rjob.mseed"), format="MSEED")
    return st, event[0].stats.starttime + 4.5


def test_mseed_picks_positive_and_far_negatives(tmp_path: Path) -> None:
    st, p_time = continuous_with_event(tmp_path)
    write_csv(tmp_path / "picks.csv", [{"network": "BW", "station": "RJOB", "p_time": str(p_time)}])
    data = load_mseed_picks(tmp_path / "picks.csv", CONTRACT, seed=0)
    assert data.waveforms.shape[1:] == (3, N) and data.counts() == {"noise": 6, "earthquake": 1}
    pos = data.meta[int(np.flatnonzero(data.labels == 1)[0])]
    assert 100 <= pos["p_sample"] <= 1500 and pos["station"] == "BW.RJOB."
    t0 = obspy.UTCDateTime(pos["window_start"])
    i = int(round((t0 - st[0].stats.starttime) * 100))
    x = data.waveforms[data.labels == 1][0]
    np.testing.assert_array_equal(x[0], st.select(channel="EHZ")[0].data[i : i + N])
    np.testing.assert_array_equal(x[2], st.select(channel="EHE")[0].data[i : i + N])
    for m in data.meta:
        if m["label"] == "noise":
            start = obspy.UTCDateTime(m["window_start"])
            assert p_time < start - 30.0 or p_time > start + 20.0 + 30.0
    again = load_mseed_picks(tmp_path / "picks.csv", CONTRACT, seed=0)
    assert np.array_equal(again.waveforms, data.waveforms)
    assert load_labelled(tmp_path / "picks.csv", CONTRACT).counts() == data.counts()


def test_mseed_picks_resamples_to_contract_rate(tmp_path: Path) -> None:
    st, p_time = continuous_with_event(tmp_path)
    (tmp_path / "rjob.mseed").unlink()
    st.copy().resample(200.0).write(str(tmp_path / "rjob200.mseed"), format="MSEED")
    write_csv(tmp_path / "picks.csv", [{"network": "BW", "station": "RJOB", "p_time": str(p_time)}])
    data = load_mseed_picks(tmp_path / "picks.csv", CONTRACT, seed=0)
    assert data.waveforms.shape[1:] == (3, N) and data.counts() == {"noise": 6, "earthquake": 1}
    x = data.waveforms[data.labels == 1][0].astype(np.float64)
    t0 = obspy.UTCDateTime(data.meta[int(np.flatnonzero(data.labels == 1)[0])]["window_start"])
    i = int(round((t0 - st[0].stats.starttime) * 100))
    ref = st.select(channel="EHZ")[0].data[i : i + N].astype(np.float64)
    assert np.corrcoef(x[0, 50:-50], ref[50:-50])[0, 1] > 0.99  # same signal after 100 -> 200 -> 100 Hz


def test_mseed_picks_skip_windows_with_gaps(tmp_path: Path) -> None:
    _, p_time = continuous_with_event(tmp_path, gap=True)
    write_csv(tmp_path / "picks.csv", [{"network": "BW", "station": "RJOB", "p_time": str(p_time)}])
    data = load_mseed_picks(tmp_path / "picks.csv", CONTRACT, noise_stride_s=10.0)
    starts = [obspy.UTCDateTime(m["window_start"]) for m in data.meta if m["label"] == "noise"]
    t_start = p_time - 104.5
    assert sorted(round(s - t_start) for s in starts) == [0, 30, 40, 50, 140, 150, 160, 170, 180]
    assert data.counts()["earthquake"] == 1


def test_mseed_picks_errors(tmp_path: Path) -> None:
    _, p_time = continuous_with_event(tmp_path)
    write_csv(tmp_path / "picks.csv", [{"network": "BW", "station": "RJOB", "p_time": "yesterday"}])
    with pytest.raises(DatasetError, match=r"picks\.csv row 2 column 'p_time': expected ISO 8601"):
        load_mseed_picks(tmp_path / "picks.csv", CONTRACT)
    write_csv(tmp_path / "picks.csv", [{"network": "BW", "station": "RJOB", "p_time": str(p_time)}])
    with pytest.raises(DatasetError, match="matches no file"):
        load_mseed_picks(tmp_path / "picks.csv", CONTRACT, waveforms=[str(tmp_path / "none*.mseed")])


def test_synthetic_wrapper_and_dispatch(tmp_path: Path) -> None:
    data = load_synthetic(10, CONTRACT, seed=0)
    assert isinstance(data, LabelledWaveforms) and data.waveforms.shape == (10, 3, N)
    assert data.counts() == {"noise": 5, "earthquake": 5}
    again = load_labelled("synthetic:10", CONTRACT, seed=0)
    assert np.array_equal(again.waveforms, data.waveforms)
    root = write_seisbench(tmp_path / "ds")
    assert len(load_labelled(root, CONTRACT)) == 4
    with pytest.raises(DatasetError, match="synthetic:<number"):
        load_labelled("synthetic:many", CONTRACT)


def test_loaders_feed_waveform_data_adapter(tmp_path: Path) -> None:
    from quakemon.pipeline.adapter import WaveformDataAdapter

    synthetic = load_synthetic(6, CONTRACT, seed=0)
    adapter = WaveformDataAdapter(synthetic.waveforms, synthetic.labels, contract=CONTRACT)
    assert len(adapter) == 6 and tuple(adapter[0][0].shape) == (3, *CONTRACT.spectrogram_shape)
    obspy.read().write(str(tmp_path / "event.mseed"), format="MSEED")
    write_csv(tmp_path / "labels.csv", [{"file": "event.mseed", "label": "earthquake"}])
    files = load_mseed_labels(tmp_path / "labels.csv")
    adapter = WaveformDataAdapter(files.waveforms, files.labels, contract=CONTRACT)
    assert len(adapter) == 1 and adapter[0][1] == 1


def test_labelled_waveforms_validates_and_parse_label() -> None:
    with pytest.raises(DatasetError, match="labels must have shape"):
        LabelledWaveforms(np.zeros((2, 3, 10)), np.zeros(3))
    with pytest.raises(DatasetError, match="labels must be within"):
        LabelledWaveforms(np.zeros((1, 3, 10)), np.array([2]))
    assert parse_label("Earthquake", ["noise", "earthquake"], "x") == 1
    assert parse_label("0", ["noise", "earthquake"], "x") == 0
    with pytest.raises(DatasetError, match="where: expected one of"):
        parse_label("2", ["noise", "earthquake"], "where")
