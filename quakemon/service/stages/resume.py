"""Restart continuity of the inference stage, from the journal of the previous runs.

A clean stop closes every open detection with ``close_reason`` "shutdown" (`DetectionStage.shutdown`). A run that
was killed leaves "new" detections in the journal without their "closed". At start-up :func:`journaled` reads
the journal's last ``LOOKBACK_S`` of detections back:

* Each unclosed detection is resumed (`DetectionStage.resume`): its station's trigger goes on from the last
  window the journal shows, with the same pick and so the same id, and later windows close it as they would
  have ("off", "gap" when the station stays silent, "shutdown" at the next clean stop). No second "new" goes out.
* A SeedLink resume may send data again that the killed run had already decided. :class:`Published` drops any
  detection message whose (id, state) the journal already holds, so a re-detected arrival is not published twice.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from quakemon.wire.journal import JournalReader
from quakemon.wire.schema import DETECTION_TOPIC_PREFIX

log = structlog.get_logger(__name__)

LOOKBACK_S = 86_400.0  # journal messages this old or newer are read back at start-up
PAGE = 1000


def journaled(reader: JournalReader, since: float) -> tuple[dict[str, dict[str, Any]], set[tuple[str, str]]]:
    """(id -> "new" body of the detections without a "closed", {(id, state)} of every detection message), from
    the messages published at or after POSIX time `since`, in seq order."""
    unclosed: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    page = reader.since(since, PAGE)
    while page:
        for rec in page:
            if not rec.topic.startswith(DETECTION_TOPIC_PREFIX):
                continue
            body = json.loads(rec.body)
            ident, state = str(body.get("id")), str(body.get("state"))
            seen.add((ident, state))
            if state == "new":
                unclosed[ident] = body
            else:
                unclosed.pop(ident, None)
        page = reader.after(page[-1].seq, PAGE)
    return unclosed, seen


def shutdown_body(new: dict[str, Any]) -> dict[str, Any]:
    """The "closed" (close_reason "shutdown", ending with its last window) of a journaled "new" body, unstamped."""
    body = {k: v for k, v in new.items() if k not in ("seq", "topic_seq", "epoch")}
    body.update(state="closed", close_reason="shutdown", end=new["last_window_end"], latency_s=None)
    return body


class Published:
    """Which detection messages the journal already holds; :meth:`admit` says whether a new one may go out."""

    def __init__(self, seen: set[tuple[str, str]]) -> None:
        self.seen = set(seen)
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.seen)

    def admit(self, body: dict[str, Any]) -> bool:
        """False for a detection message (id, state) published before the restart; True otherwise."""
        key = (str(body["id"]), str(body["state"]))
        if key in self.seen:
            self.dropped += 1
            log.info("detection_already_published", id=key[0], state=key[1], station=body.get("station"))
            return False
        return True
