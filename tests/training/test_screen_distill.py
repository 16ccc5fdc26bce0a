"""Screen distillation: the validation split of a day and the teacher targets."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_series_features_match_an_independent_windowing(tmp_path, tiny_checkpoint):
    """One feature row per window of the 1 s grid, in start order, equal to the screen's features of the same
    windows cut and transformed without the runner (windower, stack_windows, preprocess_windows)."""
    import obspy
    import torch
    from support.pipeline import write_archive

    from quakemon.models.checkpoint import load_checkpoint
    from quakemon.models.screen_net import ScreenArgs, ScreenNet
    from quakemon.pipeline.detect import preprocess_windows, stack_windows
    from quakemon.pipeline.runner import interleaved
    from quakemon.pipeline.windowing import StationWindower
    from quakemon.training.screen_distill import series_features

    path, start, span = write_archive(tmp_path / "a.mseed", blocks=3)
    ckpt = load_checkpoint(tiny_checkpoint)
    net = ScreenNet(ScreenArgs(pool=1, components="all")).eval()  # every component's log spectrum, as cached
    stream = obspy.read(str(path))
    (station, (starts, feats)), = series_features(ckpt, [stream], net).items()
    assert station == "BW.RJOB." and feats.dtype == np.float16 and feats.shape[1:] == (3, 33, 64)
    assert np.all(np.diff(starts) == 1.0) and np.all(starts == np.round(starts))
    assert starts[0] >= start and starts[-1] + 20.0 <= start + span

    # the same windows, cut (channels interleaved in time, as replay feeds them) and transformed without the runner
    windower = StationWindower(ckpt.contract, 1.0)
    windows = [w for piece in interleaved(list(stream)) for w in windower.add_samples(piece)] + windower.flush()
    data, metas = stack_windows(windows)
    spectra, _ = preprocess_windows(data, metas, ckpt.contract)
    assert [m.start_ns for m in metas] == [round(s * 1e9) for s in starts]
    with torch.inference_mode():
        expected = net.features(torch.from_numpy(spectra)).numpy().astype(np.float16)
    np.testing.assert_array_equal(expected, feats)


def test_the_architecture_options_are_checked_before_any_work(capsys):
    """--widths, --pool and --components are parsed and checked before a set is built."""
    from quakemon.training.screen_distill import main

    for argv, needle in ((["--widths", "16,x,48"], "--widths: expected three comma-separated integers"),
                         (["--components", "mean"], "invalid choice: 'mean'"),
                         (["--pool", "two"], "invalid int value: 'two'")):
        with pytest.raises(SystemExit) as info:
            main(["--day", "UV05", "--output", "unused.safetensors", *argv])
        assert info.value.code == 2 and needle in capsys.readouterr().err
