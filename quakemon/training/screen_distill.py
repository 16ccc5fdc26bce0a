"""Distil a ScreenNet (`quakemon.models.screen_net`) from the detector on one noise day plus synthetic events.

    python -m quakemon.training.screen_distill --day UV05 --output /tmp/screen.safetensors \
        [--pool 2 --components max] [--widths 16,32,48]

(the architecture: `quakemon.models.screen_net.ScreenArgs`, its defaults where not given; the sets below are
cached as every component's log spectra, which each architecture reduces to its own features)

Training windows, every one labelled with the detector's (the teacher's) probability of the trigger label:

* every window of the 1 s grid of the noise day (`quakemon.data.noise_days`), its teacher probabilities from the
  cached day series (`continuous.day_series`) and its spectrogram from the runner's own windowing and
  preprocessing (`runner_spectra`), so both belong to exactly the same window;
* the bundle's training recipe (`bundle.training_data`: synthetic local events and hard negatives, three
  components) and the fine-tuning windows over the same day (`finetune.day_parts`: local and distant events,
  hard negatives, transients, microseism), teacher probabilities by a forward of the detector.

Validation is training data only: the noise day's windows inside every fifth hour (hours since the epoch, hour
% 5 == 4; windows that straddle such an hour are in neither set; one in three of the training windows below
teacher p 0.02 is kept, as neighbours overlap by 95 %) and a random fifth of the synthetic windows. The net
regresses the teacher's logit (clipped to `LOGIT_RANGE`, Huber loss, windows at p >= 0.05 weighted up); the
pass threshold is the lowest score of a validation window at teacher p >= `p_min`, less `margin` (logit units):
every validation window that matters passes, by construction, and the evaluation on other data says how far
that carries. `P_MIN` (0.3) is well below the trigger's `on` (0.7 by default): an idle trigger opens only at `on`
and a busy one has every window forwarded, so a window the screen fills changes a decision only if the detector
would have scored it at `on` or above; the margin below `on` is for windows the validation set does not hold.
Keep `--p-min` well below the `trigger.on` the screen will run with. (At 0.1, the earlier default, the threshold
rests on a few windows far below any decision and passed several times as many windows for no measured gain:
docs/performance.md, "Cascade screen".)
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

SEED = 20261207
#: The teacher logits are clipped to this range (p from 1.2e-4 to 1 - 1.2e-4).
LOGIT_RANGE = (-9.0, 9.0)
#: Sizes of the synthetic parts (windows), smaller than the fine-tuning set's: the screen is tiny.
BUNDLE_WINDOWS = 3000
#: The teacher probability the checkpoint's threshold covers on validation (module docstring).
P_MIN = 0.3
#: The thresholds also chosen on validation (for teacher p at or above each), kept in the checkpoint's metadata.
VAL_P_MIN = (0.05, 0.1, 0.3, 0.5)
DAY_PART_SIZES = {"replay": 0, "hard_negatives": 2000, "noise": 1500, "transients": 1000, "distant": 2500,
                  "local": 2000, "microseism": 1000}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.clip(np.log(p) - np.log1p(-p), *LOGIT_RANGE)


def runner_spectra(ckpt, streams: Iterable, fn: Callable[[np.ndarray, Sequence[Any]], None]) -> None:
    """Run the replay path (windowing, preprocessing) over `streams` and hand every batch's spectra and window
    metas to `fn` instead of the detector; the detector never runs (its probabilities are set to zero)."""
    from quakemon.pipeline.runner import DetectionRunner

    runner = DetectionRunner(ckpt, device="cpu", precision="fp32", screen_every=1, overlap=False)
    lock = threading.Lock()

    def infer(spectra, metas):
        with lock:
            fn(np.asarray(spectra), metas)
        return np.zeros((len(metas), len(ckpt.labels)), np.float32)

    runner.stage.infer = infer
    try:
        for st in streams:
            for _ in runner.add_stream(list(st)):
                pass
        runner.finish()
    finally:
        runner.close()


def series_features(ckpt, streams: Iterable, net) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{station: (window starts in s, sorted; features [n, C, F, T] float16)} through `runner_spectra`."""
    import torch

    rows: dict[str, list[tuple[int, np.ndarray]]] = {}

    def take(spectra: np.ndarray, metas: Sequence[Any]) -> None:
        with torch.inference_mode():
            f = net.features(torch.from_numpy(spectra)).numpy().astype(np.float16)
        for m, x in zip(metas, f, strict=True):
            rows.setdefault(m.station, []).append((m.start_ns, x))

    runner_spectra(ckpt, streams, take)
    out = {}
    for station, r in rows.items():
        r.sort(key=lambda t: t[0])
        out[station] = (np.array([t[0] for t in r], np.int64) / 1e9, np.stack([t[1] for t in r]))
    return out


