"""The "multi-site" fine-tuning set: real noise of many sites and sensors (`quakemon.data.sprit_noise`) instead of
one noise day, so that neither msnoise day is trained on and both stay unseen test stations.

    python -m quakemon.training.finetune --noise sprit --output /tmp/ms.safetensors --epochs 1

Parts, all from the sprit *training* sites (the validation sites are never read here):

* hard negatives: vertical windows on which the starting model reaches p >= 0.5, mined from its probabilities
  on each site's vertical (`site_series`, run through the runner as a vertical-only station), labelled noise;
* random windows, labelled noise: three-component, half of them with the horizontals zeroed (the input of a
  vertical-only station; component dropout adds more);
* random vertical windows with a transient (spike, glitch, step, cultural burst), labelled noise;
* synthetic microseism-dominated vertical noise, labelled noise (the sprit sensors are short-period and show
  no energy below 0.5 Hz, which a broadband station's noise is made of);
* regional/teleseismic (`quakemon.data.distant`) and local (`synthetic.synthesize_event_trace`) earthquakes over
  the sites' three-component noise, labelled earthquake.

Noise windows are taken only away from each recording's first and last minute (the survey's set-up) and from
10 s before to 30 s after each classic STA/LTA trigger, so a real event cannot be taught as noise. Windows are
shared among the sites in proportion to their usable length. `finetune.finetune_data` adds the bundled recipe's
windows (replay) and the band limiting, as for a noise day.

With the distant events in the set, quiet broadband stations' microseism-dominated noise comes out as earthquakes
(the sprit sensors are short-period, so only the events show energy below a few Hz); `--size distant=0` leaves them
out, and `--day` adds one msnoise day's real broadband noise to the set (`finetune.finetune_data`), which makes
that day training data (docs/detection-quality.md has the measurements). `--size surrogates=N` adds
phase-randomised copies of the earthquake windows as noise (`finetune.phase_surrogates`), so that an event's
spectrum without its onset is taught as noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import structlog

from quakemon.models.contract import InputContract

log = structlog.get_logger(__name__)


#: Shares of three-component windows given vertical-only (before component dropout): the noise class also holds
#: the vertical-only hard negatives, transients and microseism windows, so the events get a larger share and
#: "vertical-only" stays about equally common in both classes (otherwise it would become a cue for noise).
NOISE_Z_ONLY = 0.5
EVENT_Z_ONLY = 0.75
#: Conditioning of the sprit noise (both classes alike, before any event is added). The sprit sensors are
#: short-period and their noise is mostly above 10 Hz with nothing below 0.5 Hz, while a broadband station's noise
#: is mostly microseism with little above 10 Hz. Left as it is, "energy below 10 Hz and little above" is seen only
#: in earthquakes and becomes their cue, and a broadband station's noise is called an earthquake. So a share of
#: windows is low-passed (Butterworth, corner log-uniform in `LOWPASS_HZ`, order 2 or 4) and a share gets a
#: synthetic background of coloured noise with a 0.1-0.8 Hz microseism peak at `BROADBAND_RATIO` (log-uniform)
#: times the window's vertical RMS.
LOWPASS_SHARE = 0.5
LOWPASS_HZ = (1.5, 12.0)
BROADBAND_SHARE = 0.5
BROADBAND_RATIO = (0.3, 30.0)


def _broadband(x: np.ndarray, fs: float, rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Noise windows [m, 3, L] (Z first) conditioned as above; zero components stay zero. Returns the windows and,
    per window, what was done (meta: ``lowpass_hz``, ``broadband``; None where not done)."""
    from scipy.signal import butter, sosfiltfilt

    from quakemon.data.synthetic import SyntheticConfig, background_noise

    x = np.asarray(x, dtype=np.float64).copy()
    info: list[dict[str, Any]] = [{"lowpass_hz": None, "broadband": None} for _ in range(len(x))]
    live = np.any(x != 0, axis=-1, keepdims=True)
    for i in np.flatnonzero(rng.random(len(x)) < LOWPASS_SHARE):
        fc = float(np.exp(rng.uniform(np.log(LOWPASS_HZ[0]), np.log(LOWPASS_HZ[1]))))
        x[i] = sosfiltfilt(butter(int(rng.choice([2, 4])), fc, btype="low", fs=fs, output="sos"), x[i], axis=-1)
        info[i]["lowpass_hz"] = round(fc, 2)
    chosen = np.flatnonzero(rng.random(len(x)) < BROADBAND_SHARE)
    if chosen.size:
        cfg = SyntheticConfig(microseism_ratio_range=(0.3, 300.0), noise_exponent_range=(0.0, 3.0),
                              microseism_hz_range=(0.1, 0.8))
        bg, _ = background_noise(chosen.size, x.shape[-1], fs, rng, cfg, np.zeros(chosen.size, dtype=bool))
        r = np.exp(rng.uniform(np.log(BROADBAND_RATIO[0]), np.log(BROADBAND_RATIO[1]), chosen.size))
        rms = np.sqrt(np.mean(x[chosen, 0] ** 2, axis=-1))
        x[chosen] += bg * (r * rms)[:, None, None]
        for i, ri in zip(chosen, r, strict=True):
            info[i]["broadband"] = round(float(ri), 3)
    return x * live, info


