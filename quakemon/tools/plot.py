"""PNG plots of a run: per station, the vertical waveform (counts), the class probability over time, and each
detection's P pick as a tick at its time (with its uncertainty), on a UTC date axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quakemon.wire.schema import parse_iso_utc


def plot_detections(stream, series: dict[str, Any], detections: Sequence[dict[str, Any]], labels: Sequence[str],
                    path: str | Path, picks: dict[str, list[float]] | None = None, title: str = "quakemon",
                    label: str = "earthquake", max_stations: int = 8) -> Path:
    """Write a PNG: one panel pair per station (waveform in counts, probability of `label`), each detection's
    pick a red tick at its time with its 1-sigma uncertainty shaded, catalogue P times (`picks`) green dashed;
    the x axis is UTC date and time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates
    import matplotlib.pyplot as plt

    stations = sorted({".".join(tr.id.split(".")[:3]) for tr in stream} | set(series))[:max_stations]
    if not stations:
        raise ValueError("nothing to plot: no waveforms and no probabilities")
    li = list(labels).index(label) if label in labels else len(labels) - 1
    fig, axes = plt.subplots(2 * len(stations), 1, figsize=(11, 2.6 * len(stations)), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * len(stations)})
    for i, station in enumerate(stations):
        ax_w, ax_p = axes[2 * i, 0], axes[2 * i + 1, 0]
        net, sta, loc = (station.split(".") + ["", ""])[:3]
        sel = stream.select(network=net, station=sta, location=loc)
        z = [tr for tr in sel if tr.stats.channel.endswith("Z")] or list(sel)
        for tr in z[:1]:
            t = tr.stats.starttime.timestamp + np.arange(tr.stats.npts) / tr.stats.sampling_rate
            data = tr.data.astype(np.float64)
            ax_w.plot(_dates(t), data - np.median(data), lw=0.5, color="k")
            ax_w.text(0.005, 0.9, f"{station} {tr.stats.channel}", transform=ax_w.transAxes, fontsize=8, va="top")
        ax_w.set_ylabel("counts", fontsize=8)
        s = series.get(station)
        if s is not None and len(s.start_ns):
            centre = (np.asarray(s.start_ns) + np.asarray(s.end_ns)) / 2e9
            ax_p.plot(_dates(centre), np.asarray(s.probabilities)[:, li], color="tab:blue", lw=1)
        ax_p.set_ylim(-0.05, 1.05)
        ax_p.set_ylabel(f"p({label})", fontsize=8)
        for det_station, pick, sigma in detection_picks(detections).values():
            if det_station != station:
                continue
            for ax in (ax_w, ax_p):
                ax.axvline(_dates(np.array([pick]))[0], color="tab:red", lw=1.2)
                if sigma > 0:
                    ax.axvspan(*_dates(np.array([pick - sigma, pick + sigma])), color="tab:red", alpha=0.15, lw=0)
        for p in (picks or {}).get(station, []):
            for ax in (ax_w, ax_p):
                ax.axvline(_dates(np.array([p]))[0], color="tab:green", lw=1, ls="--")
    axes[0, 0].set_title(title + "  (red: detection P picks, shaded 1 sigma; green dashed: catalogue P)", fontsize=10)
    start = min((float(d) for d in axes[-1, 0].get_xlim()), default=0.0)
    axes[-1, 0].set_xlabel(f"UTC ({matplotlib.dates.num2date(start):%Y-%m-%d})", fontsize=8)
    axes[-1, 0].xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%Y-%m-%d\n%H:%M:%S"))
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _dates(epoch_s: np.ndarray) -> np.ndarray:
    """Epoch seconds -> numpy datetimes (matplotlib's date axis)."""
    return (np.asarray(epoch_s, dtype=np.float64) * 1000).astype("int64").astype("datetime64[ms]")


def detection_picks(detections: Sequence[dict[str, Any]]) -> dict[str, tuple[str, float, float]]:
    """{detection id: (station, pick time, its 1-sigma uncertainty s)}, one per detection ("new" and "closed"
    carry the same pick)."""
    out: dict[str, tuple[str, float, float]] = {}
    for d in detections:
        pick = d.get("pick") or {}
        out[d["id"]] = (d["station"], parse_iso_utc(pick.get("time", d["onset"])),
                        float(pick.get("uncertainty_s", 0.0)))
    return out


def plot_replay(paths: Sequence[str], result, png: str | Path, selectors: Sequence[str] | None = None) -> Path:
    """`quakemon replay --plot`: read the archive's waveforms back and plot them with the replay's results."""
    from obspy import Stream, read

    from quakemon.ingest.selectors import match_selector

    st = Stream()
    for p in paths:
        files = [Path(p)] if Path(p).is_file() else sorted(f for f in Path(p).rglob("*") if f.is_file())
        for f in files:
            try:
                st += read(str(f))
            except Exception:  # noqa: BLE001 - unreadable files were reported by the replay itself
                continue
    if selectors:
        st = Stream([tr for tr in st if match_selector(tr.id, selectors)])
    st.merge(method=1, fill_value=None)
    return plot_detections(st, result.series, result.detections, result.labels, png, title="quakemon replay")
