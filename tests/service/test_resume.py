"""Restart continuity pieces: triggers closed as "shutdown", and a killed run's unclosed detections read back from
a real journal, resumed (same id: its repeated "new" is dropped) or closed as "shutdown"."""

from __future__ import annotations

import json

from quakemon.pipeline.trigger import TriggerBank
from quakemon.service.stages.resume import Unclosed, unclosed_detections
from quakemon.wire.journal import Journal
from quakemon.wire.schema import detection_topic, validate_detection


def _bank() -> TriggerBank:
    return TriggerBank(0.5, 0.3, 2.0, ["noise", "earthquake"], retrigger_hold_s=10.0)


def test_shutdown_closes_active_and_held_detections_and_drops_pending_ones():
    bank = _bank()
    for t in range(4):  # A: active
        bank.update("XX.A.", t, t + 20, [0.1, 0.9])
    for t, p in ((0, 0.9), (1, 0.9), (2, 0.9), (3, 0.1)):  # B: held (fell below off inside the hold)
        bank.update("XX.B.", t, t + 20, [1 - p, p])
    bank.update("XX.C.", 0, 20, [0.1, 0.9])  # C: pending (shorter than min_duration, never published)
    events = bank.shutdown()
    assert [(e.station, e.state, e.close_reason) for e in events] == [("XX.A.", "closed", "shutdown"),
                                                                      ("XX.B.", "closed", "shutdown")]
    body = events[0].to_body({"name": "m", "sha256": "0" * 64})
    validate_detection(body, stamped=False)
    assert bank.shutdown() == [] and bank.stats["open"] == 0


def _bodies() -> list[dict]:
    bank = _bank()
    out = []
    for station in ("XX.A.", "XX.B.", "XX.C."):
        for t in range(4):
            out += [ev.to_body({"name": "m", "sha256": "0" * 64}) for ev in bank.update(station, t, t + 20,
                                                                                          [0.1, 0.9])]
    closed_c = [ev.to_body({"name": "m", "sha256": "0" * 64}) for ev in bank.trigger("XX.C.", "earthquake")
                ._close("off")]
    return out + closed_c


def test_unclosed_detections_from_the_journal_are_resumed_or_closed_once(tmp_path):
    bodies = _bodies()
    assert [b["state"] for b in bodies] == ["new", "new", "new", "closed"]
    journal = Journal(tmp_path / "j.sqlite")
    for seq, body in enumerate(bodies, 1):
        journal.append(seq, "e1", detection_topic(body["station"]), json.dumps({**body, "seq": seq}))
    journal.append(len(bodies) + 1, "e1", "event.x", json.dumps({"id": "x", "state": "new"}))
    found = unclosed_detections(journal, 0.0)
    journal.close()
    ids = {b["station"]: b["id"] for b in bodies if b["state"] == "new"}
    assert set(found) == {ids["XX.A."], ids["XX.B."]}

    clock = [0.0]
    unclosed = Unclosed(found, 20.0, timeout_s=60.0, clock=lambda: clock[0])
    again = next(b for b in bodies if b["station"] == "XX.A.")
    assert unclosed.admit(again) is False  # A is detected again: its "new" is not published twice
    assert unclosed.admit({**again, "state": "closed"}) is True
    newest = {"XX.B.": None}
    assert unclosed.due(newest.get) == []
    newest["XX.B."] = 25.0  # B's windows passed its first window by a window length: it will not come again
    (closed,) = unclosed.due(newest.get)
    assert (closed["id"], closed["state"], closed["close_reason"]) == (ids["XX.B."], "closed", "shutdown")
    assert "seq" not in closed and closed["end"] == closed["last_window_end"]
    validate_detection(closed, stamped=False)
    assert not unclosed and unclosed.due(newest.get, stopping=True) == []
