"""benchmarks/ensemble.py: the combination rules, the window checks, the option parsing, and an ensemble scored by
the continuous report beside its members (tiny data, no checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from quakemon.training import continuous as cont

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ensemble  # noqa: E402

T0 = UTCDateTime("2010-09-01T00:00:00").timestamp


def test_rules_mean_geometric_mean_and_min() -> None:
    a, b = np.array([0.9, 0.1, 1.0, 0.0]), np.array([0.4, 0.9, 0.25, 0.8])
    np.testing.assert_allclose(ensemble.combine([a, b], "mean"), [0.65, 0.5, 0.625, 0.4])
    np.testing.assert_allclose(ensemble.combine([a, b], "geomean"), [0.6, 0.3, 0.5, 0.0])
    np.testing.assert_allclose(ensemble.combine([a, b], "min"), [0.4, 0.1, 0.25, 0.0])
    c = np.array([0.8, 0.8, 0.8, 0.8])
    np.testing.assert_allclose(ensemble.combine([a, b, c], "geomean"), np.cbrt(a * b * c))
    for x in (a, b, c):  # members that agree give their own probabilities under every rule
        for rule in ensemble.RULES:
            np.testing.assert_allclose(ensemble.combine([x, x], rule), x)
    lo, mid, hi = (ensemble.combine([a, b, c], r) for r in ("min", "geomean", "mean"))
    assert np.all(lo <= mid) and np.all(mid <= hi + 1e-12)


def test_bad_input_says_what_is_wrong() -> None:
    a = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="unknown combination rule 'max'"):
        ensemble.combine([a, a], "max")
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.combine([], "mean")
    with pytest.raises(ValueError, match="differ in shape"):
        ensemble.combine([a, np.array([0.5])], "mean")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ensemble.combine([a, np.array([0.5, 1.5])], "min")


def _series(p: list[float], offset: float = 0.0) -> cont.Series:
    start = T0 + offset + np.arange(float(len(p)))
    return cont.Series(start, start + 20.0, np.asarray(p, dtype=np.float64))


def test_members_must_cover_the_same_windows_and_stations() -> None:
    a, b = _series([0.1, 0.9, 0.9]), _series([0.3, 0.5, 0.7])
    s = ensemble.combine_series([a, b], "mean")
    np.testing.assert_array_equal(s.start, a.start)
    np.testing.assert_allclose(s.p, [0.2, 0.7, 0.8])
    with pytest.raises(ValueError, match="other windows than member 0"):
        ensemble.combine_series([a, _series([0.3, 0.5, 0.7], offset=1.0)], "mean")
    with pytest.raises(ValueError, match="other windows than member 0"):
        ensemble.combine_series([a, _series([0.3, 0.5])], "mean")
    with pytest.raises(ValueError, match="has stations"):
        ensemble.combine_stations([{"XX.A.00": a}, {"XX.B.00": b}], "min")
    assert set(ensemble.combine_stations([{"XX.A.00": a}, {"XX.A.00": b}], "min")) == {"XX.A.00"}


def test_member_and_ensemble_options() -> None:
    members = ensemble.parse_members(["old=a.safetensors", "ms4=/x/b.safetensors"])
    assert members == {"old": "a.safetensors", "ms4": "/x/b.safetensors"}
    assert ensemble.parse_ensembles(["old+ms4"], members) == [["old", "ms4"]]
    for bad in (["old"], ["a+b=c"], ["old=a", "old=b"]):
        with pytest.raises(SystemExit, match="--member"):
            ensemble.parse_members(bad)
    for bad in ("old", "old+old", "old+ms3"):
        with pytest.raises(SystemExit, match="two or more distinct --member names"):
            ensemble.parse_ensembles([bad], members)


def test_an_ensemble_is_scored_like_one_model_beside_the_sta_lta() -> None:
    # two members that each fire once on the noise, at different times, and both on the event record's P
    rng = np.random.default_rng(0)
    stats = {"network": "XX", "station": "AAA", "location": "", "channel": "HHZ", "sampling_rate": 100.0,
             "starttime": UTCDateTime(T0)}
    noise = Stream([Trace(rng.normal(0, 100, 9000).astype(np.float32), dict(stats))])
    record = cont.EventRecord("evt", Stream([Trace(rng.normal(0, 100, 9000).astype(np.float32), dict(stats))]),
                              [T0 + 40.0], "synthetic:regional")
    quiet = [0.05] * 71
    a, b = list(quiet), list(quiet)
    a[10:15] = [0.95] * 5
    b[40:45] = [0.95] * 5
    ev = list(quiet)
    ev[25:35] = [0.9] * 10
    members = {"a": ({"XX.AAA.": _series(a)}, _series(ev)), "b": ({"XX.AAA.": _series(b)}, _series(ev))}
    rows = {}
    for name, rule in (("a", None), ("b", None), ("a+b mean", "mean"), ("a+b min", "min")):
        if rule is None:
            noise_series, ev_series = members[name]
        else:
            noise_series = ensemble.combine_stations([m[0] for m in members.values()], rule)
            ev_series = ensemble.combine_series([m[1] for m in members.values()], rule)
        rep = cont.score_continuous({"name": name}, 20.0, {"X": noise}, {"X": noise_series}, [record], [ev_series])
        rows[name] = ensemble.row(name, rep, "0.7")
    assert [rows[n]["X"]["false"] for n in ("a", "b", "a+b mean", "a+b min")] == [1, 1, 0, 0]
    # their false alarms lie 30 s apart, more than a window: they do not coincide, so "min" removes both
    noise_only = {n: {"X": m[0]} for n, m in members.items()}
    assert ensemble.coincidence(noise_only, ["a", "b"], 0.7, 20.0) == {
        "X": {"a~b": {"a": 1, "near": 0}, "b~a": {"b": 1, "near": 0}}}
    assert ensemble.coincidence(noise_only, ["a", "b"], 0.7, 30.0)["X"]["a~b"] == {"a": 1, "near": 1}
    assert all(rows[n]["regional"] == {"events": 1, "detected": 1, "late": 0, "false": 0} for n in rows)
    sta = ensemble.row("STA/LTA", rep, "3.5", "sta_lta")
    assert sta["X"]["false"] == 0 and sta["regional"]["events"] == 1
    lines = ensemble.format_rows([rows["a+b min"], sta], ["X"])
    assert lines[2].startswith("| a+b min, 0.7 | 0 (0.0-") and lines[2].endswith("| 1/1 | 0/0 |")
    with pytest.raises(ValueError, match="1 event series for 2 event records"):
        cont.score_continuous({}, 20.0, {}, {}, [record, record], [ev_series])
