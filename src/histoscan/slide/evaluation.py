"""CAMELYON16's metrics for slide results: slide-level ROC AUC and lesion-level FROC.

Slide level: the ROC AUC of the slide scores (``slide_score_max`` by default) against the
slide labels (a ``slide,label`` CSV, else "has tumour annotations").

Lesion level, as the challenge's evaluation script does it: the annotated tumour polygons are
rasterised, dilated by 75 um (about five tumour cells) and split into connected lesions; a
lesion whose longest axis is under 275 um after dilation (200 um before: isolated tumour cells)
is left out, and candidates that fall in it count neither way. A candidate from lesions.csv
inside a lesion detects it (a lesion counts once, with its most confident candidate); one
outside every lesion is a false positive. Sweeping the confidence threshold gives the FROC
curve, sensitivity against mean false positives per slide, and the score is the mean
sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide (linear interpolation on the
curve, as the challenge's script does with ``np.interp``).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.errors import DataError
from histoscan.slide.annotations import Annotations, find_annotation, read_annotations
from histoscan.slide.lesions import read_lesions

log = logging.getLogger(__name__)

DILATE_UM = 75.0
ITC_UM = 275.0  # longest axis of a dilated lesion below which it is isolated tumour cells
FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
RASTER_UM = 4.0  # evaluation mask resolution, coarsened so its longer side is <= RASTER_MAX_PX
RASTER_MAX_PX = 4096
POSITIVE = {"1", "tumor", "tumour", "true", "yes", "positive"}
NEGATIVE = {"0", "normal", "false", "no", "negative"}


@dataclass
class SlideEval:
    """One slide: its label and score, and what its candidates hit."""

    name: str
    label: int
    score: float | None
    n_lesions: int  # lesions that count (isolated tumour cells left out)
    lesion_hits: list[float]  # per lesion that counts: best confidence, or -inf when missed
    false_positives: list[float]  # confidences of candidates outside every lesion


def lesion_mask(
    annotations: Annotations, width_px: int, height_px: int, mpp: float
) -> tuple[np.ndarray, set[int], float]:
    """Labelled lesions (0 = none), the labels that are isolated tumour cells, and level-0
    pixels per mask pixel."""
    from scipy import ndimage
    from skimage.draw import polygon as fill_polygon
    from skimage.measure import label, regionprops

    um_per_px = max(RASTER_UM, max(width_px, height_px) * mpp / RASTER_MAX_PX)
    l0_per_px = um_per_px / mpp
    shape = (int(np.ceil(height_px / l0_per_px)), int(np.ceil(width_px / l0_per_px)))
    tumour = np.zeros(shape, dtype=bool)
    for target, value in ((annotations.tumour, True), (annotations.excluded, False)):
        for ring in target:
            rr, cc = fill_polygon(ring[:, 1] / l0_per_px, ring[:, 0] / l0_per_px, shape)
            tumour[rr, cc] = value
    if tumour.any():
        distance = ndimage.distance_transform_edt(~tumour) * um_per_px
        tumour = distance <= DILATE_UM
    labels = label(tumour, connectivity=2)
    itc = {r.label for r in regionprops(labels) if r.axis_major_length * um_per_px < ITC_UM}
    return labels, itc, l0_per_px


def match_candidates(
    candidates: np.ndarray, labels: np.ndarray, itc: set[int], l0_per_px: float
) -> tuple[list[float], list[float]]:
    """(best confidence per lesion that counts, or -inf), (confidences of false positives)."""
    counted = [k for k in range(1, int(labels.max()) + 1) if k not in itc]
    best = dict.fromkeys(counted, -np.inf)
    false_positives = []
    h, w = labels.shape
    for p, x, y in candidates:
        row, col = int(y // l0_per_px), int(x // l0_per_px)
        hit = int(labels[row, col]) if 0 <= row < h and 0 <= col < w else 0
        if hit == 0:
            false_positives.append(float(p))
        elif hit in best:
            best[hit] = max(best[hit], float(p))
        # inside isolated tumour cells: neither a hit nor a false positive
    return [best[k] for k in counted], false_positives


def froc(slides: list[SlideEval]) -> dict[str, Any]:
    """The FROC curve over all slides and its score (mean sensitivity at FP_RATES)."""
    hits = np.array([h for s in slides for h in s.lesion_hits], dtype=np.float64)
    fps = np.array([f for s in slides for f in s.false_positives], dtype=np.float64)
    n_lesions, n_slides = len(hits), len(slides)
    if n_lesions == 0:
        return {"score": None, "lesions": 0, "note": "no tumour lesions annotated"}
    thresholds = np.unique(np.concatenate([hits[np.isfinite(hits)], fps]))[::-1]
    fp_rate = [0.0] + [float((fps >= t).sum()) / n_slides for t in thresholds]
    sensitivity = [0.0] + [float((hits >= t).sum()) / n_lesions for t in thresholds]
    xp, fp_index = np.unique(fp_rate, return_inverse=True)  # best sensitivity per FP rate
    yp = np.zeros(len(xp))
    np.maximum.at(yp, fp_index, sensitivity)
    at = np.interp(FP_RATES, xp, yp)
    return {
        "score": round(float(at.mean()), 6),
        "sensitivity_at": {f"{r:g}": round(float(s), 6) for r, s in zip(FP_RATES, at, strict=True)},
        "lesions": n_lesions,
        "slides": n_slides,
        "curve": {"fp_per_slide": xp.tolist(), "sensitivity": yp.tolist()},
    }


def slide_auc(slides: list[SlideEval]) -> float | None:
    """ROC AUC of the slide scores; None unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    scored = [s for s in slides if s.score is not None]
    labels = [s.label for s in scored]
    if len(set(labels)) < 2:
        return None
    return round(float(roc_auc_score(labels, [s.score for s in scored])), 6)


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """The summaries (with ``out_dir``) of the slides a ``histoscan slide`` run finished."""
    index = results_dir / "slides.csv"
    if not index.is_file():
        if (results_dir / "summary.json").is_file():
            return [_summary(results_dir)]
        raise DataError(
            f"{results_dir}: no slides.csv or summary.json (a `histoscan slide` output)"
        )
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    summaries = []
    for row in rows:
        if row.get("status") not in ("done", "skipped"):
            log.warning("%s: left out (%s)", row.get("slide"), row.get("status"))
            continue
        folder = Path(row.get("out_dir", ""))
        if not (folder / "summary.json").is_file():
            folder = results_dir / folder.name
        summaries.append(_summary(folder))
    if not summaries:
        raise DataError(f"{index}: no finished slides to evaluate")
    return summaries


