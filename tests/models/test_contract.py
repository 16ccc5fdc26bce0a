"""The input contract: validation, spectrogram shape arithmetic, component sets, round trip."""

from __future__ import annotations

import pytest
import scipy.signal

from quakemon.base.errors import ContractError
from quakemon.models.contract import InputContract


@pytest.mark.parametrize(("n", "nperseg", "hop"), [(2000, 64, 32), (3000, 64, 32), (2001, 50, 20), (1000, 128, 64)])
def test_spectrogram_shape_matches_scipy(n, nperseg, hop):
    import numpy as np

    c = InputContract(window_samples=n, stft_nperseg=nperseg, stft_hop=hop)
    _, _, z = scipy.signal.stft(np.zeros(n), nperseg=nperseg, noverlap=nperseg - hop, boundary="zeros", padded=True)
    assert c.spectrogram_shape == z.shape


def test_default_is_33_by_64():
    assert InputContract().spectrogram_shape == (33, 64)
    assert InputContract().window_seconds == 20.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sampling_rate": 0}, "sampling_rate"), ({"window_samples": -5}, "window_samples"),
     ({"component_order": "ZZE"}, "component_order"), ({"transforms": ("FFT",)}, "unknown transforms"),
     ({"stft_hop": 100}, "stft_hop"), ({"component_sets": ("X",)}, "component_sets")],
)
def test_invalid_contracts_are_refused(kwargs, message):
    with pytest.raises(ContractError, match=message):
        InputContract(**kwargs)


def test_component_sets_and_round_trip():
    c = InputContract(component_sets=("Z", "EN"))
    assert c.component_sets == ("Z", "NE")
    assert c.accepts("ZNE") and c.accepts("Z") and c.accepts("EN") and not c.accepts("ZN")
    assert not InputContract().accepts("Z")
    assert InputContract.from_dict(c.to_dict()) == c
    with pytest.raises(ContractError, match="unknown input-contract keys"):
        InputContract.from_dict({**c.to_dict(), "colour": "red"})
    with pytest.raises(ContractError, match="missing key 'sampling_rate'"):
        InputContract.from_dict({"window_samples": 10, "component_order": "Z"})
