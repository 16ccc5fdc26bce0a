"""Station ring buffers: grid arithmetic, gaps, overlaps, duplicates, reordering, NaN."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from obspy import Stream, Trace, UTCDateTime

from quakemon.base.timegrid import grid_index, grid_time_ns, rate_fraction, split_seed_id
from quakemon.pipeline.buffers import StationBuffer

T0 = UTCDateTime(2021, 3, 4, 5, 6, 7)
RATE = 100.0


def _buffer(capacity: int = 1000, components: str = "ZNE") -> StationBuffer:
    return StationBuffer("XX.STA.", "HH", components, RATE, capacity)


def _idx(buf: StationBuffer, offset: int) -> int:
    return buf.index_of(T0.ns) + offset


@settings(max_examples=300, deadline=None)
@given(
    t_ns=st.integers(min_value=0, max_value=4 * 10**18),
    rate=st.sampled_from([0.1, 1.0, 20.0, 40.0, 50.0, 100.0, 200.0, 250.0, 1000.0, 1 / 3]),
)
def test_grid_index_is_nearest_sample(t_ns: int, rate: float) -> None:
    r = rate_fraction(rate)
    k = grid_index(t_ns, r)
    exact = Fraction(t_ns, 10**9) * r
    assert abs(exact - k) <= Fraction(1, 2)
    assert abs(grid_index(grid_time_ns(k, r), r) - k) == 0


def test_split_seed_id_maps_components() -> None:
    assert split_seed_id("BW.RJOB..EHZ") == ("BW.RJOB.", "EH", "Z")
    assert split_seed_id("GR.FUR.00.HH1") == ("GR.FUR.00", "HH", "N")
    assert split_seed_id("GR.FUR.00.HH2") == ("GR.FUR.00", "HH", "E")
    assert split_seed_id("GR.FUR.00.HHX") is None
    assert split_seed_id("GR.FUR.00") is None


segments = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=390),  # start
        st.integers(min_value=1, max_value=60),  # length
        st.booleans(),  # conflicting copy (values differ from the truth)
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=250, deadline=None)
@given(segs=segments, order=st.randoms(use_true_random=False))
def test_buffer_matches_obspy_merge(segs: list[tuple[int, int, bool]], order) -> None:
    """Random records with gaps, overlaps, duplicates and conflicts, inserted in random order.

    Reference: ObsPy's Stream.merge. method=0 masks gaps and (most) conflicting overlaps; wherever it kept
    a sample that no two records disagree on, the buffer holds the same value. The buffer holds exactly the
    samples some record covered, and each is the first-arrived value. Without conflicts the buffer equals
    Stream.merge(method=1) exactly.
    """
    n = 450
    truth = np.arange(n, dtype=np.float64) * 7 % 101
    records = []
    for start, length, conflict in segs:
        values = truth[start : start + length].copy()
        if conflict:
            values += 1000
        records.append((start, values))
    order.shuffle(records)

    buf = _buffer(capacity=n)
    base = _idx(buf, 0)
    expected = np.full(n, np.nan)
    for start, values in records:
        buf.write(0, base + start, values)
        span = expected[start : start + len(values)]
        fill = np.isnan(span)
        span[fill] = values[fill]  # first arrived wins
    data, present = buf.read(base, base + n)
    np.testing.assert_array_equal(present[0], ~np.isnan(expected))
    np.testing.assert_array_equal(data[0][present[0]], expected[present[0]])
    assert not present[1:].any()

    def as_trace(start: int, values: np.ndarray) -> Trace:
        return Trace(values, header=dict(starttime=T0 + start / RATE, sampling_rate=RATE, network="XX",
                                         station="STA", channel="HHZ"))

    merged = Stream([as_trace(s, v) for s, v in records]).merge(method=0)[0]
    offset = int(round((merged.stats.starttime - T0) * RATE))
    kept = ~np.ma.getmaskarray(merged.data)
    pos = offset + np.flatnonzero(kept)
    assert present[0, pos].all()
    covered_true, covered_false = np.zeros(n, bool), np.zeros(n, bool)
    for start, length, conflict in segs:
        (covered_false if conflict else covered_true)[start : start + length] = True
    agreed = ~(covered_true & covered_false)[pos]
    np.testing.assert_array_equal(data[0, pos][agreed], np.ma.getdata(merged.data)[kept][agreed])

    if not any(c for _, _, c in segs):
        ref = Stream([as_trace(s, v) for s, v in records]).merge(method=1)[0]
        mask = np.ma.getmaskarray(ref.data)
        np.testing.assert_array_equal(present[0, offset : offset + ref.stats.npts], ~mask)
        np.testing.assert_array_equal(data[0, offset : offset + ref.stats.npts][~mask], np.ma.getdata(ref.data)[~mask])
        assert buf.stats["conflict_samples"] == 0


def test_overlap_policy_first_arrived_wins_and_counts() -> None:
    buf = _buffer()
    base = _idx(buf, 0)
    assert buf.write(0, base, np.arange(10.0)) == 10
    assert buf.write(0, base, np.arange(10.0)) == 0  # identical re-send
    assert buf.stats["duplicate_records"] == 1 and buf.stats["duplicate_samples"] == 10
    assert buf.write(0, base + 5, np.full(10, -1.0)) == 5  # 5 conflicting + 5 new
    assert buf.stats["conflict_samples"] == 5
    data, present = buf.read(base, base + 15)
    np.testing.assert_array_equal(data[0], np.r_[np.arange(10.0), np.full(5, -1.0)])
    assert present[0].all()


def test_out_of_order_records_land_in_place() -> None:
    buf = _buffer()
    base = _idx(buf, 0)
    buf.write(0, base + 20, np.full(10, 3.0))
    buf.write(0, base + 10, np.full(10, 2.0))
    buf.write(0, base, np.full(10, 1.0))
    data, present = buf.read(base, base + 30)
    assert present[0].all()
    np.testing.assert_array_equal(data[0], np.repeat([1.0, 2.0, 3.0], 10))


def test_nan_samples_are_stored_as_missing() -> None:
    buf = _buffer()
    base = _idx(buf, 0)
    values = np.arange(10.0)
    values[[2, 7]] = [np.nan, np.inf]
    assert buf.write(1, base, values) == 8
    data, present = buf.read(base, base + 10)
    assert present[1].tolist() == [True, True, False, True, True, True, True, False, True, True]
    assert np.isfinite(data).all() and buf.stats["nan_samples"] == 2


def test_ring_is_bounded_and_drops_late_samples() -> None:
    buf = _buffer(capacity=100)
    base = _idx(buf, 0)
    buf.write(0, base, np.arange(80.0))
    buf.write(0, base + 80, np.arange(80.0))  # head = 160 -> ring holds [60, 160)
    assert buf.tail == base + 60 and buf._data.shape == (3, 100)
    data, present = buf.read(base, base + 160)
    assert not present[0, :60].any() and present[0, 60:].all()
    np.testing.assert_array_equal(data[0, 60:80], np.arange(60.0, 80.0))
    assert buf.write(0, base + 10, np.ones(20)) == 0  # entirely before the ring
    assert buf.stats["late_samples"] == 20
    buf.write(1, base + 50, np.ones(20))  # straddles the tail: 10 late, 10 stored
    assert buf.stats["late_samples"] == 30
    assert buf.read(base + 60, base + 70)[1][1].all()


def test_jump_larger_than_ring_clears_everything() -> None:
    buf = _buffer(capacity=100)
    base = _idx(buf, 0)
    buf.write(0, base, np.ones(50))
    buf.write(0, base + 10_000, np.ones(5))
    _, present = buf.read(base, base + 50)
    assert not present.any()
    buf.reset()
    assert buf.head is None and buf.first is None
    assert not buf.read(base + 10_000, base + 10_005)[1].any()


@pytest.mark.parametrize(("offset_samples", "contiguous"), [(0.0, True), (0.4, True), (-0.45, True), (0.6, False)])
def test_subsample_offsets_snap_to_the_grid(offset_samples: float, contiguous: bool) -> None:
    """A record whose start is <= 0.5 sample off the grid continues its predecessor without a gap."""
    buf = _buffer()
    start0 = buf.index_of(T0.ns)
    buf.write(0, start0, np.ones(100))
    t1 = T0.ns + int((100 + offset_samples) * 1e9 / RATE)
    buf.write(0, buf.index_of(t1), np.ones(100))
    _, present = buf.read(start0, start0 + 200)
    assert bool(present[0].all()) is contiguous


def test_complete_over_a_subset_of_components() -> None:
    """A vertical-only station is complete when Z is, if the caller asks about Z alone."""
    buf = _buffer()
    base = _idx(buf, 0)
    buf.write(0, base, np.ones(50))
    assert buf.complete(base, base + 50, [0]) and not buf.complete(base, base + 50)
    assert not buf.complete(base, base + 51, [0]) and not buf.complete(base, base + 50, [0, 1])
    buf.write(1, base, np.ones(50))
    buf.write(2, base, np.ones(50))
    assert buf.complete(base, base + 50) and buf.complete(base, base + 50, [1, 2])


def test_a_record_is_recognised_by_time_range_and_content_after_it_left_the_ring() -> None:
    buf = StationBuffer("XX.TEST.", "HH", "ZNE", 100.0, capacity=500)
    first = np.arange(100, dtype=np.float64)
    buf.write(0, 1000, first)
    buf.write(0, 5000, np.ones(100))  # the first record's samples are evicted
    assert not buf.read(1000, 1100)[1].any()
    assert buf.holds(0, 1000, first)
    assert not buf.holds(0, 1000, first + 1)  # same time range, other samples
    assert not buf.holds(0, 1001, first) and not buf.holds(1, 1000, first)  # other time, other component


def test_fill_ratio_follows_every_write_eviction_and_reset() -> None:
    """`fill_ratio` is kept as a running count: it must equal the share of present slots after any sequence of
    new, overlapping, late, NaN-holed, wrapping and jumping writes and resets."""
    rng = np.random.default_rng(7)
    buf = _buffer(capacity=97)
    base = _idx(buf, 0)
    head = 0
    for step in range(3000):
        if step % 500 == 499:
            buf.reset()
        values = rng.standard_normal(int(rng.integers(1, 60)))
        if rng.random() < 0.2:
            values[rng.integers(0, values.size)] = np.nan
        kind = rng.random()
        start = (head + int(rng.integers(-150, 40)) if kind < 0.9 else head + int(rng.integers(200, 400)))
        buf.write(int(rng.integers(0, 3)), base + start, values)
        head = max(head, start + values.size)
        assert buf.fill_ratio() == np.count_nonzero(buf._present) / buf._present.size, step
    assert 0 < buf.fill_ratio() < 1
