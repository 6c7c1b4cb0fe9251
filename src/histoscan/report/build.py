"""Collect a report's numbers and figures: predict once, then metrics, Grad-CAM and embedding.

Every patch is predicted once: the evaluation patches with test-time augmentation (as the model
card's validation AUC was measured), the others with one view; the identity view also yields
the features for the embedding map.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.calibration import sigmoid
from histoscan.data.sources import PatchSource, atomic_write_bytes
from histoscan.errors import DataError, ModelError
from histoscan.models.modelfile import ModelFile

log = logging.getLogger(__name__)


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a run directory holding ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ModelError(f"{path}: run directory without model.pt (did training finish?)")
        return path / "model.pt"
    return path


def report_indices(
    source: PatchSource, val_ids: list[str], limit: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Evaluation indices, all indices to map (a superset, sorted) and whether eval = val ids.

    The evaluation set is the model's validation ids found in the data, else every labelled
    patch. ``limit`` caps both: evaluation patches first, then a random sample of the rest.
    """
    labelled = np.flatnonzero(source.labels >= 0)
    if len(labelled) == 0:
        raise DataError(f"{source.root}: the report needs labelled patches (pass --labels?)")
    wanted = set(val_ids)
    matched = np.array([i for i in labelled if source.ids[i] in wanted], dtype=np.int64)
    eval_idx = matched if len(matched) else labelled
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(eval_idx):
        eval_idx = np.sort(rng.choice(eval_idx, size=limit, replace=False))
    rest = np.setdiff1d(np.arange(len(source)), eval_idx)
    room = len(rest) if limit is None else max(0, limit - len(eval_idx))
    if room < len(rest):
        rest = rng.choice(rest, size=room, replace=False)
    return eval_idx, np.union1d(eval_idx, rest), len(matched) > 0


@dataclass
class ReportData:
    """Everything the page shows; built by ``collect``, drawn by ``render``."""

    mf: ModelFile
    source: PatchSource
    on_val_ids: bool
    inference: dict[str, Any]  # Predictor.describe(): engine, precision, device
    n_params: int
    n_mapped: int
    tta: str
    metrics: dict[str, Any]
    metrics_raw: dict[str, Any]
    images: dict[str, bytes] = field(default_factory=dict)  # section figure -> PNG
    cases: dict[str, Any] = field(default_factory=dict)
    embedding: Any = None
    audit: dict[str, Any] | None = None
    command: str | None = None  # the command line that made the page
    mislabel_rows: list[list[Any]] = field(default_factory=list)  # id, label, prob, cluster, seen
    n_seen_mapped: int = 0  # mapped patches the model was trained on
    seconds: dict[str, float] = field(default_factory=dict)


def build_report(
    model: str | Path,
    source: PatchSource,
    out: Path,
    audit: Path | None = None,
    limit: int | None = None,
    tta: str = "d4",
    progress: bool = True,
    engine: str = "auto",
    device: str = "auto",
    batch_size: int = 256,
    command: str | None = None,
) -> dict[str, Any]:
    """Write the report to ``out`` atomically; return a summary with seconds per stage.

    ``command`` (the command line that ran) is the page's "Reproduce" line.

    Metrics come from the same engine, and so the same numbers, as ``histoscan evaluate`` with
    the same ``engine``; Grad-CAM from the model's torch weights.
    """
    from histoscan.predict import Predictor

    predictor = Predictor.load(
        resolve_model_path(model), engine=engine, device=device, batch_size=batch_size
    )
    predictor.torch_model_file()  # Grad-CAM needs torch: fail before the work, not after
    audit_data = _read_audit(audit) if audit is not None else None
    data = collect(predictor, source, limit, tta, progress)
    if audit_data is not None:
        from histoscan.audit.summary import coverage

        audit_data["coverage"] = coverage(audit, list(source.ids))
    data.audit = audit_data
    data.command = command
    started = time.perf_counter()
    from histoscan.report.page import render

    page = render(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode("utf-8"))
    data.seconds["html"] = time.perf_counter() - started
    log.info("report written to %s (%.1f MB)", out, len(page) / 1e6)
    return {
        "out": str(out),
        "n_eval": data.metrics["n"],
        "n_mapped": data.n_mapped,
        "roc_auc": data.metrics["roc_auc"],
        "seconds": data.seconds,
    }


