"""Classification and detection scores: precision, recall, F1, ROC AUC, and event matching on continuous data.

Pure numpy, so training, `quakemon evaluate` and the tests share one implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BinaryScores:
    """Scores of a binary decision (positive = the detected class) at one threshold."""

    n: int
    positives: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    roc_auc: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U statistic, ties counted half); NaN with one class only."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_scores(scores: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> BinaryScores:
    """Scores for `scores >= threshold` against boolean `truth`."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    pred = scores >= threshold
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    tn = int((~pred & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(truth)
    return BinaryScores(n, int(truth.sum()), tp, fp, fn, tn, precision, recall, f1,
                        (tp + tn) / n if n else 0.0, roc_auc(scores, truth), threshold)


@dataclass(frozen=True)
class EventMatch:
    """Detections matched to catalogue events on continuous data."""

    events: int
    detected: int
    missed: list[str]
    detections: int
    true_detections: int
    false_detections: int
    recall: float
    precision: float
    hours: float
    false_per_station_hour: float

    def to_dict(self) -> dict:
        return asdict(self)


def match_events(
    detections: Iterable[tuple[str, float]],
    events: Sequence[tuple[str, float]],
    tolerance_before_s: float = 20.0,
    tolerance_after_s: float = 30.0,
    station_hours: float = 0.0,
) -> EventMatch:
    """Match detections (station, onset epoch seconds) to events (station, P time epoch seconds).

    A detection is true when its onset lies in [P - tolerance_before_s, P + tolerance_after_s] for an event at
    the same station (a window whose onset precedes P by up to one window length still contains the P wave).
    Each event counts once however many detections match it; station keys compare as "NET.STA" prefixes.
    """
    det = list(detections)
    matched_events: set[int] = set()
    true_det = 0
    for station, onset in det:
        hit = False
        for i, (ev_station, p) in enumerate(events):
            if _same_station(station, ev_station) and p - tolerance_before_s <= onset <= p + tolerance_after_s:
                matched_events.add(i)
                hit = True
        true_det += hit
    false_det = len(det) - true_det
    missed = [f"{s}@{p:.2f}" for i, (s, p) in enumerate(events) if i not in matched_events]
    return EventMatch(
        events=len(events), detected=len(matched_events), missed=missed, detections=len(det),
        true_detections=true_det, false_detections=false_det,
        recall=len(matched_events) / len(events) if events else float("nan"),
        precision=true_det / len(det) if det else float("nan"),
        hours=station_hours,
        false_per_station_hour=false_det / station_hours if station_hours > 0 else float("nan"),
    )


def _same_station(a: str, b: str) -> bool:
    pa, pb = a.split("."), b.split(".")
    return pa[:2] == pb[:2]