def day_set(ckpt, day: str, net) -> dict[str, np.ndarray]:
    """The noise day's windows: start (s), features, teacher p; cached beside the day series."""
    from quakemon.data.noise_days import cache_dir, load_day
    from quakemon.training.continuous import day_series

    path = cache_dir() / "screen" / f"{ckpt.sha256[:16]}_{day}_{net.FEATURES}.npz"
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    (series,) = day_series(ckpt, day).values()
    (starts, feats), = series_features(ckpt, [load_day(day)], net).values()
    idx = np.searchsorted(series.start, starts)
    ok = (idx < len(series.start)) & (np.abs(series.start[np.minimum(idx, len(series.start) - 1)] - starts) < 1e-3)
    if ok.sum() != len(series.start):
        raise RuntimeError(f"{day}: {ok.sum()} of {len(series.start)} teacher windows found in the runner's windows")
    out = {"start": starts[ok], "x": feats[ok], "p": series.p[idx[ok]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".part.npz"), **out)
    path.with_suffix(".part.npz").replace(path)
    return out


def teacher_on_waveforms(ckpt, waves: np.ndarray, net, label: str = "earthquake") -> tuple[np.ndarray, np.ndarray]:
    """(features float16, teacher p) of waveform windows [m, C, N] through `preprocess_batch` and the detector."""
    import torch

    from quakemon.pipeline.engine import InferenceEngine
    from quakemon.pipeline.transforms import preprocess_batch

    engine = InferenceEngine(ckpt, device="cpu", precision="fp32", batch_size=64)
    col = list(ckpt.labels).index(label)
    feats, ps = [], []
    for lo in range(0, len(waves), 256):
        spectra = np.ascontiguousarray(preprocess_batch(waves[lo : lo + 256], ckpt.contract).spectrograms,
                                       dtype=np.float32)
        ps.append(engine.predict(spectra)[:, col])
        with torch.inference_mode():
            feats.append(net.features(torch.from_numpy(spectra)).numpy().astype(np.float16))
    return np.concatenate(feats), np.concatenate(ps).astype(np.float64)


def synthetic_set(ckpt, day: str, net, seed: int = SEED) -> dict[str, np.ndarray]:
    """Bundle-recipe windows and fine-tuning windows over `day` with teacher p; cached."""
    from dataclasses import replace

    from quakemon.data.noise_days import cache_dir
    from quakemon.training.bundle import training_data
    from quakemon.training.finetune import FinetuneSizes, day_parts

    path = cache_dir() / "screen" / f"{ckpt.sha256[:16]}_{day}_synthetic_{seed}_{net.FEATURES}.npz"
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    base = training_data(ckpt.contract, BUNDLE_WINDOWS, seed)
    waves, labels, meta = day_parts(day, ckpt.contract, ckpt, replace(FinetuneSizes(), **DAY_PART_SIZES), seed + 1)
    all_waves = np.concatenate([base.waveforms.astype(np.float32), waves.astype(np.float32)])
    x, p = teacher_on_waveforms(ckpt, all_waves, net)
    parts = np.array([m.get("part", "bundle") for m in list(base.meta)] + [m.get("part", "?") for m in meta])
    out = {"x": x, "p": p, "label": np.concatenate([base.labels, labels]), "part": parts}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".part.npz"), **out)
    path.with_suffix(".part.npz").replace(path)
    return out


