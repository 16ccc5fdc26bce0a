"""One detection per event per station: the re-trigger hold of `StationTrigger` and its new-P exception."""

from __future__ import annotations

import pytest

from quakemon.base.errors import ConfigError
from quakemon.pipeline.trigger import StationTrigger, TriggerBank

T0 = 1_251_072_000.0
LENGTH = 20.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}


def feed(t: StationTrigger, probs, stride: float = 1.0, new_phase=None, flush: bool = True):
    """Windows every `stride` s with earthquake probability probs[k]; (k, event) pairs."""
    out = []
    for k, p in enumerate(probs):
        ws = T0 + k * stride
        out += [(k, e) for e in t._update(ws, ws + LENGTH, {"noise": 1 - p, "earthquake": p}, new_phase)]
    if flush:
        out += [(len(probs), e) for e in t.flush()]
    return out


def hold(hold_s: float = 10.0) -> StationTrigger:
    return StationTrigger(0.8, 0.5, 0.0, "earthquake", "BW.RJOB.", None, hold_s)


def test_a_retrigger_inside_the_hold_extends_the_same_detection():
    # P detection (k 0-2), off at k 3, S re-trigger at k 8 (5 s into the 10 s hold), off at k 10, hold ends k 20
    probs = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95, 0.6, 0.1] + [0.1] * 12
    t = hold()
    events = feed(t, probs)
    assert [(k, e.state) for k, e in events] == [(0, "new"), (20, "closed")]
    closed = events[1][1]
    assert closed.close_reason == "off" and closed.end == T0 + 9 + LENGTH  # last window at or above off
    assert closed.peak_probability == 0.95 and closed.onset == T0
    assert events[0][1].to_body(MODEL)["id"] == closed.to_body(MODEL)["id"]
    assert t.stats["extended"] == 1 and t.stats["new"] == 1


def test_without_a_hold_the_same_data_gives_two_detections():
    probs = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.95, 0.6, 0.1]
    events = feed(hold(0.0), probs)
    assert [(k, e.state) for k, e in events] == [(0, "new"), (3, "closed"), (8, "new"), (10, "closed")]


def test_after_the_hold_a_trigger_opens_a_new_detection_in_the_same_window():
    probs = [0.9, 0.1] + [0.1] * 9 + [0.9, 0.1]  # off at k 1 -> hold until k 11, which triggers again
    events = feed(hold(), probs)
    assert [(k, e.state) for k, e in events] == [(0, "new"), (11, "closed"), (11, "new"), (13, "closed")]
    assert events[0][1].detection is not events[2][1].detection


def test_a_clearly_new_p_inside_the_hold_closes_the_held_detection_and_opens_one():
    asked = []

    def new_phase(ref):
        asked.append(ref.window_start)
        return True

    probs = [0.9, 0.1, 0.1, 0.95, 0.1]
    events = feed(hold(), probs, new_phase=new_phase)
    assert asked == [T0]  # asked once, about the held detection
    assert [(k, e.state, e.close_reason) for k, e in events] == [
        (0, "new", None), (3, "closed", "off"), (3, "new", None), (5, "closed", "flush")]
    assert events[1][1].end == T0 + LENGTH
    assert events[2][1].onset == T0 + 3


def test_expire_closes_a_held_detection_at_the_end_of_its_hold_and_flush_inside_it_as_flush():
    t = hold()
    feed(t, [0.9, 0.1], flush=False)  # held from k 1 (T0 + 1) until T0 + 11
    assert t.state == "held" and t.expire(T0 + 10.5) == []
    closed = t.expire(T0 + 11)
    assert [(e.state, e.close_reason) for e in closed] == [("closed", "off")]
    t = hold()
    feed(t, [0.9, 0.1], flush=False)
    assert [(e.state, e.close_reason, e.end) for e in t.flush()] == [("closed", "flush", T0 + LENGTH)]


def test_bank_passes_the_hold_on_and_counts_held_detections_as_open():
    bank = TriggerBank(0.8, 0.5, 0.0, ("noise", "earthquake"), retrigger_hold_s=10.0)
    assert [e.state for e in bank.update("BW.RJOB.", T0, T0 + LENGTH, [0.1, 0.9])] == ["new"]
    assert bank.update("BW.RJOB.", T0 + 1, T0 + 1 + LENGTH, [0.9, 0.1]) == []
    assert bank.stats["open"] == 1
    assert [e.close_reason for e in bank.expire(T0 + 30, station="BW.RJOB.")] == ["off"]
    with pytest.raises(ConfigError, match="retrigger_hold"):
        TriggerBank(0.8, 0.5, 0.0, ("noise", "earthquake"), retrigger_hold_s=-1.0)
