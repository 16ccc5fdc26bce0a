"""Stream selectors: the one grammar that says which channels a command, a source or a server takes.

Every user parses and matches selectors here: `[seedlink] streams` (config, the SeedLink source, the ingest
stage's windower), `quakemon replay --select` (the archive source, the windower, the plot), and the SeedLink
protocol patterns that the source sends and `quakemon serve` answers.

Selector (``--select``, archive sources, windowers)::

    selector := NET [ "." STA [ "." LOC [ "." CHA ]]]

- Each part is matched against the SEED code of the same name. ``?`` is exactly one character and ``*`` any
  run of characters (also none), both within one part, never across a ``.``; every other character is literal.
- Missing trailing parts match anything: ``GR.FUR`` is ``GR.FUR.*.*``. NET must not be empty.
- In LOC, ``--`` (or nothing, as in ``BW.RJOB..EHZ``) is the blank location code; so is ``--`` in a SEED id.
- Case-insensitive; surrounding blanks are ignored.

Stream selector (``[seedlink] streams``, `SeedLinkSource`): the strict form of a selector, because the live
source asks the server for each station by name and resumes each one by its sequence number::

    stream := NET "." STA "." LOC "." CHA

with NET 1-2 and STA 1-5 letters or digits (explicit, no wildcards), LOC 0-2 characters of A-Z, 0-9, ``?``,
``*``, ``-`` and CHA 1-3 characters of A-Z, 0-9, ``?``, ``*``. A stream selector matches exactly what the same
text matches as a selector. It is normalised to upper case.

SeedLink v3 protocol patterns (what a client sends, what `quakemon serve` answers):

- ``STATION sta [net]``: STA 1-5 and NET 1-2 characters of A-Z, 0-9, ``?`` and ``*`` (NET defaults to ``*``);
  ``?`` is one character and ``*`` any run (`seedlink_wildcard`).
- ``SELECT [!][LL]CCC[.T]``: LL the location (``-`` a blank character, ``?`` any; absent = any location), CCC
  the channel with ``?``, T the record type (only ``D``, data, or ``?`` select data records), ``!`` negates.
  A record is selected when it matches any positive pattern (or there is none) and no negative one
  (`select_matches`). `StreamSelector.seedlink_select` gives the SELECT pattern for a stream selector: it
  selects every record the stream selector matches (and possibly more, which the source then drops).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quakemon.base.errors import ConfigError

__all__ = [
    "STREAM_SYNTAX",
    "SelectPattern",
    "SelectorError",
    "SelectorSet",
    "StreamSelector",
    "check_selectors",
    "compile_selector",
    "is_network_pattern",
    "is_station_pattern",
    "match_selector",
    "parse_streams",
    "seedlink_wildcard",
    "select_matches",
]

#: What a stream selector looks like, for error messages.
STREAM_SYNTAX = ('stream selectors "NET.STA.LOC.CHA" (station explicit; ? and * only in LOC and CHA, '
                 'e.g. "BW.RJOB..EH?")')


class SelectorError(ConfigError, ValueError):
    """A selector that does not follow the grammar (a config error, exit code 2; also a ValueError)."""


# -- selectors ------------------------------------------------------------------------------------------------


def _normalise_loc(loc: str) -> str:
    return "" if loc == "--" else loc


def _split(selector: str) -> list[str]:
    """A selector's four parts, upper case, missing trailing parts as "*", "--" location as ""."""
    parts = selector.strip().upper().split(".")
    if len(parts) > 4 or not parts[0]:
        raise SelectorError(f"stream selector {selector!r}: expected NET.STA.LOC.CHA with ? and * wildcards")
    parts += ["*"] * (4 - len(parts))
    parts[2] = _normalise_loc(parts[2])
    return parts


@functools.cache  # one entry per configured selector: a network of hundreds of stations has hundreds
def compile_selector(selector: str) -> re.Pattern[str]:
    """The compiled form of one selector, matched against a normalised id (`_normalise_id`) with `.match`.

    Raises `SelectorError` for a selector that does not follow the grammar.
    """
    wild = {"?": "[^.]", "*": "[^.]*"}  # never across the '.' between codes
    body = r"\.".join("".join(wild.get(ch) or re.escape(ch) for ch in part) for part in _split(selector))
    return re.compile(body + r"\Z")


