"""The end of a record is not noise: a pending trigger whose every window reached `on` is reported at flush."""

from __future__ import annotations

from quakemon.pipeline.trigger import StationTrigger, TriggerBank

T0 = 1_600_000_000.0


def feed(trig, probs, start=T0, stride=1.0, window=20.0):
    events = []
    for i, p in enumerate(probs):
        events += trig.update(start + i * stride, start + i * stride + window, {"earthquake": p, "noise": 1 - p})
    return events


def test_record_ending_while_pending_reports_the_detection():
    t = StationTrigger(on=0.7, off=0.5, min_duration_s=2.0, label="earthquake")
    assert feed(t, [0.1, 0.95, 0.99]) == []  # pending: 1 s since the first window over `on`, 2 s needed
    events = t.flush()
    assert [(e.state, e.close_reason) for e in events] == [("new", None), ("closed", "flush")]
    new, closed = events
    assert new.onset == closed.onset == T0 + 1.0
    assert new.peak_probability == closed.peak_probability == 0.99
    assert closed.end == T0 + 2.0 + 20.0
    assert t.stats["new"] == t.stats["closed"] == 1 and t.stats["suppressed"] == 0
    assert t.flush() == [] and t.state == "idle"


def test_pending_trigger_with_a_window_below_on_is_still_dropped_at_flush():
    t = StationTrigger(on=0.7, off=0.5, min_duration_s=3.0, label="earthquake")
    assert feed(t, [0.9, 0.6, 0.9]) == []  # the 0.6 window (between off and on) keeps it pending, not "all on"
    assert t.flush() == []
    assert t.stats["suppressed"] == 1 and t.stats["new"] == 0


def test_a_new_trigger_after_a_drop_starts_all_on_again():
    t = StationTrigger(on=0.7, off=0.5, min_duration_s=5.0, label="earthquake")
    feed(t, [0.9, 0.6, 0.1, 0.8, 0.9])  # first trigger dropped at 0.1 ("off"); second pending, all over `on`
    assert t.stats["suppressed"] == 1
    events = t.flush()
    assert [e.state for e in events] == ["new", "closed"] and events[0].onset == T0 + 3.0


def test_gap_and_expire_still_drop_a_pending_trigger():
    t = StationTrigger(on=0.7, off=0.5, min_duration_s=2.0, label="earthquake")
    feed(t, [0.9])
    assert t.expire(T0 + 100.0) == [] and t.stats["suppressed"] == 1  # live: the station went silent
    feed(t, [0.9], start=T0 + 200.0)
    assert feed(t, [0.9], start=T0 + 300.0) == []  # a gap drops the first, the second is pending
    assert t.stats["suppressed"] == 2


def test_bank_flush_reports_pending_all_on_triggers_and_keeps_active_ones():
    bank = TriggerBank(0.7, 0.5, 2.0, ["noise", "earthquake"])
    for i, p in enumerate([0.9, 0.9, 0.9, 0.9]):  # active ("new" after 2 s)
        bank.update("AA.ONE.", T0 + i, T0 + i + 20, [1 - p, p])
    bank.update("BB.TWO.", T0, T0 + 20, [0.05, 0.95])  # pending at the end of the record
    events = bank.flush()
    assert [(e.station, e.state) for e in events] == [("AA.ONE.", "closed"), ("BB.TWO.", "new"),
                                                      ("BB.TWO.", "closed")]
    assert bank.stats["new"] == 2 and bank.stats["suppressed"] == 0