def _drop_horizontals(x: np.ndarray, rows: list[dict[str, Any]], share: float, rng: np.random.Generator
                      ) -> np.ndarray:
    """Zero the horizontals (rows 1, 2 of [m, 3, N], Z first) of a random `share` of windows; notes it in `rows`."""
    z_only = rng.random(len(x)) < share
    x[z_only, 1:] = 0.0
    for row, z in zip(rows, z_only, strict=True):
        row["z_only"] = bool(z)
    return x


def site_series(ckpt, rec, data: np.ndarray, fs: float, precision: str = "fp32", components: str = "Z"):
    """The model's probabilities on a sprit recording (`data` [3, n] rows Z, N, E at `fs`, starting at t = 0),
    through the runner as a vertical-only station (`components="Z"`) or a three-component one ("ZNE"); cached per
    checkpoint sha256 in the user cache, like `continuous.day_series`."""
    from obspy import Stream, Trace, UTCDateTime

    from quakemon.data.noise_days import cache_dir
    from quakemon.training.continuous import Series, model_series

    if components not in ("Z", "ZNE"):
        raise ValueError(f"components must be 'Z' or 'ZNE', got {components!r}")
    path = cache_dir() / "series" / f"{ckpt.sha256[:16]}_sprit{rec.site}_{components}_{precision}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Series(z["start"], z["end"], z["p"])
    net, sta = rec.station.split(".")
    st = Stream([Trace(data[i].astype(np.float64), {"network": net, "station": sta, "location": "00",
                                                    "channel": f"HH{c}", "sampling_rate": fs,
                                                    "starttime": UTCDateTime(0)}) for i, c in enumerate(components)])
    (s,) = model_series(ckpt, [st], precision=precision).values()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".part.npz"), start=s.start, end=s.end, p=s.p)
    path.with_suffix(".part.npz").replace(path)
    return s


def _onsets(z: np.ndarray, fs: float) -> list[float]:
    from obspy import Stream, Trace

    from quakemon.training.continuous import sta_lta_onsets

    tr = Trace(z.astype(np.float64), {"sampling_rate": fs, "channel": "HHZ"})
    return [o - tr.stats.starttime.timestamp for o in sta_lta_onsets(Stream([tr]))]


