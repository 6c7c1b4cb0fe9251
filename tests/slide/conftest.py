"""A slide with a known answer: real patches laid out as an L-shaped tumour, on white glass.

The mosaic is built at the model's resolution (one 96 px patch per grid cell), then written as a
tiled pyramidal TIFF whose level 0 is ``upscale`` times finer, so the reader has to find the right
level (and resample when none matches). Margins are asymmetric, so a transposed or flipped
coordinate shows up as a wrong patch, not as a coincidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from histoscan.data.sources import open_source

PATCH = 96
GRID = 12  # 12 x 12 patches
MARGIN = {"left": 2, "top": 1, "right": 3, "bottom": 2}  # in patch cells of white glass
MODEL_MPP = 0.972


@dataclass
class Mosaic:
    """The slide at model resolution and what lies where."""

    image: np.ndarray  # (rows * 96, cols * 96, 3) uint8, white margins
    patches: np.ndarray  # (144, 96, 96, 3) uint8, row-major over the 12 x 12 grid
    labels: np.ndarray  # (12, 12) int: 1 tumour, 0 normal

    @property
    def n_cols(self) -> int:
        return GRID + MARGIN["left"] + MARGIN["right"]

    @property
    def n_rows(self) -> int:
        return GRID + MARGIN["top"] + MARGIN["bottom"]

    def cell(self, x: int, y: int, tile_l0: int) -> tuple[int, int] | None:
        """The (row, col) patch at level-0 (x, y) of a tile of ``tile_l0``, None on the glass."""
        assert x % tile_l0 == 0 and y % tile_l0 == 0, f"tile ({x}, {y}) is off the patch grid"
        row, col = y // tile_l0 - MARGIN["top"], x // tile_l0 - MARGIN["left"]
        return (row, col) if 0 <= row < GRID and 0 <= col < GRID else None


def l_shape() -> np.ndarray:
    """Tumour in the four left columns and the three bottom rows: no symmetry maps it to itself."""
    labels = np.zeros((GRID, GRID), dtype=int)
    labels[:, :4] = 1
    labels[-3:, :] = 1
    return labels


def tissue_share(image: np.ndarray) -> float:
    """Fraction of pixels that are not white or grey glass (an independent, crude measure)."""
    spread = image.max(axis=-1).astype(int) - image.min(axis=-1)
    return float((spread > 25).mean())


@pytest.fixture(scope="session")
def mosaic(real_root: Path) -> Mosaic:
    """144 real patches (mostly-glass ones left out: they are background by definition)."""
    source = open_source(real_root, split="train")
    labels = l_shape()
    rng = np.random.default_rng(0)
    chosen: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for cls in (0, 1):
        need = int((labels == cls).sum())
        for i in rng.permutation(np.flatnonzero(source.labels == cls)):
            image = source.read(int(i))
            if tissue_share(image) >= 0.5:
                chosen[cls].append(image)
            if len(chosen[cls]) == need:
                break
    patches = np.stack([chosen[int(lab)].pop() for lab in labels.ravel()])
    mos = Mosaic(np.empty(0), patches, labels)
    image = np.full((mos.n_rows * PATCH, mos.n_cols * PATCH, 3), 255, dtype=np.uint8)
    for k, patch in enumerate(patches):
        row, col = divmod(k, GRID)
        top, left = (row + MARGIN["top"]) * PATCH, (col + MARGIN["left"]) * PATCH
        image[top : top + PATCH, left : left + PATCH] = patch
    mos.image = image
    return mos


def box_down(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks, as scanners build their pyramids."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)  # (h, f, w, f, 3)
    return np.rint(blocks.mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)


def write_pyramid(
    path: Path,
    base: np.ndarray,
    upscale: int,
    mpp0: float | None,
    layout: str = "pages",
    compression: str = "zlib",
    levels: int = 3,
) -> Path:
    """A tiled (256 px) TIFF of ``base`` enlarged ``upscale`` times, with levels 1, 1/2, 1/4.

    layout "pages" puts levels in successive IFDs (what OpenSlide reads as generic TIFF),
    "subifds" puts them in SubIFDs of level 0. ``mpp0`` None writes no resolution tags.
    """
    level0 = np.repeat(np.repeat(base, upscale, axis=0), upscale, axis=1)
    pyramid = [level0] + [box_down(level0, 2**k) for k in range(1, levels)]
    extra = {"compressionargs": {"level": 1}} if compression == "zlib" else {}
    with tifffile.TiffWriter(path) as tif:
        for k, level in enumerate(pyramid):
            kwargs: dict = {
                "tile": (256, 256),
                "photometric": "rgb",
                "compression": compression,
                **extra,
            }
            if mpp0 is not None:
                per_cm = 1e4 / (mpp0 * 2**k)
                kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0 and layout == "subifds":
                kwargs["subifds"] = levels - 1
            elif k > 0:
                kwargs["subfiletype"] = 1  # reduced-resolution image
            tif.write(level, **kwargs)
    return path


@pytest.fixture(scope="session")
def exact_tiff(mosaic: Mosaic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Level 0 at 0.486 um/px: level 1 is the model's 0.972 exactly (the original pixels)."""
    path = tmp_path_factory.mktemp("slides") / "exact.tif"
    return write_pyramid(path, mosaic.image, upscale=2, mpp0=MODEL_MPP / 2)


@pytest.fixture(scope="session")
def resample_tiff(mosaic: Mosaic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Level 0 at 0.324 um/px (JPEG tiles): no level matches, level 1 (0.648) is scaled 1.5x."""
    path = tmp_path_factory.mktemp("slides") / "resample.tif"
    return write_pyramid(path, mosaic.image, upscale=3, mpp0=MODEL_MPP / 3, compression="jpeg")
