"""Evaluation: threshold metrics, ROC AUC with a bootstrap CI, calibration, and plots."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.calibration import sigmoid
from histoscan.data.sources import PatchSource
from histoscan.errors import DataError
from histoscan.io import atomic_dir

log = logging.getLogger(__name__)


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the ROC AUC, resampling patches with replacement."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = len(labels)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if labels[idx].min() == labels[idx].max():
            continue  # a resample with one class has no AUC
        aucs.append(roc_auc_score(labels[idx], scores[idx]))
    alpha = (1 - level) / 2
    return float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by size.

    For a binary model, 'confidence' is the predicted probability of tumour and 'accuracy' the
    observed tumour fraction in the bin (the reliability-diagram definition).
    """
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(labels[mask].mean() - probs[mask].mean())
    return float(ece)


def compute_metrics(
    labels: Sequence[int],
    probs: Sequence[float],
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number a reader needs for a binary classifier at one decision threshold."""
    from sklearn.metrics import (
        brier_score_loss,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    if len(y) == 0:
        raise DataError("no labelled patches to evaluate")
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    # for the tumour class; nan where undefined (no tumour called, or none present)
    prec, sens, f1, _ = (
        v[0]
        for v in precision_recall_fscore_support(
            y, pred, labels=[1], average=None, zero_division=np.nan
        )
    )
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "threshold": float(threshold),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "roc_auc_ci95": list(bootstrap_auc_ci(y, p, n_boot, seed)) if both else [None, None],
        "accuracy": float((tp + tn) / len(y)),
        "sensitivity": float(sens),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(prec),
        "f1": float(f1) if tp else 0.0,
        "nll": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def split_seen(predictor: Any, source: PatchSource, idx: np.ndarray) -> tuple[np.ndarray, int]:
    """The held-out part of ``idx`` when it mixes held-out and training patches, and the count of
    training patches; all of ``idx`` when every patch was seen in training (with a warning)."""
    seen = predictor.model_file.meta.seen_in_training([source.ids[i] for i in idx])
    n_seen = int(seen.sum())
    if n_seen == 0:
        return idx, 0
    if n_seen == len(idx):
        log.warning(
            "warning: all %d patches were used to train this model; metrics will be optimistic",
            n_seen,
        )
        return idx, n_seen
    log.warning(
        "warning: %d of %d patches were used to train this model; evaluating the %d held-out "
        "patches only",
        n_seen,
        len(idx),
        len(idx) - n_seen,
    )
    return idx[~seen], n_seen


def threshold_fit_overlap(
    predictor: Any, source: PatchSource, idx: np.ndarray, rule: str | float | None
) -> int:
    """How many evaluated patches a fitted threshold rule (youden, sens:X) was fitted on.

    Those rules are fitted on the model file's validation patches; evaluating on the same ones
    makes sensitivity and specificity at that threshold optimistic, so this warns.
    """
    text = str(rule).strip().lower() if rule is not None else ""
    if not (text == "youden" or text.startswith("sens:")):
        return 0
    fitted = set(predictor.model_file.card.get("val_ids") or [])
    n = sum(source.ids[i] in fitted for i in idx)
    if n:
        log.warning(
            "warning: the %s threshold was fitted on %d of the %d evaluated patches (the model's "
            "validation split); sensitivity and specificity at it are optimistic",
            text,
            n,
            len(idx),
        )
    return int(n)


def evaluate_model(
    predictor: Any,
    source: PatchSource,
    indices: Sequence[int] | None,
    out_dir: Path,
    tta: str = "d4",
    threshold_rule: str | float | None = None,
    progress: bool = True,
    n_boot: int = 1000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Predict labelled patches, write ``metrics.json``, plots and ``predictions.csv``.

    ``out_dir`` appears whole or not at all (``io.atomic_dir``; ``overwrite`` replaces a folder
    an earlier run made).

    Patches the model was trained on are left out when held-out ones are present (their count is
    ``n_seen_in_training``). Metrics are reported before (T = 1) and after temperature scaling;
    AUC is the same for both since scaling is monotonic, calibration numbers differ.
    """
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = source.labels[idx].astype(np.int64)
    if len(idx) == 0 or (labels < 0).any():
        raise DataError(f"{source.root}: evaluation needs labels for every patch")
    idx, n_seen = split_seen(predictor, source, idx)
    labels = source.labels[idx].astype(np.int64)
    if len(np.unique(labels)) < 2:
        only = "tumour (1)" if labels[0] == 1 else "normal (0)"
        held = " held-out" if n_seen else ""
        raise DataError(
            f"{source.root}: all {len(labels)}{held} patches are {only}; ROC AUC, sensitivity and "
            "specificity need both classes"
        )
    threshold = predictor.threshold(threshold_rule)  # a bad rule fails before the work
    n_fit = threshold_fit_overlap(predictor, source, idx, threshold_rule)
    logits = predictor.logits_source(source, tta, idx, progress, label="evaluate")
    probs_raw = sigmoid(logits)
    probs = sigmoid(logits / predictor.temperature)
    result = {
        "model": predictor.name,
        "inference": predictor.describe(),
        "data": source.describe(),
        "n_evaluated": len(idx),
        "n_seen_in_training": n_seen,
        "tta": str(tta),
        "temperature": predictor.temperature,
        "threshold_rule": str(threshold_rule if threshold_rule is not None else "stored"),
        "n_evaluated_in_threshold_fit": n_fit,
        "calibrated": compute_metrics(labels, probs, threshold, n_boot),
        "uncalibrated": compute_metrics(labels, probs_raw, threshold, n_boot),
    }
    with atomic_dir(out_dir, overwrite=overwrite, inputs=[source.root], what="evaluate") as tmp:
        plots = write_plots(tmp, labels, probs, probs_raw, result["calibrated"])
        result["plots"] = {name: str(Path(out_dir) / Path(p).name) for name, p in plots.items()}
        from histoscan.predict import write_predictions

        write_predictions(
            tmp / "predictions.csv",
            [source.ids[i] for i in idx],
            probs,
            extra={"true_label": labels.tolist()},
        )
        result["n_misclassified"] = write_misclassified(
            tmp / "misclassified", source, idx, labels, probs, threshold
        )
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2))
    return {**result, "probs": probs, "labels": labels, "logits": logits, "indices": idx}


