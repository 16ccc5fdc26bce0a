"""What the parts of `quakemon bench` share: the plan, the synthetic archive, the checkpoints, the machine.

Synthetic stations: white + microseismic noise with one synthetic local earthquake per station per minute
(`quakemon.data.synthetic.synthesize_event_trace`), int32 counts, 512-byte STEIM2 MiniSEED.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NETWORK = "XB"
START = "2024-01-01T00:00:00"
CHANNELS = ("HHZ", "HHN", "HHE")


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run. `quick()` finishes in about a minute on an idle 2-core machine."""

    device: str = "auto"
    precision: str = "auto"
    stride_s: float = 1.0
    roof_batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256, 512)
    threads: tuple[int, ...] = ()  # torch threads the roof tries; () = 1 and torch's default (the core count)
    # torch threads per process for the daemon's stages. 1, because on a CPU shared with other processes (the
    # daemon alone runs 3) OpenMP threads spin while their cores run someone else, which makes several threads
    # per process far slower than one at small batches (the roof table shows it for the machine at hand).
    run_threads: int = 1
    roof_min_s: float = 1.5
    replay_stations: int = 40
    replay_seconds: float = 300.0
    # torch threads of the replay, one process alone: None = torch's default (the core count), which is what
    # `quakemon replay` runs with
    replay_threads: int | None = None
    replay_batch: int | None = None  # None: REPLAY_BATCH, what `quakemon replay` runs with
    # replays, each between two roofs at its own threads and batch; the ratio is the median of
    # replay / mean(roof before, roof after): a shared machine's speed drifts within minutes, so a replay is
    # compared with the roofs measured right around it, and no single pair decides the ratio
    replay_repeats: int = 5
    # seconds each of those roofs runs: several, so that one sample of the drift does not decide a ratio
    replay_roof_s: float = 4.0
    live_stations: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 1000)
    live_speed: float = 1.0
    live_archive_s: float = 120.0
    live_measure_s: float = 30.0
    # the interval starts this long after the first windows. A vertical-only station's first windows wait until
    # its horizontals are decided absent (the windower's max_skew_s), so they come in a burst some seconds late
    live_warmup_s: float = 3.0
    live_batch: int = 64
    # [model] screen_every of the live daemon. 1 (every window): the bench's checkpoint (`spread_checkpoint`)
    # keeps half of all windows over p = 0.5, so every station is busy, the screen's worst case and a capacity
    # floor; its latency would also include the screen's decision delay. None: the daemon's default.
    live_screen_every: int | None = 1
    # the cascade as an operator runs it: this screen net (`[model] screen_net`) with the bench's detector itself
    # (no spread head) and the daemon's default trigger settings; live_screen_every is then not used
    live_screen_net: str | None = None
    # the live stations' data (`bench_live.live_archive`): "synthetic" (one event per live_event_every_s), "uv10"
    # (real noise: three components cut from different hours of the msnoise UV10 day), "uv10-z" (HHZ only)
    live_data: str = "synthetic"
    # one synthetic local event per station per this many seconds (over a loop shorter than that: in one station
    # in every round(this / live_archive_s)); None: none (real noise only)
    live_event_every_s: float | None = 60.0
    # pipeline.queue_hwm for the daemon, as seconds of windows: max(100, live_queue_s * N * speed / stride).
    # Windows on the absolute grid complete in bursts (every station at once), so the default 100 windows drops
    # at a few hundred stations although the throughput suffices. None = the daemon's default.
    live_queue_s: float | None = 10.0
    live_timeout_s: float = 120.0
    lag_growth_limit_s: float = 2.0
    # a step counts as watched in real time only if the p99 latency (window's last sample in -> published)
    # stays within this: a daemon that keeps pace seconds behind is not what an observatory runs
    latency_p99_limit_s: float = 1.0
    parts: tuple[str, ...] = ("roof", "replay", "live")

    @classmethod
    def quick(cls, **kw: Any) -> BenchPlan:
        base = dict(roof_batches=(64, 256), roof_min_s=0.5, replay_stations=6, replay_seconds=100.0, replay_repeats=1,
                    replay_roof_s=0.5,
                    live_stations=(5,), live_speed=2.0, live_archive_s=60.0, live_measure_s=6.0, live_timeout_s=90.0)
        return cls(**{**base, **kw})


REPLAY_BATCH = 256  # `quakemon replay`'s inference batch (cli: max(model.batch_size, 256))


def station_code(i: int) -> str:
    return f"S{i:04d}"