def check_selectors(selectors: Iterable[str]) -> list[str]:
    """The selectors as given, each checked against the grammar (`SelectorError` names the first bad one)."""
    out = list(selectors)
    for sel in out:
        compile_selector(sel)
    return out


def _normalise_id(seed_id: str) -> str | None:
    """"NET.STA.LOC.CHA" upper case with a "--" location blank; None when it does not have four parts."""
    parts = seed_id.upper().split(".")
    if len(parts) != 4:
        return None
    parts[2] = _normalise_loc(parts[2])
    return ".".join(parts)


def match_selector(seed_id: str, selectors: Sequence[str] | Iterable[str]) -> bool:
    """True if the SEED id "NET.STA.LOC.CHA" matches any of `selectors` (see the module docstring)."""
    sid = _normalise_id(seed_id)
    return sid is not None and any(compile_selector(s).match(sid) for s in selectors)


class SelectorSet:
    """A fixed list of selectors, matched like `match_selector` without trying every one of them.

    Every record is matched, and a configuration watching hundreds of stations has a selector per station:
    selectors naming an explicit NET.STA are indexed by it, so a record is tried only against those of its own
    station and those with wildcards in the network or station code. Ids that match are remembered (a live
    stream repeats a few thousand), up to MAX_REMEMBERED, then forgotten all at once; ids that do not match are
    not, so that a flood of unknown ids costs no memory.
    """

    MAX_REMEMBERED = 65_536

    def __init__(self, selectors: Iterable[str]) -> None:
        self.selectors = tuple(selectors)
        self._matched: set[str] = set()
        self._by_station: dict[str, list[re.Pattern[str]]] = {}
        self._wild: list[re.Pattern[str]] = []
        for sel in self.selectors:
            pattern = compile_selector(sel)  # raises SelectorError for a malformed selector
            net, sta = _split(sel)[:2]
            if "?" in net + sta or "*" in net + sta:
                self._wild.append(pattern)
            else:
                self._by_station.setdefault(f"{net}.{sta}", []).append(pattern)

    def matches(self, seed_id: str) -> bool:
        if seed_id in self._matched:
            return True
        if not self._match(seed_id):
            return False
        if len(self._matched) >= self.MAX_REMEMBERED:
            self._matched.clear()
        self._matched.add(seed_id)
        return True

    def _match(self, seed_id: str) -> bool:
        sid = _normalise_id(seed_id)
        if sid is None:
            return False
        net, sta, _ = sid.split(".", 2)
        candidates = self._by_station.get(f"{net}.{sta}", ())
        return any(p.match(sid) for p in candidates) or any(p.match(sid) for p in self._wild)


# -- stream selectors -----------------------------------------------------------------------------------------

_CODE = re.compile(r"[A-Z0-9]{1,5}")
_STREAM_LOC = re.compile(r"[A-Z0-9?*\-]{0,2}")
_STREAM_CHA = re.compile(r"[A-Z0-9?*]{1,3}")


