"""SeedLink resume state: sequence arithmetic and an atomic, crash-tolerant JSON state file.

SeedLink 3.1 sequence numbers are 24-bit and wrap at FFFFFF -> 000000, so "next" and "after" are computed
modulo 2**24; 4.0 numbers are 64-bit (`seq_diff(..., bits=64)`). The state file records, per station, the last
*processed* sequence number and the start time of that record, and per stream (NET.STA.LOC.CHA) the start time
of the last processed record and the time its next record should start, so that a restarted source resumes with
`DATA <seq+1> <time>`, drops records it has already handed on and notices records the server could not supply.
It also records the protocol version the numbers belong to and whether the server numbers all stations in one
series (`shared`), which decides how a multi-station connection is resumed, and, for each station that has no
processed record yet, the sequence number and start time of the first record the source handed on for it
(`first_seqs`, `first_times`), so that a restart resumes that station from there instead of skipping what the
consumer held when it died.

It is written as tmp + fsync + rename (+ fsync of the directory), so a crash at any point leaves either the old
or the new file, never a torn one; a corrupt or truncated file (written by something else, or a disk error) is
reported with a warning and ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from quakemon.base.files import atomic_write

log = structlog.get_logger(__name__)

SEQ_BITS = 24
SEQ_MOD = 1 << SEQ_BITS
SEQ_MASK = SEQ_MOD - 1
STATE_VERSION = 2


def seq_next(seq: int) -> int:
    """The sequence number after `seq` (FFFFFF is followed by 000000)."""
    return (seq + 1) & SEQ_MASK


def seq_diff(a: int, b: int, bits: int = SEQ_BITS) -> int:
    """Wrap-aware signed distance a - b, in [-2**(bits-1), 2**(bits-1)): positive when `a` comes after `b`."""
    mod = 1 << bits
    d = (a - b) & (mod - 1)
    return d - mod if d >= mod // 2 else d


def seq_after(a: int, b: int, bits: int = SEQ_BITS) -> bool:
    """True when sequence number `a` comes strictly after `b` (wrap-aware)."""
    return seq_diff(a, b, bits) > 0


def seq_hex(seq: int) -> str:
    """Six uppercase hex digits, as SeedLink v3 writes sequence numbers (never 0x1000000)."""
    return f"{seq & SEQ_MASK:06X}"


@dataclass
class SeqState:
    """Resume positions of one server.

    stations: last processed sequence number per station ("NET.STA"); station_times: start (POSIX s) of that
    record; stream_times: start of the last processed record per NET.STA.LOC.CHA (duplicate detection);
    stream_next: where the next record of each stream should start (gap detection); proto: the protocol
    version ("3.1" or "4.0") the numbers belong to; shared: True when the server numbers the packets of all
    stations in one series, False when per station, None when not yet seen; first_seqs / first_times: for a
    station without a processed record, the sequence number and start time of the first record handed to the
    consumer (dropped once the station has a processed record).
    """

    server: str = ""
    stations: dict[str, int] = field(default_factory=dict)
    stream_times: dict[str, float] = field(default_factory=dict)
    station_times: dict[str, float] = field(default_factory=dict)
    stream_next: dict[str, float] = field(default_factory=dict)
    proto: str = "3.1"
    shared: bool | None = None
    first_seqs: dict[str, int] = field(default_factory=dict)
    first_times: dict[str, float] = field(default_factory=dict)

    def copy(self) -> SeqState:
        return SeqState(self.server, dict(self.stations), dict(self.stream_times), dict(self.station_times),
                        dict(self.stream_next), self.proto, self.shared, dict(self.first_seqs),
                        dict(self.first_times))

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "server": self.server,
            "proto": self.proto,
            "shared": self.shared,
            "stations": {k: {"seq": v, **({"seq_hex": seq_hex(v)} if self.proto != "4.0" else {}),
                             "time": self.station_times.get(k)} for k, v in sorted(self.stations.items())},
            "streams": {k: {"time": v, "next": self.stream_next.get(k)} for k, v in sorted(self.stream_times.items())},
            "first": {k: {"seq": v, "time": self.first_times.get(k)} for k, v in sorted(self.first_seqs.items())},
        }

    @classmethod
    def from_json(cls, doc: dict) -> SeqState:
        """Parse a state document (version 1 or 2); raises ValueError/TypeError/KeyError on anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        version = doc.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"expected version 1 or {STATE_VERSION}, got {version!r}")
        st = cls(str(doc.get("server", "")))
        if version == 2:
            st.proto = str(doc.get("proto", "3.1"))
            shared = doc.get("shared")
            st.shared = None if shared is None else bool(shared)
        bits = 64 if st.proto == "4.0" else SEQ_BITS
        _read_positions(doc.get("stations", {}), bits, "station", st.stations, st.station_times)
        _read_positions(doc.get("first", {}), bits, "first record of", st.first_seqs, st.first_times)
        for key, entry in doc.get("streams", {}).items():
            if isinstance(entry, dict):
                st.stream_times[str(key)] = float(entry["time"])
                if entry.get("next") is not None:
                    st.stream_next[str(key)] = float(entry["next"])
            else:
                st.stream_times[str(key)] = float(entry)
        return st


def _read_positions(section: dict, bits: int, what: str, seqs: dict[str, int], times: dict[str, float]) -> None:
    """Fill `seqs` and `times` from a {key: {"seq": n, "time": t or null}} section; a number outside the
    protocol's range raises ValueError."""
    for key, entry in section.items():
        seq = int(entry["seq"])
        if not 0 <= seq < (1 << bits):
            raise ValueError(f"{what} {key}: seq {seq} outside 0..{(1 << bits) - 1}")
        seqs[str(key)] = seq
        if entry.get("time") is not None:
            times[str(key)] = float(entry["time"])


def load_state(path: str | os.PathLike[str]) -> SeqState:
    """Read the state file; a missing file gives an empty state, a corrupt one a warning and an empty state."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SeqState()
    except OSError as exc:
        log.warning("seedlink_state_unreadable", path=str(path), error=str(exc))
        return SeqState()
    try:
        return SeqState.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning(
            "seedlink_state_corrupt", path=str(path), error=str(exc), size=len(text),
            action="ignored; streams start with new data",
        )
        return SeqState()


def save_state(path: str | os.PathLike[str], state: SeqState) -> None:
    """Write the state atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), indent=1).encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))
