"""Screen distillation: the validation split of a day and the teacher targets."""

from __future__ import annotations

import numpy as np

from quakemon.training.screen_distill import LOGIT_RANGE, logit, split_day


def test_split_day_keeps_validation_windows_apart():
    start = 1_283_299_200.0 + np.arange(0, 86_400, 1.0)  # a day on the 1 s grid, 20 s windows
    train, val = split_day(start, 20.0)
    assert not (train & val).any()
    hour = (start // 3600).astype(int)  # hours since the epoch: this day's 2, 7, 12, 17 and 22 h (UTC)
    assert set(hour[val] % 24) == {2, 7, 12, 17, 22} and set(hour[val] % 5) == {4}
    # no training window reaches into a validation hour; the windows that straddle one are in neither set
    end_hour = ((start + 20.0 - 1e-6) // 3600).astype(int)
    assert not (end_hour[train] % 5 == 4).any()
    assert val.sum() == 5 * (3600 - 19)  # 19 windows at the end of each validation hour straddle out of it
    assert (~train & ~val).sum() == 5 * 19 + 5 * 19  # and 19 before each straddle into it


def test_logit_is_clipped_and_monotonic():
    p = np.array([0.0, 1e-9, 0.1, 0.5, 0.9, 1.0])
    z = logit(p)
    assert z[0] == LOGIT_RANGE[0] and z[-1] == LOGIT_RANGE[1]
    assert np.all(np.diff(z) >= 0) and abs(z[3]) < 1e-12
    assert np.isclose(z[2], np.log(0.1 / 0.9))