@dataclass(frozen=True)
class StreamSelector:
    """One stream selector "NET.STA.LOC.CHA": explicit network and station, ? and * in LOC and CHA."""

    net: str
    sta: str
    loc: str
    cha: str

    @classmethod
    def parse(cls, text: str) -> StreamSelector:
        """Parse and normalise one stream selector; `SelectorError` says what is wrong with it."""
        parts = text.strip().upper().split(".")
        if len(parts) != 4:
            raise SelectorError(f"{text!r} must be NET.STA.LOC.CHA (e.g. 'BW.RJOB..EH?')")
        net, sta, loc, cha = parts
        if not (_CODE.fullmatch(net) and len(net) <= 2 and _CODE.fullmatch(sta)):
            raise SelectorError(f"{text!r}: network and station must be explicit codes without wildcards (got "
                                f"network {net!r}, station {sta!r}); wildcards disable resume")
        if not _STREAM_LOC.fullmatch(loc) or not _STREAM_CHA.fullmatch(cha):
            raise SelectorError(f"{text!r}: location must be 0-2 and channel 1-3 characters of A-Z, 0-9, ? or * "
                                f"(got location {loc!r}, channel {cha!r})")
        return cls(net, sta, loc, cha)

    @property
    def text(self) -> str:
        """The normalised selector, "NET.STA.LOC.CHA" in upper case."""
        return f"{self.net}.{self.sta}.{self.loc}.{self.cha}"

    @property
    def station_key(self) -> str:
        return f"{self.net}.{self.sta}"

    def seedlink_select(self) -> str:
        """The SeedLink SELECT pattern `[LL]CCC` to ask the server for ('-' = blank location, '*' widened to '?')."""
        cha = self.cha.replace("*", "???")[:3].ljust(3, "?") if "*" in self.cha else self.cha.ljust(3, "?")
        if "*" in self.loc:
            return cha
        loc = self.loc.replace("-", "") or "--"
        return (loc if len(loc) == 2 else loc.ljust(2, "-")) + cha

    def matches(self, seed_id: str) -> bool:
        return match_selector(seed_id, [self.text])


def parse_streams(texts: Iterable[str]) -> list[StreamSelector]:
    """Parse a list of stream selectors: each one valid, none twice (after normalising); `SelectorError` if not."""
    selectors = [StreamSelector.parse(t) for t in texts]
    seen = [s.text for s in selectors]
    dupes = sorted({t for t in seen if seen.count(t) > 1})
    if dupes:
        raise SelectorError(f"{dupes} appear more than once")
    return selectors


# -- SeedLink protocol patterns -------------------------------------------------------------------------------

_STATION_PATTERN = re.compile(r"[A-Z0-9?*]{1,5}")
_NETWORK_PATTERN = re.compile(r"[A-Z0-9?*]{1,2}")
_SELECT_PATTERN = re.compile(r"(!?)([A-Z0-9?\-]{2})?([A-Z0-9?]{3})(\.[A-Z?])?")


@functools.lru_cache(maxsize=4096)
def _wildcard_rx(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def seedlink_wildcard(pattern: str, value: str) -> bool:
    """SeedLink wildcard match of a whole code: '?' any one character, '*' any run."""
    return _wildcard_rx(pattern).fullmatch(value) is not None


def is_station_pattern(text: str) -> bool:
    """True for a STATION command's station pattern (1-5 of A-Z, 0-9, ?, *; case-insensitive)."""
    return _STATION_PATTERN.fullmatch(text.upper()) is not None


def is_network_pattern(text: str) -> bool:
    """True for a STATION command's network pattern (1-2 of A-Z, 0-9, ?, *; case-insensitive)."""
    return _NETWORK_PATTERN.fullmatch(text.upper()) is not None


@dataclass(frozen=True)
class SelectPattern:
    """One SELECT pattern `[!][LL]CCC[.T]`: '?' one character, '-' a blank location character."""

    negate: bool
    loc: str | None  # None: any location
    cha: str
    dtype: str | None

    @classmethod
    def parse(cls, text: str) -> SelectPattern | None:
        """The pattern, or None when `text` is not one (case-insensitive)."""
        m = _SELECT_PATTERN.fullmatch(text.upper())
        if not m:
            return None
        loc = m.group(2).replace("-", " ") if m.group(2) else None
        return cls(bool(m.group(1)), loc, m.group(3), m.group(4)[1:] if m.group(4) else None)

    def matches(self, loc: str, cha: str) -> bool:
        """True when a data record with location `loc` and channel `cha` matches (ignoring `negate`)."""
        if self.dtype not in (None, "D", "?"):
            return False
        if self.loc is not None and not seedlink_wildcard(self.loc, loc.ljust(2)):
            return False
        return seedlink_wildcard(self.cha, cha)


def select_matches(patterns: Sequence[SelectPattern], loc: str, cha: str) -> bool:
    """Selected when the record matches any positive pattern (or there is none) and no negative one."""
    positive = [p for p in patterns if not p.negate]
    if positive and not any(p.matches(loc, cha) for p in positive):
        return False
    return not any(p.matches(loc, cha) for p in patterns if p.negate)
