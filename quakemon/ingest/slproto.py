"""SeedLink 3.1 and 4.0 on the wire: packet framing, sequence numbers, times and the commands that differ.

Framing (server to client):

- 3.1: ``SL`` + 6 hex digits (24-bit sequence number) + one miniSEED record. There is no length field: the
  record's own header says how long it is (`quakemon.ingest.mseed3.record_length`), so records of any length
  (512, 4096, miniSEED 3) are cut correctly. INFO answers are ``SLINFO *`` / ``SLINFO  `` + a record.
- 4.0: ``SE`` + format (``2``/``3`` miniSEED, ``J`` JSON, ``X`` XML) + subformat (``D`` data, ``I`` info, ...)
  + payload length (uint32 LE) + sequence number (uint64 LE) + station-id length (uint8) + station id
  (``NET_STA``) + payload.
- Both: ``END`` closes a FETCH/TIME transfer; ``OK``/``ERROR ...`` lines may answer commands sent mid-stream.

Commands that differ: 4.0 is chosen with ``SLPROTO 4.0`` after ``HELLO`` (the server lists ``SLPROTO:4.0`` in
its HELLO line); its ``STATION`` takes ``NET_STA``, its ``SELECT`` ``LOC_B_S_SS`` (FDSN source-id parts, ``*``
and ``?`` wildcards), its ``DATA`` a decimal 64-bit sequence number and ISO times. 3.1 uses
``STATION STA NET``, ``SELECT LLCCC`` and hex sequence numbers with ``YYYY,MM,DD,hh,mm,ss`` times.
``DATA <seq> <time>`` asks for the packets after `seq` when the server still has the packet ``seq - 1`` and it
started at `time` (whole seconds); otherwise the server positions by time.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from dataclasses import dataclass

from quakemon.ingest.mseed3 import MAX_RECORD, record_length
from quakemon.ingest.selectors import StreamSelector

V3, V4 = "3.1", "4.0"
V3_SEQ_MASK = (1 << 24) - 1
V4_SEQ_MASK = (1 << 64) - 1
V4_HEAD = 17
_V3_HEAD = re.compile(rb"SL[0-9A-F]{6}")
_ANY_HEAD = re.compile(rb"SL[0-9A-F]{6}|SLINFO[ ][ *]|SE[23JX][A-Z]")
_TAIL = V4_HEAD  # bytes kept back while they could be the start of a cut header

__all__ = ["V3", "V4", "Packet", "data_command", "frame_v4", "offered_versions", "parse_time", "split_packets",
           "v4_select", "v4_station"]


@dataclass(frozen=True)
class Packet:
    """One framed packet: a data record (fmt "2"/"3") or anything else the client skips (INFO, JSON, XML)."""

    seq: int  # -1 for INFO packets
    payload: bytes
    fmt: str  # "2" or "3" for miniSEED data; "info" for SLINFO; the 4.0 format character otherwise
    station: str = ""  # 4.0 station id (NET_STA)

    @property
    def is_data(self) -> bool:
        return self.fmt in ("2", "3")


@dataclass(frozen=True)
class Bad:
    """A v3 packet whose record header is unreadable (no length): reported, then the stream resynchronises."""

    seq: int
    reason: str


@dataclass(frozen=True)
class Garbage:
    """`skipped` bytes without any packet header."""

    skipped: int


END = "END"


def offered_versions(hello: str) -> set[str]:
    """Protocol versions a server's first HELLO line offers (``SLPROTO:x.y`` tokens, else its ``vX.Y``)."""
    found = set(re.findall(r"SLPROTO:(\d+\.\d+)", hello))
    if not found:
        m = re.search(r"SeedLink v(\d+\.\d+)", hello)
        found = {m.group(1)} if m else {V3}
    return found


def split_packets(buf: bytes, v4: bool) -> tuple[list[Packet | Bad | Garbage | str], int]:
    """Cut complete packets from the front of `buf`; returns (items, bytes consumed). Never raises."""
    out: list[Packet | Bad | Garbage | str] = []
    i, n = 0, len(buf)
    while n - i >= 3:
        if buf.startswith(b"SE", i) and v4:
            if n - i < V4_HEAD:
                break
            fmt, length, seq, sid_len = chr(buf[i + 2]), *struct.unpack_from("<IQB", buf, i + 4)
            if fmt in "23JX" and length <= MAX_RECORD:
                end = i + V4_HEAD + sid_len + length
                if end > n:
                    break
                sid = buf[i + V4_HEAD:i + V4_HEAD + sid_len].decode("ascii", "replace")
                out.append(Packet(seq if fmt in "23" else -1, buf[end - length:end], fmt, sid))
                i = end
                continue
        elif buf.startswith(b"SLINFO", i) or _V3_HEAD.match(buf, i):
            if n - i < 8:
                break
            length = record_length(buf, i + 8)
            if length is None:
                break
            info = buf.startswith(b"SLINFO", i)
            if length:
                if i + 8 + length > n:
                    break
                if not info:
                    length = _checked_length(buf, i, length, n, v4)
                rec = buf[i + 8:i + 8 + length]
                fmt = "info" if info else ("3" if rec[:3] == b"MS\x03" else "2")
                out.append(Packet(-1 if info else int(buf[i + 2:i + 8], 16), rec, fmt))
                i += 8 + length
                continue
            if not info:
                out.append(Bad(int(buf[i + 2:i + 8], 16), "bad_header"))
            i += 8
            m = _ANY_HEAD.search(buf, i)
            if m is None:
                keep = max(i, n - _TAIL)
                if keep > i:
                    out.append(Garbage(keep - i))
                i = keep
                break
            i = m.start()
            continue
        elif buf.startswith(b"END", i):
            out.append(END)
            i += 3
            continue
        elif buf.startswith(b"OK\r\n", i) or buf.startswith(b"ERROR", i):
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                if n - i > 256:
                    out.append(Garbage(n - i))
                    i = n
                break
            i = eol + 2
            continue
        if n - i < _TAIL:  # perhaps the start of a header cut by the read: wait for the rest
            break
        m = _ANY_HEAD.search(buf, i + 1)
        stop = m.start() if m else n - _TAIL
        out.append(Garbage(stop - i))
        i = stop
    return out, i


