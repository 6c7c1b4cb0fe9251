"""One small interface for whole-slide images, with interchangeable backends (eva style).

``open_slide(path)`` returns a ``SlideReader``: OpenSlide for the vendor formats it knows (SVS,
NDPI, MRXS, tiled pyramidal TIFF, ...), tifffile for other TIFFs (pyramid levels from the file's
series, tiles decoded lazily), Pillow for plain PNG/JPEG/BMP/WebP images. Coordinates follow
OpenSlide: a region's top-left is in level-0 pixels, its size in pixels of the level read.
Pixels outside the slide, and transparent ones, read as white.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from histoscan.errors import DataError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openslide", "tifffile", "pillow")
PILLOW_FORMATS = {"PNG", "JPEG", "BMP", "WEBP"}
# whole-slide formats we recognise by name but cannot read (without OpenSlide, or at all)
SLIDE_SUFFIXES = {
    ".svs",
    ".ndpi",
    ".mrxs",
    ".vms",
    ".vmu",
    ".scn",
    ".bif",
    ".czi",
    ".lif",
    ".isyntax",
    ".dcm",
    ".qptiff",
    ".vsi",
}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# scanners write 0.1-2 micrometres per pixel; 72 or 96 dpi (350 or 265 um/px) is a screen default
MPP_RANGE = (0.05, 20.0)
THUMBNAIL_READ_PX = 4096 * 4096  # read a level whole for a thumbnail only up to this many pixels


class HeaderError(DataError):
    """A slide whose header cannot be trusted (damaged, forged, or not an image we read)."""


@runtime_checkable
class SlideReader(Protocol):
    """What the slide pipeline needs from a slide, whatever the file format."""

    path: Path
    backend: str
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level, level 0 first
    level_downsamples: tuple[float, ...]  # level-0 pixels per level pixel
    mpp: float | None  # micrometres per level-0 pixel, None when the file does not say

    @property
    def level_count(self) -> int: ...

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """uint8 RGB (h, w, 3) of ``size`` (w, h) level pixels; top-left (x, y) in level 0."""
        ...

    def thumbnail(self, max_px: int) -> np.ndarray:
        """The whole slide as uint8 RGB, its longer side at most ``max_px``."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> SlideReader: ...

    def __exit__(self, *exc: object) -> None: ...


class BaseReader:
    """Shared behaviour: context manager, level_count, a thumbnail from the smallest level."""

    path: Path
    backend: str = "base"
    level_dimensions: tuple[tuple[int, int], ...] = ()
    level_downsamples: tuple[float, ...] = ()
    mpp: float | None = None

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_px: int) -> np.ndarray:
        level = self.level_count - 1
        w, h = self.level_dimensions[level]
        if w * h <= THUMBNAIL_READ_PX:
            return fit_image(self.read_region(0, 0, level, (w, h)), max_px)
        return _block_mean_thumbnail(self, level, max_px)

    def close(self) -> None:
        pass

    def __enter__(self) -> BaseReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return f"<{self.backend} slide {self.path.name} {w}x{h}, {self.level_count} levels>"


def open_slide(path: str | Path, backend: str = "auto") -> SlideReader:
    """Open ``path`` with the named backend, or the first that reads it (OpenSlide first)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise DataError(f"unknown slide backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give the slide file (for MRXS, the .mrxs file)")
    if backend == "openslide":
        return OpenSlideReader(path)
    if backend == "tifffile":
        from histoscan.slide.tiffreader import TiffReader

        return TiffReader(path)
    if backend == "pillow":
        return PillowReader(path)
    return _open_auto(path)


def _open_auto(path: Path) -> SlideReader:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    is_tiff = magic in TIFF_MAGIC
    vendor = _openslide_vendor(path)
    if vendor is not None:
        try:
            reader = OpenSlideReader(path)
        except DataError:
            if not is_tiff:
                raise
            log.info("%s: OpenSlide (%s) cannot open it; trying tifffile", path, vendor)
        else:
            if vendor != "generic-tiff" or reader.level_count > 1:
                return reader
            return _more_levels(reader, path)
    if is_tiff:
        from histoscan.slide.tiffreader import TiffReader

        return TiffReader(path)
    if path.suffix.lower() in SLIDE_SUFFIXES:
        hint = "" if _has_openslide() else " (install openslide-python and openslide-bin)"
        raise DataError(
            f"{path}: unsupported slide format {path.suffix}{hint}; "
            "convert it to a tiled pyramidal TIFF"
        )
    return PillowReader(path)


def _more_levels(reader: OpenSlideReader, path: Path) -> SlideReader:
    """OpenSlide ignores SubIFD pyramids: prefer tifffile when it finds levels OpenSlide missed."""
    from histoscan.slide.tiffreader import TiffReader

    try:
        tiff = TiffReader(path)
    except HeaderError:
        reader.close()  # OpenSlide would trust the header and size buffers from it
        raise
    except DataError:
        return reader
    if tiff.level_count > reader.level_count:
        reader.close()
        return tiff
    tiff.close()
    return reader


def _has_openslide() -> bool:
    try:
        import openslide  # noqa: F401
    except ImportError:
        return False
    return True


def _openslide_vendor(path: Path) -> str | None:
    if not _has_openslide():
        return None
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # detection should never be what fails
        return None


def checked_mpp(value: float | None, where: str) -> float | None:
    """``value`` if it is a plausible scan resolution, else None (with a log line saying why)."""
    if value is None or not np.isfinite(value) or value <= 0:
        return None
    if not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        log.warning(
            "%s: ignoring resolution %.4g um/px (not a microscope scan; a default dpi?)",
            where,
            value,
        )
        return None
    return float(value)


def mpp_from_description(description: str) -> float | None:
    """Micrometres per pixel from Aperio's ``MPP = 0.2520`` or OME's ``PhysicalSizeX="0.25"``."""
    match = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description)
    if match is None:
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', description)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', description)
        if match is None or (unit is not None and unit.group(1) not in ("µm", "um", "\u03bcm")):
            return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (h, w, 4) -> RGB (h, w, 3) over a white background; RGB passes through."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.rint(rgb).astype(np.uint8)


def fit_image(image: np.ndarray, max_px: int) -> np.ndarray:
    """Downscale (h, w, 3) so its longer side is at most ``max_px``, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = max_px / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _block_mean_thumbnail(reader: BaseReader, level: int, max_px: int) -> np.ndarray:
    """Thumbnail of a level too big to read at once: integer block means over bands of rows.

    Memory stays at one band (about 16 MB of the level, and its float32 copy) whatever the size.
    """
    w, h = reader.level_dimensions[level]
    factor = int(np.ceil(max(w, h) / max_px))
    out_w, out_h = w // factor, h // factor
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    band_rows = max(1, (16 * 1024 * 1024) // (w * 3 * factor))  # output rows per band
    for top in range(0, out_h, band_rows):
        rows = min(band_rows, out_h - top)
        x0, y0 = 0, round(top * factor * reader.level_downsamples[level])
        band = reader.read_region(x0, y0, level, (out_w * factor, rows * factor))
        blocks = band.reshape(rows, factor, out_w, factor, 3)  # (rows, f, cols, f, 3)
        out[top : top + rows] = blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)
    return out