def sprit_parts(contract: InputContract, base_ckpt, sizes, seed: int, recs=None, wheel=None,
                series_fn=site_series) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The multi-site windows of the fine-tuning set: waveforms [m, C, N] in the contract's order, labels, meta."""
    from quakemon.data import sprit_noise
    from quakemon.data.distant import KINDS, add_distant_event
    from quakemon.data.synthetic import synthesize_event_trace
    from quakemon.training.finetune import microseism_noise, with_transients

    rng = np.random.default_rng(seed)
    fs, n = contract.sampling_rate, contract.window_samples
    recs = sprit_noise.recordings("train") if recs is None else recs
    if any(r.group != "train" for r in recs):
        raise ValueError("only sprit training sites may be used for training")
    order = [("ZNE".index(c) if c in "ZNE" else 0) for c in contract.component_order]
    sites: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}
    for rec in recs:
        data = sprit_noise.load(rec, fs, wheel)
        usable = sprit_noise.usable_mask(data[0], fs, _onsets(data[0], fs))
        sites[rec.site] = (rec, data, usable)
        log.info("multisite_site", site=rec.site, station=rec.station, minutes=round(data.shape[1] / fs / 60, 1),
                 usable=round(float(usable.mean()), 2))
    waves, labels, meta = [], [], []

    def add(x: np.ndarray, label: int, rows: list[dict[str, Any]]) -> None:
        if x.ndim == 2:  # vertical only
            x3 = np.zeros((len(x), 3, x.shape[-1]), np.float32)
            x3[:, 0] = x
            x = x3
        waves.append(x[:, order].astype(np.float32))
        labels.append(np.full(len(x), label, np.int64))
        meta.extend(rows)

    # hard negatives: where the starting model fires on a site's (usable) vertical noise
    hard = []
    for site, (rec, data, usable) in sites.items():
        s = series_fn(base_ckpt, rec, data, fs)
        st = np.round(s.start[s.p >= 0.5] * fs).astype(np.int64)  # the trace starts at t = 0
        st = st[(st >= 0) & (st + n <= data.shape[1])]
        cum = np.concatenate([[0], np.cumsum(~usable)])
        st = st[(cum[st + n] - cum[st]) == 0]
        hard += [(site, int(x)) for x in st]
        log.info("multisite_hard_negatives", site=site, windows_over_half=int((s.p >= 0.5).sum()), usable=len(st))
    pick = [hard[i] for i in rng.permutation(len(hard))[: sizes.hard_negatives]]
    if pick:
        x = np.zeros((len(pick), 3, n))
        x[:, 0] = [sites[site][1][0, s0 : s0 + n] for site, s0 in pick]
        x, ratios = _broadband(x, fs, rng)
        add(x, 0, [{"label": "noise", "part": "hard_negative", "site": site, **r}
                   for (site, _), r in zip(pick, ratios, strict=True)])

    def starts(total: int, length: int) -> list[tuple[str, np.ndarray]]:
        """`total` random windows of `length`, shared among the sites by their number of usable starts."""
        valid = {k: sprit_noise.valid_starts(v[2], length) for k, v in sites.items()}
        return [(k, np.sort(rng.permutation(valid[k])[:m]))
                for k, m in sprit_noise.allocate({k: v.size for k, v in valid.items()}, total).items() if m]

    # random noise (3C, half vertical-only) and vertical noise with transients
    for site, st in starts(sizes.noise, n):
        rows = [{"label": "noise", "part": "noise", "site": site} for _ in range(len(st))]
        x, ratios = _broadband(_drop_horizontals(sprit_noise.cut(sites[site][1], st, n), rows, NOISE_Z_ONLY, rng),
                               fs, rng)
        add(x, 0, [{**row, **r} for row, r in zip(rows, ratios, strict=True)])
    for site, st in starts(sizes.transients, n):
        x, ratios = _broadband(sprit_noise.cut(sites[site][1], st, n), fs, rng)
        zt, names = with_transients(x[:, 0], fs, rng)
        add(zt, 0, [{"label": "noise", "part": "transient", "artefact": a, "site": site, **r}
                    for a, r in zip(names, ratios, strict=True)])
    if sizes.microseism:
        add(*microseism_noise(sizes.microseism, n, fs, rng))

    # distant events: a noise segment of 30 s + window, P anywhere from 15 s before the window to 2 s before its end
    pre = int(30 * fs)
    i = 0
    for site, st in starts(sizes.distant, n + pre):
        rows, xs = [], []
        segments, ratios = _broadband(np.stack([sites[site][1][:, s0 : s0 + n + pre] for s0 in st]), fs, rng)
        for seg, ratio in zip(segments, ratios, strict=True):
            kind = KINDS[i % len(KINDS)]
            i += 1
            p_in = rng.uniform(-15 * fs, n - 2 * fs)
            snr = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
            y, info = add_distant_event(seg, kind, pre + p_in, fs, snr, rng)
            xs.append(y[:, pre:])
            rows.append({"label": "earthquake", "part": "distant", "site": site, "p_sample": round(float(p_in), 1),
                         **ratio, **info})
        add(_drop_horizontals(np.stack(xs), rows, EVENT_Z_ONLY, rng), 1, rows)

    # local events over the sites' noise
    for site, st in starts(sizes.local, n):
        rows, xs = [], []
        segments, ratios = _broadband(sprit_noise.cut(sites[site][1], st, n), fs, rng)
        for seg, ratio in zip(segments, ratios, strict=True):
            onset = rng.uniform(0, n - fs)
            mag, dist = rng.uniform(0.5, 4.0), float(np.exp(rng.uniform(np.log(5.0), np.log(150.0))))
            snr = float(np.exp(rng.uniform(np.log(1.5), np.log(50.0))))
            xs.append(synthesize_event_trace(seg, onset, mag, dist, rng, snr=snr, component_order="ZNE",
                                             sampling_rate=fs))
            rows.append({"label": "earthquake", "part": "local", "site": site, "p_sample": round(float(onset), 1),
                         "magnitude": mag, "distance_km": dist, "snr": snr, **ratio})
        add(_drop_horizontals(np.stack(xs), rows, EVENT_Z_ONLY, rng), 1, rows)
    return np.concatenate(waves), np.concatenate(labels), meta
