"""GLUE metrics computed offline with scikit-learn / SciPy, as evaluate's own `glue` metric does
(evaluate.load("glue", ...) would fetch its script from the Hub, which compute nodes may not reach)."""

from __future__ import annotations

import numpy as np


def compute_metrics(names: list[str], predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    from sklearn import metrics as sk

    results: dict[str, float] = {}
    binary = num_labels == 2
    average = "binary" if binary else "macro"
    for name in names:
        if name == "accuracy":
            value = sk.accuracy_score(labels, predictions)
        elif name == "f1":
            value = sk.f1_score(labels, predictions, average=average, zero_division=0)
        elif name == "precision":
            value = sk.precision_score(labels, predictions, average=average, zero_division=0)
        elif name == "recall":
            value = sk.recall_score(labels, predictions, average=average, zero_division=0)
        elif name == "matthews_correlation":
            value = sk.matthews_corrcoef(labels, predictions)
        elif name == "pearson":
            from scipy.stats import pearsonr

            value = pearsonr(predictions, labels)[0]
        elif name == "spearmanr":
            from scipy.stats import spearmanr

            value = spearmanr(predictions, labels)[0]
        elif name == "mse":
            value = sk.mean_squared_error(labels, predictions)
        else:  # the recipe schema only admits the names above
            raise ValueError(f"unknown metric {name!r}")
        results[name] = float(value)
    return results