@dataclass
class Predictions:
    """One forward pass over the report's patches."""

    eval_idx: np.ndarray  # (E,) source indices of the evaluation patches
    all_idx: np.ndarray  # (N,) sorted source indices of every mapped patch, eval_idx included
    on_val_ids: bool
    logits_eval: np.ndarray  # (E,) mean logit over the TTA views, before temperature
    logits_1: np.ndarray  # (N,) identity-view logit
    features: np.ndarray  # (N, D) identity-view pre-logit features


def predict_once(
    predictor: Any, source: PatchSource, limit: int | None, tta: str, progress: bool
) -> Predictions:
    """Evaluation patches with ``tta``, the others with one view; features from the identity."""
    card = predictor.model_file.card
    eval_idx, all_idx, on_val = report_indices(source, card.get("val_ids") or [], limit)
    evaluated = predictor.infer_source(source, tta, eval_idx, features=True, progress=progress)
    logits_1 = np.empty(len(all_idx))
    features = np.empty((len(all_idx), evaluated.features.shape[1]), dtype=np.float32)
    pos = np.searchsorted(all_idx, eval_idx)
    logits_1[pos], features[pos] = evaluated.logits[:, 0], evaluated.features
    others = np.setdiff1d(all_idx, eval_idx)
    if len(others):
        rest = predictor.infer_source(source, "none", others, features=True, progress=progress)
        pos = np.searchsorted(all_idx, others)
        logits_1[pos], features[pos] = rest.logits[:, 0], rest.features
    return Predictions(eval_idx, all_idx, on_val, evaluated.logits.mean(axis=1), logits_1, features)


def collect(
    predictor: Any, source: PatchSource, limit: int | None, tta: str, progress: bool
) -> ReportData:
    """Predict once, then compute metrics, plots, Grad-CAM cases and the embedding map."""
    from histoscan.evaluate import compute_metrics

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    mf = predictor.model_file
    torch_mf = predictor.torch_model_file()
    pred = predict_once(predictor, source, limit, tta, progress)
    lap("predict")
    labels = source.labels[pred.eval_idx].astype(np.int64)
    probs = sigmoid(pred.logits_eval / mf.temperature)
    probs_raw = sigmoid(pred.logits_eval)
    data = ReportData(
        mf=mf,
        source=source,
        on_val_ids=pred.on_val_ids,
        inference=predictor.describe(),
        n_params=sum(p.numel() for p in torch_mf.torch_net().parameters()),
        n_mapped=len(pred.all_idx),
        tta=tta,
        metrics=compute_metrics(labels, probs, mf.threshold),
        # only its calibration numbers are shown; AUC and its CI equal the calibrated ones
        metrics_raw=compute_metrics(labels, probs_raw, mf.threshold, n_boot=50),
        seconds=seconds,
    )
    add_metric_figures(data, labels, probs, probs_raw)
    lap("metrics")
    add_gradcam(data, torch_mf, pred.eval_idx, labels, probs)
    lap("gradcam")
    add_embedding(data, pred)
    lap("embedding")
    return data


def add_metric_figures(
    data: ReportData, labels: np.ndarray, probs: np.ndarray, probs_raw: np.ndarray
) -> None:
    """ROC, PR, reliability and confusion (evaluate's plots) and the training curves."""
    from histoscan.evaluate import write_plots

    if len(np.unique(labels)) == 2:  # curves need both classes
        with tempfile.TemporaryDirectory() as tmp:
            plots = write_plots(Path(tmp), labels, probs, probs_raw, data.metrics)
            for name, path in plots.items():
                data.images[name] = Path(path).read_bytes()
    card = data.mf.card
    # an ensemble's card keeps each member's history; its own is one member's
    histories = card.get("member_histories") or [card.get("history") or []]
    if any(histories):
        data.images["curves"] = training_curves_png(histories)


