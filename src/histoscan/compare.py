"""Two models on the same held-out patches: paired ROC AUC difference, McNemar, one ROC plot.

The AUC difference gets DeLong's paired variance (DeLong, DeLong & Clarke-Pearson 1988, in the
fast midrank form of Sun & Xu 2014): both AUCs come from the same patches, so their errors are
correlated and two separate confidence intervals would overstate the uncertainty. McNemar's
exact test asks whether the two models' hard calls at their own thresholds disagree more often
one way than the other.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.data.sources import PatchSource
from histoscan.errors import DataError

log = logging.getLogger(__name__)


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their mean rank, (N,)."""
    from scipy.stats import rankdata

    return rankdata(x, method="average")


@dataclass(frozen=True)
class PairedAuc:
    """Two AUCs on the same patches and their difference (A minus B) with DeLong's paired SE."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    ci95: tuple[float, float]
    p_value: float


def delong_paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> PairedAuc:
    """DeLong's test of two correlated ROC AUCs.

    Args:
        labels: (N,) 0/1.
        scores_a, scores_b: (N,) scores of the two models on the same patches (higher = tumour).
    """
    from scipy.stats import norm

    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise DataError("comparing AUCs needs at least 2 tumour and 2 normal patches")
    aucs, v10, v01 = [], [], []
    for s in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        pos, neg = s[y], s[~y]
        all_ranks = _midranks(np.concatenate([pos, neg]))
        pos_in_all, neg_in_all = all_ranks[:m], all_ranks[m:]
        # structural components: for each positive, the share of negatives it outranks (ties 1/2)
        v10.append((pos_in_all - _midranks(pos)) / n)
        v01.append(1.0 - (neg_in_all - _midranks(neg)) / m)
        aucs.append(float(v10[-1].mean()))
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))  # (2, 2) each
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var, 0.0))
    z = norm.ppf(0.975)
    p = 1.0 if se == 0 else float(2 * norm.sf(abs(diff) / se))
    return PairedAuc(aucs[0], aucs[1], diff, se, (diff - z * se, diff + z * se), p)


def mcnemar_exact(labels: np.ndarray, calls_a: np.ndarray, calls_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test on the patches where exactly one of two models is right."""
    from scipy.stats import binomtest

    y = np.asarray(labels).astype(bool)
    right_a, right_b = np.asarray(calls_a) == y, np.asarray(calls_b) == y
    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "only_a_right": only_a,
        "only_b_right": only_b,
        "both_right": int((right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
        "p_value": p,
    }


def held_out_indices(
    predictors: list[Any], source: PatchSource, labelled: np.ndarray
) -> tuple[np.ndarray, int]:
    """Labelled patches neither model was trained on; how many were dropped as seen."""
    ids = [source.ids[i] for i in labelled]
    seen = np.zeros(len(labelled), bool)
    for p in predictors:
        seen |= p.model_file.meta.seen_in_training(ids)
    n_seen = int(seen.sum())
    if n_seen == len(labelled):
        raise DataError(
            f"{source.root}: every labelled patch was used to train one of the models; "
            "compare them on patches neither has seen"
        )
    if n_seen:
        log.warning(
            "warning: %d of %d patches were used to train one of the models; comparing on the "
            "%d held-out patches",
            n_seen,
            len(labelled),
            len(labelled) - n_seen,
        )
    return labelled[~seen], n_seen


def compare_models(
    predictor_a: Any,
    predictor_b: Any,
    source: PatchSource,
    out: Path,
    tta: str = "d4",
    threshold: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Score both models on the held-out labelled patches of ``source``; write ``out``.

    ``out`` (a new folder) gets compare.json, roc.png and predictions.csv (id,label,p_a,p_b).
    """
    from histoscan.io import atomic_dir, prepare_out_dir

    prepare_out_dir(out, False, [source.root])
    labelled = np.flatnonzero(np.asarray(source.labels) >= 0)
    if len(labelled) == 0:
        raise DataError(f"{source.root}: no labelled patches to compare on")
    idx, n_seen = held_out_indices([predictor_a, predictor_b], source, labelled)
    y = np.asarray(source.labels)[idx].astype(int)
    probs = [p.predict_source(source, tta, indices=idx, progress=progress) for p in (
        predictor_a, predictor_b)]  # fmt: skip
    thresholds = [p.threshold(threshold) for p in (predictor_a, predictor_b)]
    auc = delong_paired(y, probs[0], probs[1])
    mcnemar = mcnemar_exact(y, probs[0] >= thresholds[0], probs[1] >= thresholds[1])
    result = {
        "n": len(idx),
        "positives": int(y.sum()),
        "n_seen_in_training": n_seen,
        "tta": tta,
        "models": {
            "a": {**predictor_a.describe(), "threshold": thresholds[0], "roc_auc": auc.auc_a},
            "b": {**predictor_b.describe(), "threshold": thresholds[1], "roc_auc": auc.auc_b},
        },
        "auc_difference": {
            "a_minus_b": auc.diff,
            "se_delong": auc.se,
            "ci95": list(auc.ci95),
            "p_value": auc.p_value,
        },
        "mcnemar": mcnemar,
        "command": command,
    }
    with atomic_dir(out, False, inputs=[source.root], what="compare") as folder:
        (folder / "compare.json").write_text(json.dumps(result, indent=1))
        _write_predictions(folder / "predictions.csv", [source.ids[i] for i in idx], y, probs)
        _roc_figure(folder / "roc.png", y, probs, result)
    return result


def _write_predictions(path: Path, ids: list[str], y: np.ndarray, probs: list) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "p_a", "p_b"])
        for row in zip(ids, y.tolist(), probs[0].tolist(), probs[1].tolist(), strict=True):
            writer.writerow([row[0], row[1], f"{row[2]:.6f}", f"{row[3]:.6f}"])


def _roc_figure(path: Path, y: np.ndarray, probs: list, result: dict[str, Any]) -> None:
    """Both ROC curves on one axis, each with its operating point at its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    fig, ax = plt.subplots(figsize=(5.2, 5), layout="constrained")
    for key, p, colour in (("a", probs[0], "#1b6ca8"), ("b", probs[1], "#d95f02")):
        model = result["models"][key]
        RocCurveDisplay.from_predictions(
            y,
            p,
            ax=ax,
            name=f"{key.upper()}: {model['model']} ({model['engine']})",
            curve_kwargs={"color": colour},
            plot_chance_level=key == "b",
        )
        calls = p >= model["threshold"]
        tpr, fpr = calls[y == 1].mean(), calls[y == 0].mean()
        ax.plot(fpr, tpr, "o", color=colour, ms=7, mec="black")
    d = result["auc_difference"]
    ax.set_title(
        f"AUC A - B = {d['a_minus_b']:+.4f} (95% CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}), "
        f"n = {result['n']:,}",
        fontsize=9,
    )
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
