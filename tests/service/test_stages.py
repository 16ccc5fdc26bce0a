"""Unit tests of the stage plumbing that needs no processes: coalescing, stats throttling, upstream stats."""

from __future__ import annotations

import numpy as np

from quakemon.service.stages import _coalesce, _Every, _Upstream


def _batch(first: int, n: int) -> tuple[dict, dict]:
    metas = [{"station": f"S{first + i}"} for i in range(n)]
    data = np.arange(first, first + n, dtype=np.float32)[:, None, None] * np.ones((1, 3, 4), np.float32)
    return {"windows": metas}, {"data": data}


def test_coalesce_joins_batches_in_order_and_caps_each_run() -> None:
    batches = [_batch(0, 3), _batch(3, 0), _batch(3, 5), _batch(8, 1)]
    runs = list(_coalesce(batches, max_batch=4))
    assert [len(metas) for metas, _ in runs] == [4, 4, 1]
    stations = [m["station"] for metas, _ in runs for m in metas]
    assert stations == [f"S{i}" for i in range(9)]
    for metas, data in runs:  # every window keeps its own samples
        assert data.shape == (len(metas), 3, 4)
        assert [int(row[0, 0]) for row in data] == [int(m["station"][1:]) for m in metas]


def test_coalesce_of_nothing_yields_nothing() -> None:
    assert list(_coalesce([], 8)) == []
    assert list(_coalesce([_batch(0, 0)], 8)) == []


def test_every_is_due_once_per_interval() -> None:
    clock = _Every(3600.0)
    assert clock.due() and not clock.due()
    assert _Every(0.0).due() and _Every(0.0).due()


def test_upstream_accepts_one_or_several_ingest_sources() -> None:
    up = _Upstream()
    up.update({"ingest": {"source": "a", "windows_out": 3}, "preprocess": {"source": "p"}}, now=0.0)
    up.update({"ingest": [{"source": "a", "windows_out": 5}, {"source": "b", "windows_out": 7}]}, now=1.0)
    ingest, pre = up.current(now=2.0)
    assert sorted(s["windows_out"] for s in ingest) == [5, 7] and [s["source"] for s in pre] == ["p"]


def test_upstream_keeps_the_data_ends_between_messages_that_carry_them() -> None:
    up = _Upstream()
    up.update({"ingest": {"source": "a", "windows_out": 3, "newest_end_s": {"XB.S1": 10.0}}}, now=0.0)
    up.update({"ingest": [{"source": "a", "windows_out": 4}]}, now=0.5)  # counters only
    (ingest,), _ = up.current(now=1.0)
    assert ingest["windows_out"] == 4 and ingest["newest_end_s"] == {"XB.S1": 10.0}
