"""QuPath annotations, value by value (``histoscan/slide/geojson.py``).

Written to kill the mutants of geojson.py (scripts/mutants.py): every property of a feature, the
areas and probabilities of each region, the exact rings of pinched and holed shapes, and the
threshold's edge.
"""

from __future__ import annotations

import numpy as np
import pytest

from histoscan.slide.geojson import (
    TUMOR_CLASS,
    _drop_collinear,
    _split_loops,
    _turn_right,
    cell_area_mm2,
    feature_collection,
    mask_polygons,
    ring_area,
    tumor_features,
)
from histoscan.slide.tiling import TilePlan


def plan(stride_px: int = 96, l0_per_px: float = 2.0, mpp0: float = 0.5) -> TilePlan:
    return TilePlan(mpp0, 96, stride_px, 1, 2.0, 96, l0_per_px, n_cols=6, n_rows=5)


def test_two_regions_with_every_property() -> None:
    probs = np.full((5, 6), np.nan)
    probs[0, 0:2] = [0.5, 0.912345678]  # 0.5 is at the threshold: tumour
    probs[1, 0] = 0.6
    probs[3:5, 4] = [0.8, 0.7]
    probs[2, 2] = 0.4999  # just below: not tumour
    probs[4, 0] = 0.1
    features = tumor_features(probs, 0.5, plan(mpp0=0.4871))
    cell_mm2 = (96 * 2.0 * 0.4871 / 1000) ** 2  # a 192 level-0 px cell at 0.4871 um/px
    first, second = features
    assert first == {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[0, 0], [384, 0], [384, 192], [192, 192], [192, 384], [0, 384], [0, 0]]
            ],
        },
        "properties": {
            "objectType": "annotation",
            "name": "Tumor region 1",
            "classification": {"name": "Tumor", "color": [200, 0, 0]},
            "isLocked": False,
            "measurements": {
                "area_mm2": round(3 * cell_mm2, 6),
                "tiles": 3,
                "max_p_tumor": 0.912346,
                "mean_p_tumor": round((0.5 + 0.912345678 + 0.6) / 3, 6),
            },
        },
    }
    assert second["properties"]["name"] == "Tumor region 2"
    assert second["geometry"]["coordinates"] == [
        [[768, 576], [960, 576], [960, 960], [768, 960], [768, 576]]
    ]
    assert second["properties"]["measurements"] == {
        "area_mm2": round(2 * cell_mm2, 6),
        "tiles": 2,
        "max_p_tumor": 0.8,
        "mean_p_tumor": 0.75,
    }
    assert first["properties"]["classification"] is not TUMOR_CLASS  # a copy per feature
    assert feature_collection(features) == {"type": "FeatureCollection", "features": features}
    assert tumor_features(probs, 0.95, plan()) == []
    assert round(3 * cell_mm2, 6) != round(3 * cell_mm2, 7)  # the rounding shows


def test_nan_tiles_are_never_tumour_even_at_threshold_zero() -> None:
    probs = np.array([[np.nan, 0.0], [0.2, np.nan]])
    features = tumor_features(probs, 0.0, plan())
    assert [f["properties"]["measurements"]["tiles"] for f in features] == [1, 1]


def test_cell_area_and_offsets_follow_the_stride() -> None:
    p = plan(stride_px=48, l0_per_px=2.0, mpp0=0.25)
    assert cell_area_mm2(p) == pytest.approx((48 * 2.0 * 0.25 / 1000) ** 2)
    probs = np.zeros((2, 2))
    probs[1, 1] = 1.0
    [feature] = tumor_features(probs, 0.5, p)
    # the cell of tile (1, 1) starts at the tile's origin (96, 96) plus the inset (96 - 48) * 2 / 2
    assert feature["geometry"]["coordinates"] == [
        [[144, 144], [240, 144], [240, 240], [144, 240], [144, 144]]
    ]
    fractional = plan(stride_px=96, l0_per_px=1.23456)
    [feature] = tumor_features(probs, 0.5, fractional)
    assert feature["geometry"]["coordinates"][0][0] == [round(96 * 1.23456, 2)] * 2


def test_a_pinched_shape_is_two_regions_and_a_hole_is_a_ring() -> None:
    mask = np.array([[1, 0], [0, 1]], dtype=bool)  # corner neighbours: two regions
    polygons = mask_polygons(mask)
    assert [rings for _, rings in polygons] == [
        [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
        [[(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]],
    ]
    frame = np.ones((3, 4), dtype=bool)
    frame[1, 1:3] = False
    [(region, rings)] = mask_polygons(frame)
    assert region.tolist() == frame.tolist()
    assert rings[0] == [(0, 0), (4, 0), (4, 3), (0, 3), (0, 0)]
    assert sorted(rings[1][:-1]) == [(1, 1), (1, 2), (3, 1), (3, 2)]
    assert ring_area(rings[1]) == -2.0


def test_a_hole_pinched_to_the_exterior_at_a_corner() -> None:
    # a 3x3 block missing its centre and one corner touching the centre diagonally:
    # the hole and the notch share a corner, so the outline passes (2, 2) twice
    mask = np.ones((3, 3), dtype=bool)
    mask[1, 1] = False
    mask[2, 2] = False
    [(_, rings)] = mask_polygons(mask)
    areas = sorted(ring_area(r) for r in rings)
    assert areas == [-1.0, 8.0]
    for ring in rings:
        assert ring[0] == ring[-1] and len(set(ring[:-1])) == len(ring) - 1


def test_offsets_of_a_region_away_from_the_corner() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[2:4, 3:6] = True
    [(region, rings)] = mask_polygons(mask)
    assert rings == [[(3, 2), (6, 2), (6, 4), (3, 4), (3, 2)]]
    assert region.sum() == 6 and region[2:4, 3:6].all()


def test_helpers_by_hand() -> None:
    assert ring_area([(0, 0), (2, 0), (2, 3), (0, 3), (0, 0)]) == 6.0
    assert ring_area([(0, 0), (0, 3), (2, 3), (2, 0), (0, 0)]) == -6.0
    assert _drop_collinear([(0, 0), (1, 0), (2, 0), (2, 1), (0, 1), (0, 0)]) == [
        (0, 0),
        (2, 0),
        (2, 1),
        (0, 1),
        (0, 0),
    ]
    # a ring starting mid-side drops its own start and closes on the first turn
    assert _drop_collinear([(1, 0), (2, 0), (2, 1), (0, 1), (0, 0), (1, 0)]) == [
        (2, 0),
        (2, 1),
        (0, 1),
        (0, 0),
        (2, 0),
    ]
    assert _split_loops([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]) == [
        [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]
    ]
    # a figure eight through (1, 1): two loops
    eight = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (1, 2), (1, 1), (0, 1), (0, 0)]
    assert _split_loops(eight) == [
        [(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)],
        [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)],
    ]
    # at a pinch the walk turns right (y down: east turned right is south)
    assert _turn_right([(2, 0), (1, 1)], (0, 0), (1, 0)) == (1, 1)
    assert _turn_right([(3, 3)], (0, 0), (1, 0)) == (3, 3)
    assert _turn_right([(2, 0), (1, -1)], (0, 0), (1, 0)) == (2, 0)  # no right turn: the first
    assert _turn_right([(5, 5), (0, 1)], (1, 0), (1, 1)) == (0, 1)  # south turned right is west