def add_gradcam(
    data: ReportData,
    torch_mf: ModelFile,
    eval_idx: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
) -> None:
    """The Grad-CAM gallery of the most confident TP/TN/FP/FN, and each case's centre share."""
    from histoscan.explain import GradCAM, centre_fraction, figures
    from histoscan.explain.runs import select_cases

    pos, groups = select_cases(labels, probs, data.mf.threshold, n=6)
    if not len(pos):
        return
    images = data.source.read_many(eval_idx[pos])
    maps = GradCAM(torch_mf).explain(images)
    data.images["gradcam"] = figures.gallery_png(images, maps, probs[pos], labels[pos], groups)
    fractions = centre_fraction(maps)  # NaN for an all-zero map
    for g in dict.fromkeys(groups):
        mine = fractions[[x == g for x in groups]]
        data.cases[g] = float(np.nanmean(mine)) if np.isfinite(mine).any() else None


def add_embedding(data: ReportData, pred: Predictions) -> None:
    """The 2-D map by label and probability, cluster strips and mislabel candidates."""
    from histoscan.explain import figures, map_embedding
    from histoscan.explain.runs import cluster_strip, held_out_stats, mislabel_grid

    source, idx = data.source, pred.all_idx
    labels = source.labels[idx].astype(np.int64)
    probs = sigmoid(pred.logits_1 / data.mf.temperature)
    seen = np.asarray(data.mf.meta.seen_in_training([source.ids[i] for i in idx]), dtype=bool)
    data.n_seen_mapped = int(seen.sum())
    emap = data.embedding = map_embedding(pred.features, labels, probs)
    emap.clusters = [{**c, **held_out_stats(c, emap, labels, seen)} for c in emap.clusters]
    data.images["umap_label"] = figures.scatter_png(emap.xy, labels, "label", "by label", seen)
    data.images["umap_prob"] = figures.scatter_png(emap.xy, probs, "prob", "by probability", seen)
    data.images["clusters"] = cluster_strip(source, idx, emap.clusters)
    data.images["mislabels"] = mislabel_grid(
        source, idx, emap.mislabels, labels, probs, 24, seen=seen
    )
    data.mislabel_rows = [
        [
            source.ids[idx[j]],
            int(labels[j]),
            f"{probs[j]:.3f}",
            int(emap.cluster[j]),
            "yes" if seen[j] else "no",
        ]
        for j in emap.mislabels
    ]


def training_curves_png(histories: list[list[dict[str, float]]]) -> bytes:
    """Loss and validation AUC per epoch from per-epoch rows, one line per trained network."""
    from histoscan.explain.figures import png_bytes, pyplot

    plt = pyplot()

    def series(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
        pts = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        return [p[0] + 1 for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.3))
    # one colour per network (member), one line style per curve: solid training, dashed validation
    for k, history in enumerate(histories):
        who = f", member {k + 1}" if len(histories) > 1 else ""
        colour = f"C{k % 10}"
        for key, label, style in (
            ("train_loss", "training loss", "-"),
            ("val_loss", "validation loss (NLL)", "--"),
        ):
            ax1.plot(
                *series(history, key),
                marker="o",
                ms=2.5,
                color=colour,
                ls=style,
                label=label + who,
            )
        ax2.plot(
            *series(history, "val_auc"),
            marker="o",
            ms=2.5,
            color=colour,
            ls="--",
            label=f"validation AUC{who}",
        )
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend(fontsize=7.5)
    ax2.set(xlabel="epoch", ylabel="ROC AUC", title="Validation ROC AUC (one view, per epoch)")
    if len(histories) > 1:
        ax2.legend(fontsize=7.5)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def _read_audit(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the audit ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: not an audit.json (expected an object)")
    return data
