"""Slide-level outputs: a slide score and candidate tumour foci (lesions.csv).

The slide score is what CAMELYON16's slide-level task ranks slides by: here the highest tile
probability, and the mean of the ``k`` highest (less at the mercy of one odd tile). Lesion
candidates are the local maxima of the tile probability map, at least ``LESION_SPACING_UM``
apart, each at the centre of its tile in level-0 pixels with the tile's probability as its
confidence. lesions.csv has no header and one ``confidence,x,y`` row per candidate: the format
CAMELYON16's FROC evaluation script reads.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from histoscan.slide.tiling import TilePlan

TOP_K = 10  # tiles averaged for the top-k slide score
LESION_FLOOR = 0.2  # local maxima below this probability are not candidates
LESION_SPACING_UM = 200.0  # candidates closer than this are one focus


def slide_scores(probs: np.ndarray, top_k: int = TOP_K) -> dict[str, float | None]:
    """``{"max": ..., "top_k_mean": ...}`` over the scored tiles (NaN cells are not scored)."""
    values = np.sort(probs[np.isfinite(probs)])[::-1]
    if values.size == 0:
        return {"max": None, "top_k_mean": None}
    return {
        "max": round(float(values[0]), 6),
        "top_k_mean": round(float(values[:top_k].mean()), 6),
    }


def find_lesions(probs: np.ndarray, plan: TilePlan, floor: float = LESION_FLOOR) -> np.ndarray:
    """Local maxima of the probability map as (n, 3) float64 rows (confidence, x, y).

    Args:
        probs: (n_rows, n_cols) p_tumor per tile, NaN where no tile was scored.
        plan: the tile grid; x, y are the tile centres in level-0 pixels.
        floor: maxima below this probability are left out.

    Returns:
        Rows sorted by confidence, highest first.
    """
    from skimage.feature import peak_local_max

    if not np.isfinite(probs).any():
        return np.empty((0, 3))
    spacing_tiles = max(1, int(np.ceil(LESION_SPACING_UM / (plan.stride_l0 * plan.mpp0))))
    grid = np.where(np.isfinite(probs), probs, 0.0)
    peaks = peak_local_max(
        grid, min_distance=spacing_tiles, threshold_abs=floor, exclude_border=False
    )  # (n, 2) rows, cols
    if len(peaks) == 0:
        return np.empty((0, 3))
    x, y = plan.origins(peaks[:, 0], peaks[:, 1])
    half = plan.tile_l0 / 2
    rows = np.column_stack([grid[peaks[:, 0], peaks[:, 1]], x + half, y + half])
    return rows[np.argsort(-rows[:, 0], kind="stable")]


def write_lesions(path: Path, lesions: np.ndarray) -> None:
    """lesions.csv: ``confidence,x,y`` per row, no header (CAMELYON16's evaluation format)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerows((f"{p:.6f}", round(float(x)), round(float(y))) for p, x, y in lesions)


def read_lesions(path: Path) -> np.ndarray:
    """lesions.csv back as (n, 3) rows (confidence, x, y); a header line is tolerated."""
    from histoscan.errors import DataError

    rows = []
    with open(path, newline="") as fh:
        for k, row in enumerate(csv.reader(fh), start=1):
            if not row or (k == 1 and not _is_number(row[0])):
                continue
            try:
                rows.append([float(row[0]), float(row[1]), float(row[2])])
            except (ValueError, IndexError):
                raise DataError(
                    f"{path}: line {k} is not 'confidence,x,y' ({','.join(row)[:60]})"
                ) from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
