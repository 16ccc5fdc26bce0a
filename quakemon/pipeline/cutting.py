"""Cutting a station's windows out of its ring buffer: a run of complete windows at once, or one window at a time.

Both functions serve `quakemon.pipeline.windowing.WindowScheduler` (its `_make_complete_run` and `_make`) and read
its buffer, contract, grid and counters; the scheduler decides *when* a window is cut, these decide *what* it holds
(see the windowing module's emission policy). For complete data both give the same windows bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.signal import resample_poly

from quakemon.pipeline.window import Window

if TYPE_CHECKING:
    from quakemon.pipeline.windowing import WindowScheduler


def cut_run(sched: WindowScheduler, k: int, last: int) -> list[Window]:
    """Windows k..last of `sched` at once when every sample of all of them is there (the steady state): one read
    of the run's samples into a block and one constant check, where `cut_window` per window does ~20 numpy calls.

    The windows are overlapping read-only views of that block (no copy per window; `stack_windows` reads them as
    one strided array); with another dtype than float64, one cast copy [K, C, N]. Components the scheduler has
    decided absent (a vertical-only station) are zero rows, not constant, and left out of `Window.components`, as
    `cut_window` gives them; the run then needs only the other components complete, and a set the contract
    accepts. Only without a resampling margin. [] if any needed sample is missing.
    """
    if sched.margin:
        raise ValueError("complete runs are cut only at the contract's own rate (no resampling margin)")
    buf, comps = sched.buffer, sched.contract.component_order
    absent = sorted(sched.absent)
    rows = [i for i in range(len(comps)) if i not in sched.absent] if absent else None
    if last < k or not buf.complete(k * sched.stride, last * sched.stride + sched.window, rows):
        return []
    if rows is not None and not (rows and sched.contract.accepts("".join(comps[i] for i in rows))):
        return []
    block = buf.read_values(k * sched.stride, last * sched.stride + sched.window)
    if absent:
        block[absent] = 0.0
    count = last - k + 1
    # [K, C, N] view of the overlapping windows (np.ndarray directly: sliding_window_view's checks cost more)
    views = np.ndarray((count, block.shape[0], sched.window), block.dtype, block, 0,
                       (sched.stride * block.strides[1], block.strides[0], block.strides[1]))
    flat = views.min(axis=-1) == views.max(axis=-1)  # [K, C], on the float64 samples like `cut_window`
    if absent:
        flat[:, absent] = False  # no real sample: never "constant"
    if views.dtype == sched.dtype:  # the windows are read-only views of the block: no copy per window
        views.flags.writeable = False
        data = views
    else:
        data = np.array(views, dtype=sched.dtype, order="C")
    present = tuple(comps) if rows is None else tuple(comps[i] for i in rows)
    rate, source_rate = float(sched.contract.sampling_rate), sched.rate_hz
    station, instrument, stride_ns = sched.station, sched.instrument, sched.stride_ns
    out = []
    for i, row in enumerate(flat.tolist()):
        constant = tuple(c for c, f in zip(comps, row, strict=True) if f) if any(row) else ()
        out.append(Window(station=station, instrument=instrument, start_ns=(k + i) * stride_ns,
                          sampling_rate=rate, data=data[i], component_order=comps, missing_fraction=0.0,
                          components=present, constant=constant, source_rate=source_rate, run=(data, i)))
    sched.stats["windows_emitted"] += len(out)
    if absent:
        sched.stats["windows_reduced"] += len(out)
    sched.next_k = last + 1
    return out


def cut_window(sched: WindowScheduler, k: int, a: int, b: int) -> Window | None:
    """The window k of `sched` over native samples [a, b) (margins included): gaps filled or the window skipped
    (more than `max_missing` missing), absent components zero-filled, resampled to the contract's rate."""
    data, present = sched.buffer.read(a, b)
    core = slice(sched.margin, sched.margin + sched.window)
    contract = sched.contract
    comps = contract.component_order
    real = present[:, core].any(axis=1)
    use = np.ones(len(comps), dtype=bool)
    if contract.component_sets and real.any() and not real.all():
        if contract.accepts("".join(c for c, r in zip(comps, real, strict=True) if r)):
            use = real  # absent components are zero-filled below
    missing = 1.0 - float(np.count_nonzero(present[use, core])) / present[use, core].size
    if missing > sched.max_missing:
        sched.stats["windows_skipped"] += 1
        return None
    if not use.all():
        data[~use] = 0.0
        present[~use] = False
        sched.stats["windows_reduced"] += 1
    present_comps = tuple(c for i, c in enumerate(comps) if real[i])
    constant = []
    if missing == 0 and use.all() and present.all():  # every sample there, no masks
        core_data = data[:, core]
        constant = [c for c, flat in zip(comps, core_data.min(axis=1) == core_data.max(axis=1), strict=True)
                    if flat]
    else:
        for i, c in enumerate(comps):  # one iteration per component, vectorised inside
            row, mask = data[i], present[i]
            real = row[core][mask[core]]
            if real.size and real.min() == real.max():
                constant.append(c)
            if not mask.all() and mask.any():
                idx = np.flatnonzero(mask)
                data[i] = np.interp(np.arange(row.size), idx, row[idx])
    if sched.margin:
        y = resample_poly(data, sched.up, sched.down, axis=1)
        crop = sched.margin * sched.up // sched.down
        data = y[:, crop : crop + contract.window_samples]
    if missing > 0:
        sched.stats["windows_filled"] += 1
    sched.stats["windows_emitted"] += 1
    return Window(
        station=sched.station,
        instrument=sched.instrument,
        start_ns=k * sched.stride_ns,
        sampling_rate=float(contract.sampling_rate),
        data=np.ascontiguousarray(data, dtype=sched.dtype),
        component_order=comps,
        missing_fraction=missing,
        components=present_comps,
        constant=tuple(constant),
        source_rate=sched.rate_hz,
    )
