"""`trigger.split_on_new_p`: a clearly new P while a detection is active closes it and opens a new one.

Real records of the catalogue (`quakemon.data.realdata`), the real `DetectionStage` (trigger, pick context,
picker) and the scoring's `NewPCheck`; the probabilities are given (a plateau over the record), so the tests
check the rule, not a model."""

from __future__ import annotations

import numpy as np
import pytest
from support.engines import SpectraAreProbabilities

from quakemon.data import realdata
from quakemon.pipeline.detect import DetectionStage, WindowMeta
from quakemon.pipeline.settings import TRIGGER
from quakemon.pipeline.trigger import StationTrigger
from quakemon.training.continuous import NewPCheck, Series, trigger_onsets
from quakemon.wire.schema import parse_iso_utc

FS = 100.0
N = 2000
NS = 1_000_000_000


def record(name: str):
    rec = next(r for r in realdata.local_events() if r.name == name)
    st = realdata.load(rec, sampling_rate=FS)
    return rec, st


def windows(st, high_s: tuple[float, float]):
    """The record's vertical as 20 s windows every 1 s ([B, 3, N], horizontals zero, centred per row as
    stack_windows does), probability 0.95 for windows starting high_s[0]..high_s[1] s into the record, else 0.05."""
    tr = st.select(component="Z")[0]
    x = tr.data.astype(np.float64)
    t0_ns = tr.stats.starttime.ns
    metas, rows, probs = [], [], []
    for k in range(0, x.size - N + 1, int(FS)):
        w = np.zeros((3, N), np.float32)
        w[0] = x[k : k + N] - x[k : k + N].mean()
        rows.append(w)
        start = t0_ns + k * NS // int(FS)
        metas.append(WindowMeta("XX.UH.00", start, start + N * NS // int(FS)))
        probs.append([0.95 if high_s[0] <= k / FS <= high_s[1] else 0.05])
    return metas, np.stack(rows), np.asarray(probs, np.float32)


def run(metas, data, probs, **kw) -> list[dict]:
    stage = DetectionStage(SpectraAreProbabilities(), 0.7, 0.5, 2.0, "earthquake", **kw)
    out = []
    for i in range(0, len(metas), 32):
        out += [b for b, _ in stage.process(probs[i : i + 32], metas[i : i + 32], data[i : i + 32]).detections]
    return out + [b for b, _ in stage.flush()]


def test_the_split_is_off_by_default():
    assert TRIGGER.split_on_new_p is False
    assert StationTrigger(0.7, 0.5, 2.0, "earthquake").split_on_new_p is False


def test_a_detection_open_before_the_p_splits_at_the_p():
    """UH1: a detection opened on the record's first windows (before the 16:24:33 P is in any window) stays open
    through the P. With the rule, the window whose pick is that P (far above the SNR gate, more than 20 s after
    the open detection's pick) closes it and opens a detection whose onset is the P; without it, one detection
    whose pick is not the P."""
    rec, st = record("uh_uh1_2010-05-27")
    p1 = rec.p_times[0].timestamp
    metas, data, probs = windows(st, (0.0, 25.0))
    split = run(metas, data, probs, split_on_new_p=True)
    assert [b["state"] for b in split] == ["new", "closed", "new", "closed"]
    first, closed, second = split[0], split[1], split[2]
    assert first["pick"]["method"] != "aic" and closed["close_reason"] == "off" and closed["id"] == first["id"]
    assert second["pick"]["method"] == "aic" and abs(parse_iso_utc(second["onset"]) - p1) <= 0.1
    assert p1 - 20.0 <= parse_iso_utc(second["window_start"]) <= p1  # the window that holds the P
    plain = run(metas, data, probs, split_on_new_p=False)
    assert [b["state"] for b in plain] == ["new", "closed"]
    assert abs(parse_iso_utc(plain[0]["onset"]) - p1) > 10.0


def test_the_s_wave_of_the_same_event_does_not_split():
    """JNW: the S (6 s after the P) is picked above the SNR gate in the later windows of the P's detection; it is
    closer than `new_pick_after_s` (20 s), so the detection goes on. With 5 s it would split there."""
    rec, st = record("jnw_1990-01-03")
    p, s = rec.p_times[0].timestamp, rec.s_time.timestamp
    metas, data, probs = windows(st, (0.0, 40.0))
    bodies = run(metas, data, probs, split_on_new_p=True)
    assert [b["state"] for b in bodies] == ["new", "closed"]
    assert abs(parse_iso_utc(bodies[0]["onset"]) - p) <= 0.1
    short = run(metas, data, probs, split_on_new_p=True, new_pick_after_s=5.0)
    new = [parse_iso_utc(b["onset"]) for b in short if b["state"] == "new"]
    assert len(new) == 2 and abs(new[1] - s) <= 1.0


def test_the_scoring_check_splits_the_same_way():
    """`NewPCheck` (the detection-quality scoring, probabilities without the stage) on the UH1 plateau: a second
    onset whose window holds the P, only with the check."""
    rec, st = record("uh_uh1_2010-05-27")
    p1 = rec.p_times[0].timestamp
    t0 = st[0].stats.starttime.timestamp
    starts = t0 + np.arange(0.0, 200.0)
    series = Series(starts, starts + 20.0, np.where(starts - t0 <= 25.0, 0.95, 0.05))
    onsets = trigger_onsets(series, 0.7, 0.5, 2.0, new_p=NewPCheck(st), split_on_new_p=True)
    assert len(onsets) == 2 and onsets[0] == t0 and p1 - 20.0 <= onsets[1] <= p1
    assert trigger_onsets(series, 0.7, 0.5, 2.0) == [t0]
    assert trigger_onsets(series, 0.7, 0.5, 2.0, new_p=NewPCheck(st)) == [t0]  # the split itself is opt-in


@pytest.mark.parametrize("split", [False, True])
def test_the_check_is_asked_only_for_active_windows_over_on(split: bool):
    asked: list[float] = []

    def new_phase(ref):
        asked.append(ref.window_start)
        return True

    trig = StationTrigger(0.8, 0.5, 2.0, "earthquake", "XX.STA.", None, 0.0, split)
    states = []
    for k, p in enumerate([0.9, 0.9, 0.9, 0.6, 0.9, 0.9, 0.9, 0.1]):
        events = trig._update(float(k), k + 20.0, {"earthquake": p}, new_phase)
        states.append((k, [(e.state, e.close_reason) for e in events]))
    # pending at k 0-1 (never asked); active from k 2 ("new"); k 3 is below on (not asked); k 4 is asked
    if split:
        assert asked == [0.0]
        assert states == [(0, []), (1, []), (2, [("new", None)]), (3, []), (4, [("closed", "off")]), (5, []),
                          (6, [("new", None)]), (7, [("closed", "off")])]
        assert trig.stats["new_inside_active"] == 1 and trig.stats["new"] == 2
    else:
        assert asked == []
        assert states == [(0, []), (1, []), (2, [("new", None)]), (3, []), (4, []), (5, []), (6, []),
                          (7, [("closed", "off")])]
