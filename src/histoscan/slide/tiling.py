"""The tile grid: which pyramid level to read, where each tile lies, and which tiles hold tissue.

Tiles are ``patch_px`` pixels at the model's resolution (``spec.mpp``). A tile is read at the
coarsest level that is not coarser than that resolution: as is when the level matches within
``MATCH_TOLERANCE``, else a larger region is read and scaled down (area averaging). Grid origins
are multiples of the stride from the slide's top-left corner, in level-0 pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from histoscan.errors import DataError
from histoscan.slide.reader import SlideReader

log = logging.getLogger(__name__)

MATCH_TOLERANCE = 0.05  # a level within 5% of the model's resolution is read without resampling
MAX_UPSAMPLE = 2.0  # refuse slides scanned coarser than twice the model's pixel size


@dataclass(frozen=True)
class TilePlan:
    """How tiles are read: level, sizes and the grid, all derived from the slide and the model."""

    mpp0: float  # micrometres per level-0 pixel
    patch_px: int  # tile side at model resolution
    stride_px: int  # grid step at model resolution
    level: int  # pyramid level read
    level_downsample: float
    read_px: int  # square side read at ``level``; resized to patch_px when they differ
    l0_per_px: float  # level-0 pixels per model pixel, as read
    n_cols: int
    n_rows: int

    @property
    def tile_l0(self) -> int:
        """Tile side in level-0 pixels."""
        return round(self.patch_px * self.l0_per_px)

    @property
    def stride_l0(self) -> float:
        return self.stride_px * self.l0_per_px

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of the tiles the model sees."""
        return self.mpp0 * self.l0_per_px

    @property
    def resampled(self) -> bool:
        return self.read_px != self.patch_px

    @property
    def cell_offset_l0(self) -> float:
        """Each tile stands for the stride-sized cell centred on it: this is the cell's inset."""
        return (self.patch_px - self.stride_px) * self.l0_per_px / 2

    def origins(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of the top-left of tiles (rows, cols)."""
        x = np.rint(np.asarray(cols) * self.stride_l0).astype(np.int64)
        y = np.rint(np.asarray(rows) * self.stride_l0).astype(np.int64)
        return x, y


def plan_tiles(
    reader: SlideReader, mpp0: float, model_mpp: float, patch_px: int, stride_px: int
) -> TilePlan:
    """Choose the level and read size for tiles of ``patch_px`` at ``model_mpp``."""
    if stride_px <= 0:
        raise DataError(f"stride must be a positive number of pixels, not {stride_px}")
    target = model_mpp / mpp0  # level-0 pixels per model pixel
    if target < 1 / MAX_UPSAMPLE:
        raise DataError(
            f"{reader.path}: scanned at {mpp0:.3g} um/px, too coarse for a model "
            f"trained at {model_mpp:.3g} um/px"
        )
    downsamples = np.asarray(reader.level_downsamples)
    close = np.flatnonzero(np.abs(downsamples / target - 1) <= MATCH_TOLERANCE)
    if len(close):
        level = int(close[np.argmin(np.abs(downsamples[close] / target - 1))])
        read_px, l0_per_px = patch_px, float(downsamples[level])
    else:
        finer = np.flatnonzero(downsamples < target)
        level = int(finer[np.argmax(downsamples[finer])]) if len(finer) else 0
        read_px = round(patch_px * target / downsamples[level])
        l0_per_px = read_px * float(downsamples[level]) / patch_px
        if read_px < patch_px:
            log.warning(
                "%s: upsampling %.2fx: the slide is coarser than the model's training resolution",
                reader.path,
                patch_px / read_px,
            )
    width, height = reader.level_dimensions[0]
    stride_l0 = stride_px * l0_per_px
    return TilePlan(
        mpp0=mpp0,
        patch_px=patch_px,
        stride_px=stride_px,
        level=level,
        level_downsample=float(downsamples[level]),
        read_px=read_px,
        l0_per_px=l0_per_px,
        n_cols=int(np.ceil(width / stride_l0)),
        n_rows=int(np.ceil(height / stride_l0)),
    )


def tissue_fractions(mask: np.ndarray, plan: TilePlan, scale: tuple[float, float]) -> np.ndarray:
    """Fraction (n_rows, n_cols) of each tile's footprint that the thumbnail mask calls tissue.

    Args:
        mask: boolean thumbnail mask (h, w).
        plan: the tile grid.
        scale: level-0 pixels per thumbnail pixel along (x, y).
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x, y = plan.origins(np.arange(plan.n_rows), np.arange(plan.n_cols))
    x0, x1 = _thumb_span(x, plan.tile_l0, scale[0])
    y0, y1 = _thumb_span(y, plan.tile_l0, scale[1])
    c0, c1 = np.clip(x0, 0, w), np.clip(x1, 0, w)  # the part inside the thumbnail
    r0, r1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    total = (
        integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]
    )  # (n_rows, n_cols)
    area = np.outer(y1 - y0, x1 - x0)  # the whole footprint: outside the slide is not tissue
    return total / np.maximum(area, 1)


def _thumb_span(start_l0: np.ndarray, size_l0: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnail pixel span [a, b) of level-0 spans [start, start + size), at least one pixel."""
    a = np.rint(start_l0 / scale).astype(np.int64)
    b = np.maximum(np.rint((start_l0 + size_l0) / scale).astype(np.int64), a + 1)
    return a, b


def read_tiles(reader: SlideReader, plan: TilePlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tiles with level-0 top-left (x, y), uint8 (N, patch_px, patch_px, 3) at model resolution."""
    out = np.empty((len(x), plan.patch_px, plan.patch_px, 3), dtype=np.uint8)
    size = (plan.read_px, plan.read_px)
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        region = reader.read_region(int(xi), int(yi), plan.level, size)
        if plan.resampled:
            # area averaging, like the scanner's own pyramid; bicubic when enlarging
            method = (
                Image.Resampling.BOX if plan.read_px > plan.patch_px else Image.Resampling.BICUBIC
            )
            region = np.asarray(Image.fromarray(region).resize((plan.patch_px,) * 2, method))
        out[i] = region
    return out