def _follows(buf: bytes, pos: int, v4: bool) -> bool:
    """True when a packet header, END or a reply line starts at `pos`."""
    if _V3_HEAD.match(buf, pos) or buf.startswith((b"SLINFO", b"END", b"OK\r\n", b"ERROR"), pos):
        return True
    return v4 and buf.startswith(b"SE", pos)


def _checked_length(buf: bytes, i: int, length: int, n: int, v4: bool) -> int:
    """The claimed length of the v3 packet at `i`, unless the bytes after it are not the next packet.

    A damaged length field (or a truncated record) would otherwise swallow the packets after it; then the record
    ends where the next packet header starts inside the claimed span, and it fails to decode on its own.
    """
    end = i + 8 + length
    if end >= n or _follows(buf, end, v4):
        return length
    m = _ANY_HEAD.search(buf, i + 8 + 48, end)
    return m.start() - (i + 8) if m else length


def frame_v4(seq: int, payload: bytes, station: str, fmt: str = "2", subformat: str = "D") -> bytes:
    """One 4.0 packet (used by `quakemon serve`)."""
    sid = station.encode("ascii")
    return (b"SE" + fmt.encode() + subformat.encode() + struct.pack("<IQB", len(payload), seq & V4_SEQ_MASK,
                                                                     len(sid)) + sid + payload)


def v3_time(t: float) -> str:
    """POSIX seconds as a 3.1 command time, ``YYYY,MM,DD,hh,mm,ss`` (whole seconds, rounded down)."""
    return dt.datetime.fromtimestamp(int(t // 1), dt.UTC).strftime("%Y,%m,%d,%H,%M,%S")


def v4_time(t: float) -> str:
    """POSIX seconds as a 4.0 command time, ``YYYY-MM-DDThh:mm:ssZ`` (whole seconds, rounded down)."""
    return dt.datetime.fromtimestamp(int(t // 1), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """A command time, 3.1 ``YYYY,MM,DD[,hh[,mm[,ss]]]`` or ISO ``YYYY-MM-DD[Thh:mm:ss[.f]][Z]``, as POSIX s.

    ValueError if malformed.
    """
    text = text.strip()
    if "," not in text:
        iso = text.rstrip("Z")
        try:
            d = dt.datetime.fromisoformat(iso)
        except ValueError:
            raise ValueError(f"bad SeedLink time {text!r}") from None
        return d.replace(tzinfo=dt.UTC).timestamp() if d.tzinfo is None else d.timestamp()
    parts = [p for p in text.split(",") if p != ""]
    if not 3 <= len(parts) <= 7:
        raise ValueError(f"bad SeedLink time {text!r}")
    nums = [int(p) for p in parts[:5]] + [0] * (5 - min(5, len(parts)))
    sec = float(parts[5]) if len(parts) > 5 else 0.0
    return dt.datetime(*nums[:5], tzinfo=dt.UTC).timestamp() + sec


def data_command(v4: bool, seq: int | None, t: float | None) -> str:
    """``DATA`` resuming after `seq` (the next one is asked for) with the fallback start time `t`."""
    if seq is None:
        return "DATA"
    if v4:
        return f"DATA {(seq + 1) & V4_SEQ_MASK}" + (f" {v4_time(t)}" if t is not None else "")
    return f"DATA {(seq + 1) & V3_SEQ_MASK:06X}" + (f" {v3_time(t)}" if t is not None else "")


def v4_station(net: str, sta: str) -> str:
    return f"{net}_{sta}"


def v4_select(sel: StreamSelector) -> str:
    """The 4.0 SELECT pattern ``LOC_B_S_SS`` for a stream selector (selects at least what it matches)."""
    cha = sel.seedlink_select()[-3:]
    loc = "*" if "*" in sel.loc else sel.loc.replace("-", "")
    return f"{loc}_{cha[0]}_{cha[1]}_{cha[2]}"


def v4_select_matches(pattern: str, loc: str, cha: str) -> bool:
    """Does a 4.0 SELECT pattern (``[!]LOC_B_S_SS[.T][:filter]``, negation ignored) match loc/cha?"""
    from quakemon.ingest.selectors import seedlink_wildcard

    pat = pattern.lstrip("!").split(":")[0].split(".")[0].lstrip("-")
    target = f"{loc.strip()}_{'_'.join(cha)}" if len(cha) == 3 else f"{loc.strip()}_{cha}"
    return seedlink_wildcard(pat, target)
