"""The tile plan and tile reading, number by number (``histoscan/slide/tiling.py``).

Written to kill the mutants of tiling.py (scripts/mutants.py): every field of a plan, the level
choice at the tolerance's edges, the warning when enlarging, tissue fractions against a direct
count, and tiles read from a fake reader, resampled by PIL as the docstring promises.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscan.errors import DataError
from histoscan.slide.tiling import (
    MATCH_TOLERANCE,
    MAX_UPSAMPLE,
    TilePlan,
    plan_tiles,
    read_tiles,
    tissue_fractions,
)


class Reader:
    """Level-0 pixels of a fixed image; other levels are plain subsamples of it."""

    def __init__(self, image: np.ndarray, downsamples: tuple[float, ...]) -> None:
        self.path = Path("fake.tif")
        self.image = image
        self.level_downsamples = downsamples
        h, w = image.shape[:2]
        self.level_dimensions = tuple((round(w / d), round(h / d)) for d in downsamples)
        self.calls: list[tuple] = []

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        self.calls.append((x, y, level, size))
        step = int(self.level_downsamples[level])
        w, h = size
        region = self.image[y : y + h * step : step, x : x + w * step : step]
        out = np.full((h, w, 3), 255, np.uint8)
        out[: region.shape[0], : region.shape[1]] = region
        return out


def reader(downsamples: tuple[float, ...], size: tuple[int, int] = (1000, 700)) -> Reader:
    w, h = size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Reader(image, downsamples)


def test_constants() -> None:
    assert MATCH_TOLERANCE == 0.05 and MAX_UPSAMPLE == 2.0


def test_every_field_of_a_matching_plan() -> None:
    plan = plan_tiles(reader((1, 2, 4)), 0.486, 0.972, 96, 64)
    assert plan == TilePlan(
        mpp0=0.486,
        patch_px=96,
        stride_px=64,
        level=1,
        level_downsample=2.0,
        read_px=96,
        l0_per_px=2.0,
        n_cols=8,  # ceil(1000 / 128)
        n_rows=6,  # ceil(700 / 128)
    )
    assert (plan.tile_l0, plan.stride_l0, plan.mpp) == (192, 128.0, 0.972)
    assert plan.cell_offset_l0 == 32.0  # (96 - 64) * 2 / 2
    assert not plan.resampled


def test_every_field_of_a_resampled_plan() -> None:
    plan = plan_tiles(reader((1, 2, 4)), 0.3, 0.972, 96, 96)
    target = 0.972 / 0.3  # 3.24 level-0 px per model px: level 1 (2) is the finest below
    read_px = round(96 * target / 2)  # 156
    assert (plan.level, plan.level_downsample, plan.read_px) == (1, 2.0, read_px)
    assert plan.l0_per_px == pytest.approx(read_px * 2 / 96)
    assert plan.mpp == pytest.approx(0.3 * read_px * 2 / 96)
    assert (plan.n_cols, plan.n_rows) == (
        int(np.ceil(1000 / (96 * read_px * 2 / 96))),
        int(np.ceil(700 / (96 * read_px * 2 / 96))),
    )
    assert plan.resampled and plan.tile_l0 == round(96 * read_px * 2 / 96)


@pytest.mark.parametrize(
    ("downsample", "matched"),
    [(2.0 * 1.049, True), (2.0 * 0.951, True), (2.0 * 1.051, False), (2.0 * 0.949, False)],
)
def test_the_tolerance_edge(downsample: float, matched: bool) -> None:
    plan = plan_tiles(reader((1, downsample)), 0.486, 0.972, 96, 96)
    assert (plan.level == 1 and plan.read_px == 96) == matched


def test_the_closest_of_two_matching_levels_wins() -> None:
    plan = plan_tiles(reader((1, 2.08, 1.98)), 0.486, 0.972, 96, 96)
    assert plan.level == 2 and plan.l0_per_px == 1.98
    plan = plan_tiles(reader((1, 1.98, 2.08)), 0.486, 0.972, 96, 96)
    assert plan.level == 1
    plan = plan_tiles(reader((1, 1.98, 2.01)), 0.486, 0.972, 96, 96)
    assert plan.level == 2  # 0.5 % off beats 1 % off, though 1.98 is the smaller


def test_the_finest_level_below_is_the_coarsest_of_those() -> None:
    plan = plan_tiles(reader((1, 1.5, 2.5, 8)), 0.3, 0.972, 96, 96)  # target 3.24
    assert plan.level == 2 and plan.read_px == round(96 * 3.24 / 2.5)


def test_no_finer_level_reads_level_0_and_enlarges(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plan = plan_tiles(reader((1, 2)), 1.2, 0.972, 96, 96)
    assert plan.level == 0 and plan.read_px == round(96 * 0.81)
    assert caplog.messages == [
        "fake.tif: upsampling 1.23x: the slide is coarser than the model's training resolution"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan_tiles(reader((1, 2)), 0.3, 0.972, 96, 96)
    assert caplog.text == ""


def test_coarseness_and_stride_are_checked() -> None:
    assert plan_tiles(reader((1,)), 0.972 * 2, 0.972, 96, 96).read_px == 48  # exactly 2x: allowed
    with pytest.raises(
        DataError,
        match=r"^fake\.tif: scanned at 1.95 um/px, too coarse for a model trained at 0.972 um/px$",
    ):
        plan_tiles(reader((1,)), 0.972 * 2.01, 0.972, 96, 96)
    for stride in (0, -5):
        with pytest.raises(
            DataError, match=rf"^stride must be a positive number of pixels, not {stride}$"
        ):
            plan_tiles(reader((1,)), 0.972, 0.972, 96, stride)
    assert plan_tiles(reader((1,)), 0.972, 0.972, 96, 1).stride_px == 1


def test_origins_round_to_the_nearest_pixel() -> None:
    plan = plan_tiles(reader((1,)), 0.486 * 1.5, 0.972, 96, 33)  # target 4/3: resampled
    x, y = plan.origins(np.array([0, 1, 5]), np.array([3, 2, 7]))
    step = 33 * plan.l0_per_px
    assert x.tolist() == [round(3 * step), round(2 * step), round(7 * step)]
    assert y.tolist() == [0, round(step), round(5 * step)]
    assert x.dtype == np.int64 and y.dtype == np.int64


def test_tissue_fractions_match_a_direct_count() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.4
    plan = TilePlan(0.5, 96, 64, 0, 1.0, 96, 1.0, n_cols=9, n_rows=7)
    scale = (3.0, 2.5)
    fractions = tissue_fractions(mask, plan, scale)
    assert fractions.shape == (7, 9)
    for r in range(7):
        for c in range(9):
            x0, y0 = c * 64, r * 64
            a, b = round(x0 / 3.0), max(round((x0 + 96) / 3.0), round(x0 / 3.0) + 1)
            top, bottom = round(y0 / 2.5), max(round((y0 + 96) / 2.5), round(y0 / 2.5) + 1)
            inside = mask[min(top, 37) : min(bottom, 37), min(a, 53) : min(b, 53)].sum()
            assert fractions[r, c] == pytest.approx(inside / ((bottom - top) * (b - a))), (r, c)


def test_a_tile_smaller_than_a_thumbnail_pixel_still_counts_one() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    plan = TilePlan(0.5, 2, 2, 0, 1.0, 2, 1.0, n_cols=8, n_rows=8)  # 2 px tiles, 16 px per thumb px
    fractions = tissue_fractions(mask, plan, (16.0, 16.0))
    # tile (r, c) covers level-0 [2c, 2c + 2): thumbnail pixel round(2c / 16), one pixel wide
    expected = np.array(
        [[float(mask[round(2 * r / 16), round(2 * c / 16)]) for c in range(8)] for r in range(8)]
    )
    np.testing.assert_array_equal(fractions, expected)


def test_read_tiles_as_is() -> None:
    slide = reader((1, 2))
    plan = plan_tiles(slide, 0.486, 0.972, 96, 96)
    tiles = read_tiles(slide, plan, np.array([0, 192]), np.array([100, 0]))
    assert tiles.dtype == np.uint8 and tiles.shape == (2, 96, 96, 3)
    assert slide.calls == [(0, 100, 1, (96, 96)), (192, 0, 1, (96, 96))]
    np.testing.assert_array_equal(tiles[0], slide.image[100 : 100 + 192 : 2, 0:192:2])


def test_read_tiles_shrinks_by_area_and_enlarges_bicubic() -> None:
    slide = reader((1,))
    plan = plan_tiles(slide, 0.486, 0.972, 48, 48)  # read 96 at level 0, shrink to 48
    assert plan.read_px == 96
    tiles = read_tiles(slide, plan, np.array([10]), np.array([20]))
    region = slide.image[20:116, 10:106]
    box = np.asarray(Image.fromarray(region).resize((48, 48), Image.Resampling.BOX))
    np.testing.assert_array_equal(tiles[0], box)
    mean2x2 = region.reshape(48, 2, 48, 2, 3).mean(axis=(1, 3))
    assert np.abs(tiles[0].astype(float) - mean2x2).max() <= 1.0  # area averaging

    plan = plan_tiles(slide, 1.5, 0.972, 96, 96)  # coarser: read 62, enlarge to 96
    assert plan.read_px < 96
    tiles = read_tiles(slide, plan, np.array([0]), np.array([0]))
    region = slide.image[: plan.read_px, : plan.read_px]
    bicubic = np.asarray(Image.fromarray(region).resize((96, 96), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(tiles[0], bicubic)


def test_no_tiles() -> None:
    slide = reader((1,))
    plan = plan_tiles(slide, 0.972, 0.972, 96, 96)
    assert read_tiles(slide, plan, np.array([], int), np.array([], int)).shape == (0, 96, 96, 3)
