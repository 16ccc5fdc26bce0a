"""The stream selector grammar (quakemon.ingest.selectors): selectors, stream selectors, SeedLink patterns."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quakemon.base.errors import ConfigError
from quakemon.ingest.selectors import (
    SelectorError,
    SelectorSet,
    SelectPattern,
    StreamSelector,
    check_selectors,
    is_network_pattern,
    is_station_pattern,
    match_selector,
    parse_streams,
    seedlink_wildcard,
    select_matches,
)

CODE_CHARS = "ABZ09"  # few characters, so that random selectors and ids often match
WILD_CHARS = CODE_CHARS + "?*"


@pytest.mark.parametrize(
    ("seed_id", "selectors", "expected"),
    [
        ("BW.RJOB..EHZ", ["BW.RJOB..EH?"], True),
        ("BW.RJOB..EHZ", ["BW.RJOB.--.EH?"], True),
        ("BW.RJOB.--.EHZ", ["BW.RJOB..EH?"], True),
        ("BW.RJOB.00.EHZ", ["BW.RJOB..EH?"], False),
        ("BW.RJOB.00.EHZ", ["BW.RJOB.*.EH?"], True),
        ("BW.RJOB..HHZ", ["BW.RJOB..EH?"], False),
        ("BW.RJOB..EHZ", ["GR.FUR..HH?", "BW"], True),
        ("BW.RJOB..EHZ", ["BW.R*"], True),
        ("BW.RJOB..EHZ", ["BW.RJOB.?.EHZ"], False),
        ("BW.RJOB..EHZ", ["*.*..*Z"], True),
        ("BW.RJOB..EHZ", ["B*B..EHZ"], False),  # '*' never crosses the '.' between codes
        ("bw.rjob..ehz", ["BW.RJOB..EHZ"], True),
        ("BW.RJOB..EHZ", [" bw.rjob..ehz "], True),
        ("BW.RJOB..EHZ", [], False),
        ("BWRJOB", ["*"], False),
    ],
)
def test_match_selector(seed_id: str, selectors: list[str], expected: bool) -> None:
    assert match_selector(seed_id, selectors) is expected
    assert SelectorSet(selectors).matches(seed_id) is expected


def test_selector_set_agrees_with_match_selector_over_many_stations() -> None:
    selectors = [f"XB.S{i:04d}..HH?" for i in range(500)] + ["GR.*..BH?", "*.FUR.00.*", "BW.RJOB.--.EHZ"]
    index = SelectorSet(selectors)
    ids = [f"XB.S{i:04d}..HH{c}" for i in range(0, 600, 7) for c in "ZNE"] + [
        "XB.S0001.00.HHZ", "XB.S0001..BHZ", "GR.WET..BHZ", "GR.WET..HHZ", "XX.FUR.00.LHZ", "XX.FUR..LHZ",
        "BW.RJOB..EHZ", "BW.RJOB..EHN", "bw.rjob..ehz", "XB.S0001.HHZ"]
    for seed_id in ids:
        assert index.matches(seed_id) is match_selector(seed_id, selectors), seed_id


@pytest.mark.parametrize("bad", ["A.B.C.D.E", "", ".RJOB", "  "])
def test_bad_selector_is_a_config_error_naming_itself(bad: str) -> None:
    for call in (lambda: match_selector("BW.RJOB..EHZ", [bad]), lambda: SelectorSet([bad]),
                 lambda: check_selectors(["BW", bad])):
        with pytest.raises(SelectorError, match="NET.STA.LOC.CHA") as exc:
            call()
        assert isinstance(exc.value, ConfigError) and isinstance(exc.value, ValueError)
        assert exc.value.exit_code == 2 and repr(bad) in str(exc.value)


def _reference(seed_id: str, selector: str) -> bool:
    """The grammar spelt out: per part, fnmatch with ? and *; missing parts are *; "--" is the blank location."""
    want = selector.strip().upper().split(".")
    want += ["*"] * (4 - len(want))
    have = seed_id.upper().split(".")
    if len(have) != 4:
        return False
    want[2], have[2] = ("" if want[2] == "--" else want[2]), ("" if have[2] == "--" else have[2])
    return all(fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=True))


def _codes(chars: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(chars + chars.lower(), min_size=lo, max_size=hi)


seed_ids = st.tuples(_codes(CODE_CHARS, 1, 2), _codes(CODE_CHARS, 1, 3), _codes(CODE_CHARS, 0, 2) | st.just("--"),
                     _codes(CODE_CHARS, 3, 3)).map(".".join)
selectors = st.tuples(_codes(WILD_CHARS, 1, 2), _codes(WILD_CHARS, 0, 3), _codes(WILD_CHARS, 0, 2) | st.just("--"),
                      _codes(WILD_CHARS, 0, 3), st.integers(1, 4)).map(lambda t: ".".join(t[:t[4]]))


@settings(max_examples=300, deadline=None)
@given(seed_ids, st.lists(selectors, max_size=6))
def test_matching_follows_the_documented_grammar(seed_id: str, sels: list[str]) -> None:
    expected = [_reference(seed_id, s) for s in sels]
    assert [match_selector(seed_id, [s]) for s in sels] == expected
    assert SelectorSet(sels).matches(seed_id) is any(expected)
    assert match_selector(seed_id, sels) is any(expected)


# -- stream selectors ----------------------------------------------------------------------------------------


def test_stream_selectors() -> None:
    s = StreamSelector.parse("BW.RJOB..EH?")
    assert (s.station_key, s.seedlink_select(), s.text) == ("BW.RJOB", "--EH?", "BW.RJOB..EH?")
    assert s.matches("BW.RJOB..EHZ") and not s.matches("BW.RJOB.00.EHZ") and not s.matches("BW.RJOB..HHZ")
    assert StreamSelector.parse("GR.FUR.*.HH*").seedlink_select() == "HH?"
    assert StreamSelector.parse("GR.FUR.00.*").seedlink_select() == "00???"
    assert StreamSelector.parse(" bw.rjob..eh? ").text == "BW.RJOB..EH?"
    for bad, words in (("BW.*..EHZ", "explicit"), ("B?.RJOB..EHZ", "explicit"), ("BWX.RJOB..EHZ", "explicit"),
                       ("BW.RJOB.EHZ", "NET.STA.LOC.CHA"), ("BW.RJOB..EHZZ", "channel 1-3"),
                       ("BW.RJOB.000.EHZ", "location must be 0-2")):
        with pytest.raises(SelectorError, match=words) as exc:
            StreamSelector.parse(bad)
        assert repr(bad) in str(exc.value)


def test_parse_streams_refuses_duplicates_after_normalising() -> None:
    assert [s.text for s in parse_streams(["BW.RJOB..EH?", "gr.fur..hh?"])] == ["BW.RJOB..EH?", "GR.FUR..HH?"]
    with pytest.raises(SelectorError, match=r"\['BW.RJOB..EHZ'\] appear more than once"):
        parse_streams(["BW.RJOB..EHZ", "bw.rjob..ehz"])


stream_texts = st.tuples(
    _codes("ABZ09", 1, 2), _codes("ABZ09", 1, 5), st.text("AB0?*-", max_size=2), st.text("EHZ1?*", min_size=1,
                                                                                         max_size=3))


def _instance(data: st.DataObject, pattern: str, size: int | None) -> str:
    """A code that the pattern matches: each ? one character, each * a run of 0-2 (`size`: pad to it)."""
    out = ""
    for ch in pattern:
        if ch == "?":
            out += data.draw(st.sampled_from("AB0Z"))
        elif ch == "*":
            out += data.draw(st.text("AB0Z", max_size=2))
        else:
            out += ch
    return out if size is None else (out + data.draw(st.text("AB0Z", min_size=size, max_size=size)))[:size]


@settings(max_examples=300, deadline=None)
@given(stream_texts, st.data())
def test_the_seedlink_request_covers_what_a_stream_selector_matches(parts: tuple[str, ...], data) -> None:
    """What the source asks the server for (STATION net sta, SELECT pattern) is never narrower than what it keeps."""
    net, sta, loc, cha = parts
    s = StreamSelector.parse(".".join(parts))
    assert StreamSelector.parse(s.text) == s and s.text == ".".join(parts).upper()
    assert is_station_pattern(s.sta) and is_network_pattern(s.net)
    pattern = SelectPattern.parse(s.seedlink_select())
    assert pattern is not None and not pattern.negate
    rec_loc = _instance(data, s.loc.replace("-", ""), None)[:2]
    rec_cha = _instance(data, s.cha, 3)
    seed_id = f"{s.net}.{s.sta}.{rec_loc}.{rec_cha}"
    if s.matches(seed_id):
        assert select_matches([pattern], rec_loc, rec_cha), (s.text, pattern, seed_id)
        assert seedlink_wildcard(s.sta, sta.upper()) and seedlink_wildcard(s.net, net.upper())


# -- SeedLink protocol patterns ------------------------------------------------------------------------------


def test_select_patterns() -> None:
    blank = ("", "EHZ")  # BW.RJOB..EHZ: a blank location
    assert SelectPattern.parse("EH?").matches(*blank)
    assert SelectPattern.parse("--EH?").matches(*blank)
    assert not SelectPattern.parse("00EH?").matches(*blank)
    assert SelectPattern.parse("0?EH?").matches("00", "EHZ") and not SelectPattern.parse("0?EH?").matches(*blank)
    assert not SelectPattern.parse("EH?.E").matches(*blank)
    assert SelectPattern.parse("EH?.D").matches(*blank) and SelectPattern.parse("eh?.d").matches(*blank)
    for bad in ("EH", "EH*", "AB.CDE", "toolong", ""):
        assert SelectPattern.parse(bad) is None, bad
    assert select_matches([], *blank)
    assert not select_matches([SelectPattern.parse("!EHZ")], *blank)
    assert select_matches([SelectPattern.parse("EH?"), SelectPattern.parse("!XXX")], *blank)
    assert not select_matches([SelectPattern.parse("HH?"), SelectPattern.parse("!XXX")], *blank)


def test_station_patterns_and_wildcards() -> None:
    assert is_station_pattern("RJOB") and is_station_pattern("r*") and is_station_pattern("?????")
    assert not is_station_pattern("RJOBXX") and not is_station_pattern("") and not is_station_pattern("RJ.B")
    assert is_network_pattern("BW") and is_network_pattern("*") and not is_network_pattern("BWX")
    assert seedlink_wildcard("R*", "RJOB") and seedlink_wildcard("R?OB", "RJOB") and seedlink_wildcard("*", "")
    assert not seedlink_wildcard("R?", "RJOB") and not seedlink_wildcard("RJOB", "RJOBX")


def test_selector_set_remembers_matching_ids_within_a_bound_and_unknown_ids_not_at_all() -> None:
    sets = SelectorSet(["XB.S0001..HH?", "XB.S0002..*", "X?.S0*..EH?"])
    sets.MAX_REMEMBERED = 4
    ids = [f"XB.S{i:04d}..{cha}" for i in range(6) for cha in ("HHZ", "EHN", "BHE")] + ["bad id", "XB.S0001..HHZ"]
    for _ in range(3):  # asked again, from memory or after it was forgotten: the same answers
        for seed_id in ids:
            assert sets.matches(seed_id) is match_selector(seed_id, list(sets.selectors)), seed_id
            assert len(sets._matched) <= 4
    assert "XB.S0001..HHZ" in sets._matched  # the last id asked matched: remembered
    assert not any(sets.matches(f"ZZ.Q{i:04d}..HHZ") for i in range(100))
    assert all(s.startswith("X") for s in sets._matched)  # unknown ids leave nothing behind