def add_events(noise: np.ndarray, station: int, duration_s: float, event_every_s: float, rng: np.random.Generator,
               sampling_rate: float = 100.0) -> int:
    """Add synthetic local events (M 1.5-3, 10-80 km) to `noise` [3, samples] in place, one per `event_every_s`;
    returns how many. An archive shorter than `event_every_s` gets one event in every round(event_every_s /
    duration_s) stations (those whose index is a multiple of it), so that the rate over the stations holds."""
    from quakemon.data.synthetic import synthesize_event_trace

    if event_every_s > duration_s:
        starts = [0.0] if station % max(1, round(event_every_s / duration_s)) == 0 else []
    else:
        starts = list(np.arange(0.0, duration_s - 30.0, event_every_s))
    for start in starts:
        a = int((start + rng.uniform(0, max(1.0, min(event_every_s, duration_s) - 40.0))) * sampling_rate)
        seg = noise[:, a : a + int(30 * sampling_rate)]
        noise[:, a : a + seg.shape[1]] = synthesize_event_trace(
            seg, 3 * sampling_rate, magnitude=float(rng.uniform(1.5, 3.0)),
            distance_km=float(rng.uniform(10, 80)), rng=rng, sampling_rate=sampling_rate)
    return len(starts)


def write_synthetic_archive(directory: str | os.PathLike, n_stations: int, duration_s: float, *, seed: int = 0,
                            sampling_rate: float = 100.0, event_every_s: float = 60.0, first: int = 0,
                            layout: str = "channel") -> list[Path]:
    """Stations XB.Sxxxx..HH? (first .. first + n_stations - 1): noise plus one local event per `event_every_s`
    (`add_events`).

    layout "channel": one file per channel (as in an SDS archive); "station": one file per station with its three
    channels one after the other (as `Stream.write` makes it). Returns the files.
    """
    from obspy import Stream, Trace, UTCDateTime

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, first])
    n = int(round(duration_s * sampling_rate))
    t = np.arange(n) / sampling_rate
    files = []
    for i in range(first, first + n_stations):
        noise = rng.normal(0.0, 60.0, (3, n))
        phase = rng.uniform(0, 2 * np.pi, (3, 1))
        noise += 200.0 * np.sin(2 * np.pi * 0.18 * t + phase)  # microseism
        add_events(noise, i, duration_s, event_every_s, rng, sampling_rate)
        st = Stream()
        for c, cha in enumerate(CHANNELS):
            header = {"network": NETWORK, "station": station_code(i), "location": "", "channel": cha,
                      "sampling_rate": sampling_rate, "starttime": UTCDateTime(START)}
            st += Trace(np.round(noise[c]).astype(np.int32), header=header)
        parts = [(f"{NETWORK}.{station_code(i)}.mseed", st)] if layout == "station" else [
            (f"{NETWORK}.{station_code(i)}..{tr.stats.channel}.mseed", Stream([tr])) for tr in st]
        for name, part in parts:
            part.write(str(out / name), format="MSEED", reclen=512, encoding="STEIM2")
            files.append(out / name)
    return files


#: `write_noise_archive`: the channels of a station come from these offsets into the day (s), so that the three
#: components of a station are different noise, not one trace three times
NOISE_CHANNEL_OFFSETS_S = (0.0, 8 * 3600.0, 16 * 3600.0)
NOISE_STATION_STEP_S = 37.0  # station i starts i x this much later in the day (mod 8 h): each station differs
# the last this many seconds of each channel are blended into the day's samples just before its start, so that
# the archive served in a loop (`quakemon serve --loop`) has no step at the seam (a step is what a screen passes)
NOISE_SEAM_S = 5.0


