"""Fine-tune a checkpoint on one real noise day: hard negatives, transients and distant events over real noise.

    python -m quakemon.training.finetune --day UV05 --output /tmp/ft.safetensors   # then evaluate on UV10
    python -m quakemon.training.finetune --noise sprit --output /tmp/ms.safetensors  # many sites, no msnoise day
    python -m quakemon.training.finetune --noise sprit --day UV05 --output /tmp/m5.safetensors  # many sites + UV05
    python -m quakemon.training.finetune --noise sprit --noise-file my_station/ --output /tmp/mine.safetensors

Starting from an existing checkpoint's weights (by default the bundled model), the training set is:

* replay: the bundled model's own training recipe (`bundle.training_data`, fewer windows, another seed), so
  three-component input and the local events it learnt stay in view;
* hard negatives: windows of the training day on which the starting model reaches p >= 0.5 (mined from its
  probabilities on that day, `continuous.day_series`), labelled noise;
* random windows of the training day, labelled noise, and the same with a transient added (spike, glitch,
  step, cultural burst; `quakemon.data.synthetic`), labelled noise;
* synthetic microseism-dominated noise (vertical), labelled noise: a quiet station's noise is mostly below
  0.5 Hz, which a noisy training day does not show, and without it the low-frequency distant events teach
  "little energy above 1 Hz" as an earthquake;
* earthquakes over the training day's real noise, labelled earthquake: local events
  (`synthetic.synthesize_event_trace`) and regional/teleseismic events (`quakemon.data.distant`), P anywhere in
  the window or up to 15 s before it (coda windows);
* optionally (`FinetuneSizes.surrogates`, 0 by default), phase-randomised copies of earthquake windows of the whole
  set, labelled noise (`phase_surrogates`): each has its earthquake window's power spectrum and cross-component
  coherence but no onset, so a spectrum alone can no longer make a window an earthquake.

Instead of an msnoise day, `--noise-file` takes one station's own continuous MiniSEED (`station_noise`: its
vertical channel's longest gap-free stretch, resampled to the model's rate), so an observatory can fine-tune the
detector on the noise of the station it runs on.

Noise windows are taken only away from classic STA/LTA triggers on the training day (30 s before to 90 s after
each), so the real events a volcano network records are not taught as noise. The noise day is vertical-only:
its windows carry zero horizontals, the input a Z-only station gives the detector. A share of the new windows is
low-passed at 7-32 Hz, as a 20-80 Hz station's data reach the model after resampling.

With `bandpass=(fmin, fmax)` the fine-tuned model gets a band-passed input contract (`band_passed_contract`): each
window is detrended, band-passed and tapered before the z-score, so the window's scale comes from the band an
onset is seen in rather than from the microseism below it (see docs/detection-quality.md, "A band-passed input").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from quakemon.base.errors import QuakemonError
from quakemon.models.contract import KNOWN_TRANSFORMS, InputContract
from quakemon.pipeline.transforms import bandpass_sos, whiten_settings

log = structlog.get_logger(__name__)

#: Tukey fraction after the band-pass: 2 s ramps at each end of a 20 s window, where filtering a window whose
#: microseism is far stronger than the band leaves its transients.
BANDPASS_TAPER = 0.2

#: Seeds of the fine-tuning data; disjoint from `bundle.SEED` and from the evaluation seeds in `continuous`.
FINETUNE_SEED = 20261206


@dataclass(frozen=True)
class FinetuneSizes:
    """Number of windows of each part of the fine-tuning set. `day_local`: with `noise="sprit"` and a day, local
    events over that day's noise (the multi-site part has its own `local` events over the survey noise).
    `low_rate`: copies of random windows of the set, low-passed as a 3-7 Hz digitiser would (`low_rate_part`)."""

    replay: int = 3000
    hard_negatives: int = 2000
    noise: int = 2500
    transients: int = 1200
    distant: int = 2000
    local: int = 1500
    microseism: int = 1500
    surrogates: int = 0
    tremor: int = 0
    day_local: int = 0
    low_rate: int = 0


def _clean_mask(n: int, fs: float, onsets_s: list[float], pre_s: float = 30.0, post_s: float = 90.0) -> np.ndarray:
    """Cumulative count of "not clean" samples (near an STA/LTA onset), for O(1) window checks."""
    bad = np.zeros(n + 1, dtype=np.int64)
    for o in onsets_s:
        lo, hi = max(0, int((o - pre_s) * fs)), min(n, int((o + post_s) * fs))
        if hi > lo:
            bad[lo] += 1
            bad[hi] -= 1
    return np.concatenate([[0], np.cumsum((np.cumsum(bad[:-1]) > 0).astype(np.int64))])


def _clean_starts(cum: np.ndarray, length: int, rng: np.random.Generator, k: int) -> np.ndarray:
    """k random start samples whose [start, start + length) avoids every masked sample."""
    n = cum.size - 1
    cand = rng.integers(0, n - length, size=4 * k + 100)
    ok = cand[(cum[cand + length] - cum[cand]) == 0]
    if ok.size < k:
        raise ValueError(f"only {ok.size} clean windows found, {k} wanted")
    return ok[:k]


def _z_only(z: np.ndarray, contract: InputContract) -> np.ndarray:
    """[m, N] vertical -> [m, C, N] in the contract's order, other components zero."""
    out = np.zeros((z.shape[0], contract.n_channels, z.shape[1]), np.float32)
    out[:, contract.component_order.index("Z")] = z
    return out


