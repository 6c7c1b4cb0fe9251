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


def parse_sensitivity(rule: str) -> float:
    """The target of a ``sens:X`` rule, a sensitivity in (0, 1]; ValueError otherwise."""
    try:
        target = float(rule.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"threshold rule {rule!r}: sens: needs a number, e.g. sens:0.95") from None
    if not 0.0 < target <= 1.0:
        raise ValueError(f"threshold rule {rule!r}: sensitivity must be in (0, 1]")
    return target


def check_threshold_rule(rule: str | float | None) -> None:
    """Raise ValueError for a rule ``resolve_threshold`` could never apply (before any work)."""
    if rule is None or isinstance(rule, int | float):
        value = None if rule is None else float(rule)
    else:
        text = str(rule).strip().lower()
        if text == "youden":
            return
        if text.startswith("sens:"):
            parse_sensitivity(text)
            return
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"unknown threshold rule {rule!r} (a number, youden, or sens:0.95)"
            ) from None
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold {value} is not a probability in [0, 1]")


def resolve_threshold(
    rule: str | float, probs: np.ndarray | None, labels: np.ndarray | None
) -> float:
    """A probability threshold from a rule: a number, ``youden``, or ``sens:0.95``.

    Rules other than a number need validation probabilities and labels (never the test data).
    """
    check_threshold_rule(rule)
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
        target = parse_sensitivity(text)
        ok = np.flatnonzero(tpr >= target)
        return float(thresholds[ok[0]])
    raise ValueError(f"unknown threshold rule {rule!r} (a number, youden, or sens:0.95)")
