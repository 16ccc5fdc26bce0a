"""Window scheduling on the absolute grid: chunking invariance, completeness, rate/clock policies, resampling."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from obspy import Trace, UTCDateTime

from quakemon.models.contract import InputContract
from quakemon.pipeline.windowing import StationWindower, Window, window_grid_start

T0 = UTCDateTime(2021, 3, 4, 5, 6, 7, 230000)  # on the 100 Hz sample grid, off the 1 s stride grid
CONTRACT = InputContract()  # 100 Hz, 2000 samples, ZNE
NS = 1_000_000_000


def _truth(n: int, seed: int = 0, rate: float = 100.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(-2**20, 2**20, n).astype(np.float64) for c in "ZNE"}


def _trace(comp: str, start: int, values: np.ndarray, rate: float = 100.0, t0: UTCDateTime = T0,
           station: str = "TEST", channel_prefix: str = "HH") -> Trace:
    header = dict(network="XX", station=station, location="", channel=channel_prefix + comp, sampling_rate=rate,
                  starttime=UTCDateTime(ns=t0.ns + round(start * NS / rate)))
    return Trace(np.asarray(values), header=header)


def _records(truth: dict[str, np.ndarray], sizes: dict[str, list[int]], gaps: dict[str, tuple[int, int]] | None = None,
             rate: float = 100.0, t0: UTCDateTime = T0) -> dict[str, list[Trace]]:
    """Per channel, records cut at the given sizes; samples inside a channel's gap are left out."""
    out: dict[str, list[Trace]] = {}
    for comp, data in truth.items():
        recs, pos = [], 0
        gap = (gaps or {}).get(comp, (0, 0))
        for size in sizes[comp]:
            lo, hi = pos, min(pos + size, data.size)
            if lo >= data.size:
                break
            for a, b in ((lo, min(hi, gap[0])), (max(lo, gap[1]), hi)) if gap[1] > gap[0] else ((lo, hi),):
                if b > a:
                    recs.append(_trace(comp, a, data[a:b], rate, t0))
            pos = hi
        out[comp] = recs
    return out


