"""Every backend reads the same pixels at the same coordinates; bad files give one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histoscan.errors import DataError
from histoscan.slide.reader import open_slide
from histoscan.slide.tiffreader import TiffReader

from .conftest import MODEL_MPP, Mosaic, box_down, write_pyramid

openslide = pytest.importorskip("openslide")


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_pyramidal_tiff_reads_exact_pixels_at_every_level(
    backend: str, mosaic: Mosaic, exact_tiff: Path
) -> None:
    with open_slide(exact_tiff, backend) as reader:
        assert reader.backend == backend
        assert reader.level_count == 3
        assert reader.level_downsamples == (1.0, 2.0, 4.0)
        assert reader.mpp == pytest.approx(MODEL_MPP / 2)
        h, w = mosaic.image.shape[:2]
        assert reader.level_dimensions == ((2 * w, 2 * h), (w, h), (w // 2, h // 2))
        # level 1 is the mosaic itself; (x, y) are level-0 pixels, so twice level 1's
        region = reader.read_region(2 * 300, 2 * 170, 1, (250, 130))
        assert (region == mosaic.image[170:300, 300:550]).all()
        level0 = reader.read_region(333, 77, 0, (40, 30))
        assert (
            level0
            == mosaic.image[77 // 2 : (77 + 30) // 2 + 1, 333 // 2 : (333 + 40) // 2 + 1]
            .repeat(2, 0)
            .repeat(2, 1)[77 % 2 : 77 % 2 + 30, 333 % 2 : 333 % 2 + 40]
        ).all()
        level2 = reader.read_region(0, 0, 2, (w // 2, h // 2))
        assert (level2 == box_down(mosaic.image, 2)).all()
        thumb = reader.thumbnail(200)
        assert max(thumb.shape[:2]) <= 200 and thumb.dtype == np.uint8


def test_auto_prefers_openslide_and_both_decode_jpeg_tiles_alike(resample_tiff: Path) -> None:
    with open_slide(resample_tiff) as auto, open_slide(resample_tiff, "tifffile") as tiff:
        assert auto.backend == "openslide"
        a = auto.read_region(1000, 1500, 1, (300, 200)).astype(int)
        b = tiff.read_region(1000, 1500, 1, (300, 200)).astype(int)
        assert np.abs(a - b).mean() < 1.0  # same JPEG tiles, perhaps another IDCT


def test_subifd_pyramid_opens_with_tifffile_which_sees_its_levels(tmp_path: Path) -> None:
    base = noise(600, 800)
    path = write_pyramid(tmp_path / "subifds.tif", base, upscale=2, mpp0=0.25, layout="subifds")
    with open_slide(path) as reader:  # OpenSlide would see level 0 only
        assert reader.backend == "tifffile" and reader.level_count == 3
        assert (reader.read_region(0, 0, 1, (800, 600)) == base).all()


def test_regions_past_the_edge_are_white(exact_tiff: Path) -> None:
    with open_slide(exact_tiff, "tifffile") as reader:
        w = reader.level_dimensions[1][0]
        region = reader.read_region(2 * (w - 10), -20, 1, (30, 30))
        assert (region[:, 10:] == 255).all() and (region[:10] == 255).all()


@pytest.mark.parametrize("layout", ["strips", "uncompressed", "rgba", "grey"])
def test_plain_tiffs_read_lazily_and_correctly(layout: str, tmp_path: Path) -> None:
    image = noise(700, 900, seed=1)
    path = tmp_path / f"{layout}.tif"
    kwargs: dict = {"resolution": (25400 / 0.5, 25400 / 0.5), "resolutionunit": "INCH"}
    if layout == "strips":
        tifffile.imwrite(path, image, rowsperstrip=64, compression="zlib", **kwargs)
    elif layout == "uncompressed":
        tifffile.imwrite(path, image, **kwargs)
    elif layout == "rgba":  # opaque alpha: the colours pass through
        tifffile.imwrite(
            path,
            np.dstack([image, np.full((700, 900), 255, np.uint8)]),
            photometric="rgb",
            extrasamples=[2],
            tile=(128, 128),
            **kwargs,
        )
    else:
        image = np.repeat(image[..., :1], 3, axis=-1)
        tifffile.imwrite(path, image[..., 0], tile=(128, 128), **kwargs)
    tiled = layout in ("rgba", "grey")  # tiled TIFFs go to OpenSlide first
    with open_slide(path, "tifffile" if tiled else "auto") as reader:
        assert reader.backend == "tifffile" and reader.level_count == 1
        assert reader.mpp == pytest.approx(0.5)
        assert (reader.read_region(250, 333, 0, (300, 200)) == image[333:533, 250:550]).all()
        if layout == "uncompressed":
            assert reader._levels[0].memmap is not None  # no decoding, no copy of the file


def test_thumbnail_of_a_huge_level_is_built_band_by_band(tmp_path: Path, monkeypatch) -> None:
    image = noise(700, 900, seed=2)
    tifffile.imwrite(tmp_path / "big.tif", image, rowsperstrip=16, compression="zlib")
    monkeypatch.setattr("histoscan.slide.reader.THUMBNAIL_READ_PX", 1000)  # "too big to read"
    with open_slide(tmp_path / "big.tif") as reader:
        thumb = reader.thumbnail(100)
    assert thumb.shape == (77, 100, 3)  # a factor of 9: 700 // 9, 900 // 9
    assert (thumb == box_down(image[: 77 * 9], 9)).all()


def test_png_opens_with_pillow_and_screen_dpi_is_not_a_resolution(tmp_path: Path) -> None:
    image = noise(300, 400)
    Image.fromarray(image).save(tmp_path / "a.png", dpi=(72, 72))
    with open_slide(tmp_path / "a.png") as reader:
        assert reader.backend == "pillow" and reader.mpp is None  # 352 um/px: a default
        assert (reader.read_region(10, 20, 0, (50, 40)) == image[20:60, 10:60]).all()
    Image.fromarray(image).save(tmp_path / "b.png", dpi=(25400 / 0.25, 25400 / 0.25))
    with open_slide(tmp_path / "b.png") as reader:
        assert reader.mpp == pytest.approx(0.25, rel=1e-3)


def truncated(path: Path, dest: Path, keep: float) -> Path:
    data = path.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("notes.txt", "not a slide or image"),
        ("picture.gif", "unsupported image format GIF"),
        ("scan.lif", "unsupported slide format .lif"),
        ("missing.svs", "no such file"),
        ("folder", "is a folder"),
    ],
)
def test_files_that_are_not_slides_give_one_clear_error(
    name: str, match: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("id,label\nabc,1\n")
    elif name.endswith(".gif"):
        Image.fromarray(noise(20, 20)).save(path)
    elif name.endswith(".lif"):
        path.write_bytes(bytes.fromhex("70000000") + bytes(200))
    elif name == "folder":
        path.mkdir()
    with pytest.raises(DataError, match=match):
        open_slide(path)


def test_truncated_pyramid_is_refused_by_every_backend(exact_tiff: Path, tmp_path: Path) -> None:
    path = truncated(exact_tiff, tmp_path / "cut.tif", keep=0.6)
    with pytest.raises(DataError, match="truncated"):
        open_slide(path)
    with pytest.raises(DataError, match="truncated"):
        TiffReader(path)
    with pytest.raises(DataError):
        open_slide(path, "openslide")


def test_a_tile_of_garbage_is_reported_with_its_level(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "bad.tif", noise(512, 512), upscale=1, mpp0=0.5, levels=1)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[1]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = bytes(64)  # zlib stream header and first block gone
    path.write_bytes(bytes(data))
    with open_slide(path, "tifffile") as reader, pytest.raises(DataError, match="level 0"):
        reader.read_region(256, 0, 0, (256, 256))
