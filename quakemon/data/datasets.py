"""Labelled waveform loaders: SeisBench-format datasets, MiniSEED + CSV, and the synthetic generator.

Every loader returns a `LabelledWaveforms` (waveforms, int labels, label names, per-example meta), which is what
`quakemon.pipeline.adapter.WaveformDataAdapter` consumes. Array loaders already cut windows of the contract's
length, rate and component order, with a documented, seeded choice of where the P pick falls:

* P-centred crop: an earthquake window places its P pick `p_offset_s` seconds after the window start, drawn
  uniformly from the (low, high) range with the loader's seed and narrowed where the recording is too short.
  Traces without a P pick but with an S pick place S the same way; with neither, the window starts at the trace
  start. Noise traces are cropped at a seeded uniform position.
* Windows shorter than the contract (after resampling) are skipped and counted in the log, never zero-padded
  (zeros are an artefact the detector should learn as noise, not as padding).

Formats:

* SeisBench (https://seisbench.readthedocs.io, "The SeisBench data format"): a folder with metadata.csv and
  waveforms.hdf5. Traces live in HDF5 group "data", either one dataset per trace_name or blocks addressed as
  "bucket$index,:C,:W". Group "data_format" holds component_order, dimension_order ("CW" or "WC") and
  sampling_rate as datasets (attributes are accepted too); metadata columns trace_component_order and
  trace_sampling_rate_hz / trace_dt_s override them per trace. Label: trace_category, else source_type, else the
  presence of a P pick (any trace_p*_arrival_sample column, e.g. trace_p_arrival_sample, trace_Pg_arrival_sample).
* MiniSEED, whole-file labels: CSV with header `file,label`; each file is one example (an ObsPy Stream, left for
  the adapter to select, resample and trim). Paths are relative to the CSV's folder.
* MiniSEED, picks: CSV with header `network,station,p_time` (+ optional `location`, `label`), p_time ISO 8601 UTC.
  Windows containing a pick are positives (P-centred crop, above); windows on a grid of `noise_stride_s` lying at
  least `noise_gap_s` from every pick of the same station are negatives.

Labels in CSVs are label names (case-insensitive) or class indices.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.base.errors import QuakemonError
from quakemon.data.synthetic import LABELS, SyntheticConfig, generate
from quakemon.models.contract import InputContract

log = structlog.get_logger(__name__)

#: SeisBench category / source_type values and what they mean here; other values fall back to substring rules.
CATEGORY_LABELS: dict[str, str] = {
    "noise": "noise",
    "earthquake": "earthquake",
    "earthquake_local": "earthquake",
    "local_earthquake": "earthquake",
    "eq": "earthquake",
}

#: Component letter aliases (SeisBench and SEED use 1/2 for unoriented horizontals, 3 for vertical).
_ALIASES = {"Z": "Z3", "N": "N1", "E": "E2", "1": "1N", "2": "2E", "3": "3Z"}
_P_COLUMN = re.compile(r"^trace_p[a-z0-9]*_arrival_sample$", re.IGNORECASE)
_S_COLUMN = re.compile(r"^trace_s[a-z0-9]*_arrival_sample$", re.IGNORECASE)
_MSEED_SUFFIXES = (".mseed", ".miniseed", ".ms")


class DatasetError(QuakemonError, ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names the file, row and column."""


