"""The model's input contract: what a window must look like before it reaches HybridViT.

A checkpoint carries its contract; every stage that cuts, resamples or transforms waveforms reads it from
there (never from guesswork), so training and streaming agree by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from quakemon.base.errors import ContractError

#: Transform names, in the order they are applied. `quakemon.pipeline.adapter.TransformOP` mirrors these.
KNOWN_TRANSFORMS = ("DROP_NAN", "DETREND", "TRIMMING", "TAPER", "BANDPASS", "ZSCORE", "SPECTROGRAM", "WHITEN")


@dataclass(frozen=True)
class InputContract:
    """What one model input is made of.

    sampling_rate:   Hz; streams at another rate are resampled to it.
    window_samples:  samples per component per window (2000 = 20 s at 100 Hz -> a 33 x 64 spectrogram).
    component_order: one letter per input channel, e.g. "ZNE". Z/1/2 codes map onto Z/N/E.
    transforms:      transform names applied in `KNOWN_TRANSFORMS` order.
    stft_nperseg, stft_hop: STFT segment length and hop in samples (Hann window, scipy.signal.stft semantics).
    component_sets:  the component subsets the model also accepts, e.g. ("Z",) for a model trained with
                     component dropout; absent components are zero-filled (the model saw exactly that in training).
                     The full component_order is always accepted.
    """

    sampling_rate: float = 100.0
    window_samples: int = 2000
    component_order: str = "ZNE"
    transforms: tuple[str, ...] = ("DROP_NAN", "TRIMMING", "ZSCORE", "SPECTROGRAM")
    stft_nperseg: int = 64
    stft_hop: int = 32
    component_sets: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sampling_rate > 0:
            raise ContractError(f"sampling_rate must be > 0, got {self.sampling_rate!r}")
        if int(self.window_samples) != self.window_samples or self.window_samples <= 0:
            raise ContractError(f"window_samples must be a positive integer, got {self.window_samples!r}")
        if not self.component_order or len(set(self.component_order)) != len(self.component_order):
            raise ContractError(f"component_order must be distinct letters like 'ZNE', got {self.component_order!r}")
        unknown = [t for t in self.transforms if t not in KNOWN_TRANSFORMS]
        if unknown:
            raise ContractError(f"unknown transforms {unknown}; known: {list(KNOWN_TRANSFORMS)}")
        if "WHITEN" in self.transforms and "SPECTROGRAM" not in self.transforms:
            raise ContractError("transform WHITEN works on a spectrogram: it needs SPECTROGRAM in the contract")
        if self.stft_nperseg <= 1 or not 0 < self.stft_hop <= self.stft_nperseg:
            raise ContractError(
                f"need stft_nperseg > 1 and 0 < stft_hop <= stft_nperseg, got {self.stft_nperseg}, {self.stft_hop}"
            )
        object.__setattr__(self, "transforms", tuple(self.transforms))
        sets = tuple("".join(sorted(str(c), key=self.component_order.index)) if set(str(c)) <= set(self.component_order)
                     else str(c) for c in self.component_sets)
        bad = [c for c in sets if not c or not set(c) <= set(self.component_order)]
        if bad:
            raise ContractError(f"component_sets {bad} must be non-empty subsets of {self.component_order!r}")
        object.__setattr__(self, "component_sets", tuple(dict.fromkeys(sets)))

    def accepts(self, components: str) -> bool:
        """True when a station with exactly these components can be fed (the rest zero-filled)."""
        have = "".join(c for c in self.component_order if c in components)
        return have == self.component_order or have in self.component_sets

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sampling_rate

    @property
    def n_channels(self) -> int:
        return len(self.component_order)

    @property
    def spectrogram_shape(self) -> tuple[int, int]:
        """(freq_bins, time_frames) of scipy.signal.stft with boundary='zeros', padded=True."""
        freq = self.stft_nperseg // 2 + 1
        # scipy pads nperseg//2 zeros at both ends, then pads to fill the last segment.
        padded = self.window_samples + 2 * (self.stft_nperseg // 2)
        n_seg = -(-max(padded - self.stft_nperseg, 0) // self.stft_hop) + 1
        return freq, n_seg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["transforms"] = list(self.transforms)
        d["component_sets"] = list(self.component_sets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ContractError(f"unknown input-contract keys {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(
                sampling_rate=float(d["sampling_rate"]),
                window_samples=int(d["window_samples"]),
                component_order=str(d["component_order"]),
                transforms=tuple(d.get("transforms", cls.transforms)),
                stft_nperseg=int(d.get("stft_nperseg", 64)),
                stft_hop=int(d.get("stft_hop", 32)),
                component_sets=tuple(d.get("component_sets", ())),
                extra=dict(d.get("extra", {})),
            )
        except KeyError as exc:
            raise ContractError(f"input contract is missing key {exc.args[0]!r}") from None