def write_noise_archive(directory: str | os.PathLike, n_stations: int, duration_s: float, *, day: str = "UV10",
                        first: int = 0, event_every_s: float | None = None, seed: int = 1,
                        cache: Path | None = None) -> list[Path]:
    """Stations XB.Sxxxx..HH? (first .. first + n_stations - 1) of real continuous noise, one file per station.

    The msnoise noise day `day` (`quakemon.data.noise_days`: UV10 or UV05, single-component HHZ) is cut into
    three-component stations: station i's HHZ, HHN and HHE are the `duration_s` of the day starting at
    (i x NOISE_STATION_STEP_S mod 8 h) + 0, 8 and 16 h (NOISE_CHANNEL_OFFSETS_S). The horizontals are thus
    vertical-component noise from other hours: real noise of the day, not real horizontals. The last
    NOISE_SEAM_S of each channel fade linearly into the day's samples just before the segment (station i's
    segments start NOISE_SEAM_S later), so the loop's seam is continuous. Starts at START,
    int32 counts, 512-byte STEIM2 (as `write_synthetic_archive`). Raises ValueError when `duration_s` does not
    fit the offsets or the day has gaps in a segment. event_every_s: synthetic local events added to the noise
    (`add_events`; None: none, the day as it is).
    """
    from obspy import Stream, Trace, UTCDateTime

    from quakemon.data.noise_days import load_day

    span = NOISE_CHANNEL_OFFSETS_S[1] - NOISE_CHANNEL_OFFSETS_S[0] - NOISE_SEAM_S
    if not 2 * NOISE_SEAM_S < duration_s <= span:
        raise ValueError(f"duration_s must be in ({2 * NOISE_SEAM_S:g}, {span:g}] s, got {duration_s!r}")
    traces = load_day(day, cache)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(first, first + n_stations):
        origin = NOISE_SEAM_S + ((i * NOISE_STATION_STEP_S) % (span - duration_s) if span > duration_s else 0.0)
        rate = traces[0].stats.sampling_rate
        seam = int(round(NOISE_SEAM_S * rate))
        parts = []
        n = seam + int(round(duration_s * rate))
        for offset in NOISE_CHANNEL_OFFSETS_S:
            t0 = traces[0].stats.starttime + origin + offset - NOISE_SEAM_S
            part = None
            for tr in traces:  # (sample indices, not times: a slice by time may be a sample short or long)
                a = int(round((t0 - tr.stats.starttime) * rate))
                if 0 <= a and a + n <= tr.stats.npts:
                    part = tr.data[a : a + n]
                    break
            if part is None:
                raise ValueError(f"noise day {day}: no gap-free {duration_s:g} s at {t0} for station {i}")
            before, x = np.split(np.asarray(part, np.float64), [seam])
            w = np.arange(1, seam + 1) / seam
            x[-seam:] = (1 - w) * x[-seam:] + w * before  # ends on the sample just before its start
            parts.append(x)
        data = np.stack(parts)
        if event_every_s is not None:
            add_events(data, i, duration_s, event_every_s, np.random.default_rng([seed, i]), rate)
        st = Stream()
        for c, cha in enumerate(CHANNELS):
            header = {"network": NETWORK, "station": station_code(i), "location": "", "channel": cha,
                      "sampling_rate": rate, "starttime": UTCDateTime(START)}
            st += Trace(np.round(data[c]).astype(np.int32), header=header)
        path = out / f"{NETWORK}.{station_code(i)}.mseed"
        st.write(str(path), format="MSEED", reclen=512, encoding="STEIM2")
        files.append(path)
    return files


def bench_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The bundled model if present (what operators run), else a random HybridViT TINY depth 4 written to `path`."""
    from quakemon.models.checkpoint import resolve_checkpoint

    try:
        bundled = resolve_checkpoint(None)
        if bundled.is_file():
            return bundled
    except Exception:  # noqa: BLE001 - no bundled model: fall back to random weights
        pass
    if path is None:
        raise ValueError("no bundled model; give a path for a random test checkpoint")
    return random_checkpoint(path)


def random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random HybridViT (TINY, depth 4) with the default InputContract; compute cost as the bundled model."""
    import torch

    from quakemon.models import HybridViT, save_checkpoint
    from quakemon.models.contract import InputContract

    torch.manual_seed(seed)
    model = HybridViT("TINY", depth=4).eval()
    save_checkpoint(path, model, ["noise", "earthquake"], InputContract(), name="bench-random",
                    provenance={"note": "random weights for benchmarks"})
    return Path(path)


def spread_checkpoint(base: Path, out: Path, files: Sequence[Path], label: str = "earthquake",
                      target_std: float = 1.5) -> Path:
    """`base` with its head rescaled so that the logit difference for `label` has median 0 and std `target_std`
    on `files`: about half of the windows cross p = 0.5, so live triggers fire often (latency samples)."""
    import threading as _t

    import torch

    from quakemon.ingest.archive import ArchiveSource
    from quakemon.models import save_checkpoint
    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.pipeline.runner import DetectionRunner

    ckpt = load_checkpoint(base)
    runner = DetectionRunner(ckpt, device="cpu", keep_series=True, trigger_label=None, screen_every=1)
    source = ArchiveSource([str(p) for p in files])
    try:
        for _ in runner.add_samples(source.samples(_t.Event())):
            pass
        runner.finish()
    finally:
        source.close()
    i = ckpt.labels.index(label)
    p = np.concatenate([np.asarray(s.probabilities, np.float64) for s in runner.series.values()])
    p = np.clip(p, 1e-12, 1.0)
    diff = np.log(p[:, i]) - np.log(np.delete(p, i, axis=1).sum(axis=1))
    gain = target_std / max(float(np.std(diff)), 1e-6)
    centre = float(np.median(diff))
    head = ckpt.model.head
    with torch.no_grad():
        head.weight.mul_(gain)
        head.bias.mul_(gain)
        head.bias[i] -= gain * centre
    save_checkpoint(out, ckpt.model.eval(), list(ckpt.labels), ckpt.contract, name="bench-live",
                    provenance={"note": f"{base.name} with head x{gain:.3g}, centred, for latency sampling"})
    return out


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info

