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
from histoscan.models.bundle import ModelFile, load_model_file

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
    n_mapped: int
    tta: str
    metrics: dict[str, Any]
    metrics_raw: dict[str, Any]
    images: dict[str, bytes] = field(default_factory=dict)  # section figure -> PNG
    cases: dict[str, Any] = field(default_factory=dict)
    embedding: Any = None
    audit: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def build_report(
    model: str | Path,
    source: PatchSource,
    out: Path,
    audit: Path | None = None,
    limit: int | None = None,
    tta: str = "d4",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the report to ``out`` atomically; return a summary with seconds per stage."""
    mf = load_model_file(resolve_model_path(model))
    if mf.net is None:
        raise ModelError(f"{mf.path}: the report needs torch weights (.pt), not ONNX")
    audit_data = _read_audit(audit) if audit is not None else None
    data = collect(mf, source, limit, tta, progress)
    data.audit = audit_data
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


def collect(
    mf: ModelFile, source: PatchSource, limit: int | None, tta: str, progress: bool
) -> ReportData:
    """Predict once, then compute metrics, plots, Grad-CAM cases and the embedding map."""
    from histoscan.evaluate import compute_metrics, write_plots
    from histoscan.explain import GradCAM, centre_fraction, figures, infer_source, map_embedding
    from histoscan.explain.runs import cluster_strip, mislabel_grid, select_cases

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    eval_idx, all_idx, on_val = report_indices(source, mf.card.get("val_ids") or [], limit)
    evaluated = infer_source(mf, source, eval_idx, tta, progress=progress)
    others_idx = np.setdiff1d(all_idx, eval_idx)
    pos_eval = np.searchsorted(all_idx, eval_idx)
    logits_1 = np.empty(len(all_idx))  # identity view, every mapped patch
    features = np.empty((len(all_idx), evaluated.features.shape[1]), dtype=np.float32)
    logits_1[pos_eval], features[pos_eval] = evaluated.logits[:, 0], evaluated.features
    if len(others_idx):
        rest = infer_source(mf, source, others_idx, "none", progress=progress)
        pos_rest = np.searchsorted(all_idx, others_idx)
        logits_1[pos_rest], features[pos_rest] = rest.logits[:, 0], rest.features
    lap("predict")

    labels = source.labels[eval_idx].astype(np.int64)
    logits = evaluated.logits.mean(axis=1)
    probs, probs_raw = sigmoid(logits / mf.temperature), sigmoid(logits)
    metrics = compute_metrics(labels, probs, mf.threshold)
    metrics_raw = compute_metrics(labels, probs_raw, mf.threshold, n_boot=50)
    data = ReportData(
        mf=mf,
        source=source,
        on_val_ids=on_val,
        n_mapped=len(all_idx),
        tta=tta,
        metrics=metrics,
        metrics_raw=metrics_raw,
        seconds=seconds,
    )
    if len(np.unique(labels)) == 2:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path in write_plots(Path(tmp), labels, probs, probs_raw, metrics).items():
                data.images[name] = Path(path).read_bytes()
    history = mf.card.get("history") or []
    if history:
        data.images["curves"] = training_curves_png(history)
    lap("metrics")

    pos, groups = select_cases(labels, probs, mf.threshold, n=6)
    if len(pos):
        images = source.read_many(eval_idx[pos])
        maps = GradCAM(mf).explain(images)
        data.images["gradcam"] = figures.gallery_png(images, maps, probs[pos], labels[pos], groups)
        fractions = centre_fraction(maps)  # NaN for an all-zero map
        for g in dict.fromkeys(groups):
            mine = fractions[[x == g for x in groups]]
            data.cases[g] = float(np.nanmean(mine)) if np.isfinite(mine).any() else None
    lap("gradcam")

    all_labels = source.labels[all_idx].astype(np.int64)
    probs_1 = sigmoid(logits_1 / mf.temperature)
    emap = map_embedding(features, all_labels, probs_1)
    data.embedding = emap
    data.images["umap_label"] = figures.scatter_png(emap.xy, all_labels, "label", "by label")
    data.images["umap_prob"] = figures.scatter_png(
        emap.xy, probs_1, "prob", "by predicted probability"
    )
    data.images["clusters"] = cluster_strip(source, all_idx, emap.clusters)
    data.images["mislabels"] = mislabel_grid(
        source, all_idx, emap.mislabels, all_labels, probs_1, limit=24
    )
    lap("embedding")
    return data


def training_curves_png(history: list[dict[str, float]]) -> bytes:
    """Loss and validation AUC per epoch from the card's per-epoch rows."""
    from histoscan.explain.figures import png_bytes, pyplot

    plt = pyplot()

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        return [p[0] + 1 for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss (NLL)")):
        ax1.plot(*series(key), marker="o", ms=3, label=label)
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend(fontsize=8)
    ax2.plot(*series("val_auc"), marker="o", ms=3, color="C2")
    ax2.set(xlabel="epoch", ylabel="ROC AUC", title="Validation ROC AUC (one view)")
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
