"""Catch-up server over real loopback sockets: paging, request validation, CURVE."""

from __future__ import annotations

import json

import pytest
import zmq

from quakemon.base.errors import QuakemonError
from quakemon.wire.catchup import CATCHUP_SCHEMA, CatchupServer
from quakemon.wire.journal import Journal
from quakemon.wire.schema import iso_utc, parse_iso_utc
from quakemon.wire.security import keygen

T_BASE = 1_700_000_000.0


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def journal_path(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path, synchronous="normal") as journal:
        for seq in range(1, 1235):
            if seq % 10 == 0:
                continue  # heartbeat seqs are holes in the journal
            body = json.dumps({"schema": "quakemon.detection/1", "seq": seq, "id": f"d{seq}", "pad": "p" * 50})
            journal.append(seq, "ep-a" if seq < 600 else "ep-b", f"detection.BW.S{seq % 3}", body, t=T_BASE + seq)
    return path


def dealer(ctx, endpoint, curve=None):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = curve
    sock.connect(endpoint)
    return sock


def ask(sock, request, timeout_s=5.0, raw=None):
    payload = raw if raw is not None else json.dumps({"schema": CATCHUP_SCHEMA, **request}).encode()
    sock.send_multipart([b"", payload] if not isinstance(payload, list) else [b"", *payload])
    if not sock.poll(int(timeout_s * 1000)):
        return None
    frames = sock.recv_multipart()
    assert frames[0] == b""
    return json.loads(frames[-1])


def test_pages_cover_the_journal_once_in_order(ctx, journal_path):
    with CatchupServer(journal_path, max_page=100) as server, dealer(ctx, server.endpoint) as sock:
        info = ask(sock, {"op": "info", "id": "i"})
        assert info["ok"] and info["id"] == "i" and (info["first_seq"], info["last_seq"]) == (1, 1234)
        assert "messages" not in info
        seen, after, pages = [], 0, 0
        while True:
            reply = ask(sock, {"op": "after", "seq": after, "limit": 500, "id": pages})
            assert reply["ok"] and reply["id"] == pages and reply["journal"] == info["journal"]
            assert len(reply["messages"]) <= 100  # the server caps the page
            seen += reply["messages"]
            after = reply["next_after"]
            pages += 1
            if not reply["more"]:
                break
        assert [m["seq"] for m in seen] == [s for s in range(1, 1235) if s % 10]
        assert pages == 12
        first = seen[0]
        assert first["epoch"] == "ep-a" and first["topic"] == "detection.BW.S1" and first["body"]["id"] == "d1"
        assert parse_iso_utc(first["time"]) == pytest.approx(T_BASE + 1)
        assert seen[-1]["epoch"] == "ep-b"
        # An exclusive upper bound, and an empty answer past the end.
        reply = ask(sock, {"op": "after", "seq": 5, "before": 12})
        assert [m["seq"] for m in reply["messages"]] == [6, 7, 8, 9, 11] and not reply["more"]
        reply = ask(sock, {"op": "after", "seq": 1234})
        assert reply["messages"] == [] and not reply["more"] and reply["next_after"] == 1234
        # By time: everything published at or after T_BASE + 1230.
        reply = ask(sock, {"op": "since", "time": iso_utc(T_BASE), "limit": 3})
        assert [m["seq"] for m in reply["messages"]] == [1, 2, 3] and reply["more"] and reply["next_after"] == 3
        late = ask(sock, {"op": "since", "time": iso_utc(T_BASE + 1230)})
        assert [m["seq"] for m in late["messages"]] == [1231, 1232, 1233, 1234]


def test_reply_bytes_bound_the_page_but_never_below_one_message(ctx, journal_path):
    with CatchupServer(journal_path, max_reply_bytes=400) as server, dealer(ctx, server.endpoint) as sock:
        reply = ask(sock, {"op": "after", "seq": 0})
        assert 1 <= len(reply["messages"]) <= 3 and reply["more"]
        assert reply["next_after"] == reply["messages"][-1]["seq"]
    with CatchupServer(journal_path, max_reply_bytes=1) as server, dealer(ctx, server.endpoint) as sock:
        reply = ask(sock, {"op": "after", "seq": 0})
        assert [m["seq"] for m in reply["messages"]] == [1] and reply["more"]