@dataclass
class LabelledWaveforms:
    """Examples and their labels: waveforms float32 [n, C, N] (contract-shaped) or a list of ObsPy Streams."""

    waveforms: np.ndarray | list[Any]
    labels: np.ndarray
    label_names: list[str] = field(default_factory=lambda: list(LABELS))
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.waveforms)
        if self.labels.shape != (n,):
            raise DatasetError(f"labels must have shape ({n},) to match the waveforms, got {self.labels.shape}")
        if not self.meta:
            self.meta = [{} for _ in range(n)]
        if len(self.meta) != n:
            raise DatasetError(f"meta must have {n} entries, got {len(self.meta)}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise DatasetError(f"labels must be within 0..{len(self.label_names) - 1}, got {np.unique(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Examples per label name."""
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.label_names)}


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------------


def parse_label(value: Any, label_names: Sequence[str], where: str) -> int:
    """A label name (case-insensitive) or class index -> class index; `where` names the file/row/column."""
    text = str(value).strip()
    lowered = [name.lower() for name in label_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if re.fullmatch(r"\d+", text) and int(text) < len(label_names):
        return int(text)
    raise DatasetError(f"{where}: expected one of {list(label_names)} or 0..{len(label_names) - 1}, got {text!r}")


def _component_map(source_order: str, target_order: str, where: str) -> list[int]:
    """Index into source_order for each target component, accepting 1/2/3 aliases of N/E/Z."""
    src = source_order.upper()
    out = []
    for letter in target_order.upper():
        found = [src.index(a) for a in _ALIASES.get(letter, letter) if a in src]
        if not found:
            raise DatasetError(
                f"{where}: component order {source_order!r} lacks {letter!r} needed for {target_order!r}"
            )
        out.append(found[0])
    return out


def _resample(x: np.ndarray, source_hz: float, target_hz: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased); identity when the rates agree."""
    if abs(source_hz - target_hz) <= 1e-6 * target_hz:
        return x
    import scipy.signal

    ratio = Fraction(target_hz / source_hz).limit_denominator(1000)
    return scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def _window_start(
    n_total: int,
    n_window: int,
    anchor: float | None,
    offset_range: tuple[float, float],
    fs: float,
    rng: np.random.Generator,
) -> int:
    """Start sample of a window: anchor (a pick) at a seeded offset within offset_range, clamped to the data."""
    if anchor is None:
        return 0
    lo = max(offset_range[0] * fs, anchor - (n_total - n_window))
    hi = min(offset_range[1] * fs, anchor, n_window - 1)
    if lo > hi:  # the preferred offsets do not fit: take the closest feasible start
        return int(np.clip(round(anchor - offset_range[0] * fs), 0, n_total - n_window))
    return int(np.clip(round(anchor - rng.uniform(lo, hi)), 0, n_total - n_window))


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; found {columns}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _float_or_nan(row: dict[str, str], column: str, where: str) -> float:
    text = row.get(column, "")
    if text == "" or text.lower() == "nan":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{where} column {column!r}: expected a number, got {text!r}") from None


# --------------------------------------------------------------------------------------------------------------------
# SeisBench format
# --------------------------------------------------------------------------------------------------------------------


def _first_pick(row: dict[str, str], columns: Sequence[str], where: str) -> float:
    """Earliest non-empty pick sample among columns (e.g. trace_P_arrival_sample, trace_Pg_arrival_sample), or NaN."""
    values = [v for v in (_float_or_nan(row, c, where) for c in columns) if not np.isnan(v)]
    return min(values) if values else float("nan")


def _read_data_format(h5: Any, path: Path) -> dict[str, Any]:
    fmt: dict[str, Any] = {}
    group = h5.get("data_format")
    if group is not None:
        fmt.update({k: v for k, v in group.attrs.items()})
        fmt.update({k: group[k][()] for k in group.keys()})
    fmt.update({k: v for k, v in h5.attrs.items() if k in ("component_order", "dimension_order", "sampling_rate")})
    out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fmt.items()}
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in out.items()}
    dim = str(out.get("dimension_order", "CW")).upper()
    if dim not in ("CW", "WC"):
        raise DatasetError(f"{path}: data_format/dimension_order must be 'CW' or 'WC', got {dim!r}")
    out["dimension_order"] = dim
    return out


def _parse_locator(locator: str, where: str) -> tuple[int | slice, ...]:
    """Numpy-style index string "5,:3,:3001" -> tuple of ints/slices (SeisBench bucket trace names)."""
    parts: list[int | slice] = []
    try:
        for item in locator.replace(" ", "").split(","):
            bounds = item.split(":")
            if len(bounds) == 1:
                parts.append(int(bounds[0]))
            elif len(bounds) in (2, 3):
                parts.append(slice(*[int(b) if b else None for b in bounds]))
            else:
                raise ValueError(item)
    except ValueError:
        raise DatasetError(f"{where}: cannot parse bucket locator {locator!r} (expected e.g. '5,:3,:3001')") from None
    return tuple(parts)


def _read_trace(h5: Any, trace_name: str, where: str) -> np.ndarray:
    data = h5.get("data")
    if data is None:
        raise DatasetError(f"{where}: waveforms.hdf5 has no group 'data'")
    block, _, locator = trace_name.partition("$")
    if block not in data:
        raise DatasetError(f"{where}: trace {trace_name!r} not found in waveforms.hdf5 group 'data' (no {block!r})")
    if not locator:
        return np.asarray(data[block][()])
    return np.asarray(data[block][_parse_locator(locator, where)])


def _seisbench_label(
    row: dict[str, str], has_p: bool, label_names: Sequence[str], where: str, category_labels: dict[str, str]
) -> int:
    for column in ("trace_category", "source_type"):
        value = row.get(column, "").strip()
        if not value:
            continue
        key = value.lower()
        name = category_labels.get(key)
        if name is None:
            if "noise" in key:
                name = "noise"
            elif "earthquake" in key:
                name = "earthquake"
            else:
                raise DatasetError(
                    f"{where} column {column!r}: unknown category {value!r}; map it with category_labels"
                )
        return parse_label(name, label_names, f"{where} column {column!r}")
    return parse_label("earthquake" if has_p else "noise", label_names, f"{where} (label from P pick)")


def load_seisbench(
    path: str | os.PathLike[str],
    contract: InputContract,
    *,
    seed: int = 0,
    split: str | None = None,
    limit: int | None = None,
    p_offset_s: tuple[float, float] = (1.0, 15.0),
    label_names: Sequence[str] = LABELS,
    category_labels: dict[str, str] | None = None,
) -> LabelledWaveforms:
    """Load a SeisBench-format folder (metadata.csv + waveforms.hdf5) as contract-shaped windows.

    split keeps rows whose `split` column equals it (train/dev/test); limit keeps the first rows after that.
    """
    import h5py

    root = Path(path)
    meta_path, wave_path = root / "metadata.csv", root / "waveforms.hdf5"
    if not wave_path.is_file():
        raise DatasetError(f"{wave_path}: file not found (a SeisBench dataset has metadata.csv and waveforms.hdf5)")
    all_rows = _read_csv(meta_path, required=["trace_name"])
    columns = list(all_rows[0]) if all_rows else []
    rows = list(enumerate(all_rows, start=2))  # (line number in metadata.csv, row); line 1 is the header
    if split is not None:
        if "split" not in columns:
            raise DatasetError(f"{meta_path}: split={split!r} requested but there is no 'split' column")
        rows = [(i, r) for i, r in rows if r.get("split") == split]
    if limit is not None:
        rows = rows[:limit]
    p_cols = [c for c in columns if _P_COLUMN.match(c)]
    s_cols = [c for c in columns if _S_COLUMN.match(c)]
    categories = {**CATEGORY_LABELS, **{k.lower(): v for k, v in (category_labels or {}).items()}}
    rng = np.random.default_rng(seed)
    fs, n_win = float(contract.sampling_rate), int(contract.window_samples)
    windows: list[np.ndarray] = []
    labels: list[int] = []
    meta: list[dict[str, Any]] = []
    skipped = 0
    with h5py.File(wave_path, "r") as h5:
        fmt = _read_data_format(h5, wave_path)
        for i, row in rows:
            where = f"{meta_path} row {i}"
            name = row["trace_name"]
            sr = _float_or_nan(row, "trace_sampling_rate_hz", where)
            if np.isnan(sr):
                dt = _float_or_nan(row, "trace_dt_s", where)
                sr = 1.0 / dt if dt > 0 else float(fmt.get("sampling_rate", "nan"))
            if not sr > 0:
                raise DatasetError(
                    f"{where}: no sampling rate (trace_sampling_rate_hz / trace_dt_s column, data_format/sampling_rate)"
                )
            x = _read_trace(h5, name, where).astype(np.float64)
            if x.ndim != 2:
                raise DatasetError(
                    f"{where}: trace {name!r} has shape {x.shape}; expected 2-D ({fmt['dimension_order']})"
                )
            if fmt["dimension_order"] == "WC":
                x = x.T
            order = row.get("trace_component_order") or str(fmt.get("component_order", ""))
            if not order:
                if x.shape[0] != contract.n_channels:
                    raise DatasetError(f"{where}: no component order given and {x.shape[0]} components in {name!r}")
                order = contract.component_order
            if len(order) != x.shape[0]:
                raise DatasetError(f"{where}: component order {order!r} but trace {name!r} has {x.shape[0]} components")
            x = _resample(x[_component_map(order, contract.component_order, where)], sr, fs)
            factor = fs / sr
            p = _first_pick(row, p_cols, where) * factor
            s = _first_pick(row, s_cols, where) * factor
            label = _seisbench_label(row, not np.isnan(p), label_names, where, categories)
            if x.shape[1] < n_win:
                skipped += 1
                continue
            if label_names[label].lower() == "noise":
                start = int(rng.integers(0, x.shape[1] - n_win + 1))
            else:
                anchor = p if not np.isnan(p) else (s if not np.isnan(s) else None)
                start = _window_start(x.shape[1], n_win, anchor, p_offset_s, fs, rng)
            windows.append(x[:, start : start + n_win].astype(np.float32))
            labels.append(label)
            meta.append(
                {
                    "source": "seisbench",
                    "trace_name": name,
                    "row": i,
                    "window_start_sample": start,
                    "p_sample": None if np.isnan(p) else p - start,
                    "s_sample": None if np.isnan(s) else s - start,
                    "label": label_names[label],
                }
            )
    if skipped:
        log.warning("seisbench_short_traces_skipped", path=str(root), skipped=skipped, window_samples=n_win)
    waveforms = np.stack(windows) if windows else np.empty((0, contract.n_channels, n_win), np.float32)
    log.info("seisbench_loaded", path=str(root), n=len(labels), skipped=skipped)
    return LabelledWaveforms(waveforms, np.asarray(labels, dtype=np.int64), list(label_names), meta)


# --------------------------------------------------------------------------------------------------------------------
# MiniSEED + CSV
# --------------------------------------------------------------------------------------------------------------------


def _read_stream(path: Path, where: str) -> Any:
    import obspy

    if not path.is_file():
        raise DatasetError(f"{where}: waveform file {str(path)!r} not found")
    try:
        stream = obspy.read(str(path))
    except Exception as exc:  # ObsPy raises many exception types for unreadable files
        raise DatasetError(f"{where}: cannot read {str(path)!r}: {exc}") from exc
    if len(stream) == 0:
        raise DatasetError(f"{where}: {str(path)!r} holds no traces")
    return stream


def load_mseed_labels(csv_path: str | os.PathLike[str], *, label_names: Sequence[str] = LABELS) -> LabelledWaveforms:
    """Whole-file labels: CSV `file,label`; each waveform file becomes one example (an ObsPy Stream)."""
    csv_file = Path(csv_path)
    rows = _read_csv(csv_file, required=["file", "label"])
    streams, labels, meta = [], [], []
    for i, row in enumerate(rows, start=2):
        where = f"{csv_file} row {i}"
        if not row["file"]:
            raise DatasetError(f"{where} column 'file': empty")
        path = Path(row["file"]) if os.path.isabs(row["file"]) else csv_file.parent / row["file"]
        label = parse_label(row["label"], label_names, f"{where} column 'label'")
        streams.append(_read_stream(path, where))
        labels.append(label)
        meta.append({"source": "mseed_labels", "file": str(path), "row": i, "label": label_names[label]})
    log.info("mseed_labels_loaded", path=str(csv_file), n=len(labels))
    return LabelledWaveforms(streams, np.asarray(labels, dtype=np.int64), list(label_names), meta)


def _station_pieces(stream: Any, component_order: str, fs: float) -> dict[str, list[Any]] | None:
    """Contiguous, contract-rate traces per contract component letter; None when a component is missing."""
    import obspy

    pieces: dict[str, list[Any]] = {}
    for letter in component_order.upper():
        aliases = _ALIASES.get(letter, letter)
        sel = obspy.Stream([tr for tr in stream if tr.stats.channel[-1:].upper() in aliases]).copy()
        if not sel:
            return None
        sel.merge(method=1, fill_value=None)
        parts = []
        for tr in sel.split():
            if abs(tr.stats.sampling_rate - fs) > 1e-6 * fs:
                tr.data = _resample(tr.data.astype(np.float64), tr.stats.sampling_rate, fs)
                tr.stats.sampling_rate = fs
            parts.append(tr)
        pieces[letter] = parts
    return pieces


def _cut(pieces: dict[str, list[Any]], t0: Any, n: int, fs: float) -> np.ndarray | None:
    """[C, n] starting at t0 (nearest sample of each trace), or None if any component has a gap there."""
    rows = []
    for parts in pieces.values():
        for tr in parts:
            i = int(round((t0 - tr.stats.starttime) * fs))
            if 0 <= i and i + n <= tr.stats.npts:
                rows.append(np.asarray(tr.data[i : i + n], dtype=np.float32))
                break
        else:
            return None
    return np.stack(rows)


def _covering(pieces: dict[str, list[Any]]) -> list[tuple[Any, Any]]:
    """Time spans covered by every component (intersection of their contiguous pieces)."""
    spans = None
    for parts in pieces.values():
        cur = [(tr.stats.starttime, tr.stats.endtime) for tr in parts]
        if spans is None:
            spans = cur
            continue
        spans = [(max(a0, b0), min(a1, b1)) for a0, a1 in spans for b0, b1 in cur if max(a0, b0) < min(a1, b1)]
    return spans or []


def load_mseed_picks(
    picks_csv: str | os.PathLike[str],
    contract: InputContract,
    *,
    waveforms: Sequence[str | os.PathLike[str]] | None = None,
    seed: int = 0,
    p_offset_s: tuple[float, float] = (1.0, 15.0),
    noise_gap_s: float = 30.0,
    noise_stride_s: float | None = None,
    label_names: Sequence[str] = LABELS,
) -> LabelledWaveforms:
    """Windows from continuous MiniSEED with a P-pick CSV (`network,station,p_time[,location][,label]`).

    waveforms: files or glob patterns; default: *.mseed, *.miniseed, *.ms beside the CSV. One positive per pick
    (P at a seeded offset in p_offset_s); negatives on a grid of noise_stride_s (default: the window length)
    at least noise_gap_s from every pick of that station. Windows with a gap in any component are skipped.
    """
    import obspy

    csv_file = Path(picks_csv)
    rows = _read_csv(csv_file, required=["network", "station", "p_time"])
    picks: dict[tuple[str, str], list[tuple[Any, int, int]]] = {}
    for i, row in enumerate(rows, start=2):
        where = f"{csv_file} row {i}"
        try:
            t = obspy.UTCDateTime(row["p_time"])
        except Exception:
            raise DatasetError(f"{where} column 'p_time': expected ISO 8601 UTC time, got {row['p_time']!r}") from None
        label = parse_label(row.get("label") or "earthquake", label_names, f"{where} column 'label'")
        loc = row["location"] if "location" in row and row["location"] not in ("", "--") else None
        picks.setdefault((row["network"], row["station"], loc), []).append((t, label, i))

    if waveforms is None:
        files = sorted(p for p in csv_file.parent.iterdir() if p.suffix.lower() in _MSEED_SUFFIXES)
    else:
        files = []
        for item in waveforms:
            matched = sorted(glob.glob(str(item)))
            if not matched:
                raise DatasetError(f"waveforms: {str(item)!r} matches no file")
            files.extend(Path(m) for m in matched)
    if not files:
        raise DatasetError(f"{csv_file.parent}: no MiniSEED files ({', '.join(_MSEED_SUFFIXES)}) beside the picks CSV")
    stream = obspy.Stream()
    for f in files:
        stream += _read_stream(f, "waveforms")

    fs, n_win = float(contract.sampling_rate), int(contract.window_samples)
    win_s = n_win / fs
    stride = noise_stride_s or win_s
    rng = np.random.default_rng(seed)
    windows: list[np.ndarray] = []
    labels: list[int] = []
    meta: list[dict[str, Any]] = []
    noise_label = parse_label("noise", label_names, "label_names")
    stations = sorted({(tr.stats.network, tr.stats.station, tr.stats.location) for tr in stream})
    unmatched = {k[:2] for k in picks} - {k[:2] for k in stations}
    if unmatched:
        log.warning("picks_without_waveforms", stations=sorted(".".join(s) for s in unmatched))
    for net, sta, loc in stations:
        sid = f"{net}.{sta}.{loc}"
        sel = obspy.Stream([tr for tr in stream if tr.id.startswith(sid + ".")])
        pieces = _station_pieces(sel, contract.component_order, fs)
        if pieces is None:
            log.warning("station_missing_components", station=sid, wanted=contract.component_order)
            continue
        spans = _covering(pieces)
        station_picks = picks.get((net, sta, None), []) + picks.get((net, sta, loc), [])
        for t, label, row_no in station_picks:
            span = next(((a, b) for a, b in spans if a <= t <= b), None)
            if span is None:
                log.warning("pick_outside_data", station=sid, p_time=str(t), row=row_no)
                continue
            n_total = int((span[1] - span[0]) * fs) + 1
            start = _window_start(n_total, n_win, (t - span[0]) * fs, p_offset_s, fs, rng)
            t0 = span[0] + start / fs
            x = _cut(pieces, t0, n_win, fs) if n_total >= n_win else None
            if x is None:
                log.warning("pick_window_incomplete", station=sid, p_time=str(t), row=row_no)
                continue
            windows.append(x)
            labels.append(label)
            meta.append(
                {
                    "source": "mseed_picks",
                    "station": sid,
                    "window_start": str(t0),
                    "p_time": str(t),
                    "p_sample": (t - t0) * fs,
                    "row": row_no,
                    "label": label_names[label],
                }
            )
        for a, b in spans:
            t0 = a
            while t0 + win_s <= b + 1.0 / fs:
                far = all(t < t0 - noise_gap_s or t > t0 + win_s + noise_gap_s for t, _, _ in station_picks)
                x = _cut(pieces, t0, n_win, fs) if far else None
                if x is not None:
                    windows.append(x)
                    labels.append(noise_label)
                    meta.append(
                        {
                            "source": "mseed_picks",
                            "station": sid,
                            "window_start": str(t0),
                            "p_time": None,
                            "p_sample": None,
                            "label": label_names[noise_label],
                        }
                    )
                t0 += stride
    waveforms_arr = np.stack(windows) if windows else np.empty((0, contract.n_channels, n_win), np.float32)
    out = LabelledWaveforms(waveforms_arr, np.asarray(labels, dtype=np.int64), list(label_names), meta)
    log.info("mseed_picks_loaded", path=str(csv_file), files=len(files), **out.counts())
    return out


# --------------------------------------------------------------------------------------------------------------------
# Synthetic and dispatch
# --------------------------------------------------------------------------------------------------------------------


def load_synthetic(
    n: int, contract: InputContract, *, seed: int = 0, config: SyntheticConfig | None = None
) -> LabelledWaveforms:
    """The synthetic generator (`quakemon.data.synthetic.generate`) in the common return type."""
    waveforms, labels, meta = generate(n, contract, seed, config)
    return LabelledWaveforms(waveforms, labels, list(LABELS), meta)


def load_labelled(
    source: str | os.PathLike[str], contract: InputContract, *, seed: int = 0, **kwargs: Any
) -> LabelledWaveforms:
    """Pick the loader from the source: "synthetic:N", a SeisBench folder, or a CSV (file,label or picks)."""
    text = str(source)
    if text.startswith("synthetic:"):
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            raise DatasetError(f"source {text!r}: expected 'synthetic:<number of windows>'") from None
        return load_synthetic(n, contract, seed=seed, **kwargs)
    path = Path(text)
    if path.is_dir():
        return load_seisbench(path, contract, seed=seed, **kwargs)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            header = [c.strip() for c in next(csv.reader(fh), [])]
        if "p_time" in header:
            return load_mseed_picks(path, contract, seed=seed, **kwargs)
        if "file" in header:
            return load_mseed_labels(path, **kwargs)
        raise DatasetError(f"{path}: header {header} is neither 'file,label' nor 'network,station,p_time'")
    raise DatasetError(f"source {text!r}: expected 'synthetic:N', a SeisBench folder or a .csv file")
