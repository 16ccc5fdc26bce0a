"""SeedLink resume state: 24-bit sequence arithmetic and an atomic, crash-tolerant JSON state file.

SeedLink v3 sequence numbers are 24-bit and wrap at FFFFFF -> 000000, so "next" and "after" are computed
modulo 2**24. The state file records, per station, the last *processed* sequence number and, per stream
(NET.STA.LOC.CHA), the start time of the last processed record, so that a restarted source resumes with
`DATA <seq+1>` and drops records it has already handed on. It is written as tmp + fsync + rename (+ fsync of
the directory), so a crash at any point leaves either the old or the new file, never a torn one; a corrupt or
truncated file (written by something else, or a disk error) is reported with a warning and ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SEQ_BITS = 24
SEQ_MOD = 1 << SEQ_BITS
SEQ_MASK = SEQ_MOD - 1
STATE_VERSION = 1


def seq_next(seq: int) -> int:
    """The sequence number after `seq` (FFFFFF is followed by 000000)."""
    return (seq + 1) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Wrap-aware signed distance a - b, in [-2**23, 2**23): positive when `a` comes after `b`."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def seq_after(a: int, b: int) -> bool:
    """True when sequence number `a` comes strictly after `b` (wrap-aware)."""
    return seq_diff(a, b) > 0


def seq_hex(seq: int) -> str:
    """Six uppercase hex digits, as SeedLink v3 writes sequence numbers (never 0x1000000)."""
    return f"{seq & SEQ_MASK:06X}"


@dataclass
class SeqState:
    """Resume positions: last processed seq per station ("NET.STA") and last record start per stream.

    `stream_times` holds POSIX timestamps (float seconds) of the start of the last processed record of each
    NET.STA.LOC.CHA, used to drop replayed records after a reconnect or restart.
    """

    server: str = ""
    stations: dict[str, int] = field(default_factory=dict)
    stream_times: dict[str, float] = field(default_factory=dict)

    def copy(self) -> SeqState:
        return SeqState(self.server, dict(self.stations), dict(self.stream_times))

    def to_json(self) -> dict:
        return {
            "version": STATE_VERSION,
            "server": self.server,
            "stations": {k: {"seq": v, "seq_hex": seq_hex(v)} for k, v in sorted(self.stations.items())},
            "streams": dict(sorted(self.stream_times.items())),
        }

    @classmethod
    def from_json(cls, doc: dict) -> SeqState:
        """Parse a state document; raises ValueError/TypeError/KeyError on anything malformed."""
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"expected version {STATE_VERSION}, got {doc.get('version')!r}")
        stations = {}
        for key, entry in doc.get("stations", {}).items():
            seq = int(entry["seq"])
            if not 0 <= seq < SEQ_MOD:
                raise ValueError(f"station {key}: seq {seq} outside 0..{SEQ_MASK}")
            stations[str(key)] = seq
        streams = {str(k): float(v) for k, v in doc.get("streams", {}).items()}
        return cls(str(doc.get("server", "")), stations, streams)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
