"""Evaluation metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quakemon.training.scoring import binary_scores, match_events, roc_auc


def test_binary_scores_hand_made():
    scores = np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.4])
    truth = np.array([1, 1, 1, 0, 0, 0], bool)
    s = binary_scores(scores, truth, threshold=0.5)
    assert (s.tp, s.fp, s.fn, s.tn) == (2, 1, 1, 2)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 / 3)
    # 9 positive/negative pairs; the positive scores higher in 0.9>all (3), 0.8>all (3), 0.3>0.1 (1) = 7
    assert s.roc_auc == pytest.approx(7 / 9)


def test_roc_auc_ties_and_degenerate():
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0], bool)) == pytest.approx(0.5)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1], bool)) == 1.0
    assert math.isnan(roc_auc(np.array([0.1, 0.9]), np.array([1, 1], bool)))


def test_match_events():
    events = [("BW.RJOB", 100.0), ("BW.RJOB", 500.0), ("GR.FUR", 100.0)]
    dets = [("BW.RJOB.", 95.0), ("BW.RJOB.", 110.0), ("BW.RJOB.", 300.0), ("GR.WET.", 100.0)]
    m = match_events(dets, events, station_hours=2.0)
    assert m.detected == 1 and m.true_detections == 2 and m.false_detections == 2
    assert m.recall == pytest.approx(1 / 3)
    assert m.false_per_station_hour == pytest.approx(1.0)
    assert m.missed == ["BW.RJOB@500.00", "GR.FUR@100.00"]