def _fixed_sizes(n: int, size: int) -> dict[str, list[int]]:
    return {c: [size] * (n // size + 1) for c in "ZNE"}


def _sorted_feed(recs: dict[str, list[Trace]]) -> list[Trace]:
    return sorted((t for rs in recs.values() for t in rs), key=lambda t: (t.stats.starttime.ns, t.stats.channel))


def _run(traces: list[Trace], windower: StationWindower | None = None, **kw) -> tuple[list[Window], StationWindower]:
    w = windower or StationWindower(CONTRACT, 1.0, **kw)
    out = w.add_traces(traces)
    out += w.flush()
    return out, w


def _assert_same(a: list[Window], b: list[Window]) -> None:
    assert [w.start_ns for w in a] == [w.start_ns for w in b]
    assert all(x.same_as(y) for x, y in zip(a, b, strict=True))


def test_windows_sit_on_the_absolute_grid_and_hold_the_samples() -> None:
    n = 4000  # 40 s
    truth = _truth(n)
    wins, w = _run([_trace(c, 0, truth[c]) for c in "ZNE"])
    first = window_grid_start(T0.ns, 1.0)
    assert first == UTCDateTime(2021, 3, 4, 5, 6, 8).ns
    last_end = T0.ns + n * NS // 100
    assert [x.start_ns for x in wins] == list(range(first, last_end - 20 * NS + 1, NS))
    for win in wins:
        assert win.start_ns % NS == 0 and win.end - win.start == 20.0
        assert win.start == UTCDateTime(ns=win.start_ns) and win.end_ns == win.start_ns + 20 * NS
        assert win.data.shape == (3, 2000) and win.data.dtype == np.float64
        assert win.station == "XX.TEST." and win.instrument == "HH" and win.component_order == "ZNE"
        assert win.missing_fraction == 0.0 and win.components == ("Z", "N", "E") and win.constant == ()
        i = (win.start_ns - T0.ns) // (NS // 100)
        np.testing.assert_array_equal(win.data, np.stack([truth[c][i : i + 2000] for c in "ZNE"]))
    assert w.counters()["windows_emitted"] == len(wins)


@st.composite
def feeds(draw):
    """A random chunking of each channel, a random skew-bounded interleaving, and some local reordering."""
    n = 5000
    sizes = {c: draw(st.lists(st.integers(30, 700), min_size=n // 30 + 1, max_size=n // 30 + 1)) for c in "ZNE"}
    gap_comp = draw(st.sampled_from("ZNE-"))
    gap_lo = draw(st.integers(0, n))
    gap_len = draw(st.integers(0, 400))
    rng = random.Random(draw(st.integers(0, 2**32)))
    return n, sizes, {gap_comp: (gap_lo, gap_lo + gap_len)}, rng


@settings(max_examples=40, deadline=None)
@given(feeds())
def test_identical_windows_whatever_the_chunking_and_order(feed) -> None:
    n, sizes, gaps, rng = feed
    truth = _truth(n, seed=1)
    reference, _ = _run(_sorted_feed(_records(truth, _fixed_sizes(n, 412), gaps)))
    assert reference  # the feed must produce windows for the comparison to mean anything

    recs = _records(truth, sizes, gaps)
    for rs in recs.values():  # out-of-order arrival within a channel, by less than late_s (5 s)
        i = 0
        while i < len(rs) - 1:
            if rng.random() < 0.3 and rs[i + 1].stats.endtime - rs[i].stats.starttime <= 4.5:
                rs[i], rs[i + 1] = rs[i + 1], rs[i]
                i += 1
            i += 1
    queues = {c: list(r) for c, r in recs.items()}
    order: list[Trace] = []
    while any(queues.values()):  # interleave channels, keeping any one channel at most ~8 s ahead
        heads = {c: q[0].stats.starttime.ns for c, q in queues.items() if q}
        low = min(heads.values())
        choice = rng.choice(sorted(c for c, t in heads.items() if t <= low + 8 * NS))
        order.append(queues[choice].pop(0))
    assert len(order) > 30
    got, _ = _run(order)
    _assert_same(reference, got)


def test_complete_windows_are_emitted_without_waiting() -> None:
    n = 3000
    truth = _truth(n, seed=2)
    recs = _records(truth, _fixed_sizes(n, 100))
    w = StationWindower(CONTRACT, 1.0)
    fed_end = {c: 0 for c in "ZNE"}
    emitted: list[int] = []
    for tr in _sorted_feed(recs):
        emitted += [x.start_ns for x in w.add_trace(tr)]
        fed_end[tr.stats.channel[-1]] = (tr.stats.starttime.ns - T0.ns) // (NS // 100) + tr.stats.npts
        complete_until = T0.ns + min(fed_end.values()) * NS // 100
        ready = list(range(window_grid_start(T0.ns, 1.0), complete_until - 20 * NS + 1, NS))
        assert emitted == ready
    assert w.flush() == []


@pytest.mark.parametrize(("gap", "emitted"), [(300, True), (600, True), (601, False), (1500, False)])
def test_completeness_policy(gap: int, emitted: bool) -> None:
    """A window with > 10 % of its samples missing is skipped; smaller gaps are interpolated linearly."""
    n = 3000
    truth = _truth(n, seed=3)
    truth["Z"] = np.linspace(0.0, 2999.0, n)  # linear, so interpolation across the gap is exact
    lo = 700
    recs = _records(truth, _fixed_sizes(n, 250), {"Z": (lo, lo + gap)})
    wins, w = _run(_sorted_feed(recs))
    # the window starting at T0 + 0.77 s (grid 05:06:08) covers samples 77..2077, so the whole gap
    target = next((x for x in wins if x.start_ns == window_grid_start(T0.ns, 1.0)), None)
    if emitted:
        assert target is not None
        assert target.missing_fraction == pytest.approx(gap / 6000)
        np.testing.assert_allclose(target.data[0], truth["Z"][77:2077], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(target.data[1:], np.stack([truth[c][77:2077] for c in "NE"]))
        assert w.counters()["windows_filled"] >= 1
    else:
        assert target is None and w.counters()["windows_skipped"] >= 1
    assert all(x.missing_fraction <= 0.1 for x in wins) and all(np.isfinite(x.data).all() for x in wins)


def test_sample_rate_change_is_rejected_then_adopted() -> None:
    truth = _truth(3000, seed=4)
    w = StationWindower(CONTRACT, 1.0, rate_change_reset=5)
    w.add_traces([_trace(c, 0, truth[c][:1000]) for c in "ZNE"])
    assert w.add_trace(_trace("Z", 1000, truth["Z"][1000:1500], rate=50.0)) == []
    c = w.counters()
    assert c["rate_change_records"] == 1 and c["records"] == 3 and c.get("rate_resets", 0) == 0
    before = w.schedulers[("XX.TEST.", "HH")]
    assert not before.buffer.read(before.buffer.head, before.buffer.head + 1)[1].any()  # nothing stored
    for i in range(6):  # five agreeing records of one component are not enough: every component must agree
        w.add_trace(_trace("Z", 1000 + 500 * (i + 1), truth["Z"][:500], rate=50.0))
    assert w.counters().get("rate_resets", 0) == 0
    for c in "NE":  # the datalogger really changed: every component at 50 Hz, the station restarts
        w.add_trace(_trace(c, 1000, truth[c][:500], rate=50.0))
    assert w.counters()["rate_resets"] == 1
    assert w.schedulers[("XX.TEST.", "HH")].rate == 50


def test_a_record_with_an_implausible_rate_never_resets_the_station() -> None:
    truth = _truth(6000, seed=4)
    feed = _sorted_feed(_records(truth, _fixed_sizes(6000, 400)))
    bad = feed[len(feed) // 3]
    # one corrupt header, cut into many pieces (as a replay cuts a long record): 0.0031 Hz on one channel
    pieces = [_trace(bad.stats.channel[-1], 0, truth["Z"][:1], rate=0.0031,
                     t0=UTCDateTime(ns=bad.stats.starttime.ns + i * 322_580_645_161)) for i in range(200)]
    glitched = feed[: len(feed) // 3] + pieces + feed[len(feed) // 3 + 1 :]
    wins, w = _run(glitched, rate_change_reset=50)
    ref, _ = _run(feed[: len(feed) // 3] + feed[len(feed) // 3 + 1 :])
    c = w.counters()
    assert c.get("rate_resets", 0) == 0 and c["implausible_rate_records"] == 200 and c["stations"] == 1
    _assert_same(wins, ref)


def _minute_feed(seconds: int, t0: UTCDateTime = T0, seed: int = 5, offset: int = 0) -> list[Trace]:
    """ZNE records of 4 s each covering [offset, offset + seconds) s after t0, interleaved in time."""
    truth = _truth(100 * (offset + seconds), seed=seed)
    recs = {c: [_trace(c, i, truth[c][i : i + 400], t0=t0) for i in range(100 * offset, 100 * (offset + seconds), 400)]
            for c in "ZNE"}
    return _sorted_feed(recs)


def _shifted(traces: list[Trace], seconds: float) -> list[Trace]:
    out = []
    for tr in traces:
        tr = tr.copy()
        tr.stats.starttime += seconds
        out.append(tr)
    return out


@pytest.mark.parametrize("stagger", [0, 2])
def test_a_permanent_clock_jump_is_accepted_once_agreed_and_loses_nothing(stagger: int) -> None:
    """`stagger`: the first record of the new timeline arrives before the old timeline's last records of the
    other components (channels switch at their own record boundaries)."""
    first, later = _minute_feed(30), _minute_feed(150, seed=6)
    new = _shifted(later, 3600)
    feed = first + new if not stagger else first[:-stagger] + new[:1] + first[-stagger:] + new[1:]
    wins, w = _run(feed)
    c = w.counters()
    assert c["clock_jumps"] == 1 and c.get("clock_glitch", 0) == 0
    before = [x for x in wins if x.start_ns < T0.ns + 3600 * NS]
    after = [x for x in wins if x.start_ns >= T0.ns + 3600 * NS]
    _assert_same(before, _run(first)[0])
    _assert_same(after, _run(_shifted(later, 3600))[0])  # every held record went in after the reset


@pytest.mark.parametrize(("hole_s", "stagger"), [(0, 0), (60, 0), (60, 2)])
def test_a_short_forward_clock_excursion_is_rejected_and_the_timeline_goes_on(hole_s: int, stagger: int) -> None:
    """60 s of records stamped 1 h ahead, then correctly timed records again: from where the excursion began
    (a datalogger that re-sends) or after a hole as long as the excursion (its samples were mis-stamped);
    `stagger`: the first excursion record comes before the last old records of the other components."""
    data = _minute_feed(240)
    t_glitch = T0.ns + 60 * NS
    old = [t for t in data if t.stats.starttime.ns < t_glitch]
    glitch = _shifted([t for t in data if t_glitch <= t.stats.starttime.ns < t_glitch + 60 * NS], 3600)
    resumed = [t for t in data if t.stats.starttime.ns >= t_glitch + hole_s * NS]
    feed = old + glitch if not stagger else old[:-stagger] + glitch[:1] + old[-stagger:] + glitch[1:]
    feed += resumed
    wins, w = _run(feed)
    ref, ref_w = _run(old + resumed)  # the same records without the excursion
    c = w.counters()
    assert c["clock_glitch"] == len(glitch) and c["clock_glitches"] == 1
    assert c.get("clock_jumps", 0) == ref_w.counters().get("clock_jumps", 0) == (1 if hole_s else 0)
    _assert_same(wins, ref)
    assert all(x.start_ns < T0.ns + 3600 * NS for x in wins)


def test_a_record_far_ahead_alone_is_rejected_at_the_end_of_the_data() -> None:
    data = _minute_feed(90)
    stray = _shifted([data[30]], 7 * 86400)
    wins, w = _run(data[:31] + stray + data[31:])
    c = w.counters()
    assert c["clock_glitch"] == 1 and c.get("clock_jumps", 0) == 0
    _assert_same(wins, _run(data)[0])
    wins, w = _run(data + stray)  # the last record: still held when the data ends, then rejected
    assert w.counters()["clock_glitch"] == 1 and w.counters().get("clock_jumps", 0) == 0
    _assert_same(wins, _run(data)[0])


def test_resent_records_are_duplicates_by_content_and_a_backward_step_needs_agreement() -> None:
    data = _minute_feed(300)
    wins, w = _run(data + data[:30])  # re-sent long after their samples left the ring
    c = w.counters()
    assert c["duplicate_records"] == 30 and c.get("clock_jumps", 0) == 0 and c.get("late_records", 0) == 0
    _assert_same(wins, _run(data)[0])
    changed = [tr.copy() for tr in data[:30]]
    for tr in changed:
        tr.data = tr.data + 1.0  # the same times, other samples: not duplicates, a clock that stepped back
    wins, w = _run(data + changed[:6])  # 8 s of them, one record apart from the next: rejected at the end
    assert w.counters()["late_records"] == 6 and w.counters().get("clock_jumps", 0) == 0
    back = _minute_feed(150, seed=9)
    wins, w = _run(data + back)  # 150 s of new data at the old times: a permanent step back, accepted
    assert w.counters()["clock_jumps"] == 1
    first = _run(data)[0]
    _assert_same(wins[: len(first)], first)
    _assert_same(wins[len(first) :], _run(back)[0])


def test_nan_samples_are_missing_and_constant_channels_flagged() -> None:
    truth = _truth(2500, seed=6)
    truth["N"][500:550] = np.nan  # 50 of 6000 samples in the first windows
    truth["E"][:] = 42.0
    wins, w = _run([_trace(c, 0, truth[c]) for c in "ZNE"])
    assert wins and all(np.isfinite(x.data).all() for x in wins)
    assert all(x.constant == ("E",) for x in wins)
    assert wins[0].missing_fraction == pytest.approx(50 / 6000)
    assert w.counters()["nan_samples"] == 50


def test_a_long_trace_is_not_evicted_unseen() -> None:
    """An hour-long trace (far longer than the ring) still gives every window of a one-component model."""
    contract = InputContract(component_order="Z")
    truth = _truth(360_000, seed=10)
    w = StationWindower(contract, 1.0)
    wins = w.add_trace(_trace("Z", 0, truth["Z"])) + w.flush()
    assert w.schedulers[("XX.TEST.", "HH")].buffer.capacity < 10_000
    assert len(wins) == 3600 - 20 and w.counters().get("late_samples", 0) == 0
    np.testing.assert_array_equal(wins[-1].data[0], truth["Z"][-2023:-23])


def test_masked_traces_count_as_missing() -> None:
    truth = _truth(2500, seed=9)
    masked = np.ma.masked_array(truth["Z"], mask=np.zeros(2500, bool))
    masked[100:130] = np.ma.masked
    z = _trace("Z", 0, truth["Z"])
    z.data = masked
    wins, _ = _run([z] + [_trace(c, 0, truth[c]) for c in "NE"])
    assert wins[0].missing_fraction == pytest.approx(30 / 6000)


def test_dead_component_windows_are_skipped_and_memory_is_bounded() -> None:
    truth = _truth(12_000, seed=7)
    wins, w = _run([_trace(c, i, truth[c][i : i + 400]) for i in range(0, 12_000, 400) for c in "ZN"])
    assert wins == []
    sched = w.schedulers[("XX.TEST.", "HH")]
    assert w.counters()["windows_skipped"] > 50
    assert sched.buffer.capacity == 2000 + 500 + 3000 + 100  # window + late + skew + stride


@pytest.mark.parametrize("rate", [50.0, 200.0, 40.0])
def test_resampling_to_the_contract_rate(rate: float) -> None:
    """50, 200 and 40 Hz streams come out at 100 Hz, matching the analytic signal, edges included."""
    t0 = UTCDateTime(2021, 3, 4, 5, 6, 7, 200000)  # on the 40, 50, 100 and 200 Hz grids
    n = int(45 * rate)
    t = np.arange(n) / rate + 0.2
    signal = 1000 * np.sin(2 * np.pi * 1.3 * t) + 300 * np.cos(2 * np.pi * 4.1 * t)
    truth = {"Z": signal, "N": 0.5 * signal, "E": -signal}
    per_record = int(rate * 3.7)
    recs = _records(truth, _fixed_sizes(n, per_record), rate=rate, t0=t0)
    wins, w = _run(_sorted_feed(recs))
    margin_s = w.schedulers[("XX.TEST.", "HH")].margin / rate
    assert 0 < margin_s <= 0.3
    data_end = t0.ns + 45 * NS
    expected = list(range(window_grid_start(t0.ns + round(margin_s * NS), 1.0),
                          data_end - round(margin_s * NS) - 20 * NS + 1, NS))
    assert [x.start_ns for x in wins] == expected
    for win in wins:
        assert win.sampling_rate == 100.0 and win.source_rate == rate and win.data.shape == (3, 2000)
        tt = (win.start_ns - (t0.ns - t0.ns % NS)) / NS + np.arange(2000) / 100.0
        expect = 1000 * np.sin(2 * np.pi * 1.3 * tt) + 300 * np.cos(2 * np.pi * 4.1 * tt)
        np.testing.assert_allclose(win.data[0], expect, atol=5.0)  # 0.4 % of full scale, edges included
        np.testing.assert_allclose(win.data[2], -expect, atol=5.0)
    # chunking invariance holds after resampling too
    other = _records(truth, {c: [int(rate * 0.9) + 7 * i % 13 for i in range(400)] for c in "ZNE"}, rate=rate, t0=t0)
    _assert_same(wins, _run(_sorted_feed(other))[0])


def test_unsupported_rate_allocates_nothing() -> None:
    w = StationWindower(CONTRACT, 1.0)
    assert w.add_trace(_trace("Z", 0, np.ones(100), rate=30.7)) == []  # 1 s stride is not whole samples
    assert w.counters()["unsupported_rate_records"] == 1 and w.schedulers == {}


def test_unknown_station_ids_allocate_nothing() -> None:
    """10k unconfigured stream IDs allocate no buffer and almost no memory."""
    w = StationWindower(CONTRACT, 1.0, selectors=["XX.TEST..HH?"])
    w.add_trace(_trace("Z", 0, np.ones(100)))
    rng = random.Random(13)
    flood = [
        _trace("Z", 0, np.ones(10), station=f"S{rng.randrange(10**4):04d}", channel_prefix=rng.choice(["HH", "EH"]))
        for _ in range(10_000)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for tr in flood:
        w.add_trace(tr)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert list(w.schedulers) == [("XX.TEST.", "HH")]
    assert w.counters()["unselected_records"] == 10_000
    assert grown < 200_000  # bytes; one station buffer alone is ~150 kB
    w.add_trace(_trace("X", 0, np.ones(10)))  # unknown component code of a selected instrument
    assert w.counters()["unknown_component_records"] == 1


def test_station_limit_without_selectors() -> None:
    w = StationWindower(CONTRACT, 1.0, max_stations=2)
    for sta in ("A", "B", "C"):
        w.add_trace(_trace("Z", 0, np.ones(10), station=sta))
    assert len(w.schedulers) == 2 and w.counters()["station_limit_records"] == 1


def test_windows_of_several_stations_are_independent() -> None:
    truth = _truth(2500, seed=8)
    feed = [_trace(c, 0, truth[c], station=s) for s in ("AAA", "BBB") for c in "ZNE"]
    wins, w = _run(feed)
    by = {s: [x for x in wins if x.station == f"XX.{s}."] for s in ("AAA", "BBB")}
    assert len(by["AAA"]) == len(by["BBB"]) == 5
    assert all(np.array_equal(a.data, b.data) for a, b in zip(by["AAA"], by["BBB"], strict=True))
    assert w.stations == [("XX.AAA.", "HH"), ("XX.BBB.", "HH")]


# --- vertical-only stations (contract.component_sets) ------------------------------------------------------------
CONTRACT_Z = InputContract(component_sets=("Z",))  # a model trained with component dropout


def test_vertical_only_station_is_zero_filled_once_decided_then_without_waiting() -> None:
    n = 8000  # 80 s of Z only
    z = _truth(n, seed=20)["Z"]
    w = StationWindower(CONTRACT_Z, 1.0)
    first = window_grid_start(T0.ns, 1.0)
    emitted: list[Window] = []
    for i in range(0, n, 100):
        got = w.add_trace(_trace("Z", i, z[i : i + 100]))
        fed_end = T0.ns + (i + 100) * NS // 100
        if fed_end < first + (20 + 30) * NS:  # undecided until Z holds max_skew_s (30 s) past the first window
            assert got == []
        else:  # then every window goes out as soon as its Z samples are there
            emitted += got
            assert emitted[-1].end_ns > fed_end - NS
    assert w.flush() == []
    assert [x.start_ns for x in emitted] == list(range(first, T0.ns + n * NS // 100 - 20 * NS + 1, NS))
    for win in emitted:
        i = (win.start_ns - T0.ns) // (NS // 100)
        np.testing.assert_array_equal(win.data[0], z[i : i + 2000])
        assert not win.data[1:].any() and win.components == ("Z",) and win.missing_fraction == 0.0
        assert win.constant == ()
    c = w.counters()
    assert c["reduced_stations"] == 1 and c["windows_reduced"] == len(emitted) and c.get("windows_skipped", 0) == 0


def test_a_model_without_z_only_support_still_skips_vertical_only_stations() -> None:
    z = _truth(8000, seed=21)["Z"]
    wins, w = _run([_trace("Z", i, z[i : i + 100]) for i in range(0, 8000, 100)])
    assert wins == [] and w.counters()["windows_skipped"] > 0 and "reduced_stations" not in w.counters()
    # a Z-capable model does not accept N-only or NE stations either
    truth = _truth(8000, seed=22)
    wins, w = _run([_trace(c, i, truth[c][i : i + 100]) for i in range(0, 8000, 100) for c in "NE"],
                   StationWindower(CONTRACT_Z, 1.0))
    assert wins == [] and "reduced_stations" not in w.counters()


@settings(max_examples=25, deadline=None)
@given(feeds(), st.booleans())
def test_identical_windows_whatever_the_chunking_with_a_z_capable_model(feed, z_only: bool) -> None:
    """Chunking invariance holds for vertical-only stations and for three-component stations alike."""
    n, sizes, gaps, rng = feed
    truth = _truth(n, seed=23)
    if z_only:
        truth = {"Z": truth["Z"]}
    reference, _ = _run(_sorted_feed(_records(truth, _fixed_sizes(n, 412), gaps)), StationWindower(CONTRACT_Z, 1.0))
    assert reference
    recs = _records(truth, sizes, gaps)
    queues = {c: list(r) for c, r in recs.items()}
    order: list[Trace] = []
    while any(queues.values()):
        heads = {c: q[0].stats.starttime.ns for c, q in queues.items() if q}
        low = min(heads.values())
        choice = rng.choice(sorted(c for c, t in heads.items() if t <= low + 8 * NS))
        order.append(queues[choice].pop(0))
    got, _ = _run(order, StationWindower(CONTRACT_Z, 1.0))
    _assert_same(reference, got)
    assert all(x.components == (("Z",) if z_only else ("Z", "N", "E")) for x in got if x.missing_fraction == 0)
    if not z_only:  # a three-component station is served exactly as by a model without component_sets
        _assert_same(reference, _run(_sorted_feed(_records(truth, sizes, gaps)))[0])


def test_horizontals_lagging_less_than_max_skew_are_waited_for() -> None:
    """N and E arriving 25 s behind Z (< max_skew_s) never make a three-component station vertical-only."""
    n = 6000
    truth = _truth(n, seed=24)
    feed = sorted((_trace(c, i, truth[c][i : i + 100]) for c in "ZNE" for i in range(0, n, 100)),
                  key=lambda t: t.stats.starttime.ns - (25 * NS if t.stats.channel[-1] == "Z" else 0))
    wins, w = _run(feed, StationWindower(CONTRACT_Z, 1.0))
    _assert_same(_run(_sorted_feed(_records(truth, _fixed_sizes(n, 100))))[0], wins)
    assert len(wins) == n // 100 - 20
    assert "reduced_stations" not in w.counters() and all(x.components == ("Z", "N", "E") for x in wins)


def test_dead_horizontals_fall_back_to_vertical_only_and_revived_ones_are_used() -> None:
    n = 12_000
    truth = _truth(n, seed=25)
    # horizontals die after 40 s: a Z-capable model still gets (zero-filled) windows, one without skips them
    feed = [_trace(c, i, truth[c][i : i + 100]) for i in range(0, n, 100) for c in "ZNE" if c == "Z" or i < 4000]
    wins, w = _run(feed, StationWindower(CONTRACT_Z, 1.0))
    late = [x for x in wins if x.start_ns >= T0.ns + 41 * NS]
    assert late and all(x.components == ("Z",) and not x.data[1:].any() for x in late)
    death = T0.ns + 40 * NS  # windows straddling it lack > 10 % of their samples and are skipped, the rest go out
    grid = range(window_grid_start(T0.ns, 1.0), T0.ns + n * NS // 100 - 20 * NS + 1, NS)
    assert [x.start_ns for x in wins] == [t for t in grid if t + 20 * NS - death <= 3 * NS or t >= death]
    assert all(x.start_ns < death for x in _run(feed)[0])
    # a vertical-only station whose horizontals come online later: full windows once they cover a window
    feed = [_trace(c, i, truth[c][i : i + 100]) for i in range(0, n, 100) for c in "ZNE" if c == "Z" or i >= 6000]
    wins, w = _run(feed, StationWindower(CONTRACT_Z, 1.0))
    assert w.counters()["reduced_stations"] == 1
    after = [x for x in wins if x.start_ns >= T0.ns + 60 * NS]
    assert len(after) == 40 and all(x.components == ("Z", "N", "E") and x.missing_fraction == 0 for x in after)
    assert all(x.components == ("Z",) for x in wins if x.end_ns <= T0.ns + 60 * NS)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_complete_runs_give_the_windows_make_gives(dtype) -> None:
    """The steady-state path (all windows of a complete run at once) == `_make` per window, bit for bit, with a
    channel that is flat in some windows only."""
    from quakemon.pipeline.windowing import WindowScheduler

    truth = _truth(5000, seed=11)  # inside the ring (5600 samples)
    truth["N"][1000:3600] = 7.0  # flat over whole windows 10..16, partly in others
    sched = WindowScheduler("XX.TEST.", "HH", CONTRACT, 100.0, 1.0, dtype=dtype)
    for comp, data in enumerate(truth.values()):
        sched.buffer.write(comp, 0, data)
    run = sched._make_complete_run(0, 30)
    assert len(run) == 31 and sched.next_k == 31 and sched.stats["windows_emitted"] == 31
    single = [sched._make(k, k * 100, k * 100 + 2000) for k in range(31)]
    _assert_same(single, run)
    assert [w.constant for w in run if w.constant] == [("N",)] * 7
    assert all(w.data.dtype == dtype for w in run)
    if dtype == np.float64:  # read-only overlapping views of one block (no copy per window), one run for the stack
        from quakemon.pipeline.detect import _runs, stack_windows

        assert not any(w.data.flags.writeable for w in run)
        assert [(lo, hi) for lo, hi, _ in _runs(run)] == [(0, 31)]
        np.testing.assert_array_equal(stack_windows(run)[0], stack_windows(single)[0])
    else:
        assert all(w.data.flags.c_contiguous for w in run)
    assert sched._make_complete_run(31, 35) == []  # samples 5000.. are not there
    assert sched._make_complete_run(3, 2) == []


def test_vertical_only_complete_runs_give_the_windows_make_gives() -> None:
    """A station whose horizontals are decided absent takes the steady-state path too: the same windows as `_make`
    per window (zero rows, not constant, only Z named), counted as reduced; with a flat stretch of Z."""
    from quakemon.pipeline.windowing import WindowScheduler

    z = _truth(5000, seed=12)["Z"]
    z[1000:3600] = -4.0  # flat over whole windows 10..16
    sched = WindowScheduler("XX.TEST.", "HH", CONTRACT_Z, 100.0, 1.0)
    sched.buffer._data[1:] = 3.0  # stale ring content in the absent rows must not leak into the windows
    sched.buffer.write(0, 0, z)
    sched.absent = frozenset({1, 2})
    run = sched._make_complete_run(0, 30)
    assert len(run) == 31 and sched.next_k == 31
    assert sched.stats["windows_emitted"] == sched.stats["windows_reduced"] == 31
    single = [sched._make(k, k * 100, k * 100 + 2000) for k in range(31)]
    _assert_same(single, run)
    assert all(w.components == ("Z",) and not w.data[1:].any() for w in run)
    assert [w.constant for w in run if w.constant] == [("Z",)] * 7
    assert sched._make_complete_run(31, 35) == []  # samples 5000.. are not there
    # a component set the contract does not accept (here: E alone) is never cut as a run
    only_e = WindowScheduler("XX.TEST.", "HH", CONTRACT_Z, 100.0, 1.0)
    only_e.buffer.write(2, 0, z)
    only_e.absent = frozenset({0, 1})
    assert only_e._make_complete_run(0, 30) == [] and only_e.next_k is None


def test_vertical_only_stream_goes_out_in_runs_identical_to_the_per_window_path() -> None:
    """Whole-stream check: a Z-only station fed in records gives the same windows whatever the record size, and
    the windows after the absent decision come from runs (one block per decision, `Window.run`)."""
    z = _truth(9000, seed=13)["Z"]
    got = {}
    for size in (100, 412, 3000):
        w = StationWindower(CONTRACT_Z, 1.0)
        got[size] = w.add_traces([_trace("Z", i, z[i : i + size]) for i in range(0, 9000, size)]) + w.flush()
        assert w.counters()["windows_reduced"] == len(got[size])
    _assert_same(got[100], got[412])
    _assert_same(got[100], got[3000])
    assert sum(x.run is not None for x in got[100]) > len(got[100]) // 2


def test_a_band_passed_model_warns_when_a_station_opens_below_twenty_hertz():
    from structlog.testing import capture_logs

    contract = InputContract(transforms=("DROP_NAN", "DETREND", "TRIMMING", "BANDPASS", "ZSCORE", "SPECTROGRAM"),
                             extra={"bandpass_hz": [0.7, 25.0]})
    t0 = UTCDateTime(2020, 1, 1)
    for rate, plain in ((5.0, False), (20.0, False), (5.0, True)):
        w = StationWindower(InputContract() if plain else contract, 1.0)
        with capture_logs() as logs:
            w.add_trace(Trace(np.zeros(int(30 * rate)), header={"station": "LOW", "channel": "BHZ",
                                                                "sampling_rate": rate, "starttime": t0}))
        warned = [e for e in logs if e["event"] == "station_rate_low_for_band"]
        assert len(warned) == (rate < 20 and not plain), (rate, plain, logs)
