"""Restart continuity of the inference stage: detections a previous run opened and never closed.

A clean stop closes every open detection with ``close_reason`` "shutdown" (`DetectionStage.shutdown`). A run that
was killed leaves "new" detections in the journal without their "closed". At start-up :class:`Unclosed` reads
them back (the journal's last ``LOOKBACK_S`` of messages) and settles each one exactly once:

* Resumed: the same arrival is detected again (the SeedLink resume re-sends its data; ids derive from the pick,
  so it gets the same id). Its second "new" is not published; its "closed" is, when the trigger closes it.
* Closed: otherwise, once the station's windows have passed the detection's first window by ``window_length``
  (or ``timeout_s`` of wall clock went by, or the stage stops), a "closed" with ``close_reason`` "shutdown" is
  published for it, built from the journaled "new".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from quakemon.wire.journal import JournalReader
from quakemon.wire.schema import DETECTION_TOPIC_PREFIX, parse_iso_utc

log = structlog.get_logger(__name__)

LOOKBACK_S = 86_400.0  # journal messages this old or newer are searched for unclosed detections
STAMPS = ("seq", "topic_seq", "epoch")


def unclosed_detections(reader: JournalReader, since: float) -> dict[str, dict[str, Any]]:
    """id -> body of the journaled "new" detections (published at or after `since`) that have no "closed"."""
    opened: dict[str, dict[str, Any]] = {}
    page = reader.since(since, 1000)
    while page:
        for rec in page:
            if not rec.topic.startswith(DETECTION_TOPIC_PREFIX):
                continue
            body = json.loads(rec.body)
            if body.get("state") == "new":
                opened[body["id"]] = body
            else:
                opened.pop(body.get("id"), None)
        page = reader.after(page[-1].seq, 1000)
    return opened


def shutdown_body(new: dict[str, Any]) -> dict[str, Any]:
    """The "closed" (close_reason "shutdown") of a journaled "new" body, unstamped; it ends with its last window."""
    body = {k: v for k, v in new.items() if k not in STAMPS}
    body.update(state="closed", close_reason="shutdown", end=new["last_window_end"], latency_s=None)
    return body


class Unclosed:
    """The previous run's unclosed detections, settled one by one (see the module docstring)."""

    def __init__(self, bodies: dict[str, dict[str, Any]], window_length_s: float, timeout_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pending = dict(bodies)  # not seen again yet
        self.resumed: set[str] = set()  # seen again: their "new" was dropped, their "closed" still to come
        self.window_length_s = window_length_s
        self.clock = clock
        self.deadline = clock() + timeout_s
        if bodies:
            log.warning("detections_unclosed", count=len(bodies), ids=sorted(bodies),
                        action="a re-detection keeps the id; the others are closed as 'shutdown'")

    def __bool__(self) -> bool:
        return bool(self.pending or self.resumed)

    def admit(self, body: dict[str, Any]) -> bool:
        """Whether a detection body of this run is to be published (False: the repeated "new" of one resumed)."""
        ident = body["id"]
        if body["state"] == "new" and self.pending.pop(ident, None) is not None:
            self.resumed.add(ident)
            log.info("detection_resumed", id=ident, station=body["station"])
            return False
        if body["state"] == "closed":
            self.resumed.discard(ident)
            self.pending.pop(ident, None)
        return True

    def due(self, last_window_start: Callable[[str], float | None], stopping: bool = False) -> list[dict[str, Any]]:
        """Shutdown "closed" bodies of the pending detections that will not be detected again (all when
        `stopping` or past the timeout)."""
        late = stopping or self.clock() >= self.deadline
        out = []
        for ident, body in list(self.pending.items()):
            newest = last_window_start(body["station"])
            passed = newest is not None and newest >= parse_iso_utc(body["window_start"]) + self.window_length_s
            if late or passed:
                del self.pending[ident]
                out.append(shutdown_body(body))
                log.info("detection_closed_after_restart", id=ident, station=body["station"])
        return out