def _summary(folder: Path) -> dict[str, Any]:
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / 'summary.json'}: unreadable ({exc})") from exc
    summary["out_dir"] = folder
    return summary


def read_labels(path: Path) -> dict[str, int]:
    """``slide,label`` CSV -> {slide stem: 0/1}; labels 1/0, tumor/normal, true/false."""
    labels = {}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels ({exc})") from exc
    for k, row in enumerate(rows, start=1):
        if len(row) < 2 or (k == 1 and row[1].strip().lower() == "label"):
            continue
        value = row[1].strip().lower()
        if value not in POSITIVE | NEGATIVE:
            raise DataError(f"{path}: line {k}: label {row[1]!r} is not tumor/normal or 1/0")
        labels[Path(row[0].strip()).name.split(".")[0]] = int(value in POSITIVE)
    return labels


def evaluate_slides(
    results_dir: Path, annotations_dir: Path, labels_csv: Path | None = None
) -> tuple[dict[str, Any], list[SlideEval]]:
    """Slide AUC and lesion FROC of a ``histoscan slide`` output folder."""
    if not annotations_dir.is_dir():
        raise DataError(f"{annotations_dir}: no such folder of annotations")
    labels = read_labels(labels_csv) if labels_csv is not None else {}
    slides = []
    for summary in load_results(results_dir):
        slide = Path(summary["slide"])
        stem = slide.name.split(".")[0]
        found = find_annotation(annotations_dir, slide)
        annotations = read_annotations(found) if found else Annotations()
        label = labels.get(stem, int(bool(annotations.tumour)))
        if label and not annotations.tumour:
            raise DataError(f"{slide.name}: labelled tumour but {annotations_dir} has no polygons")
        masks = lesion_mask(annotations, summary["width_px"], summary["height_px"], summary["mpp"])
        candidates = read_lesions(Path(summary["out_dir"]) / "lesions.csv")
        hits, fps = match_candidates(candidates, *masks)
        slides.append(SlideEval(stem, label, summary.get("slide_score_max"), len(hits), hits, fps))
    curve = froc(slides)
    metrics = {
        "slides": len(slides),
        "tumour_slides": sum(s.label for s in slides),
        "slide_auc": slide_auc(slides),
        "slide_score": "slide_score_max",
        "froc": curve,
        "per_slide": [
            {
                "slide": s.name,
                "label": s.label,
                "score": s.score,
                "lesions": s.n_lesions,
                "detected": int(np.isfinite(s.lesion_hits).sum()),
                "false_positives": len(s.false_positives),
            }
            for s in slides
        ],
    }
    return metrics, slides


def plot_froc(path: Path, metrics: dict[str, Any]) -> None:
    """froc.png: sensitivity against false positives per slide, the six operating points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curve = metrics["froc"].get("curve")
    if curve:
        ax.plot(curve["fp_per_slide"], curve["sensitivity"], color="#d95f0e")
        at = metrics["froc"]["sensitivity_at"]
        ax.plot([float(r) for r in at], list(at.values()), "o", color="#993404")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    score = metrics["froc"].get("score")
    ax.set_title(f"FROC {score:.3f}" if score is not None else "FROC: no lesions annotated")
    ax.grid(alpha=0.3)
    fig.savefig(path, bbox_inches="tight")