def with_transients(z: np.ndarray, fs: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Vertical noise windows [m, N], z-scored, each with one transient (spike, glitch, step or cultural burst)."""
    from quakemon.data.artefacts import add_cultural_bursts, add_glitches, add_spikes, add_steps

    zt = (z - z.mean(1, keepdims=True)) / (z.std(1, keepdims=True) + 1e-12)
    zt = zt[:, None, :].astype(np.float32)
    kinds = rng.integers(0, 4, len(zt))
    for k, fn in enumerate((add_spikes, add_glitches, add_steps, add_cultural_bursts)):
        sel = np.flatnonzero(kinds == k)
        if sel.size:
            sub = zt[sel]
            fn(sub, fs, rng)
            zt[sel] = sub
    names = ("spike", "glitch", "step", "cultural")
    return zt[:, 0], [names[k] for k in kinds]


def microseism_noise(m: int, n: int, fs: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
    """m synthetic microseism-dominated vertical noise windows [m, N], their label (noise) and meta rows."""
    from quakemon.data.synthetic import SyntheticConfig, background_noise

    cfg = SyntheticConfig(microseism_ratio_range=(3.0, 300.0), noise_exponent_range=(0.0, 3.0))
    bg, info = background_noise(m, n, fs, rng, cfg, np.zeros(m, dtype=bool))
    return bg[:, 0], 0, [{"label": "noise", "part": "microseism", "microseism_ratio": float(r)}
                         for r in info["microseism_ratio"]]


def phase_surrogates(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Phase-randomised copies of windows [m, C, N]: the FFT of each window along time, every frequency bin turned
    by a random phase (uniform in [0, 2 pi)) that is the same for all components of the window, so each
    component's power spectrum and the cross-spectra between components are kept exactly; the DC and (N even)
    Nyquist bins are left as they are, so the result is real. What is lost is every temporal structure: an onset,
    an envelope, a transient become stationary noise of the same spectrum (periodic over the window). Components
    that are all zero stay zero. Returns float32."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    spec = np.fft.rfft(x, axis=-1)
    phase = rng.uniform(0.0, 2 * np.pi, (x.shape[0], 1, spec.shape[-1]))
    phase[..., 0] = 0.0
    if n % 2 == 0:
        phase[..., -1] = 0.0
    out = np.fft.irfft(spec * np.exp(1j * phase), n=n, axis=-1)
    return (out * np.any(x != 0, axis=-1, keepdims=True)).astype(np.float32)


def surrogate_part(waves: np.ndarray, labels: np.ndarray, meta: list[dict[str, Any]], k: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """`k` phase-randomised copies (`phase_surrogates`) of randomly chosen earthquake windows (label 1) of `waves`,
    labelled noise (0); each source window is used once before any is used again. Meta rows name the part
    ("surrogate"), the source window's index in `waves` and its part."""
    eq = np.flatnonzero(labels == 1)
    if k <= 0 or eq.size == 0:
        return np.zeros((0, *waves.shape[1:]), np.float32), np.zeros(0, np.int64), []
    src = np.concatenate([rng.permutation(eq) for _ in range(-(-k // eq.size))])[:k]
    out = np.concatenate([phase_surrogates(waves[src[lo : lo + 256]], rng) for lo in range(0, k, 256)])
    rows = [{"label": "noise", "part": "surrogate", "source_index": int(i),
             "source_part": meta[i].get("part", "replay")} for i in src]
    return out, np.zeros(k, np.int64), rows


def tremor_part(waves: np.ndarray, meta: list[dict[str, Any]], k: int, fs: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """`k` copies of randomly chosen real-noise windows (meta part "noise") of `waves`, each with an emergent
    0.7-4 Hz burst (`artefacts.add_tremor_bursts`), labelled noise (0)."""
    from quakemon.data.artefacts import add_tremor_bursts

    real = np.flatnonzero([m.get("part") == "noise" for m in meta])
    out = waves[rng.choice(real, size=k, replace=k > real.size)].astype(np.float32)  # fancy indexing: a copy
    snr, width = add_tremor_bursts(out, fs, rng)
    rows = [{"label": "noise", "part": "tremor", "snr": round(float(r), 2), "width_s": round(float(w), 2)}
            for r, w in zip(snr, width, strict=True)]
    return out, np.zeros(k, np.int64), rows


def low_rate_part(waves: np.ndarray, labels: np.ndarray, meta: list[dict[str, Any]], k: int, fs: float,
                  rng: np.random.Generator, corner_hz: tuple[float, float] = (1.5, 3.5)
                  ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """`k` copies of randomly chosen windows of `waves`, each low-passed (8th-order zero-phase Butterworth, one
    corner drawn uniformly from `corner_hz` per block of 64), keeping its label: what a channel at a few samples
    per second holds once resampled to the model's rate (a 5 Hz channel has nothing above 2.5 Hz)."""
    from quakemon.training.bundle import low_pass_blocks

    src = rng.choice(len(waves), size=k, replace=k > len(waves))
    out = waves[src].astype(np.float32)  # fancy indexing: a copy
    blocks = [np.arange(lo, min(lo + 64, k)) for lo in range(0, k, 64)]
    corners = np.repeat(low_pass_blocks(out, blocks, fs, rng, corner_hz), [len(b) for b in blocks])
    rows = [{"label": meta[i].get("label", "earthquake" if labels[i] else "noise"), "part": "low_rate",
             "source_part": meta[i].get("part", "replay"), "band_limit_hz": round(float(c), 2)}
            for i, c in zip(src, corners, strict=True)]
    return out, labels[src].copy(), rows


#: The shortest stretch of a station's own noise `station_noise` accepts (an hour: enough windows to mine, and
#: the STA/LTA's clean-noise mask needs room around its triggers).
MIN_NOISE_FILE_S = 3600.0


def station_noise(path: str | Path, sampling_rate: float):
    """The vertical channel of one station's continuous MiniSEED (`path`: a file, or a folder read recursively as a
    replay reads it, `ArchiveSource.files`) as one Trace at `sampling_rate`: the longest gap-free stretch, resampled
    by a rational factor with `resample_poly` as the daemon resamples (float64). Raises QuakemonError for a path
    that holds no readable MiniSEED, no vertical channel, more than one vertical channel, less than
    `MIN_NOISE_FILE_S` of gap-free data, non-finite samples, or a rate with no rational ratio to `sampling_rate`."""
    from obspy import Stream, read

    from quakemon.data.sprit_noise import resample
    from quakemon.ingest.archive import ArchiveSource

    path = Path(path)
    if not path.exists():
        raise QuakemonError(f"noise file {path}: no such file or folder")
    files = ArchiveSource([path]).files()
    if not files:
        raise QuakemonError(f"noise file {path}: a folder without files")
    st = Stream()
    for f in files:
        try:
            st += read(str(f), format="MSEED")
        except Exception as exc:  # obspy raises many kinds for a file that is not MiniSEED
            raise QuakemonError(f"noise file {f}: not readable as MiniSEED ({exc})") from None
    st = st.select(component="Z")
    ids = sorted({tr.id for tr in st})
    if not ids:
        raise QuakemonError(f"noise file {path}: no vertical channel (a channel code ending in Z)")
    if len(ids) > 1:
        raise QuakemonError(f"noise file {path}: {len(ids)} vertical channels ({', '.join(ids)}); give one "
                            "station's data (the model learns that station's noise)")
    rates = {tr.stats.sampling_rate for tr in st}
    if len(rates) > 1:
        raise QuakemonError(f"noise file {path}: {ids[0]} changes its sampling rate ({sorted(rates)} Hz)")
    st.merge(method=1, fill_value=None)
    tr = max(st.split(), key=lambda t: t.stats.npts)
    seconds = tr.stats.npts / tr.stats.sampling_rate
    if seconds < MIN_NOISE_FILE_S:
        raise QuakemonError(f"noise file {path}: the longest gap-free stretch of {ids[0]} is {seconds:.0f} s; "
                            f"at least {MIN_NOISE_FILE_S:.0f} s are needed")
    x = np.asarray(tr.data, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise QuakemonError(f"noise file {path}: {ids[0]} holds non-finite samples")
    log.info("finetune_noise_file", path=str(path), id=tr.id, start=str(tr.stats.starttime),
             hours=round(seconds / 3600.0, 2), rate_hz=tr.stats.sampling_rate)
    tr.data = resample(x, tr.stats.sampling_rate, sampling_rate)  # QuakemonError for a rate with no rational ratio
    tr.stats.sampling_rate = float(sampling_rate)
    return tr


def _noise_source(day: str | Path, contract: InputContract, base_ckpt):
    """(name, vertical Trace at the contract's rate, the starting model's Series on it) of an msnoise day's name
    or of the Path of a station's continuous MiniSEED (`station_noise`)."""
    from obspy import Stream

    from quakemon.data.noise_days import load_day
    from quakemon.training.continuous import day_series, model_series

    if isinstance(day, Path):
        tr = station_noise(day, contract.sampling_rate)
        (series,) = model_series(base_ckpt, [Stream([tr])]).values()
        return day.name, tr, series
    tr = max(load_day(day), key=lambda t: t.stats.npts)
    if tr.stats.sampling_rate != contract.sampling_rate:
        raise ValueError(f"{tr.id}: {tr.stats.sampling_rate} Hz, the contract wants {contract.sampling_rate} Hz")
    (series,) = day_series(base_ckpt, day).values()
    return day, tr, series


def day_parts(day: str | Path, contract: InputContract, base_ckpt, sizes: FinetuneSizes, seed: int
              ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The noise windows of the fine-tuning set: waveforms [m, C, N], labels [m], meta. `day`: an msnoise noise
    day's name, or the Path of one station's continuous MiniSEED (`station_noise`)."""
    from obspy import Stream

    from quakemon.data.distant import KINDS, add_distant_event
    from quakemon.data.synthetic import synthesize_event_trace
    from quakemon.training.continuous import sta_lta_onsets

    rng = np.random.default_rng(seed)
    day, tr, series = _noise_source(day, contract, base_ckpt)
    fs, n = tr.stats.sampling_rate, contract.window_samples
    x = tr.data.astype(np.float64)
    t0 = tr.stats.starttime.timestamp
    onsets = [o - t0 for o in sta_lta_onsets(Stream([tr]))]
    cum = _clean_mask(x.size, fs, onsets)
    log.info("finetune_day", day=day, sta_lta_triggers=len(onsets), clean_fraction=round(1 - cum[-1] / x.size, 3))
    waves, labels, meta = [], [], []

    def add(z: np.ndarray, label: int, rows: list[dict[str, Any]]) -> None:
        waves.append(_z_only(z.astype(np.float32), contract))
        labels.append(np.full(len(z), label, np.int64))
        meta.extend(rows)

    # hard negatives: where the starting model fires on clean noise
    starts = np.round((series.start[series.p >= 0.5] - t0) * fs).astype(np.int64)
    starts = starts[(starts >= 0) & (starts + n <= x.size)]
    starts = starts[(cum[starts + n] - cum[starts]) == 0]
    starts = rng.permutation(starts)[: sizes.hard_negatives]
    add(x[starts[:, None] + np.arange(n)], 0, [{"label": "noise", "part": "hard_negative", "day": day}] * len(starts))
    log.info("finetune_hard_negatives", day=day, windows_over_half=int((series.p >= 0.5).sum()), used=len(starts))

    # random clean noise, with and without transients
    s = _clean_starts(cum, n, rng, sizes.noise + sizes.transients)
    z = x[s[:, None] + np.arange(n)]
    add(z[: sizes.noise], 0, [{"label": "noise", "part": "noise", "day": day}] * sizes.noise)
    zt, names = with_transients(z[sizes.noise :], fs, rng)
    add(zt, 0, [{"label": "noise", "part": "transient", "artefact": a, "day": day} for a in names])

    # distant events: a 45 s noise segment, P at 30 s + offset, the window cut from 30 s on (P may precede it)
    pre = int(30 * fs)
    s = _clean_starts(cum, n + pre, rng, sizes.distant) if sizes.distant else []
    rows, zs = [], []
    for i, s0 in enumerate(s):
        kind = KINDS[i % len(KINDS)]
        p_in = rng.uniform(-15 * fs, n - 2 * fs)
        snr = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
        y, info = add_distant_event(x[None, s0 : s0 + n + pre], kind, pre + p_in, fs, snr, rng)
        zs.append(y[0, pre:])
        rows.append({"label": "earthquake", "part": "distant", "p_sample": round(float(p_in), 1), **info})
    if zs:
        add(np.stack(zs), 1, rows)

    # microseism-dominated noise (synthetic, quiet stations' typical spectrum: the training day may not show it)
    if sizes.microseism:
        add(*microseism_noise(sizes.microseism, n, fs, rng))

    # local events over the day's noise
    s = _clean_starts(cum, n, rng, sizes.local) if sizes.local else []
    rows, zs = [], []
    for s0 in s:
        onset = rng.uniform(0, n - fs)
        mag, dist = rng.uniform(0.5, 4.0), float(np.exp(rng.uniform(np.log(5.0), np.log(150.0))))
        snr = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
        zs.append(synthesize_event_trace(x[None, s0 : s0 + n], onset, mag, dist, rng, snr=snr, component_order="Z",
                                         sampling_rate=fs)[0])
        rows.append({"label": "earthquake", "part": "local", "p_sample": round(float(onset), 1), "magnitude": mag,
                     "distance_km": dist, "snr": snr})
    if zs:
        add(np.stack(zs), 1, rows)
    return np.concatenate(waves), np.concatenate(labels), meta


def own_noise_parts(day: str | Path | Sequence[Path], contract: InputContract, base_ckpt, sizes: FinetuneSizes,
                    seed: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """`day_parts` of one noise source, or of several stations' MiniSEED (a sequence of Paths), each given an
    equal share of every part's windows (the first ones one more where the count does not divide), so that the
    set stays the size of one station's and a network's stations weigh alike."""
    if isinstance(day, (str, Path)):
        return day_parts(day, contract, base_ckpt, sizes, seed)
    paths = list(day)
    k = len(paths)
    parts = []
    for i, path in enumerate(paths):
        share = replace(sizes, **{f: v // k + (i < v % k) for f, v in sizes.__dict__.items()})
        parts.append(day_parts(Path(path), contract, base_ckpt, share, seed + 17 * i))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [m for p in parts for m in p[2]])


def finetune_data(day: str | Path | Sequence[Path] | None, contract: InputContract, base_ckpt,
                  sizes: FinetuneSizes = FinetuneSizes(), seed: int = FINETUNE_SEED, noise: str = "day"):
    """The whole fine-tuning set as LabelledWaveforms: the replay windows plus the noise day's windows
    (`noise="day"`, see the module docstring) or the multi-site windows (`noise="sprit"`, `training.multisite`).
    `day` is an msnoise day's name, the Path of one station's continuous MiniSEED (`station_noise`), or a
    sequence of such Paths, one per station (`own_noise_parts`).
    With `noise="sprit"` and a `day`, that day's real noise is added to the multi-site windows: its hard negatives,
    random windows and transients at the same sizes (`day_parts` without its events and microseism windows, which
    the multi-site part already has), so a broadband station's own noise is in the noise class. With
    `sizes.surrogates`, phase-randomised copies of the finished earthquake windows are appended as noise
    (`surrogate_part`)."""
    from quakemon.data.datasets import LabelledWaveforms
    from quakemon.training.bundle import band_limit, training_data

    if noise not in ("day", "sprit") or (noise == "day" and not day):
        raise ValueError(f"noise={noise!r} (day={day!r}): expected noise='sprit' (with or without a day), "
                         "or noise='day' with a day")
    own = None
    if day:  # first, so that a noise file that cannot be used fails before the rest is built
        day_sizes = replace(sizes, distant=0, local=sizes.day_local, microseism=0) if noise == "sprit" else sizes
        own = own_noise_parts(day, contract, base_ckpt, day_sizes, seed + 3 if noise == "sprit" else seed + 1)
    base = training_data(contract, sizes.replay, seed)
    if noise == "sprit":
        from quakemon.training.multisite import sprit_parts

        waves, labels, meta = sprit_parts(contract, base_ckpt, sizes, seed + 1)
        if own is not None:
            waves, labels, meta = (np.concatenate([waves, own[0]]), np.concatenate([labels, own[1]]),
                                   meta + own[2])
    else:
        waves, labels, meta = own
    rng = np.random.default_rng(seed + 2)
    band_limit(waves, meta, contract.sampling_rate, rng, fraction=0.35, corner_hz=(7.0, 32.0))
    waves, labels = np.concatenate([base.waveforms, waves]), np.concatenate([base.labels, labels])
    meta = [dict(m) for m in list(base.meta) + meta]
    if sizes.tremor:  # over random copies of the set's real-noise windows
        w, lab, m = tremor_part(waves, meta, sizes.tremor, contract.sampling_rate, np.random.default_rng(seed + 5))
        waves, labels, meta = np.concatenate([waves, w]), np.concatenate([labels, lab]), meta + m
    if sizes.low_rate:  # of the whole set, before the surrogates (which then copy low-rate earthquakes too)
        w, lab, m = low_rate_part(waves, labels, meta, sizes.low_rate, contract.sampling_rate,
                                  np.random.default_rng(seed + 6))
        waves, labels, meta = np.concatenate([waves, w]), np.concatenate([labels, lab]), meta + m
    if sizes.surrogates:  # of the finished earthquake windows (band limit included), replay ones too
        w, lab, m = surrogate_part(waves, labels, meta, sizes.surrogates, np.random.default_rng(seed + 4))
        waves, labels, meta = np.concatenate([waves, w]), np.concatenate([labels, lab]), meta + m
    return LabelledWaveforms(waves, labels, list(base.label_names), meta)


def band_passed_contract(contract: InputContract, band_hz: tuple[float, float],
                         taper: float = BANDPASS_TAPER) -> InputContract:
    """`contract` with DETREND and BANDPASS (corners `band_hz`, 4th-order zero-phase Butterworth, then a Tukey
    window `taper` over the filtered window) added before its z-score; the window, STFT and component sets are
    unchanged, so the weights of a checkpoint with `contract` fit the new one."""
    fmin, fmax = (float(f) for f in band_hz)
    transforms = {*contract.transforms, "DETREND", "BANDPASS"}
    out = replace(contract, transforms=tuple(t for t in KNOWN_TRANSFORMS if t in transforms),
                  extra={**contract.extra, "bandpass_hz": [fmin, fmax], "bandpass_order": 4, "bandpass_taper": taper})
    bandpass_sos(out)  # ContractError for corners or a taper the contract cannot take
    return out


def whitened_contract(contract: InputContract) -> InputContract:
    """`contract` with WHITEN added after its spectrogram (each frequency row over its background in the window,
    log-compressed; `quakemon.pipeline.transforms`), its quantile and floor written into `extra`; the shapes are
    unchanged, so the weights of a checkpoint with `contract` fit the new one."""
    transforms = {*contract.transforms, "WHITEN"}
    q, floor = whiten_settings(contract)
    return replace(contract, transforms=tuple(t for t in KNOWN_TRANSFORMS if t in transforms),
                   extra={**contract.extra, "whiten_quantile": q, "whiten_floor": floor})


def finetune(day: str | Path | Sequence[Path] | None, output: str | Path, init: str | Path | None = None, *,
             epochs: int = 3, lr: float = 1e-4, sizes: FinetuneSizes = FinetuneSizes(), seed: int = FINETUNE_SEED,
             precision: str = "fp32", progress: bool = False, noise: str = "day",
             bandpass: tuple[float, float] | None = None, whiten: bool = False, command: str | None = None):
    """Fine-tune `init` (default: the bundled model) on noise day `day` (`noise="day"`) or on the multi-site noise
    (`noise="sprit"`, plus the noise of `day` if given); writes `output`, returns the TrainResult. `day`: an msnoise
    day's name, the Path of one station's continuous MiniSEED (`station_noise`), or several such Paths, one per
    station (`own_noise_parts`). `bandpass`: train
    for a band-passed input contract (`band_passed_contract`) instead of `init`'s own. `command`: the provenance's
    command (default: this module's command line for these arguments). `whiten`: add WHITEN to the contract
    (`whitened_contract`)."""
    from quakemon.models.checkpoint import BUNDLED_CHECKPOINT, load_checkpoint
    from quakemon.training.train import TrainConfig, train

    init = Path(init or BUNDLED_CHECKPOINT)
    base = load_checkpoint(init)
    contract = base.contract if bandpass is None else band_passed_contract(base.contract, bandpass)
    contract = whitened_contract(contract) if whiten else contract
    data = finetune_data(day, contract, base, sizes, seed, noise)
    files = [] if day is None or isinstance(day, str) else [day] if isinstance(day, Path) else [Path(p) for p in day]
    noise_source = [str(f) for f in files] or day  # for the log and the provenance
    log.info("finetune_data", counts=data.counts(), day=noise_source, noise=noise)
    day_arg = " ".join(f"--noise-file {f}" for f in files) or (f"--day {day}" if day else "")
    source = " ".join(a for a in ("--noise sprit" if noise == "sprit" else "", day_arg) if a)
    source += "".join(f" --size {k}={v}" for k, v in sizes.__dict__.items() if v != getattr(FinetuneSizes(), k))
    source += f" --bandpass {bandpass[0]:g} {bandpass[1]:g}" if bandpass else ""
    source += " --whiten" if whiten else ""
    arch = base.provenance.get("train_config", {})
    cfg = TrainConfig(backbone=arch.get("backbone", "TINY"), depth=int(arch.get("depth", 4)), epochs=epochs,
                      batch_size=64, lr=lr, warmup_fraction=0.1, component_dropout=0.3, seed=seed,
                      precision=precision, val_fraction=0.1, init_checkpoint=str(init))
    return train(data, contract, cfg, output, progress=progress, provenance={
        "data": f"training.finetune.finetune_data(day={noise_source!r}, sizes={sizes}, seed={seed}, noise={noise!r})",
        "init": {"path": init.name, "sha256": base.sha256},
        "command": command or f"python -m quakemon.training.finetune {source} --epochs {epochs}"})


def main(argv: list[str] | None = None) -> int:
    from quakemon.base.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m quakemon.training.finetune")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--day", choices=("UV05", "UV10"), default=None, help="noise day to train on")
    where.add_argument("--noise-file", action="append", default=None, metavar="PATH",
                       help="one station's continuous MiniSEED (a file or a folder) to train on instead of an "
                            "msnoise day: its vertical channel's longest gap-free stretch, at least an hour; "
                            "repeat it for several stations (they share the windows of each part equally)")
    parser.add_argument("--noise", choices=("day", "sprit"), default="day",
                        help="day: one msnoise day (--day) or --noise-file; sprit: the multi-site noise, plus the "
                             "noise of --day or --noise-file if given")
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--init", default=None, help="checkpoint to start from (default: the bundled model)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", default="fp32", help="bf16 only on CPUs with native bf16 (or CUDA)")
    parser.add_argument("--size", action="append", default=[], metavar="PART=N",
                        help=f"windows of one part (repeatable; parts: {', '.join(FinetuneSizes().__dict__)})")
    parser.add_argument("--bandpass", nargs=2, type=float, default=None, metavar=("FMIN", "FMAX"),
                        help="train for a band-passed input (detrend, band-pass, taper; before the z-score)")
    parser.add_argument("--whiten", action="store_true",
                        help="train for a whitened input (each spectrogram row over its background in the window)")
    args = parser.parse_args(argv)
    try:
        sizes = replace(FinetuneSizes(), **{k: int(v) for k, v in (item.split("=", 1) for item in args.size)})
    except (TypeError, ValueError) as exc:
        parser.error(f"--size: {exc}")
    files = [Path(p) for p in args.noise_file or []]
    day = (files[0] if len(files) == 1 else files) if files else args.day
    if args.noise == "day" and day is None:
        parser.error("give --day or --noise-file with --noise day (the default)")
    configure_logging("info", "console")
    try:
        result = finetune(day, args.output, args.init, epochs=args.epochs, lr=args.lr, precision=args.precision,
                          progress=sys.stderr.isatty(), noise=args.noise, sizes=sizes,
                          bandpass=tuple(args.bandpass) if args.bandpass else None, whiten=args.whiten)
    except QuakemonError as exc:  # a noise file or checkpoint that cannot be used: the message names it
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(json.dumps({"checkpoint": str(result.checkpoint), "sha256": result.sha256, "best_epoch": result.best_epoch,
                      "val": result.best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
