"""A live bridge for systems that watch a folder: one QuakeML file per closed event, written atomically.

`QuakeMLFolder.handle` takes detection and event bodies in publication order (from a `quakemon.client.Subscriber`,
so nothing is lost across restarts of either side) and, for every event message with state "closed", writes
``<event id>.xml`` holding that event and the P picks of its detections. A file appears whole or not at all: it
is written under a temporary name in the same folder, fsynced, renamed, and the folder fsynced. A repeated
message (the one a crash may deliver twice) rewrites the same file with the same content.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog

from quakemon.base.errors import QuakemonError
from quakemon.base.files import atomic_write, remove_partial_writes
from quakemon.wire.export import to_catalog

log = structlog.get_logger(__name__)

DETECTION_FAMILY = "quakemon.detection/"  # any version
EVENT_FAMILY = "quakemon.event/"
#: Detections remembered for the events that will name them; the oldest are forgotten beyond this.
MAX_DETECTIONS = 100_000


class QuakeMLFolder:
    """Writes one QuakeML file per closed event into `directory` (created if missing)."""

    def __init__(self, directory: str | Path, max_detections: int = MAX_DETECTIONS) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuakemonError(f"QuakeML folder {str(self.directory)!r} cannot be created: {exc}") from exc
        if not os.access(self.directory, os.W_OK):
            raise QuakemonError(f"QuakeML folder {str(self.directory)!r} is not writable")
        for tmp in remove_partial_writes(self.directory):  # a killed predecessor's unfinished file
            log.info("partial_file_removed", path=str(tmp))
        self.max_detections = int(max_detections)
        self._detections: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.written = 0

    def handle(self, body: dict[str, Any]) -> Path | None:
        """Take one published body; returns the file written for a closed event, else None."""
        schema = str(body.get("schema", ""))
        if schema.startswith(DETECTION_FAMILY) and "id" in body:
            self._detections[body["id"]] = body
            self._detections.move_to_end(body["id"])
            while len(self._detections) > self.max_detections:
                self._detections.popitem(last=False)
            return None
        if schema.startswith(EVENT_FAMILY) and body.get("state") == "closed":
            named = [row.get("detection_id") for row in body.get("stations", [])]
            bodies = [self._detections[d] for d in named if d in self._detections] + [body]
            return self._write(str(body["id"]), bodies)
        return None

    def _write(self, event_id: str, bodies: list[dict[str, Any]]) -> Path:
        catalog = to_catalog(bodies)
        target = atomic_write(self.directory / f"{event_id}.xml",
                              lambda fh: catalog.write(fh, format="QUAKEML", validate=True))
        self.written += 1
        log.info("quakeml_written", event_id=event_id, path=str(target), picks=len(bodies) - 1)
        return target


def run_bridge(endpoint: str, directory: str | Path, position_file: str | Path, *, stop: threading.Event,
               catchup: str | None = None, curve_secret_key: str | None = None,
               curve_server_key: str | None = None) -> int:
    """Follow the publisher at `endpoint` (resuming from `position_file`) until `stop` is set; returns the count
    of files written. Each message is acknowledged only after its file is on disk."""
    from quakemon.client.subscriber import Subscriber

    folder = QuakeMLFolder(directory)
    with Subscriber(endpoint, position_file, catchup=catchup, auto_ack=False, curve_secret_key=curve_secret_key,
                    curve_server_key=curve_server_key) as sub:
        while not stop.is_set():
            msg = sub.get(0.5)
            if msg is None:
                continue
            folder.handle(msg.body)
            sub.ack()
    return folder.written
