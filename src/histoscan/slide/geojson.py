"""Tumour regions as GeoJSON polygons that QuPath imports as annotations.

The thresholded tile grid is outlined exactly (no smoothing): each tile stands for the
stride-sized cell centred on it, and the outline follows cell edges. Cells that touch only at a
corner belong to different regions (4-connectivity), so every ring is simple.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from histoscan.slide.tiling import TilePlan

TUMOR_CLASS = {"name": "Tumor", "color": [200, 0, 0]}
Ring = list[tuple[int, int]]


def mask_polygons(mask: np.ndarray) -> list[tuple[np.ndarray, list[Ring]]]:
    """Polygons outlining the True cells of a 2-D grid, one per 4-connected region.

    Returns:
        (region mask, rings) pairs; rings[0] is the exterior, the rest are holes. Vertices are
        (x, y) = (column, row) cell corners, rings are closed, exteriors have positive signed
        area in (x, y) and holes negative (the GeoJSON right-hand rule with y pointing down).
    """
    from skimage.measure import label, regionprops

    out = []
    for region in regionprops(label(mask, connectivity=1)):
        r0, c0 = region.bbox[:2]
        rings = [[(x + c0, y + r0) for x, y in ring] for ring in _trace_rings(region.image)]
        rings.sort(key=lambda ring: -ring_area(ring))  # the exterior has the largest signed area
        region_mask = np.zeros(mask.shape, dtype=bool)
        region_mask[region.slice] = region.image
        out.append((region_mask, rings))
    return out


def _trace_rings(cells: np.ndarray) -> list[Ring]:
    """Simple closed outlines of a 4-connected component, walked with the cells on the right."""
    padded = np.pad(cells, 1)
    inside = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    # for each cell side facing outside: (neighbour is empty, start corner, end corner), in (x, y)
    sides = (
        (~padded[:-2, 1:-1], (0, 0), (1, 0)),  # top, walked east
        (~padded[1:-1, 2:], (1, 0), (1, 1)),  # right, walked south
        (~padded[2:, 1:-1], (1, 1), (0, 1)),  # bottom, walked west
        (~padded[1:-1, :-2], (0, 1), (0, 0)),  # left, walked north
    )
    for open_side, start, end in sides:
        rows, cols = np.nonzero(inside & open_side)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            edges[(c + start[0], r + start[1])].append((c + end[0], r + end[1]))
    # each edge continues with the one edge leaving its end corner, turning right where two
    # leave (cells touching at a corner): a permutation of the edges whose cycles are the rings
    seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    rings = []
    for a, ends in list(edges.items()):
        for b in ends:
            edge = (a, b)
            ring = [a]
            while edge not in seen:
                seen.add(edge)
                u, v = edge
                ring.append(v)
                edge = (v, _turn_right(edges[v], u, v))
            rings.extend(_drop_collinear(loop) for loop in _split_loops(ring))
    return rings


def _split_loops(ring: Ring) -> list[Ring]:
    """Split a ring that passes a corner twice into simple closed loops touching at that corner.

    The loop cut off an exterior at such a pinch runs the other way, so it becomes a hole.
    """
    path: Ring = []
    where: dict[tuple[int, int], int] = {}
    loops = []
    for v in ring:
        if v in where:
            i = where[v]
            loops.append([*path[i:], v])
            for u in path[i + 1 :]:
                del where[u]
            del path[i + 1 :]
        else:
            where[v] = len(path)
            path.append(v)
    return loops


def _turn_right(
    options: list[tuple[int, int]], u: tuple[int, int], v: tuple[int, int]
) -> tuple[int, int]:
    """The corner after ``v`` on the edge u -> v: the only way on, or a right turn at a pinch."""
    if len(options) == 1:
        return options[0]
    dx, dy = v[0] - u[0], v[1] - u[1]
    right = (v[0] - dy, v[1] + dx)  # y points down, so (dx, dy) turned right is (-dy, dx)
    return right if right in options else options[0]


def _drop_collinear(ring: Ring) -> Ring:
    """Keep only the corners where the outline turns; the ring stays closed."""
    points = ring[:-1]
    n = len(points)
    keep = []
    for i in range(n):
        (ax, ay), (bx, by), (cx, cy) = points[i - 1], points[i], points[(i + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append(points[i])
    return [*keep, keep[0]]


def ring_area(ring: list[tuple[float, float]]) -> float:
    """Signed shoelace area of a closed ring (positive for exteriors here)."""
    xy = np.asarray(ring, dtype=np.float64)
    return float(0.5 * np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))


def tumor_features(probs: np.ndarray, threshold: float, plan: TilePlan) -> list[dict[str, Any]]:
    """QuPath annotations (level-0 pixel coordinates) for tiles with p_tumor >= threshold.

    Args:
        probs: (n_rows, n_cols) p_tumor per tile, NaN where no tile was scored.
        threshold: probability at or above which a tile counts as tumour.
        plan: the tile grid the probabilities come from.
    """
    scored = np.isfinite(probs)
    positive = scored & (np.where(scored, probs, 0.0) >= threshold)
    features = []
    for k, (region, rings) in enumerate(mask_polygons(positive), start=1):
        coords = [[_to_level0(x, y, plan) for x, y in ring] for ring in rings]
        p = probs[region]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": coords},
                "properties": {
                    "objectType": "annotation",
                    "name": f"Tumor region {k}",
                    "classification": dict(TUMOR_CLASS),
                    "isLocked": False,
                    "measurements": {
                        "area_mm2": round(int(region.sum()) * cell_area_mm2(plan), 6),
                        "tiles": int(region.sum()),
                        "max_p_tumor": round(float(p.max()), 6),
                        "mean_p_tumor": round(float(p.mean()), 6),
                    },
                },
            }
        )
    return features


def cell_area_mm2(plan: TilePlan) -> float:
    """Area of one tile's stride cell in mm²: the unit of every tumour area histoscan reports."""
    return (plan.stride_l0 * plan.mpp0 / 1000.0) ** 2


def _to_level0(x: int, y: int, plan: TilePlan) -> list[float]:
    """A cell corner (column, row) in level-0 pixels."""
    offset = plan.cell_offset_l0
    return [round(offset + x * plan.stride_l0, 2), round(offset + y * plan.stride_l0, 2)]


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}
