"""GLUE metrics computed offline, checked against values worked out by hand."""

import math

import numpy as np
import pytest

from launcher.train.metrics import compute_metrics


def test_accuracy_and_binary_f1_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    preds = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    # TP=3 (idx 0,2,5) FP=1 (idx 4) FN=2 (idx 1,7) TN=2
    scores = compute_metrics(["accuracy", "f1", "precision", "recall"], preds, labels, num_labels=2)
    assert scores["accuracy"] == pytest.approx(5 / 8)
    assert scores["precision"] == pytest.approx(3 / 4)
    assert scores["recall"] == pytest.approx(3 / 5)
    assert scores["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))


def test_matthews_correlation_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    preds = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics(["matthews_correlation"], preds, labels, 2)["matthews_correlation"] == pytest.approx(expected)


def test_regression_metrics():
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    preds = np.array([0.0, 2.0, 4.0, 6.0])  # perfectly correlated, not equal
    scores = compute_metrics(["pearson", "spearmanr", "mse"], preds, labels, num_labels=1)
    assert scores["pearson"] == pytest.approx(1.0)
    assert scores["spearmanr"] == pytest.approx(1.0)
    assert scores["mse"] == pytest.approx((0 + 1 + 4 + 9) / 4)