def write_misclassified(
    folder: Path,
    source: PatchSource,
    idx: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    max_images: int = 200,
) -> int:
    """The wrong calls at ``threshold``: ``folder/misclassified.csv`` (every one, most confident
    first: id, label, p_tumor, prediction, kind FP/FN, image) and a PNG of each of the first
    ``max_images`` at 2x, for a pathologist to look through. Returns how many there are."""
    import csv

    from PIL import Image

    calls = (probs >= threshold).astype(np.int64)
    wrong = np.flatnonzero(calls != labels)
    wrong = wrong[np.argsort(-np.abs(probs[wrong] - threshold), kind="stable")]  # surest first
    folder.mkdir()
    shown = wrong[:max_images]
    images = source.read_many(idx[shown]) if len(shown) else []
    with open(folder / "misclassified.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label", "p_tumor", "prediction", "kind", "image"])
        for rank, j in enumerate(wrong):
            kind = "FP" if labels[j] == 0 else "FN"
            name = ""
            if rank < len(shown):
                safe = re.sub(r"[^A-Za-z0-9._-]", "_", source.ids[idx[j]])  # PCam: "train/12"
                name = f"{rank + 1:03d}_{kind}_{safe}.png"
                big = np.repeat(np.repeat(images[rank], 2, axis=0), 2, axis=1)  # (2H, 2W, 3)
                Image.fromarray(big).save(folder / name)
            writer.writerow(
                [source.ids[idx[j]], int(labels[j]), f"{probs[j]:.6f}", int(calls[j]), kind, name]
            )
    return len(wrong)


def write_plots(
    out_dir: Path,
    labels: np.ndarray,
    probs: np.ndarray,
    probs_raw: np.ndarray,
    metrics: dict[str, Any],
) -> dict[str, str]:
    """ROC, precision-recall, reliability (before/after temperature) and confusion PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    paths = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=110)
        plt.close(fig)
        paths[name] = str(out_dir / f"{name}.png")

    # sklearn's Displays draw the curves; the legends say what a reader needs (AUC with its CI)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    lo, hi = metrics["roc_auc_ci95"]
    roc = RocCurveDisplay.from_predictions(labels, probs, ax=ax)
    roc.line_.set_label(f"AUC {metrics['roc_auc']:.4f} (95% CI {lo:.4f}-{hi:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc")

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    pr = PrecisionRecallDisplay.from_predictions(labels, probs, ax=ax)
    pr.line_.set_label(f"AP {pr.average_precision:.4f}")
    ax.axhline(labels.mean(), ls="--", c="grey", lw=0.8, label="prevalence")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    save(fig, "pr")

    # the diagram over a histogram of how many patches fall in each bin: a point made of a
    # handful of patches says little
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.1]}
    )
    for k, (name, p) in enumerate(
        (("before (T=1)", probs_raw), ("after temperature scaling", probs))
    ):
        centres, observed, counts = reliability_bins(labels, p)
        ax.plot(
            centres,
            observed,
            marker="o",
            ms=3,
            label=f"{name}, ECE {expected_calibration_error(labels, p):.3f}",
        )
        width = 0.042
        ax_n.bar(centres + (k - 0.5) * width, counts, width=width, label=name)
        if k == 1:
            for x, n in zip(centres, counts, strict=True):
                ax_n.annotate(f"{n:,}", (x + 0.5 * width, n), ha="center", va="bottom", fontsize=6)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(ylabel="observed tumour fraction", title="Reliability diagram (10 bins)")
    ax.legend(loc="upper left", fontsize=8)
    ax_n.set_yscale("log")
    ax_n.margins(y=0.35)
    ax_n.set(xlabel="predicted probability", ylabel="patches per bin")
    save(fig, "reliability")

    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ConfusionMatrixDisplay(
        np.asarray(metrics["confusion"]), display_labels=["normal", "tumour"]
    ).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion at threshold {metrics['threshold']:.2f}",
    )
    save(fig, "confusion")
    return paths


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability, observed positive fraction and count per non-empty bin.

    Bins as ``expected_calibration_error`` makes them (a value on an edge goes up), so the
    diagram and the ECE beside it agree; sklearn's ``calibration_curve`` puts edge values down.
    """
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    rows = [
        (probs[which == b].mean(), labels[which == b].mean(), (which == b).sum())
        for b in range(bins)
        if (which == b).any()
    ]
    centres, observed, counts = (np.array(col) for col in zip(*rows, strict=True))
    return centres, observed, counts
