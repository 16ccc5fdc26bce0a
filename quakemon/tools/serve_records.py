"""An archive as `quakemon serve` serves it: 512-byte MiniSEED 2 records and the SeedLink encodings around them.

The archive is re-packed into 512-byte records (the only size ObsPy's SeedLink client reads) and sorted by start
time; each `Record` keeps the raw bytes and the header fields the server needs. `retime_record` rewrites a
record's BTIME start field (looping and re-timed archives). SeedLink times ("YYYY,MM,DD,hh,mm,ss" in TIME
commands, "YYYY/MM/DD hh:mm:ss.ffff" in INFO answers) and INFO answers (XML in SLINFO-framed ASCII records) are
encoded here too.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quakemon.base.errors import QuakemonError

RECLEN = 512
TICKS = 10_000  # BTIME resolution: 1e-4 s
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Record:
    """One 512-byte MiniSEED 2 record of the archive with the header fields the server needs."""

    raw: bytes
    net: str
    sta: str
    loc: str
    cha: str
    start: float  # POSIX seconds (BTIME + unapplied time correction)
    end: float  # start + numsamples / rate
    little_endian: bool

    @property
    def seed_id(self) -> str:
        return f"{self.net}.{self.sta}.{self.loc}.{self.cha}"


def _rate(factor: int, mult: int) -> float:
    if factor == 0 or mult == 0:
        return 0.0
    if factor > 0:
        return factor * mult if mult > 0 else -factor / mult
    return -mult / factor if mult > 0 else 1.0 / (factor * mult)


def _btime_ticks(raw: bytes, little: bool) -> int:
    year, doy, hour, minute, sec, _, fract = struct.unpack_from("<HHBBBBH" if little else ">HHBBBBH", raw, 20)
    days = (dt.datetime(year, 1, 1) - _EPOCH).days + doy - 1
    return ((days * 24 + hour) * 60 + minute) * 60 * TICKS + sec * TICKS + fract


def parse_record(raw: bytes) -> Record:
    """Read the fixed header of a 512-byte MiniSEED 2 record (ValueError if it is not plausible)."""
    if len(raw) != RECLEN:
        raise ValueError(f"record is {len(raw)} bytes, expected {RECLEN}")
    little = not 1900 <= struct.unpack_from(">H", raw, 20)[0] <= 2100
    fmt = "<" if little else ">"
    year, doy = struct.unpack_from(fmt + "HH", raw, 20)
    if not (1900 <= year <= 2100 and 1 <= doy <= 366):
        raise ValueError(f"implausible record start year={year} day={doy}")
    nsamp, factor, mult = struct.unpack_from(fmt + "Hhh", raw, 30)
    flags = raw[36]
    corr = struct.unpack_from(fmt + "i", raw, 40)[0]
    ticks = _btime_ticks(raw, little) + (0 if flags & 0x02 else corr)
    rate = _rate(factor, mult)
    start = ticks / TICKS
    end = start + (nsamp / rate if rate > 0 else 0.0)

    def text(a: int, b: int) -> str:
        return raw[a:b].decode("ascii", "replace").strip()

    return Record(raw, text(18, 20), text(8, 13), text(13, 15), text(15, 18), start, end, little)


def retime_record(raw: bytes, shift_ticks: int, little_endian: bool) -> bytes:
    """Shift the BTIME start of a record by `shift_ticks` x 1e-4 s (everything else unchanged)."""
    if shift_ticks == 0:
        return raw
    ticks = _btime_ticks(raw, little_endian) + shift_ticks
    t = _EPOCH + dt.timedelta(microseconds=(ticks // TICKS) * 1_000_000)
    doy = t.timetuple().tm_yday
    btime = struct.pack("<HHBBBBH" if little_endian else ">HHBBBBH", t.year, doy, t.hour, t.minute, t.second, 0,
                        ticks % TICKS)
    return raw[:20] + btime + raw[30:]


def pack_records(stream) -> list[bytes]:
    """Re-pack an ObsPy Stream into 512-byte MiniSEED 2 records (one write per trace, split)."""
    out: list[bytes] = []
    for tr in stream:
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=RECLEN)
        data = buf.getvalue()
        out.extend(data[i:i + RECLEN] for i in range(0, len(data), RECLEN))
    return out


def load_records(paths: Sequence[str | Path]) -> list[Record]:
    """Read MiniSEED (or anything ObsPy reads) from files/directories; 512-byte records sorted by start time."""
    import obspy

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise QuakemonError(f"serve: archive path {p} does not exist (expected a MiniSEED file or directory)")
    records: list[Record] = []
    for f in files:
        try:
            st = obspy.read(str(f))
        except Exception as exc:  # ObsPy raises many types for unreadable files
            raise QuakemonError(f"serve: cannot read {f} as waveform data: {exc}") from exc
        records.extend(parse_record(r) for r in pack_records(st))
    if not records:
        raise QuakemonError(f"serve: no waveform records found in {', '.join(map(str, paths))}")
    return sort_records(records)


def sort_records(records: Sequence[Record]) -> list[Record]:
    """Archive order: start time, then stream id (stable)."""
    return sorted(records, key=lambda r: (r.start, r.seed_id))


# -- SeedLink encodings ----------------------------------------------------------------------------------------


def sl_time(t: float) -> str:
    """POSIX seconds as an INFO answer's time, "YYYY/MM/DD hh:mm:ss.ffff" (UTC)."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return f"{d:%Y/%m/%d %H:%M:%S}.{d.microsecond // 100:04d}"


def frame_info(xml: str) -> bytes:
    """Pack XML into ASCII MiniSEED records framed `SLINFO *` (more follow) / `SLINFO  ` (last)."""
    from obspy import Trace

    tr = Trace(np.frombuffer(xml.encode("ascii", "replace"), dtype="S1").copy())
    tr.stats.network, tr.stats.station, tr.stats.channel = "XX", "INFO", "LOG"
    buf = io.BytesIO()
    tr.write(buf, format="MSEED", encoding="ASCII", reclen=RECLEN)
    data = buf.getvalue()
    recs = [data[i:i + RECLEN] for i in range(0, len(data), RECLEN)]
    return b"".join((b"SLINFO *" if i < len(recs) - 1 else b"SLINFO  ") + r for i, r in enumerate(recs))


def parse_sl_time(text: str) -> float:
    """A TIME command's "YYYY,MM,DD[,hh[,mm[,ss]]]" (UTC) as POSIX seconds; ValueError if malformed."""
    parts = [p for p in text.split(",") if p != ""]
    if not 3 <= len(parts) <= 7:
        raise ValueError(f"bad SeedLink time {text!r}")
    nums = [int(p) for p in parts[:5]] + [0] * (5 - min(5, len(parts)))
    sec = float(parts[5]) if len(parts) > 5 else 0.0
    return (dt.datetime(*nums[:5], tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() + sec
