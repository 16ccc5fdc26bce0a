"""Screen and refine (`quakemon.pipeline.screen`), on given probabilities: which windows are forwarded, what the
trigger gets for the others, the sparse/dense transitions, gaps, windows that are not inferable, silence, busy
stations, and that none of it depends on how the windows come in batches."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from quakemon.pipeline.screen import Screen, ScreenItem, check_screen

NS = 1_000_000_000
T0 = 1_700_000_000  # a grid index divisible by 4 and 10: window i starts at (T0 + i) s


def meta(i: int, valid: bool = True, station: str = "XX.STA.") -> SimpleNamespace:
    return SimpleNamespace(station=station, start_ns=(T0 + i) * NS, end_ns=(T0 + i + 20) * NS, valid=valid)


def run(p: np.ndarray, every: int = 4, threshold: float = 0.1, *, batches: list[int] | None = None,
        known: np.ndarray | None = None, valid: np.ndarray | None = None, missing: set[int] = frozenset(),
        busy=lambda station: False, final: bool = True) -> tuple[list[tuple[int, float, bool]], list[int]]:
    """Offer windows 0..len(p)-1 (but `missing`) in batches (sizes `batches`, default one), with the windows in
    `known` already forwarded; return what was fed, (index, value, forwarded), and the windows forwarded on
    request, in order."""
    screen = Screen(every, threshold, 1.0, 20.0, [0], busy=busy)
    fed: list[tuple[int, float, bool]] = []
    asked: list[int] = []
    valid = np.ones(len(p), bool) if valid is None else valid
    known = np.zeros(len(p), bool) if known is None else known

    def feed(item: ScreenItem, row: np.ndarray, forwarded: bool) -> None:
        fed.append((item.payload, None if np.isnan(row[0]) else float(row[0]), forwarded))

    def settle(step) -> None:
        while need := step(feed):
            for it in need:
                assert it.probs is None and it.valid
                asked.append(it.payload)
                it.probs = np.array([p[it.payload]], np.float32)

    order = [i for i in range(len(p)) if i not in missing]
    cuts = np.cumsum(batches or [len(order)]).tolist()
    for lo, hi in zip([0, *cuts], cuts, strict=False):
        for i in order[lo:hi]:
            probs = (np.array([p[i]], np.float32) if valid[i] and known[i] else
                     np.array([np.nan], np.float32) if not valid[i] else None)
            assert screen.offer(ScreenItem(meta(i, bool(valid[i])), i, probs), 0.0)
        settle(screen.advance)
    if final:
        settle(lambda feed: screen.release(feed))
    return fed, asked


def test_a_quiet_station_forwards_its_screen_windows_only_and_the_trigger_gets_their_values():
    p = np.linspace(0.01, 0.05, 40)
    fed, asked = run(p)
    assert [i for i, _, _ in fed] == list(range(40))  # every window reaches the trigger, in order
    assert [i for i, _, f in fed if f] == asked == [*range(0, 40, 4), 37, 38, 39]  # (37-39: the data ended)
    for i, value, forwarded in fed:
        screen_window = min(j for j in range(0, 44, 4) if j >= i)
        if screen_window < 40:  # (36's followers 37-39 never see their screen window: released at the end)
            assert value == pytest.approx(p[screen_window]) and forwarded == (i == screen_window)


def test_a_screen_window_at_the_threshold_refines_the_held_windows_then_every_window_until_quiet():
    p = np.full(81, 0.02)  # (ending on a screen window: no held windows at the end)
    p[10:16] = 0.9  # an excursion that starts between screen windows 8 and 12
    fed, _ = run(p)
    forwarded = [i for i, _, f in fed if f]
    # 8 screen (quiet), 9-11 held and refined when 12 scores >= s, dense while >= s and until the windows stayed
    # below s for a window length (16 ... 36: 36 - 16 >= 20 s), sparse again from 37 (next screen window: 40)
    assert forwarded == [0, 4, 8, *range(9, 37), *range(40, 81, 4)]
    assert all(value == pytest.approx(p[i]) for i, value, f in fed if f)  # exact values while dense
    assert [v for i, v, _ in fed if 10 <= i < 16] == pytest.approx([0.9] * 6)


def test_an_excursion_between_two_quiet_screen_windows_is_not_seen():
    """The cost of screening: a whole excursion to s or above between two screen windows below s."""
    p = np.full(21, 0.02)
    p[9:12] = 0.95
    fed, asked = run(p)
    assert asked == [0, 4, 8, 12, 16, 20]
    assert [v for i, v, _ in fed if 9 <= i < 12] == pytest.approx([0.02] * 3)  # the value of screen window 12


def test_a_missing_screen_window_forwards_the_held_windows():
    p = np.full(20, 0.02)
    fed, asked = run(p, missing={8})  # a gap skipped the screen window of 5-7
    assert [i for i, _, _ in fed] == [i for i in range(20) if i != 8]
    assert asked[:4] == [0, 4, 5, 6] and 7 in asked
    assert [i for i, _, f in fed if f] == [0, 4, 5, 6, 7, 12, 16, 17, 18, 19]


def test_a_screen_window_that_is_not_inferable_forwards_the_held_windows():
    p = np.full(20, 0.02)
    valid = np.ones(20, bool)
    valid[8] = False
    fed, asked = run(p, valid=valid)
    assert asked == [0, 4, 5, 6, 7, 12, 16, 17, 18, 19]
    (nan,) = [(v, f) for i, v, f in fed if i == 8]
    assert nan == (None, False)  # fed (the caller skips it), never forwarded
    assert [i for i, _, _ in fed] == list(range(20))


def test_held_windows_of_a_forwarded_window_at_the_threshold_turn_the_station_dense():
    p = np.full(30, 0.02)
    p[6] = 0.5
    valid = np.ones(30, bool)
    valid[8] = False  # 5-7 are forwarded without a screen window; 6 reaches s: dense from there on
    fed, _ = run(p, valid=valid)
    assert [i for i, _, f in fed if f] == [0, 4, *[i for i in range(5, 30) if i != 8]]


def test_a_silent_station_releases_its_held_windows_after_the_silence():
    screen = Screen(4, 0.1, 1.0, 20.0, [0])
    fed = []

    def feed(item, row, forwarded):
        fed.append((item.payload, forwarded))

    for i in range(6):  # 0 and 4 screen windows, 5 held
        probs = np.array([0.01], np.float32) if i % 4 == 0 else None
        screen.offer(ScreenItem(meta(i), i, probs), now=100.0)
    assert screen.advance(feed) == [] and [i for i, _ in fed] == [0, 1, 2, 3, 4] and screen.held() == 1
    assert screen.release(feed, older_than=20.0, now=110.0) == [] and screen.held() == 1  # not silent yet
    (need,) = screen.release(feed, older_than=20.0, now=121.0)
    need.probs = np.array([0.01], np.float32)
    assert screen.advance(feed) == [] and fed[-1] == (5, True) and screen.held() == 0
    screen.offer(ScreenItem(meta(6), 6, None), now=122.0)  # the station comes back: held as before
    assert screen.advance(feed) == [] and screen.held() == 1


def test_a_busy_station_forwards_every_window():
    p = np.full(12, 0.02)
    fed, asked = run(p, busy=lambda station: True)
    assert asked == list(range(12)) and all(f for _, _, f in fed)


def test_duplicate_and_reordered_windows_are_refused():
    screen = Screen(4, 0.1, 1.0, 20.0, [0])
    assert screen.offer(ScreenItem(meta(5), 5), 0.0)
    assert not screen.offer(ScreenItem(meta(5), 5), 0.0) and not screen.offer(ScreenItem(meta(3), 3), 0.0)
    with pytest.raises(ValueError, match="not inferable"):
        screen.offer(ScreenItem(meta(6, valid=False), 6), 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_the_decisions_do_not_depend_on_batches_or_windows_forwarded_ahead(seed: int):
    rng = np.random.default_rng(seed)
    p = np.clip(rng.gamma(0.3, 0.05, 600), 0, 1)
    for start in rng.integers(0, 580, 12):
        p[start : start + rng.integers(1, 15)] = rng.uniform(0.05, 1.0)
    valid = rng.random(600) > 0.02
    reference, _ = run(p, valid=valid)
    batches = rng.integers(1, 40, 100).tolist()
    fed, _ = run(p, valid=valid, batches=batches, known=rng.random(600) < 0.3)
    assert fed == reference


def test_screen_settings_are_checked():
    check_screen(1, 0.1)
    for every, thr in ((0, 0.1), (2.5, 0.1), (True, 0.1), (4, 0.0), (4, 1.0)):
        with pytest.raises(ValueError):
            check_screen(every, thr)  # type: ignore[arg-type]