def split_day(start: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) masks of a day's windows: validation = windows inside hours (since the epoch) with
    hour % 5 == 4;
    windows that overlap such an hour without lying inside it are in neither."""
    hour = np.floor(start / 3600.0).astype(np.int64)
    end_hour = np.floor((start + window_s - 1e-6) / 3600.0).astype(np.int64)
    val_h = (hour % 5 == 4) & (end_hour % 5 == 4)
    touches = (hour % 5 == 4) | (end_hour % 5 == 4)
    return ~touches, val_h


def train_net(x: np.ndarray, p: np.ndarray, args, epochs: int = 20, seed: int = SEED, batch: int = 512,
              lr: float = 3e-3) -> Any:
    """Fit a ScreenNet's scoring part to the teacher logits of features x [n, C, F, T]."""
    import torch

    from quakemon.models.screen_net import ScreenNet

    torch.manual_seed(seed)
    net = ScreenNet(args)
    target = torch.from_numpy(logit(p).astype(np.float32))
    weight = torch.from_numpy(np.where(p >= 0.05, 8.0, 1.0).astype(np.float32))
    xt = torch.from_numpy(x)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for lo in range(0, len(x), batch):
            idx = order[lo : lo + batch]
            out = net.score_features(xt[idx].float())
            loss = (torch.nn.functional.huber_loss(out, target[idx], reduction="none", delta=2.0) * weight[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.info("screen_epoch", epoch=epoch, loss=round(total / len(x), 4))
    return net.eval()


def score(net, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([net.score_features(torch.from_numpy(x[lo : lo + batch]).float()).numpy()
                               for lo in range(0, len(x), batch)]).astype(np.float64)


def distil(day: str, output: str | Path, *, p_min: float = P_MIN, margin: float = 0.0, epochs: int = 20,
           seed: int = SEED, architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the training set on `day`, train, choose the threshold on validation, write `output`; return a report.
    architecture: `ScreenArgs` keywords (widths, pool, components) other than the input shape; default: its
    defaults."""
    import torch

    from quakemon.models.checkpoint import load_checkpoint, resolve_checkpoint
    from quakemon.models.screen_net import ScreenArgs, ScreenNet, choose_threshold, passes, save_screen

    torch.set_num_threads(min(2, torch.get_num_threads()))
    ckpt = load_checkpoint(resolve_checkpoint(None))
    c = ckpt.contract
    f, t = c.spectrogram_shape
    args = ScreenArgs(c.n_channels, f, t, **(architecture or {}))
    # the sets cache the log spectra of every component (an architecture's features are reduced from them)
    fixed = ScreenNet(ScreenArgs(c.n_channels, f, t, pool=1, components="all"))
    d = day_set(ckpt, day, fixed)
    s = synthetic_set(ckpt, day, fixed, seed)
    reduce = ScreenNet(args).reduce
    d, s = {**d, "x": reduce(d["x"])}, {**s, "x": reduce(s["x"])}
    tr_d, va_d = split_day(d["start"], c.window_seconds)
    rng = np.random.default_rng(seed)
    va_s = rng.random(len(s["p"])) < 0.2
    # the day's quiet windows overlap their neighbours by 95 %: one in three of those below p 0.02 is enough
    keep = tr_d & ((d["p"] >= 0.02) | (np.arange(len(tr_d)) % 3 == 0))
    x = np.concatenate([d["x"][keep], s["x"][~va_s]])
    p = np.concatenate([d["p"][keep], s["p"][~va_s]])
    log.info("screen_train_set", windows=len(p), at_least_0_1=int((p >= 0.1).sum()), at_least_0_5=int((p >= 0.5).sum()))
    net = train_net(x, p, args, epochs=epochs, seed=seed)
    sv_d, sv_s = score(net, d["x"][va_d]), score(net, s["x"][va_s])
    vs, vp = np.concatenate([sv_d, sv_s]), np.concatenate([d["p"][va_d], s["p"][va_s]])
    threshold = choose_threshold(vs, vp, p_min, margin)
    others = {str(q): choose_threshold(vs, vp, q, margin) for q in VAL_P_MIN}
    report = {"day": day, "args": args.to_dict(), "p_min": p_min, "margin": margin, "threshold": threshold,
              "epochs": epochs, "val_thresholds": others,
              "val_day_pass_fraction_at": {q: float(passes(sv_d, t).mean()) for q, t in others.items()},
              "train_windows": int(len(p)), "val_windows": int(len(vp)),
              "val_day_pass_fraction": float(passes(sv_d, threshold).mean()),
              "val_synthetic_pass_fraction": float(passes(sv_s, threshold).mean()),
              "val_day_windows": int(va_d.sum()), "val_day_at_least_p_min": int((d["p"][va_d] >= p_min).sum())}
    save_screen(output, net, threshold, ckpt.sha256, c,
                extra={"distilled": {k: v for k, v in report.items() if k != "threshold"}})
    log.info("screen_written", output=str(output), **report)
    return report


def main(argv: list[str] | None = None) -> int:
    from quakemon.base.logs import configure_logging
    from quakemon.models.screen_meta import COMPONENTS

    parser = argparse.ArgumentParser(prog="python -m quakemon.training.screen_distill")
    parser.add_argument("--day", choices=("UV05", "UV10"), required=True, help="noise day to train on")
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--p-min", type=float, default=P_MIN, help="teacher probability every pass must cover")
    parser.add_argument("--margin", type=float, default=0.0, help="threshold margin below that, in logit units")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--widths", default=None, help="the three convolutions' widths, e.g. 16,32,48")
    parser.add_argument("--pool", type=int, default=None, help="average pooling of the log spectrogram (1: none)")
    parser.add_argument("--components", choices=COMPONENTS, default=None, help="how components are combined")
    args = parser.parse_args(argv)
    arch: dict[str, Any] = {k: v for k, v in (("pool", args.pool), ("components", args.components)) if v is not None}
    if args.widths is not None:
        try:
            arch["widths"] = tuple(int(w) for w in args.widths.split(","))
        except ValueError:
            parser.error(f"--widths: expected three comma-separated integers, got {args.widths!r}")
    configure_logging("info", "console")
    print(json.dumps(distil(args.day, args.output, p_min=args.p_min, margin=args.margin, epochs=args.epochs,
                            architecture=arch), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