class OpenSlideReader(BaseReader):
    """The formats OpenSlide reads; transparent (unscanned) areas become white."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        try:
            import openslide
        except ImportError as exc:
            raise DataError(
                "the OpenSlide backend needs openslide-python and openslide-bin "
                "(pip install 'histoscan[slide]')"
            ) from exc
        self.path = Path(path)
        try:
            self._slide: Any = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise DataError(f"{path}: not a format OpenSlide reads") from exc
        except openslide.OpenSlideError as exc:
            raise DataError(f"{path}: OpenSlide cannot read it ({exc})") from exc
        self._error = openslide.OpenSlideError
        self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        props = self._slide.properties
        self.mpp = checked_mpp(
            _mean_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y")), str(path)
        )

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            region = self._slide.read_region((int(x), int(y)), level, tuple(int(s) for s in size))
        except self._error as exc:
            raise DataError(
                f"{self.path}: unreadable region at level {level}, ({x}, {y}) ({exc})"
            ) from exc
        return composite_on_white(np.asarray(region))

    def thumbnail(self, max_px: int) -> np.ndarray:
        w, h = self.level_dimensions[-1]
        if w * h > THUMBNAIL_READ_PX:  # OpenSlide would read the whole smallest level at once
            return super().thumbnail(max_px)
        try:
            return np.asarray(self._slide.get_thumbnail((max_px, max_px)).convert("RGB"))
        except self._error as exc:
            raise DataError(f"{self.path}: unreadable thumbnail ({exc})") from exc

    def close(self) -> None:
        self._slide.close()


def _mean_mpp(mpp_x: str | None, mpp_y: str | None) -> float | None:
    values = []
    for text in (mpp_x, mpp_y):
        with contextlib.suppress(TypeError, ValueError):  # missing or not a number
            values.append(float(text))
    if not values:
        return None
    if len(values) == 2 and abs(values[0] - values[1]) > 0.01 * max(values):
        log.warning("pixels are not square (%.4g x %.4g um); using the mean", *values)
    return float(np.mean(values))


class PillowReader(BaseReader):
    """Plain PNG/JPEG/BMP/WebP, decoded whole on opening (Pillow's size limit applies)."""

    backend = "pillow"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    fmt = img.format
                    if fmt not in PILLOW_FORMATS:
                        raise DataError(
                            f"{path}: unsupported image format {fmt}; use TIFF, "
                            f"a format OpenSlide reads, or {', '.join(PILLOW_FORMATS)}"
                        )
                    dpi = img.info.get("dpi")
                    self._image = _pillow_rgb(img, path)
        except Image.DecompressionBombError as exc:
            raise DataError(
                f"{path}: too large for the plain-image reader; convert it to a "
                "tiled pyramidal TIFF"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise DataError(f"{path}: not a slide or image histoscan can read ({exc})") from exc
        h, w = self._image.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp = None
        if dpi:  # PNG pHYs and JPEG density arrive as dots per inch
            self.mpp = checked_mpp(25400.0 / float(dpi[0]), str(path)) if dpi[0] else None

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        return crop_padded(self._image, int(x), int(y), int(size[0]), int(size[1]))


def _pillow_rgb(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise DataError(f"{path}: not an 8-bit RGB image (mode {img.mode})")
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        return composite_on_white(np.asarray(img.convert("RGBA")))
    return np.asarray(img.convert("RGB"))


def crop_padded(image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``image[y:y+h, x:x+w]`` (any number of samples) with white where it leaves the image."""
    out = np.full((h, w, *image.shape[2:]), 255, dtype=np.uint8)
    ih, iw = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out
