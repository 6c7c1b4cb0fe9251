"""Temperature scaling and decision thresholds, fitted on validation logits."""

from __future__ import annotations

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of sigmoid(logits / T) (Guo et al. 2017), by 1-D search."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + e^s) - y s, written stably
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def resolve_threshold(
    rule: str | float, probs: np.ndarray | None, labels: np.ndarray | None
) -> float:
    """A probability threshold from a rule: a number, ``youden``, or ``sens:0.95``.

    Rules other than a number need validation probabilities and labels (never the test data).
    """
    if isinstance(rule, int | float):
        return float(rule)
    text = str(rule).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    if probs is None or labels is None:
        raise ValueError(f"threshold rule {rule!r} needs validation predictions in the model file")
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probs)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if text == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if text.startswith("sens:"):
        target = float(text.split(":", 1)[1])
        ok = np.flatnonzero(tpr >= target)
        return float(thresholds[ok[0]])
    raise ValueError(f"unknown threshold rule {rule!r} (a number, youden, or sens:0.95)")
