"""Restart continuity pieces: triggers closed as "shutdown", and a killed run's unclosed detections read back from
a real journal, resumed (same id: its repeated "new" is dropped) or closed as "shutdown"."""

from __future__ import annotations

import json

from quakemon.pipeline.picker import Pick
from quakemon.pipeline.trigger import DetectionRef, TriggerBank
from quakemon.service.stages.resume import Published, journaled, shutdown_body
from quakemon.wire.journal import Journal
from quakemon.wire.schema import detection_topic, parse_iso_utc, validate_detection

MODEL = {"name": "m", "sha256": "0" * 64}


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
            out += [ev.to_body(MODEL) for ev in bank.update(station, t, t + 20,
                                                                                          [0.1, 0.9])]
    closed_c = [ev.to_body(MODEL) for ev in bank.trigger("XX.C.", "earthquake")
                ._close("off")]
    return out + closed_c


def test_journaled_detections_are_read_back_resumed_with_their_id_and_not_published_twice(tmp_path):
    bodies = _bodies()
    assert [b["state"] for b in bodies] == ["new", "new", "new", "closed"]
    journal = Journal(tmp_path / "j.sqlite")
    for seq, body in enumerate(bodies, 1):
        journal.append(seq, "e1", detection_topic(body["station"]), json.dumps({**body, "seq": seq}))
    journal.append(len(bodies) + 1, "e1", "event.x", json.dumps({"id": "x", "state": "new"}))
    unclosed, seen = journaled(journal, 0.0)
    journal.close()
    ids = {b["station"]: b["id"] for b in bodies if b["state"] == "new"}
    assert set(unclosed) == {ids["XX.A."], ids["XX.B."]}
    assert seen == {(b["id"], b["state"]) for b in bodies}

    published = Published(seen)
    a_new = unclosed[ids["XX.A."]]
    assert published.admit(a_new) is False and published.admit({**a_new, "state": "closed"}) is True

    bank = _bank()  # a fresh run: A's trigger goes on from its last journaled window, with its pick
    ref = DetectionRef("XX.A.", parse_iso_utc(a_new["window_start"]), parse_iso_utc(a_new["window_end"]),
                       Pick(int(round(parse_iso_utc(a_new["pick"]["time"]) * 1e6)) * 1000, 5.0, "window", 1.0))
    last = parse_iso_utc(a_new["last_window_start"])
    bank.resume("earthquake", ref, (last, last + 20, 0.9, {"noise": 0.1, "earthquake": 0.9}), 0.9)
    assert bank.update("XX.A.", last, last + 20, [0.1, 0.9]) == []  # sent again: ignored
    assert bank.update("XX.A.", last + 1, last + 21, [0.1, 0.9]) == []  # goes on, no second "new"
    (closed,) = bank.shutdown()
    body = closed.to_body(MODEL)
    assert (body["id"], body["state"], body["close_reason"]) == (a_new["id"], "closed", "shutdown")

    closed_b = shutdown_body(unclosed[ids["XX.B."]])
    assert (closed_b["id"], closed_b["close_reason"], closed_b["end"]) == (ids["XX.B."], "shutdown",
                                                                          closed_b["last_window_end"])
    validate_detection(closed_b, stamped=False)