BAD_REQUESTS = [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"op": "after", "seq": 0}).encode(), "schema"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "drop"}).encode(), "op must be"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after"}).encode(), "'seq'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after", "seq": -1}).encode(), "'seq'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after", "seq": True}).encode(), "'seq'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after", "seq": 1.5}).encode(), "'seq'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after", "seq": 0, "limit": 0}).encode(), "'limit'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "after", "seq": 0, "before": "9"}).encode(), "'before'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "since", "time": 12}).encode(), "'time'"),
    (json.dumps({"schema": CATCHUP_SCHEMA, "op": "since", "time": "yesterday"}).encode(), "ISO 8601"),
    ([b"{}", b"{}"], "one JSON frame"),
]


def test_malformed_requests_get_an_error_reply_and_the_server_goes_on(ctx, journal_path):
    with CatchupServer(journal_path) as server, dealer(ctx, server.endpoint) as sock:
        for raw, error in BAD_REQUESTS:
            reply = ask(sock, {}, raw=raw)
            assert reply is not None, f"no reply to {raw!r}"
            assert reply["ok"] is False and error in reply["error"], (raw, reply)
            assert reply["schema"] == CATCHUP_SCHEMA
        # The id of a parseable request comes back with its error.
        assert ask(sock, {"op": "nope", "id": 7})["id"] == 7
        # A lone empty frame is a request without a delimiter: its error reply comes back without one too.
        sock.send(b"")
        assert sock.poll(5000)
        assert json.loads(sock.recv_multipart()[-1])["ok"] is False
        # An oversized request disconnects that peer only.
        big = dealer(ctx, server.endpoint)
        big.send_multipart([b"", b"x" * 100_000])
        assert not big.poll(500)
        big.close()
        assert server.stats["errors"] >= len(BAD_REQUESTS)
        assert ask(sock, {"op": "after", "seq": 0, "limit": 2})["messages"][1]["seq"] == 2
    # A REQ client works too (the server keeps the empty delimiter).
    with CatchupServer(journal_path) as server:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(server.endpoint)
        req.send(json.dumps({"schema": CATCHUP_SCHEMA, "op": "info"}).encode())
        assert req.poll(5000)
        assert json.loads(req.recv())["last_seq"] == 1234
        req.close()


def test_bad_journal_and_bad_endpoint_fail_at_construction(tmp_path, journal_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_text("hello")
    with pytest.raises(QuakemonError, match="bogus.db"):
        CatchupServer(bogus)
    with CatchupServer(journal_path) as server, pytest.raises(QuakemonError, match="cannot bind"):
        CatchupServer(journal_path, endpoint=server.endpoint)


def test_curve_admits_only_allowed_keys(ctx, tmp_path, journal_path):
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_public, server_secret = keygen(keys, "server")
    client_public, client_secret = keygen(keys, "client")
    _, stranger_secret = keygen(keys, "stranger")
    (allowed / "client.key").write_bytes(client_public.read_bytes())
    server_key = zmq.auth.load_certificate(server_public)[0]
    with CatchupServer(journal_path, curve_secret_key=server_secret, curve_allowed_keys=allowed) as server:
        plain = dealer(ctx, server.endpoint)
        assert ask(plain, {"op": "info"}, timeout_s=1.0) is None
        plain.close()
        stranger = zmq.auth.load_certificate(stranger_secret)
        intruder = dealer(ctx, server.endpoint, curve=(stranger[1], stranger[0], server_key))
        assert ask(intruder, {"op": "after", "seq": 0}, timeout_s=1.0) is None
        intruder.close()
        public, secret = zmq.auth.load_certificate(client_secret)
        with dealer(ctx, server.endpoint, curve=(secret, public, server_key)) as sock:
            reply = ask(sock, {"op": "after", "seq": 0, "limit": 5})
            assert [m["seq"] for m in reply["messages"]] == [1, 2, 3, 4, 5]
    with pytest.raises(QuakemonError, match="both"):
        CatchupServer(journal_path, curve_secret_key=server_secret)
