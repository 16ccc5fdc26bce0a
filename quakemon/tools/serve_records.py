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
import math
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from quakemon.base.errors import QuakemonError
from quakemon.ingest.selectors import SelectPattern, seedlink_wildcard, select_matches
from quakemon.ingest.slproto import v4_select_matches

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
        records.extend(parse_record(r) for r in pack_records(_read_waveforms(f)))
    if not records:
        raise QuakemonError(f"serve: no waveform records found in {', '.join(map(str, paths))}")
    return sort_records(records)


def _read_waveforms(path: Path):
    """ObsPy's reading of one file (miniSEED 3 through pymseed), failing with one QuakemonError line.

    libmseed reports a damaged record through a logging callback that ObsPy decodes as UTF-8; a header with
    other bytes makes that callback raise, which Python prints as an "Exception ignored" traceback and ObsPy
    goes on. Such reports (sys.unraisablehook) and ObsPy's "invalid MiniSEED" warnings make the file
    unreadable; other warnings are logged in one line each.
    """
    import sys

    import obspy

    ignored: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: ignored.append(f"{type(info.exc_value).__name__}: {info.exc_value}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            st = _read_mseed3(path) if magic == b"MS\x03" else obspy.read(str(path))
    except Exception as exc:  # ObsPy raises many types for unreadable files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QuakemonError(f"serve: cannot read {path} as waveform data: {reason}") from None
    finally:
        sys.unraisablehook = previous
    if ignored:
        raise QuakemonError(f"serve: cannot read {path} as waveform data: corrupt miniSEED record header "
                            f"({ignored[0]})")
    for w in caught:  # ObsPy read the file but warned: one line each, never a multi-line warning print
        first = str(w.message).splitlines()[0] if str(w.message) else w.category.__name__
        if "invalid MiniSEED" in str(w.message):
            raise QuakemonError(f"serve: cannot read {path} as waveform data: {first}")
        structlog.get_logger(__name__).warning("serve_input_warning", path=str(path), warning=first)
    return st


def _read_mseed3(path: Path):
    """A miniSEED 3 file as an ObsPy Stream (one Trace per record)."""
    import obspy
    from pymseed import MS3Record

    from quakemon.ingest.validate import decode_record

    st = obspy.Stream()
    for msr in MS3Record.from_file(str(path)):
        out = decode_record(bytes(msr.record))
        if isinstance(out, str):
            raise ValueError(f"miniSEED 3 record {msr.sourceid} rejected: {out}")
        st.append(out)
    return st


def sort_records(records: Sequence[Record]) -> list[Record]:
    """Archive order: start time, then stream id (stable)."""
    return sorted(records, key=lambda r: (r.start, r.seed_id))


@dataclass
class Faults:
    """Failure injection for tests; cut/stall apply to the first `connections` data transfers."""

    cut_after_packets: int | None = None  # close after this many data packets ...
    cut_bytes: int = 0  # ... having sent this many bytes of the next packet (0 = at a packet boundary)
    reset: bool = False  # close with RST (SO_LINGER 0) instead of FIN
    stall_after_packets: int | None = None  # stop sending, keep the socket open (half-open peer)
    duplicate_every: int | None = None  # send every n-th packet twice (all connections)
    mutate: Callable[[int, bytes], bytes] | None = None  # (seq, record) -> bytes to send (all connections)
    connections: int = 1


@dataclass
class Subscription:
    """What one STATION (or the uni-station default) of a `quakemon serve` client asked for."""

    net: str
    sta: str
    selectors: list[SelectPattern]
    mode: str = ""  # "data", "fetch", "time"
    pos: int = 0  # first archive position (absolute, for data/fetch)
    t0: float = -math.inf
    t1: float = math.inf
    v4_selectors: list[str] | None = None  # 4.0 LOC_B_S_SS patterns ("!" negates)

    def wants(self, rec: Record) -> bool:
        if not (seedlink_wildcard(self.sta, rec.sta) and seedlink_wildcard(self.net, rec.net)):
            return False
        if self.v4_selectors is None:
            return select_matches(self.selectors, rec.loc, rec.cha)
        pos = [p for p in self.v4_selectors if not p.startswith("!")]
        if pos and not any(v4_select_matches(p, rec.loc, rec.cha) for p in pos):
            return False
        return not any(v4_select_matches(p, rec.loc, rec.cha) for p in self.v4_selectors if p.startswith("!"))

    def set_start(self, verb: str, args: list[str], v4: bool, first_seq: int,
                  started: Callable[[int, float], bool]) -> None:
        """Apply a DATA/FETCH/TIME command's arguments (ValueError if malformed).

        `started(pos, t)`: does archive position `pos` hold a record that started in second `t`? DATA/FETCH
        with a time resume after the given sequence number only when it does, else from that time.
        """
        from quakemon.ingest.seqstate import SEQ_MASK
        from quakemon.ingest.slproto import parse_time

        self.mode = verb.lower()
        if verb == "TIME":
            if not args:
                raise ValueError("TIME needs a begin time")
            self.t0 = parse_time(args[0])
            self.t1 = parse_time(args[1]) if len(args) > 1 else math.inf
            return
        if not args:
            return
        if args[0].upper() == "ALL":
            self.pos = 0
        elif v4:
            self.pos = max(0, int(args[0]) - first_seq)
        else:
            seq = int(args[0], 16)
            if not 0 <= seq <= SEQ_MASK:
                raise ValueError(f"sequence number {args[0]} outside 000000..FFFFFF")
            self.pos = (seq - first_seq) & SEQ_MASK
        if len(args) > 1:  # the client's last record (pos - 1) must have started then, else resume by time
            t = parse_time(args[1])
            if len(args) > 2:
                self.t1 = parse_time(args[2])
            if not started(self.pos - 1, t):
                self.pos, self.t0 = 0, math.floor(t)

    def takes(self, rec: Record, pos: int, shift: int, n: int) -> bool:
        """Does this subscription send `rec` (a record it `wants`) at archive position `pos`, shifted by
        `shift` ticks, in an archive of `n` records?"""
        if self.mode in ("data", "fetch") and pos >= self.pos and (self.mode == "data" or pos < n):
            if math.isinf(self.t0) and math.isinf(self.t1):
                return True
            return self.t0 <= rec.start + shift / TICKS < self.t1
        if self.mode == "time" and (pos < n or math.isinf(self.t1)):
            return rec.end + shift / TICKS > self.t0 and rec.start + shift / TICKS < self.t1
        return False


# -- SeedLink encodings ----------------------------------------------------------------------------------------


def sl_time(t: float) -> str:
    """POSIX seconds as an INFO answer's time, "YYYY/MM/DD hh:mm:ss.ffff" (UTC)."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return f"{d:%Y/%m/%d %H:%M:%S}.{d.microsecond // 100:04d}"


def info_xml(records: Sequence[Record], level: str, organization: str, started: dt.datetime,
             seq_of: Callable[[int], int], retime_s: float) -> str:
    """The XML answer of a 3.1 ``INFO <level>`` (ID, CAPABILITIES, STATIONS, STREAMS) for an archive."""
    head = (f'<?xml version="1.0"?>\n<seedlink software="quakemon serve" organization="{organization}"'
            f' started="{started:%Y/%m/%d %H:%M:%S}.0000">')
    if level == "ID":
        return head + "</seedlink>"
    if level == "CAPABILITIES":
        caps = ["dialup", "multistation", "window-extraction", "info:id", "info:capabilities",
                "info:stations", "info:streams"]
        return head + "".join(f'<capability name="{c}"/>' for c in caps) + "</seedlink>"
    if level not in ("STATIONS", "STREAMS"):
        return head + f'<error message="INFO level {level} not supported"/></seedlink>'
    by_sta: dict[tuple[str, str], dict[tuple[str, str], list[int]]] = {}
    for i, r in enumerate(records):
        by_sta.setdefault((r.net, r.sta), {}).setdefault((r.loc, r.cha), []).append(i)
    parts = [head]
    for (net, sta), streams in sorted(by_sta.items()):
        idx = sorted(i for v in streams.values() for i in v)
        parts.append(f'<station name="{sta}" network="{net}" description="" begin_seq="{seq_of(idx[0]):06X}"'
                     f' end_seq="{seq_of(idx[-1] + 1):06X}" stream_check="enabled"')
        if level == "STATIONS":
            parts.append("/>")
            continue
        parts.append(">")
        for (loc, cha), ids in sorted(streams.items()):
            b = sl_time(records[ids[0]].start + retime_s)
            e = sl_time(records[ids[-1]].end + retime_s)
            parts.append(f'<stream location="{loc}" seedname="{cha}" type="D" begin_time="{b}" end_time="{e}"'
                         ' begin_recno="0" end_recno="0" gap_check="disabled" gap_treshold="0"/>')
        parts.append("</station>")
    return "".join(parts) + "</seedlink>"


def info_json(records: Sequence[Record], level: str, organization: str, started: dt.datetime) -> bytes:
    """The JSON answer of a 4.0 ``INFO <level>`` (ID, CAPABILITIES, FORMATS, STATIONS, STREAMS)."""
    import json

    doc: dict = {"software": "quakemon serve", "organization": organization,
                 "started": started.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if level == "CAPABILITIES":
        doc["capability"] = ["SLPROTO:4.0", "SLPROTO:3.1", "TIME"]
    elif level == "FORMATS":
        doc["format"] = {"2": {"mimetype": "application/vnd.fdsn.mseed", "subformat": {"D": "data"}}}
    elif level in ("STATIONS", "STREAMS"):
        stations: dict[str, dict] = {}
        for r in records:
            st = stations.setdefault(f"{r.net}_{r.sta}", {"id": f"{r.net}_{r.sta}", "stream": {}})
            st["stream"].setdefault(f"{r.loc}_{'_'.join(r.cha)}", {"id": f"{r.loc}_{'_'.join(r.cha)}",
                                                                  "format": "2", "subformat": "D"})
        doc["station"] = [{**v, "stream": list(v["stream"].values())} if level == "STREAMS" else {"id": k}
                          for k, v in sorted(stations.items())]
    elif level != "ID":
        doc["error"] = {"code": "ARGUMENTS", "message": f"INFO {level} not supported"}
    return json.dumps(doc).encode()


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
