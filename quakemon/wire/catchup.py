"""The catch-up server: a ZeroMQ ROUTER on a thread that answers "what came after seq N" from the journal.

A subscriber that missed messages (it started late, restarted, or the PUB dropped at its high-water mark) asks
for them here and stitches them into the live stream (:class:`quakemon.client.Subscriber`). Requests and replies
are single JSON frames (``quakemon.catchup/1``); clients use a DEALER (optionally sending an empty delimiter
frame first) or a REQ socket. Every field is documented in docs/delivery.md.

Request: ``{"schema": "quakemon.catchup/1", "op": "after" | "since" | "info", "id": <any JSON, echoed>}`` plus
``seq`` (int >= 0) and optional ``before`` (int, exclusive) for "after", ``time`` (ISO 8601 UTC) for "since",
and optional ``limit`` (1..max_page, default max_page) for both.

Reply: ``{"schema", "id", "ok": true, "journal", "first_seq", "last_seq", "messages": [{"seq", "epoch", "topic",
"time", "body"}], "more", "next_after"}``, or ``{"schema", "id", "ok": false, "error"}`` for a request it cannot
answer. Pages are bounded by ``limit`` and by ``max_reply_bytes`` (at least one message per page); ``more`` is
true when the page was cut, and ``next_after`` is the ``seq`` to send in the next "after" request.

A malformed request gets an error reply (or, if it is not even a routable message, is dropped) and never stops
the server. Requests larger than 64 KiB disconnect the peer (ZMQ_MAXMSGSIZE). With CURVE keys the socket is a
CURVE server admitting the same client keys as the PUB socket; the server runs its own ZeroMQ context, so its
authenticator does not collide with the publisher's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import structlog
import zmq

from quakemon.base.errors import QuakemonError
from quakemon.wire.journal import JournalReader
from quakemon.wire.schema import MessageError, iso_utc, json_bytes, parse_iso_utc
from quakemon.wire.security import make_curve_server

log = structlog.get_logger(__name__)

CATCHUP_SCHEMA = "quakemon.catchup/1"
OPS = ("after", "since", "info")
MAX_REQUEST_BYTES = 65_536


class RequestError(QuakemonError):
    """A catch-up request that does not follow ``quakemon.catchup/1``; `req_id` is its ``id`` when it had one."""

    def __init__(self, message: str, req_id: Any = None) -> None:
        super().__init__(message)
        self.req_id = req_id


def _int_field(req: dict[str, Any], key: str, minimum: int, required: bool = True) -> int | None:
    if key not in req and not required:
        return None
    value = req.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"field {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_request(data: bytes, max_page: int) -> dict[str, Any]:
    """Validate one request frame; returns {op, id, seq, before, time, limit} or raises :class:`RequestError`."""
    try:
        req = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise RequestError(f"request must be a JSON object, got {type(req).__name__}")
    try:
        return _parse_fields(req, max_page)
    except RequestError as exc:
        exc.req_id = req.get("id")
        raise


def _parse_fields(req: dict[str, Any], max_page: int) -> dict[str, Any]:
    if req.get("schema") != CATCHUP_SCHEMA:
        raise RequestError(f"request schema must be {CATCHUP_SCHEMA!r}, got {req.get('schema')!r}")
    op = req.get("op")
    if op not in OPS:
        raise RequestError(f"op must be one of {OPS}, got {op!r}")
    out: dict[str, Any] = {"op": op, "id": req.get("id"), "limit": max_page}
    if op == "info":
        return out
    limit = _int_field(req, "limit", 1, required=False)
    if limit is not None:
        out["limit"] = min(limit, max_page)
    if op == "after":
        out["seq"] = _int_field(req, "seq", 0)
        out["before"] = _int_field(req, "before", 1, required=False)
    else:
        t = req.get("time")
        if not isinstance(t, str):
            raise RequestError(f"field 'time' must be an ISO 8601 UTC string, got {t!r}")
        try:
            out["time"] = parse_iso_utc(t)
        except MessageError as exc:
            raise RequestError(str(exc)) from None
    return out


class CatchupServer:
    """Serves a journal file on a ROUTER socket from a background thread; `close()` stops it.

    `endpoint` is bound at construction (errors raise here); :attr:`endpoint` is the bound address (with the
    actual port when ``:0`` was asked for), :attr:`advertised` what heartbeats should carry (`advertise`, or the
    bound address).
    """

    def __init__(self, journal_path: str | Path, endpoint: str = "tcp://127.0.0.1:0", *, max_page: int = 500,
                 max_reply_bytes: int = 4 * 1024 * 1024, curve_secret_key: str | Path | None = None,
                 curve_allowed_keys: str | Path | None = None, advertise: str | None = None,
                 poll_ms: int = 100) -> None:
        if max_page < 1 or max_reply_bytes < 1:
            raise QuakemonError(f"catch-up max_page and max_reply_bytes must be >= 1, got {max_page}, "
                                f"{max_reply_bytes}")
        self.journal_path = Path(journal_path)
        JournalReader(self.journal_path).close()  # refuse a bad file here, not in the thread
        self.max_page = int(max_page)
        self.max_reply_bytes = int(max_reply_bytes)
        self.poll_ms = int(poll_ms)
        self.stats = {"requests": 0, "errors": 0, "messages": 0}
        self._context = zmq.Context()
        self._auth = None
        sock = self._context.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
            if curve_secret_key is not None or curve_allowed_keys is not None:
                if curve_secret_key is None or curve_allowed_keys is None:
                    raise QuakemonError("catch-up CURVE needs both a secret key file and an allowed-keys directory")
                self._auth = make_curve_server(sock, curve_secret_key, curve_allowed_keys, self._context)
            sock.bind(endpoint)
        except (zmq.ZMQError, QuakemonError) as exc:
            sock.close(linger=0)
            self._stop_auth()
            self._context.term()
            if isinstance(exc, QuakemonError):
                raise
            raise QuakemonError(f"catch-up endpoint {endpoint!r}: cannot bind ROUTER socket: {exc}") from exc
        self._socket = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.advertised = advertise or self.endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catchup-server", daemon=True)
        self._thread.start()
        log.info("catchup_server_bound", endpoint=self.endpoint, journal=str(self.journal_path),
                 curve=self._auth is not None)

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _run(self) -> None:
        reader = JournalReader(self.journal_path)
        try:
            while not self._stop.is_set():
                if not self._socket.poll(self.poll_ms):
                    continue
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                reply = self._handle(reader, frames)
                if reply is not None:
                    try:
                        self._socket.send_multipart(reply, zmq.NOBLOCK)
                    except zmq.ZMQError as exc:  # peer gone or its queue full: it retries
                        log.warning("catchup_reply_dropped", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - logged, the thread is the only thing that ends
            log.exception("catchup_server_failed", error=str(exc))
        finally:
            reader.close()
            self._socket.close(linger=0)

    def _handle(self, reader: JournalReader, frames: list[bytes]) -> list[bytes] | None:
        """The reply frames for one request (envelope preserved), or None when it cannot be routed."""
        if len(frames) < 2:
            return None
        identity, rest = frames[0], frames[1:]
        envelope = [identity]
        if len(rest) >= 2 and rest[0] == b"":
            envelope.append(b"")
            rest = rest[1:]
        self.stats["requests"] += 1
        req_id: Any = None
        try:
            if len(rest) != 1:
                raise RequestError(f"request must be one JSON frame, got {len(rest)} frames")
            req = parse_request(rest[0], self.max_page)
            req_id = req["id"]
            body = self._answer(reader, req)
        except RequestError as exc:
            req_id = exc.req_id
            self.stats["errors"] += 1
            log.info("catchup_bad_request", error=str(exc))
            body = self._error(req_id, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed read must not stop the server
            self.stats["errors"] += 1
            log.warning("catchup_request_failed", error=str(exc))
            body = self._error(req_id, f"server error: {exc}")
        return [*envelope, body]

    def _error(self, req_id: Any, text: str) -> bytes:
        try:
            return json_bytes({"schema": CATCHUP_SCHEMA, "id": req_id, "ok": False, "error": text})
        except (TypeError, ValueError):
            return json_bytes({"schema": CATCHUP_SCHEMA, "id": None, "ok": False, "error": text})

    def _answer(self, reader: JournalReader, req: dict[str, Any]) -> bytes:
        first, last = reader.bounds()
        head = {"schema": CATCHUP_SCHEMA, "id": req["id"], "ok": True, "journal": reader.journal_id,
                "first_seq": first, "last_seq": last}
        if req["op"] == "info":
            return json_bytes(head)
        limit = req["limit"]
        if req["op"] == "after":
            records = reader.after(req["seq"], limit + 1, req["before"])
            start = req["seq"]
        else:
            records = reader.since(req["time"], limit + 1)
            start = records[0].seq - 1 if records else last
        more = len(records) > limit
        records = records[:limit]
        parts: list[str] = []
        size = 0
        for rec in records:
            item = (f'{{"seq":{rec.seq},"epoch":{json.dumps(rec.epoch)},"topic":{json.dumps(rec.topic)},'
                    f'"time":"{iso_utc(rec.time)}","body":{rec.body}}}')
            if parts and size + len(item) > self.max_reply_bytes:
                more = True
                break
            parts.append(item)
            size += len(item) + 1
        next_after = start if not parts else records[len(parts) - 1].seq
        self.stats["messages"] += len(parts)
        prefix = json_bytes({**head, "more": more, "next_after": next_after})[:-1]
        return prefix + b',"messages":[' + ",".join(parts).encode("utf-8") + b"]}"

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the socket (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("catchup_server_stop_timeout", timeout_s=timeout_s)
            return
        self._stop_auth()
        self._context.term()
        log.info("catchup_server_closed", endpoint=self.endpoint, **self.stats)

    def __enter__(self) -> CatchupServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
