"""TIFF slides through tifffile: pyramid levels from the file's series, tiles decoded on demand.

No zarr: a region read decodes only the tiles (or strips) it touches, through tifffile's own
segment decoder, and keeps the most recent ones in a small cache (neighbouring patches share
tiles). Uncompressed contiguous images are memory-mapped instead. Memory stays bounded by the
cache and the region, whatever the file size.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.errors import DataError
from histoscan.slide.reader import (
    BaseReader,
    HeaderError,
    checked_mpp,
    composite_on_white,
    crop_padded,
    mpp_from_description,
)

log = logging.getLogger(__name__)

CACHE_BYTES = 64 * 1024 * 1024
PHOTOMETRIC_OK = {1: "grey", 2: "RGB", 6: "YCbCr"}  # MINISBLACK, RGB, YCBCR (JPEG)


@dataclass
class _Level:
    """One pyramid level: its first page, segment grid, and a memory map when uncompressed."""

    page: Any
    width: int
    height: int
    seg_h: int  # tile or strip height
    seg_w: int
    seg_cols: int  # segments per row of segments
    memmap: np.ndarray | None = None


class TiffReader(BaseReader):
    """Any 8-bit RGB (or grey) TIFF: pyramidal (SubIFDs or page series) or a single large image."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = Path(path)
        try:
            with _quiet_tifffile():  # its warnings about a damaged file become our one error
                self._tif = tifffile.TiffFile(self.path)
                pages = [level.keyframe for level in self._tif.series[0].levels]
        except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
            raise DataError(f"{path}: not a readable TIFF ({exc})") from exc
        try:
            with _quiet_tifffile():
                self._levels = _pyramid(pages, self.path)
        except DataError:
            self._tif.close()
            raise
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        w0, h0 = self._levels[0].width, self._levels[0].height
        self.level_dimensions = tuple((lv.width, lv.height) for lv in self._levels)
        self.level_downsamples = tuple((w0 / lv.width + h0 / lv.height) / 2 for lv in self._levels)
        self.mpp = checked_mpp(_tiff_mpp(pages[0]), str(path))

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        lv = self._levels[level]
        ds = self.level_downsamples[level]
        lx, ly, w, h = round(x / ds), round(y / ds), int(size[0]), int(size[1])
        if lv.memmap is not None:
            return _to_rgb(crop_padded(lv.memmap, lx, ly, w, h))
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lv.width), min(ly + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        for row in range(y0 // lv.seg_h, (y1 - 1) // lv.seg_h + 1):
            for col in range(x0 // lv.seg_w, (x1 - 1) // lv.seg_w + 1):
                segment = self._segment(level, row * lv.seg_cols + col)
                if segment is None:  # a tile the file leaves empty
                    continue
                top, left = row * lv.seg_h, col * lv.seg_w
                sy0, sy1 = max(y0, top), min(y1, top + segment.shape[0])
                sx0, sx1 = max(x0, left), min(x1, left + segment.shape[1])
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = segment[
                    sy0 - top : sy1 - top, sx0 - left : sx1 - left
                ]
        return out

    def _segment(self, level: int, index: int) -> np.ndarray | None:
        """Decoded tile or strip ``index`` of ``level`` as RGB (seg_h, seg_w, 3), cached."""
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        page = self._levels[level].page
        count = page.databytecounts[index]
        segment = None
        if count:
            with self._lock:
                self._tif.filehandle.seek(page.dataoffsets[index])
                data = self._tif.filehandle.read(count)
            try:
                decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as exc:  # codecs raise many types for corrupt data
                raise DataError(
                    f"{self.path}: unreadable tile {index} at level {level} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            segment = _to_rgb(decoded[0])  # (1, h, w, s) -> (h, w, 3)
        self._remember(key, segment)
        return segment

    def _remember(self, key: tuple[int, int], segment: np.ndarray | None) -> None:
        self._cache[key] = segment
        self._cache_bytes += 0 if segment is None else segment.nbytes
        while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= 0 if old is None else old.nbytes

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pyramid(pages: list[Any], path: Path) -> list[_Level]:
    """Check every level can be read, and drop those whose aspect ratio is not level 0's."""
    size = path.stat().st_size
    levels: list[_Level] = []
    for i, page in enumerate(pages):
        problem = _page_problem(page, size)
        if problem:
            raise HeaderError(f"{path}: level {i} {problem}")
        width, height = int(page.imagewidth), int(page.imagelength)
        if levels and abs(width / levels[0].width - height / levels[0].height) > 0.02 * (
            width / levels[0].width
        ):
            log.info(
                "%s: skipping level %d (%dx%d): not a downsample of level 0", path, i, width, height
            )
            continue
        levels.append(_level(page, width, height, path))
    return levels


def _page_problem(page: Any, file_size: int) -> str | None:
    if page.dtype != np.uint8:
        return f"is not 8-bit (dtype {page.dtype})"
    if page.imagedepth != 1:
        return "is a volume, not a 2-D image"
    if int(page.photometric) not in PHOTOMETRIC_OK:
        return f"has an unsupported colour model ({page.photometric.name})"
    if page.samplesperpixel > 1 and int(page.planarconfig) != 1:
        return "stores colour planes separately (PlanarConfiguration 2), which is not supported"
    if page.samplesperpixel not in (1, 3, 4):
        return f"has {page.samplesperpixel} samples per pixel"
    width, height = int(page.imagewidth), int(page.imagelength)
    if page.is_tiled:
        seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
    else:
        seg_h, seg_w = max(1, min(int(page.rowsperstrip), height)), width
    expected = -(-height // seg_h) * -(-width // seg_w)
    if len(page.dataoffsets) != expected:
        # a header that claims more pixels than the file holds (damaged or forged): checked
        # here, before anything is sized from it
        return (
            f"claims {width}x{height} pixels but holds {len(page.dataoffsets)} of the "
            f"{expected} tiles or strips they need (a damaged header)"
        )
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
    if not ends:
        return "holds no image data"
    if max(ends) > file_size:
        return f"is truncated: its data runs to byte {max(ends)} of a {file_size}-byte file"
    return None


def _level(page: Any, width: int, height: int, path: Path) -> _Level:
    if page.is_tiled:
        seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
    else:
        seg_h, seg_w = min(int(page.rowsperstrip), height), width
    memmap = None
    shape = (height, width, page.samplesperpixel)
    if page.is_memmappable and page.dataoffsets[0] + int(np.prod(shape)) <= path.stat().st_size:
        memmap = np.memmap(path, dtype=np.uint8, mode="r", offset=page.dataoffsets[0], shape=shape)
    return _Level(page, width, height, seg_h, seg_w, -(-width // seg_w), memmap)


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w) or (h, w, 1|3|4) uint8 -> (h, w, 3)."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] == 4:
        return composite_on_white(pixels)
    return np.ascontiguousarray(pixels)


def _tiff_mpp(page: Any) -> float | None:
    """Micrometres per pixel from XResolution/ResolutionUnit, else the image description."""
    xres = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if xres is not None and unit is not None:
        num, den = xres.value
        per_unit = num / den if den else 0.0
        um_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # inch, centimetre
        if per_unit > 0 and um_per_unit is not None:
            return um_per_unit / per_unit
    return mpp_from_description(page.description or "")
