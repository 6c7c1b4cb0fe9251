"""Tissue is not missed, glass is not scored: mosaics of real patches, grey and damaged slides.

"Tissue cell" is judged independently of the detector, at full resolution: a patch where at
least 5 % of pixels are stained or dark (channel spread > 25 or darkest channel < 200). The
detector works on a thumbnail about 16 pixels per tile.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from histoscan.cli import slide_cmd  # noqa: F401  (registers `histoscan slide`)
from histoscan.cli.app import app
from histoscan.data.sources import open_source
from histoscan.errors import DataError
from histoscan.slide.reader import open_slide
from histoscan.slide.run import SlideSettings, locate_tissue
from histoscan.slide.tissue import tissue_mask

from .conftest import MODEL_MPP, write_pyramid

PATCH = 96
SPEC = SimpleNamespace(mpp=MODEL_MPP, patch_px=PATCH)
runner = CliRunner()


def stained_share(images: np.ndarray) -> np.ndarray:
    """Per patch, the fraction of pixels that are not glass (spread > 25 or darkest < 200)."""
    spread = images.max(axis=-1).astype(int) - images.min(axis=-1)
    return ((spread > 25) | (images.min(axis=-1) < 200)).mean(axis=(1, 2))


def dusty_glass(h: int, w: int, seed: int) -> np.ndarray:
    """Glass (238 +- 2) with a dark 3 x 3 speck of dust every ~60 pixels."""
    rng = np.random.default_rng(seed)
    glass = rng.integers(236, 241, (h, w, 3), dtype=np.uint8)
    n = h * w // 3600
    for y, x in zip(rng.integers(0, h - 3, n), rng.integers(0, w - 3, n), strict=True):
        glass[y : y + 3, x : x + 3] = (70, 60, 80)
    return glass


def mosaic_layout(patches: np.ndarray, side: int, tmp_path: Path, seed: int = 0):
    """``side`` x ``side`` patches with two cells of dusty glass around them, as a pyramid."""
    n = side + 4
    base = dusty_glass(n * PATCH, n * PATCH, seed)
    for k, patch in enumerate(patches):
        row, col = divmod(k, side)
        base[(row + 2) * PATCH : (row + 3) * PATCH, (col + 2) * PATCH : (col + 3) * PATCH] = patch
    path = write_pyramid(tmp_path / "mosaic.tif", base, upscale=2, mpp0=MODEL_MPP / 2)
    with open_slide(path) as reader:
        layout = locate_tissue(reader, reader.mpp, SPEC, SlideSettings())
    scored = np.zeros((n, n), dtype=bool)
    scored[layout.rows, layout.cols] = True
    return scored[2:-2, 2:-2].ravel(), scored.sum() - scored[2:-2, 2:-2].sum()


@pytest.fixture(scope="module")
def real_patches(real_root: Path) -> tuple[np.ndarray, np.ndarray]:
    source = open_source(real_root, split="train")
    idx = np.random.default_rng(7).choice(len(source), 2000, replace=False)
    images = source.read_many(idx)
    return images, stained_share(images)


def test_random_real_mosaic_scores_97_percent_of_tissue_cells_and_no_glass(
    real_patches: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, share = real_patches
    scored, glass_scored = mosaic_layout(images[:400], 20, tmp_path)
    tissue = share[:400] >= 0.05
    assert tissue.sum() > 380
    assert scored[tissue].mean() >= 0.97, scored[tissue].mean()
    assert glass_scored == 0  # dusty glass around the mosaic is never a tile


def test_pale_and_fatty_tissue_is_kept(
    real_patches: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, share = real_patches
    # the faintest tissue: patches that are only 5-30 % stained (fat, loose stroma, pale eosin)
    pale = images[(share >= 0.05) & (share < 0.3)][:100]
    assert len(pale) == 100
    scored, glass_scored = mosaic_layout(pale, 10, tmp_path)
    assert scored.mean() >= 0.97, scored.mean()
    assert glass_scored == 0


def test_mask_keeps_faint_eosin_and_drops_dust() -> None:
    thumb = dusty_glass(120, 160, seed=3)
    assert not tissue_mask(thumb, min_object_px=16).any()
    thumb[20:60, 30:90] = (236, 214, 226)  # faint eosin: saturation 0.09
    mask = tissue_mask(thumb, min_object_px=16, closing_px=2)
    assert mask[22:58, 32:88].all()
    assert mask.sum() < 1.2 * 40 * 60


def test_grey_slide_is_refused_in_one_line(tmp_path: Path, untrained_model_file: Path) -> None:
    grey = np.full((960, 960), 240, dtype=np.uint8)
    grey[200:700, 300:800] = np.random.default_rng(0).integers(60, 200, (500, 500))
    path = tmp_path / "grey.tif"
    tifffile.imwrite(
        path, grey, tile=(256, 256), resolution=(1e4 / 0.972,) * 2, resolutionunit="CENTIMETER"
    )
    with open_slide(path) as reader, pytest.raises(DataError, match="grey-level"):
        locate_tissue(reader, reader.mpp, SPEC, SlideSettings())
    result = runner.invoke(
        app,
        [
            "slide",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--model",
            str(untrained_model_file),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "grey-level" in result.output and not (tmp_path / "out").exists()


def forge_size(path: Path, size: int) -> None:
    """Rewrite ImageWidth and ImageLength in the first IFD: a header that lies about its size."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags[n].valueoffset, tags[n].dtype) for n in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, dtype in spots:
        struct.pack_into({3: "<H", 4: "<I"}[int(dtype)], data, offset, size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["tiled", "strips"])
def test_header_claiming_100000_px_is_one_line_not_a_memory_error(
    layout: str, tmp_path: Path, untrained_model_file: Path
) -> None:
    path = tmp_path / "huge.tif"
    kwargs = {"tile": (256, 256)} if layout == "tiled" else {"rowsperstrip": 512}
    tifffile.imwrite(
        path,
        np.full((512, 512, 3), 200, np.uint8),
        photometric="rgb",
        resolution=(1e4 / 0.5,) * 2,
        resolutionunit="CENTIMETER",
        **kwargs,
    )
    forge_size(path, 100_000)
    result = runner.invoke(
        app,
        [
            "slide",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--model",
            str(untrained_model_file),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "100000x100000" in result.output and "damaged header" in result.output


@pytest.mark.parametrize("radius", [1, 3, 6])
def test_fast_closing_equals_scipy_with_a_disk_footprint(radius: int) -> None:
    from scipy.ndimage import binary_closing
    from skimage.morphology import disk

    from histoscan.slide.tissue import close_disk

    mask = np.random.default_rng(radius).random((120, 150)) < 0.08
    pad = radius + 1  # scipy's closing with background around the image
    expected = binary_closing(np.pad(mask, pad), structure=disk(radius).astype(bool))
    assert (close_disk(mask, radius) == expected[pad:-pad, pad:-pad]).all()
