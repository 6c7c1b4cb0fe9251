"""Label analysis of the per-patch features: univariate statistics and a logistic baseline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from histoscan.audit import features as af


def feature_table(features: np.ndarray, y: np.ndarray) -> list[dict]:
    """Per feature: class means, point-biserial r (and p) with the label, univariate ROC AUC."""
    from scipy.stats import pointbiserialr
    from sklearn.metrics import roc_auc_score

    rows = []
    for k, (name, text) in enumerate(af.FEATURES.items()):
        x = features[:, k].astype(np.float64)
        r, p = (math.nan, math.nan) if np.ptp(x) == 0 else pointbiserialr(y, x)
        rows.append(
            {
                "feature": name,
                "description": text,
                "mean_negative": float(x[y == 0].mean()),
                "mean_positive": float(x[y == 1].mean()),
                "point_biserial_r": float(r),
                "p_value": float(p),
                "auc": float(roc_auc_score(y, x)),
            }
        )
    return rows


def baseline_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[dict, np.ndarray]:
    """Standardised logistic regression, stratified k-fold AUC; also out-of-fold probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model() -> Any:
        return make_pipeline(
            StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=200)
        )

    probs = np.zeros(len(y))
    aucs = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        probs[test] = model().fit(x[train], y[train]).predict_proba(x[test])[:, 1]
        aucs.append(float(roc_auc_score(y[test], probs[test])))
    coef = model().fit(x, y)[-1].coef_[0]
    result = {
        "n": len(y),
        "positives": int(y.sum()),
        "folds": folds,
        "fold_auc": aucs,
        "auc_mean": float(np.mean(aucs)),
        "auc_sd": float(np.std(aucs, ddof=1)),
        "standardised_coefficients": dict(zip(af.FEATURES, map(float, coef), strict=True)),
    }
    return result, probs


def can_fit(y: np.ndarray, folds: int) -> str | None:
    """Why a label analysis cannot run on ``y`` (0/1), or None."""
    if min((y == 0).sum(), (y == 1).sum()) < folds:
        return f"needs at least {folds} labelled patches of each class"
    return None
