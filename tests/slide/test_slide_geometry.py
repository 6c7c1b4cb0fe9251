"""The grid arithmetic: level choice, tissue fractions, and polygons that outline tiles exactly."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from skimage.measure import label

from histoscan.errors import DataError
from histoscan.slide.geojson import mask_polygons, ring_area, tumor_features
from histoscan.slide.reader import crop_padded, mpp_from_description
from histoscan.slide.tiling import TilePlan, plan_tiles, tissue_fractions
from histoscan.slide.tissue import tissue_mask


def fake_reader(downsamples: tuple[float, ...], size: tuple[int, int] = (10000, 8000)):
    dims = tuple((round(size[0] / d), round(size[1] / d)) for d in downsamples)
    return SimpleNamespace(
        path=Path("fake.svs"), level_downsamples=downsamples, level_dimensions=dims
    )


def grid_plan(stride_px: int = 96, l0_per_px: float = 2.0, n: int = 10) -> TilePlan:
    return TilePlan(
        mpp0=0.486,
        patch_px=96,
        stride_px=stride_px,
        level=1,
        level_downsample=2.0,
        read_px=96,
        l0_per_px=l0_per_px,
        n_cols=n,
        n_rows=n,
    )


@pytest.mark.parametrize(
    ("mpp0", "downsamples", "level", "read_px"),
    [
        (0.486, (1, 2, 4), 1, 96),  # a level at the model's resolution: read as is
        (0.324, (1, 2, 4), 1, 144),  # none matches: read 1.5x larger at the finer level, shrink
        (0.252, (1, 4, 16), 1, 96),  # Aperio 40x: level 1 is 1.008 um/px, within 5%
        (0.243, (1, 2, 4, 8), 2, 96),  # Camelyon16 Pannoramic: level 2 is 0.972 um/px
        (0.972, (1,), 0, 96),
        (0.5, (1,), 0, 187),  # single level, finer than the model: shrink
        (1.2, (1, 2), 0, 78),  # coarser than the model (within 2x): enlarge level 0
    ],
)
def test_plan_reads_the_level_closest_to_the_model_resolution(
    mpp0, downsamples, level, read_px
) -> None:
    plan = plan_tiles(fake_reader(downsamples), mpp0, 0.972, 96, 96)
    assert (plan.level, plan.read_px) == (level, read_px)
    assert plan.mpp == pytest.approx(0.972, rel=0.05)  # what the model sees
    assert plan.resampled == (read_px != 96)


def test_plan_refuses_a_slide_much_coarser_than_the_model() -> None:
    with pytest.raises(DataError, match="too coarse"):
        plan_tiles(fake_reader((1,)), 2.5, 0.972, 96, 96)


def test_grid_covers_the_slide_from_its_top_left() -> None:
    plan = plan_tiles(fake_reader((1, 2, 4), size=(1000, 700)), 0.486, 0.972, 96, 48)
    assert (plan.tile_l0, plan.stride_l0) == (192, 96.0)
    assert (plan.n_cols, plan.n_rows) == (11, 8)  # ceil(1000 / 96), ceil(700 / 96)
    x, y = plan.origins(np.array([0, 7]), np.array([10, 1]))
    assert x.tolist() == [960, 96] and y.tolist() == [0, 672]


def test_tissue_mask_finds_tissue_and_ignores_glass_and_specks() -> None:
    thumb = np.full((100, 120, 3), 245, dtype=np.uint8)
    assert not tissue_mask(thumb).any()  # all glass: nothing, not Otsu's split of the noise
    thumb[20:60, 30:90] = (200, 120, 170)  # stained tissue
    thumb[80, 5] = (90, 40, 120)  # a speck of dust
    mask = tissue_mask(thumb, min_object_px=16)
    assert mask[20:60, 30:90].all() and mask.sum() == 40 * 60


def test_tissue_fractions_count_the_footprint_outside_the_slide_as_glass() -> None:
    mask = np.zeros((50, 50), dtype=bool)  # 20 thumbnail px per tile: 2.5 tiles a side
    mask[:20, :20] = True  # tile (0, 0)
    mask[:20, 20:30] = True  # the left half of tile (0, 1)
    mask[40:, 20:40] = True  # tile (2, 1), of which only rows 40..50 lie on the slide
    plan = grid_plan(stride_px=96, l0_per_px=2.0, n=3)  # tiles of 192 level-0 px
    fractions = tissue_fractions(mask, plan, scale=(9.6, 9.6))
    assert fractions.shape == (3, 3)
    assert fractions[0, 0] == 1.0 and fractions[0, 1] == 0.5 and fractions[1, 1] == 0.0
    assert fractions[2, 1] == 0.5


def test_l_shape_becomes_one_polygon_with_its_six_corners() -> None:
    mask = np.zeros((5, 6), dtype=bool)
    mask[0:4, 0:2] = True
    mask[3, 0:5] = True
    [(region, rings)] = mask_polygons(mask)
    assert rings == [[(0, 0), (2, 0), (2, 3), (5, 3), (5, 4), (0, 4), (0, 0)]]
    assert (region == mask).all()


def test_a_ring_of_tiles_has_a_hole_and_corner_neighbours_are_separate() -> None:
    mask = np.ones((5, 5), dtype=bool)
    mask[2, 2] = False
    [(_, rings)] = mask_polygons(mask)
    assert [ring_area(r) for r in rings] == [25.0, -1.0]  # exterior, then the hole
    assert len(mask_polygons(np.eye(3, dtype=bool))) == 3


def test_polygons_of_random_masks_are_simple_and_have_the_right_area() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 14, 2))) < rng.uniform(0.2, 0.8)
        polygons = mask_polygons(mask)
        assert len(polygons) == label(mask, connectivity=1).max()
        for region, rings in polygons:
            areas = [ring_area(r) for r in rings]
            assert areas[0] > 0 and all(a < 0 for a in areas[1:])
            assert sum(areas) == region.sum()
            for ring in rings:  # closed, and no corner visited twice
                assert ring[0] == ring[-1] and len(set(ring[:-1])) == len(ring) - 1


def test_tumor_features_are_qupath_annotations_in_level0_pixels() -> None:
    probs = np.full((4, 5), np.nan)
    probs[1, 1:3] = [0.9, 0.7]
    probs[3, 4] = 0.3
    [feature] = tumor_features(probs, 0.5, grid_plan(n=5))
    props = feature["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"]["name"] == "Tumor"
    assert feature["geometry"]["coordinates"] == [
        [[192, 192], [576, 192], [576, 384], [192, 384], [192, 192]]
    ]
    assert props["measurements"]["tiles"] == 2
    assert props["measurements"]["max_p_tumor"] == 0.9
    # a stride of half a tile: each tile stands for the 96 px cell centred on it
    [feature] = tumor_features(probs, 0.5, grid_plan(stride_px=48, n=5))
    assert feature["geometry"]["coordinates"][0][0] == [96 + 48, 96 + 48]


def test_region_reads_outside_the_image_are_white() -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    out = crop_padded(image, -1, 3, 3, 3)
    assert out.shape == (3, 3, 3)
    assert (out[0, 1:] == 0).all() and (out[0, 0] == 255).all() and (out[1:] == 255).all()


def test_resolution_from_an_aperio_or_ome_description() -> None:
    assert mpp_from_description("Aperio Image Library |AppMag = 40|MPP = 0.2520|") == 0.252
    assert mpp_from_description('<Pixels PhysicalSizeX="0.5" PhysicalSizeXUnit="µm">') == 0.5
    assert mpp_from_description('<Pixels PhysicalSizeX="0.5" PhysicalSizeXUnit="mm">') is None
    assert mpp_from_description("no resolution here") is None
