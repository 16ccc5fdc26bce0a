"""``quakemon associate``: the association stage as its own process, for several daemons on several hosts.

SUBscribes to one or more quakemon publishers (``--connect``, one SUB socket per endpoint, so each endpoint is
one *source* of the watermark, see quakemon/pipeline/associate.py), feeds their detections to an
:class:`~quakemon.pipeline.associate.Associator` and PUBlishes ``event.<id>`` messages and 1 Hz heartbeats on its
own endpoint (``--bind``), with the same wire schema as the daemon, so ``quakemon listen`` works on it.

Source clocks: every detection moves its source's clock to the detection's ``window_start``; a heartbeat that
carries ``data_time`` (ISO, the newest window start the daemon processed) moves it too. A source from which
nothing arrived for ``--idle`` seconds (a quiet network sends no detections) stops holding the watermark back
until it sends again; with every source quiet, what was received is decided. SIGINT/SIGTERM stop the loop;
open events are then closed (``close_reason`` "flush") and published before the socket closes.

With ``--journal FILE`` the events are committed to a journal before they are sent and a catch-up server
(``--catchup``, default: the bind port + 1, see docs/delivery.md) answers missed seqs, so ``quakemon listen
--resume`` and ``quakemon.client.Subscriber`` receive every event once across restarts; seq continues from the
journal.

Heartbeat extras: ``sources`` (endpoints), ``sources_heard`` (how many sent anything yet), ``events_open``,
``picks``, ``events``, ``watermark`` (ISO or null).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
import zmq

from quakemon.base.errors import ConfigError, QuakemonError
from quakemon.base.signals import StopFlag, stop_on_signals
from quakemon.pipeline.associate import Associator, station_coordinates
from quakemon.pipeline.settings import AssociationSettings
from quakemon.service.config import derive_catchup
from quakemon.wire.schema import (
    DETECTION_SCHEMA,
    DETECTION_TOPIC_PREFIX,
    HEARTBEAT_SCHEMA,
    HEARTBEAT_TOPIC,
    MessageError,
    iso_utc,
    parse_body,
    parse_iso_utc,
)

log = structlog.get_logger(__name__)

ASSOC = AssociationSettings()  # the defaults the daemon's [associate] section uses too

_POLL_MS = 100


def _parse_weights(text: str | None) -> dict[str, float]:
    """``"BW.UH1=2,UH3=0.5"`` or a JSON object -> {station: weight}."""
    if not text:
        return {}
    try:
        if text.lstrip().startswith("{"):
            return {str(k): float(v) for k, v in json.loads(text).items()}
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except (ValueError, AttributeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"associate --weights: expected 'STA=W,NET.STA=W' or a JSON object, got {text!r}") from exc


def run_associator(
    connect: Sequence[str],
    bind: str,
    associator: Associator,
    *,
    idle_s: float = 30.0,
    heartbeat_interval_s: float = 1.0,
    stop: threading.Event | None = None,
    context: zmq.Context | None = None,
    journal: str | None = None,
    catchup: str | None = None,
) -> int:
    """Subscribe to `connect`, publish events on `bind` until `stop` is set; returns the exit code.

    `journal`: journal file for the events (None: none); `catchup`: the catch-up endpoint on it (None: none)."""
    from quakemon.wire.catchup import CatchupServer
    from quakemon.wire.journal import Journal
    from quakemon.wire.publisher import Publisher

    stop = stop or threading.Event()
    ctx = context or zmq.Context.instance()
    store = Journal(journal) if journal else None
    server = CatchupServer(store.path, catchup) if store is not None and catchup else None
    publisher = Publisher(bind, ctx, heartbeat_interval_s=heartbeat_interval_s, journal=store,
                          catchup_endpoint=server.advertised if server is not None else None)
    socks: dict[zmq.Socket, str] = {}
    poller = zmq.Poller()
    try:
        for endpoint in connect:
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt_string(zmq.SUBSCRIBE, DETECTION_TOPIC_PREFIX)
            sock.setsockopt_string(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
            socks[sock] = endpoint
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                raise ConfigError(f"associate --connect {endpoint!r}: cannot connect: {exc}") from exc
            poller.register(sock, zmq.POLLIN)
        log.info("associate_bound", endpoint=publisher.endpoint, sources=list(connect),
                 threshold=associator.threshold, window_s=associator.window_s, hold_s=associator.hold_s)
        started = time.monotonic()
        last_rx: dict[str, float] = {}
        retired: set[str] = set()
        stats = {"received": 0, "malformed": 0}

        def emit(bodies: list[dict[str, Any]]) -> None:
            for body in bodies:
                publisher.publish_event(body)

        def heartbeat() -> dict[str, Any]:
            wm = associator.watermark
            return {"sources": list(connect), "sources_heard": len(last_rx), "events_open": associator.open_events,
                    "picks": int(associator.stats["picks"]), "events": int(associator.stats["events"]),
                    "received": stats["received"], "malformed": stats["malformed"],
                    "watermark": iso_utc(wm) if math.isfinite(wm) else None}

        while not stop.is_set():
            for sock, _ in poller.poll(_POLL_MS):
                source = socks[sock]
                for _ in range(1000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        if len(frames) != 2:
                            raise MessageError(f"expected 2 frames [topic, body], got {len(frames)}")
                        body = parse_body(frames[1])
                    except MessageError as exc:
                        stats["malformed"] += 1
                        log.warning("malformed_message", source=source, error=str(exc))
                        continue
                    stats["received"] += 1
                    last_rx[source] = time.monotonic()
                    retired.discard(source)
                    if body["schema"] == DETECTION_SCHEMA:
                        emit(associator.add(body, source))
                    elif body["schema"] == HEARTBEAT_SCHEMA and isinstance(body.get("data_time"), str):
                        emit(associator.advance(parse_iso_utc(body["data_time"]), source))
            now = time.monotonic()
            for source in connect:
                if source not in retired and now - last_rx.get(source, started) > idle_s:
                    retired.add(source)
                    log.info("source_idle", source=source, idle_s=idle_s)
                    emit(associator.retire(source))
            publisher.maybe_heartbeat(heartbeat)
        emit(associator.flush())
    finally:
        for sock in socks:
            sock.close(linger=0)
        publisher.close()
        if server is not None:
            server.close()
        if store is not None:
            store.close()
    log.info("associate_stopped", **{k: int(v) for k, v in associator.stats.items()})
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``quakemon associate`` arguments."""
    p = argparse.ArgumentParser(prog="quakemon associate",
                                description="Associate detections of one or several quakemon publishers into "
                                "network events (coincidence of station triggers) and publish them.")
    p.add_argument("--connect", action="append", required=True, metavar="EP",
                   help="publisher endpoint to subscribe to (repeat for several daemons)")
    p.add_argument("--bind", required=True, metavar="EP", help="endpoint to publish events on, e.g. tcp://*:5558")
    p.add_argument("--threshold", type=float, default=ASSOC.threshold,
                   help=f"coincidence sum an event needs (default {ASSOC.threshold:g})")
    p.add_argument("--window", type=float, default=ASSOC.window_s, metavar="S",
                   help=f"latest pick at most S seconds after the first (default {ASSOC.window_s:g})")
    p.add_argument("--hold", type=float, default=ASSOC.hold_s, metavar="S",
                   help=f"cluster a pick once every source is S seconds past it (default {ASSOC.hold_s:g})")
    p.add_argument("--weights", default=None, help="station weights, 'NET.STA=2,STA=0.5' or a JSON object")
    p.add_argument("--inventory", default=None, metavar="FILE",
                   help="StationXML with station coordinates: onsets must fit the travel time between stations")
    p.add_argument("--velocity", type=float, default=ASSOC.velocity_kms, metavar="KM_S",
                   help=f"slowest apparent velocity (default {ASSOC.velocity_kms:g})")
    p.add_argument("--tolerance", type=float, default=ASSOC.tolerance_s, metavar="S",
                   help=f"pick tolerance on top (default {ASSOC.tolerance_s:g})")
    p.add_argument("--idle", type=float, default=30.0, metavar="S",
                   help="stop waiting for a source silent for S seconds (default 30)")
    p.add_argument("--journal", default=None, metavar="FILE",
                   help="commit events to this journal before sending them (lossless delivery, see --catchup)")
    p.add_argument("--catchup", default=None, metavar="EP",
                   help='with --journal: catch-up endpoint (default: the --bind port + 1; "" = none)')
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``quakemon associate``; returns the exit code (2: usage or config error)."""
    from quakemon.base.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        if not args.idle > 0:
            raise ConfigError(f"associate --idle must be > 0 seconds, got {args.idle!r}")
        coordinates = None
        if args.inventory:
            try:
                coordinates = station_coordinates(args.inventory)
            except Exception as exc:  # noqa: BLE001 - ObsPy raises many kinds for unreadable files
                raise ConfigError(f"associate --inventory {args.inventory!r}: cannot read StationXML: {exc}") from exc
        associator = Associator(args.threshold, args.window, _parse_weights(args.weights), hold_s=args.hold,
                                coordinates=coordinates, velocity_kms=args.velocity, tolerance_s=args.tolerance,
                                sources=args.connect)
        catchup = args.catchup
        if args.journal and catchup is None:
            catchup = derive_catchup(args.bind)
        elif catchup and not args.journal:
            raise ConfigError("associate --catchup needs --journal")
        with stop_on_signals(StopFlag()) as stop:
            return run_associator(args.connect, args.bind, associator, idle_s=args.idle, stop=stop,
                                  journal=args.journal, catchup=catchup)
    except QuakemonError as exc:
        print(f"quakemon associate: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
