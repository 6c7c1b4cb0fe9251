"""The ``explain`` and ``embed`` commands' work: pick patches, compute, write one output folder.

Output folders are built under a hidden name beside the target and renamed at the end, so an
interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoscan.data.sources import PatchSource
from histoscan.errors import DataError
from histoscan.explain import figures
from histoscan.explain.embedding import map_embedding
from histoscan.explain.gradcam import GradCAM, centre_fraction, overlay, with_centre_box
from histoscan.io import atomic_dir

log = logging.getLogger(__name__)

CASES = ("TP", "TN", "FP", "FN")


def seen_in_training(predictor: Any, source: PatchSource, idx: np.ndarray) -> np.ndarray:
    """(N,) bool: which of the patches ``idx`` the model was trained on; warns with the count."""
    seen = np.asarray(
        predictor.model_file.meta.seen_in_training([source.ids[i] for i in idx]), dtype=bool
    )
    if seen.any():
        log.warning(
            "warning: %d of %d patches were used to train this model; they are marked "
            "seen_in_training (and drawn apart in the maps)",
            int(seen.sum()),
            len(idx),
        )
    return seen


def indices_for_ids(source: PatchSource, ids: Sequence[str]) -> np.ndarray:
    """Source indices of ``ids``, in the order given; DataError naming the unknown ones."""
    where = {key: i for i, key in enumerate(source.ids)}
    missing = [key for key in ids if key not in where]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"{source.root}: no patch with id {', '.join(missing[:3])}{more}")
    return np.array([where[key] for key in ids], dtype=np.int64)


def sample_indices(candidates: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``candidates``, drawn at random and kept in source order."""
    if limit is None or limit >= len(candidates):
        return np.asarray(candidates, dtype=np.int64)
    if limit < 1:
        raise DataError("--limit must be at least 1")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=limit, replace=False)).astype(np.int64)


def case_of(label: int, prob: float, threshold: float) -> str:
    """TP, TN, FP or FN for a labelled patch; '?' for an unlabelled one."""
    if label < 0:
        return "?"
    called = prob >= threshold
    return {(1, True): "TP", (0, False): "TN", (0, True): "FP", (1, False): "FN"}[(label, called)]


def select_cases(
    labels: np.ndarray, probs: np.ndarray, threshold: float, n: int
) -> tuple[np.ndarray, list[str]]:
    """The ``n`` most confident TP, TN, FP and FN (positions into the arrays) and their cases."""
    called = probs >= threshold
    pools = {
        "TP": (labels == 1) & called,
        "TN": (labels == 0) & ~called,
        "FP": (labels == 0) & called,
        "FN": (labels == 1) & ~called,
    }
    chosen: list[int] = []
    groups: list[str] = []
    for case in CASES:
        idx = np.flatnonzero(pools[case])
        # most confident: furthest from the threshold on the side the model chose
        order = np.argsort(-np.abs(probs[idx] - threshold), kind="stable")
        picked = idx[order[:n]].tolist()
        chosen += picked
        groups += [case] * len(picked)
    return np.array(chosen, dtype=np.int64), groups


def choose_patches(
    predictor: Any,
    source: PatchSource,
    ids: Sequence[str] | None,
    n: int,
    tta: str = "none",
    limit: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int]:
    """The patches to explain: the ``ids`` given, or the ``n`` most confident TP/TN/FP/FN.

    Returns the chosen patches' source indices, probabilities, labels and cases, and how many
    patches were predicted to choose them (at most ``limit`` labelled ones).
    """
    if ids:
        idx = indices_for_ids(source, ids)
    else:
        labelled = np.flatnonzero(source.labels >= 0)
        if len(labelled) == 0:
            raise DataError(f"{source.root}: no labels, so no TP/TN/FP/FN; pass --ids")
        idx = sample_indices(labelled, limit)
    if not ids:  # cases from the held-out patches when there are any
        seen = predictor.model_file.meta.seen_in_training([source.ids[i] for i in idx])
        if 0 < np.sum(seen) < len(idx):
            idx = idx[~np.asarray(seen, dtype=bool)]
    mf = predictor.model_file
    probs = predictor.infer_source(source, tta, idx, progress=progress).probs(mf.temperature)
    labels = source.labels[idx].astype(np.int64)
    if ids:
        pos = np.arange(len(idx))
        groups = [
            case_of(int(y), float(p), mf.threshold) for y, p in zip(labels, probs, strict=True)
        ]
    else:
        pos, groups = select_cases(labels, probs, mf.threshold, n)
    return idx[pos], probs[pos], labels[pos], groups, len(idx)


