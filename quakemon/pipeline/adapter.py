"""Labelled waveforms -> a torch Dataset of model inputs, through the one preprocessing implementation.

`WaveformDataAdapter` turns events (one station's ObsPy Stream, or an array [C, N] already in contract order
and rate) into (float32 tensor [C, F, T], label) items by calling `quakemon.pipeline.transforms.preprocess_batch`,
the same function the streaming preprocessing worker calls. `TransformOP` is the flag form of the transform
names stored in `InputContract.transforms`; the semantics of each transform are documented in
`quakemon.pipeline.transforms`.

Policies:
- Events are preprocessed once, in batches, when the adapter is built (the spectrograms take about as much
  memory as the raw windows, and epochs then cost nothing). Items live on the CPU.
- DROP_NAN: events whose worst channel has more than `max_nan_fraction` (default 0.1) non-finite samples in
  the window are dropped and counted (`dropped`, logged); shorter NaN runs are interpolated.
- Dead (constant) channels are kept (zeros after ZSCORE) and reported in `dead` and the log.
- A Stream that lacks a component, mixes stations or cannot be resampled raises ContractError naming the event
  index and the station (NET.STA.LOC).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch
from torch.utils.data import Dataset

from quakemon.base.errors import ContractError
from quakemon.models.contract import KNOWN_TRANSFORMS, InputContract
from quakemon.pipeline.streams import stream_to_array
from quakemon.pipeline.transforms import PreprocessResult, preprocess_batch

__all__ = [
    "DroppedEvent",
    "PreprocessResult",
    "TransformOP",
    "WaveformDataAdapter",
    "preprocess_batch",
    "stream_to_array",
]

log = structlog.get_logger(__name__)


class TransformOP(enum.Flag):
    """Preprocessing steps; members mirror `quakemon.models.contract.KNOWN_TRANSFORMS` and run in that order."""

    DROP_NAN = enum.auto()
    DETREND = enum.auto()
    TRIMMING = enum.auto()
    TAPER = enum.auto()
    BANDPASS = enum.auto()
    ZSCORE = enum.auto()
    SPECTROGRAM = enum.auto()
    WHITEN = enum.auto()

    @classmethod
    def from_names(cls, names: Iterable[str]) -> TransformOP:
        """The flag for contract transform names, e.g. ("DROP_NAN", "ZSCORE"); unknown names raise ContractError."""
        op = cls(0)
        for name in names:
            if name not in cls.__members__:
                raise ContractError(f"unknown transform {name!r}; known: {list(KNOWN_TRANSFORMS)}")
            op |= cls[name]
        return op

    def to_names(self) -> tuple[str, ...]:
        """Names for `InputContract.transforms`, in application (KNOWN_TRANSFORMS) order."""
        return tuple(name for name in KNOWN_TRANSFORMS if TransformOP[name] in self)


DEFAULT_TRANSFORMS = TransformOP.DROP_NAN | TransformOP.TRIMMING | TransformOP.ZSCORE | TransformOP.SPECTROGRAM


@dataclass(frozen=True)
class DroppedEvent:
    """An event left out of the dataset: its index in `events` and why."""

    index: int
    reason: str
    nan_fraction: float


class WaveformDataAdapter(Dataset):
    """Events + labels -> (float32 tensor [C, F, T], label) items; [3, 33, 64] with the default contract.

    contract supplies sampling_rate, window_samples, component_order, transforms and STFT parameters; any
    keyword given here overrides it (without a contract, `InputContract()` defaults apply: 100 Hz, 2000
    samples, "ZNE", DROP_NAN | TRIMMING | ZSCORE | SPECTROGRAM, nperseg 64, hop 32). The resolved contract
    (`self.contract`) is what a checkpoint trained on this data must carry.

    Attributes: contract, transforms (TransformOP), kept_indices (index in `events` of each item),
    dropped (DroppedEvent per event left out), dead (bool [len(self), C], constant channels per item).
    device: where preprocess_batch computes ("cuda" works; items are stored on the CPU).
    """

    def __init__(
        self,
        events: Sequence[Any],
        labels: Sequence[Any],
        stft_nperseg: int | None = None,
        stft_hop: int | None = None,
        transforms: TransformOP | Iterable[str] | None = None,
        *,
        contract: InputContract | None = None,
        sampling_rate: float | None = None,
        window_samples: int | None = None,
        component_order: str | None = None,
        max_nan_fraction: float | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 256,
    ) -> None:
        if len(events) != len(labels):
            raise ContractError(f"events and labels differ in length: {len(events)} events, {len(labels)} labels")
        if batch_size < 1:
            raise ContractError(f"batch_size must be >= 1, got {batch_size}")
        self.contract = _resolve_contract(
            contract,
            sampling_rate=sampling_rate,
            window_samples=window_samples,
            component_order=component_order,
            transforms=transforms,
            stft_nperseg=stft_nperseg,
            stft_hop=stft_hop,
            max_nan_fraction=max_nan_fraction,
        )
        self.transforms = TransformOP.from_names(self.contract.transforms)
        self._items: list[torch.Tensor] = []
        self._labels: list[Any] = []
        self.kept_indices: list[int] = []
        self.dropped: list[DroppedEvent] = []
        dead_rows: list[np.ndarray] = []
        # Convert and preprocess batch_size events at a time, so only one chunk of raw float64 arrays is alive;
        # within a chunk, events of equal length share a preprocess_batch call.
        for start in range(0, len(events), batch_size):
            stop = min(start + batch_size, len(events))
            arrays = {i: _event_array(i, events[i], self.contract) for i in range(start, stop)}
            by_length: dict[int, list[int]] = {}
            for i, arr in arrays.items():
                by_length.setdefault(arr.shape[-1], []).append(i)
            results: dict[int, tuple[torch.Tensor, bool, np.ndarray, float]] = {}
            for indices in by_length.values():
                batch = torch.from_numpy(np.stack([arrays[i] for i in indices]))
                res = preprocess_batch(batch, self.contract, device=device)
                spec, valid = res.spectrograms.cpu(), res.valid.cpu().numpy()
                dead, frac = res.dead.cpu().numpy(), res.nan_fraction.cpu().numpy()
                for j, i in enumerate(indices):
                    results[i] = (spec[j], bool(valid[j]), dead[j], float(frac[j]))
            for i in sorted(results):
                spec, valid, dead, frac = results[i]
                if not valid:
                    self.dropped.append(DroppedEvent(i, "non-finite samples over max_nan_fraction", frac))
                    continue
                self._items.append(spec)
                self._labels.append(labels[i])
                self.kept_indices.append(i)
                dead_rows.append(dead)
        #: bool [len(self), C]: constant channels of each kept item (zeros after ZSCORE).
        self.dead = np.array(dead_rows, dtype=bool).reshape(len(self._items), self.contract.n_channels)
        fields = dict(
            events=len(events),
            kept=len(self._items),
            dropped_nan=len(self.dropped),
            dead_channels=int(self.dead.sum()),
            transforms=",".join(self.contract.transforms),
        )
        if self.dropped:
            log.warning("adapter_dropped_events", **fields, first_dropped=self.dropped[0].index)
        else:
            log.info("adapter_ready", **fields)

    @classmethod
    def from_contract(
        cls, contract: InputContract, events: Sequence[Any], labels: Sequence[Any], **overrides: Any
    ) -> WaveformDataAdapter:
        """An adapter whose preprocessing is exactly `contract` (e.g. a checkpoint's), keywords overriding it."""
        return cls(events, labels, contract=contract, **overrides)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self._items[index], self._labels[index]


def _resolve_contract(
    contract: InputContract | None,
    *,
    transforms: TransformOP | Iterable[str] | None,
    max_nan_fraction: float | None,
    **fields: Any,
) -> InputContract:
    base = contract if contract is not None else InputContract()
    d = base.to_dict()
    d.update({k: v for k, v in fields.items() if v is not None})
    if transforms is not None:
        op = transforms if isinstance(transforms, TransformOP) else TransformOP.from_names(transforms)
        d["transforms"] = list(op.to_names())
    if max_nan_fraction is not None:
        if not 0 <= max_nan_fraction <= 1:
            raise ContractError(f"max_nan_fraction must be within [0, 1], got {max_nan_fraction!r}")
        d["extra"] = {**d["extra"], "max_nan_fraction": float(max_nan_fraction)}
    return InputContract.from_dict(d)


def _event_array(index: int, event: Any, contract: InputContract) -> np.ndarray:
    """One event as [C, N]: Streams through stream_to_array, arrays checked for shape."""
    if hasattr(event, "traces"):  # an obspy Stream (duck-typed to keep obspy an I/O-boundary import)
        try:
            return stream_to_array(event, contract)
        except ContractError as exc:
            raise ContractError(f"event {index}: {exc}") from None
    arr = event.detach().cpu().numpy() if isinstance(event, torch.Tensor) else np.asarray(event)
    if arr.ndim != 2 or arr.shape[0] != contract.n_channels:
        raise ContractError(
            f"event {index}: expected an array [C={contract.n_channels} ({contract.component_order}), N] "
            f"or an obspy Stream, got shape {arr.shape}"
        )
    return arr