def run_explain(
    predictor: Any,
    source: PatchSource,
    out: Path,
    ids: Sequence[str] | None = None,
    n: int = 8,
    tta: str = "none",
    limit: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Grad-CAM for chosen ids, or for the most confident TP/TN/FP/FN: gallery, PNGs, JSON.

    Probabilities come from the predictor's engine; Grad-CAM from the torch weights of the same
    model (it needs gradients, so torch: the ``train`` extra).
    """
    mf = predictor.model_file
    torch_mf = predictor.torch_model_file()  # fails now, not after predicting, without torch
    if n < 1:
        raise DataError("--n must be at least 1")
    with atomic_dir(out, overwrite=overwrite, inputs=[source.root], what="explain") as tmp:
        idx, probs, labels, groups, n_scanned = choose_patches(
            predictor, source, ids, n, tta, limit, progress
        )
        images = source.read_many(idx)
        maps = GradCAM(torch_mf).explain(images)
        gallery = figures.gallery_png(images, maps, probs, labels, groups)
        (tmp / "gradcam.png").write_bytes(gallery)
        rows = _write_patch_pngs(tmp / "patches", source, idx, images, maps, groups)
        seen = seen_in_training(predictor, source, idx)
        for row, y, p, frac, s in zip(
            rows, labels, probs, centre_fraction(maps), seen, strict=True
        ):
            share = None if np.isnan(frac) else round(float(frac), 4)
            row.update(
                label=int(y),
                prob=round(float(p), 6),
                centre_fraction=share,
                seen_in_training=bool(s),
            )
        summary = {
            "model": mf.path.name,
            "inference": predictor.describe(),
            "data": source.describe(),
            "tta": tta,
            "temperature": mf.temperature,
            "threshold": mf.threshold,
            "target_layer": mf.spec.target_layer,
            "n_scanned": n_scanned,
            "n_seen_in_training": int(seen.sum()),
            "counts": {g: groups.count(g) for g in dict.fromkeys(groups)},
            "patches": rows,
        }
        (tmp / "explain.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_patch_pngs(
    folder: Path,
    source: PatchSource,
    indices: np.ndarray,
    images: np.ndarray,
    maps: np.ndarray,
    groups: Sequence[str],
) -> list[dict[str, Any]]:
    """One PNG per patch: the patch and its overlay side by side, enlarged 2x, centre outlined."""
    folder.mkdir()
    rows = []
    rank: dict[str, int] = {}
    for i, image, cam, group in zip(indices, images, maps, groups, strict=True):
        rank[group] = rank.get(group, 0) + 1
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", source.ids[i])  # PCam ids are "train/123"
        name = f"{group.replace('?', 'unlabelled')}_{rank[group]:02d}_{safe_id}.png"
        pair = np.concatenate([with_centre_box(image), with_centre_box(overlay(image, cam))], 1)
        Image.fromarray(pair).save(folder / name)
        rows.append({"id": source.ids[i], "case": group, "file": f"patches/{name}"})
    return rows


def run_embed(
    predictor: Any,
    source: PatchSource,
    out: Path,
    n_clusters: int = 8,
    limit: int | None = None,
    tta: str = "none",
    method: str = "umap",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embedding map, clusters and mislabel candidates of (up to ``limit``) patches."""
    if n_clusters < 1:
        raise DataError("--clusters must be at least 1")
    with atomic_dir(out, overwrite=overwrite, inputs=[source.root], what="embed") as tmp:
        idx = sample_indices(np.arange(len(source)), limit)
        result = predictor.infer_source(source, tta, idx, features=True, progress=progress)
        probs = result.probs(predictor.temperature)
        labels = source.labels[idx].astype(np.int64)
        emap = map_embedding(result.features, labels, probs, n_clusters, method)
        ids = [source.ids[i] for i in idx]
        seen = seen_in_training(predictor, source, idx)
        with open(tmp / "embedding.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["id", "x", "y", "label", "prob", "cluster", "seen_in_training"])
            for j, key in enumerate(ids):
                writer.writerow(
                    [
                        key,
                        f"{emap.xy[j, 0]:.4f}",
                        f"{emap.xy[j, 1]:.4f}",
                        labels[j] if labels[j] >= 0 else "",
                        f"{probs[j]:.6f}",
                        int(emap.cluster[j]),
                        int(seen[j]),
                    ]
                )
        write_embedding_figures(tmp, source, idx, emap, labels, probs, seen)
        clusters = [
            {
                **c,
                "exemplars": [ids[j] for j in c["exemplars"]],
                **held_out_stats(c, emap, labels, seen),
            }
            for c in emap.clusters
        ]
        summary = {
            "model": predictor.model_file.path.name,
            "inference": predictor.describe(),
            "data": source.describe(),
            "tta": tta,
            "method": emap.method,
            "n": len(idx),
            "n_seen_in_training": int(seen.sum()),
            "clusters": clusters,
            "mislabel_candidates": len(emap.mislabels),
        }
        (tmp / "clusters.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_embedding_figures(
    folder: Path,
    source: PatchSource,
    idx: np.ndarray,
    emap: Any,
    labels: np.ndarray,
    probs: np.ndarray,
    seen: np.ndarray | None = None,
) -> None:
    """umap_label.png, umap_prob.png, clusters.png, mislabel_candidates.csv and .png.

    ``seen`` (N,) bool marks patches the model was trained on, in the maps and the lists.
    """
    seen = np.zeros(len(idx), bool) if seen is None else seen
    name = emap.method.upper().replace("TSNE", "t-SNE")
    (folder / "umap_label.png").write_bytes(
        figures.scatter_png(emap.xy, labels, "label", f"{name} of model features, by label", seen)
    )
    (folder / "umap_prob.png").write_bytes(
        figures.scatter_png(emap.xy, probs, "prob", f"{name}, by predicted probability", seen)
    )
    marked = [{**c, **held_out_stats(c, emap, labels, seen)} for c in emap.clusters]
    (folder / "clusters.png").write_bytes(cluster_strip(source, idx, marked))
    with open(folder / "mislabel_candidates.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label", "prob", "cluster", "seen_in_training"])
        for j in emap.mislabels:
            writer.writerow(
                [
                    source.ids[idx[j]],
                    labels[j],
                    f"{probs[j]:.6f}",
                    int(emap.cluster[j]),
                    int(seen[j]),
                ]
            )
    (folder / "mislabel_candidates.png").write_bytes(
        mislabel_grid(source, idx, emap.mislabels, labels, probs, seen=seen)
    )


def held_out_stats(
    cluster: dict[str, Any], emap: Any, labels: np.ndarray, seen: np.ndarray
) -> dict[str, Any]:
    """A cluster's count of training patches and its tumour fraction among held-out ones."""
    members = emap.cluster == cluster["cluster"]
    held = members & ~seen & (labels >= 0)
    return {
        "n_seen_in_training": int((members & seen).sum()),
        "tumour_fraction_held_out": float(labels[held].mean()) if held.any() else None,
    }


def cluster_strip(
    source: PatchSource,
    idx: np.ndarray,
    clusters: list[dict[str, Any]],
) -> bytes:
    """The cluster exemplar strip, one titled row per cluster (with its training-patch count)."""
    exemplars = [source.read_many(idx[c["exemplars"]]) for c in clusters]
    titles = []
    for c in clusters:
        tumour = "?" if c["tumour_fraction"] is None else f"{c['tumour_fraction']:.2f}"
        n_seen = c.get("n_seen_in_training", 0)
        trained = f" ({n_seen} trained on)" if n_seen else ""
        titles.append(
            f"cluster {c['cluster']}  n={c['size']}{trained}\n"
            f"tumour fraction {tumour}\nmean p {c['mean_prob']:.2f}"
        )
    return figures.cluster_strip_png(exemplars, titles)


def mislabel_grid(
    source: PatchSource,
    idx: np.ndarray,
    mislabels: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    limit: int = 32,
    seen: np.ndarray | None = None,
) -> bytes:
    """Thumbnails of the most confident disagreements, captioned with probability and label
    (and "trained on" for patches the model was trained on)."""
    top = mislabels[:limit]
    if len(top) == 0:
        return figures.message_png("no confident disagreements (label 0 with p>0.9, 1 with p<0.1)")
    captions = [
        figures.caption(float(probs[j]), int(labels[j]))
        + ("\ntrained on" if seen is not None and seen[j] else "")
        for j in top
    ]
    return figures.thumbnail_grid_png(source.read_many(idx[top]), captions)
