"""Uploaded bytes to patches (uint8 HWC), with the reason in the error when they are not one."""

from __future__ import annotations

import base64
import io
from typing import BinaryIO

import numpy as np
from PIL import Image

from histoscan.data.sources import TIFF_MAGIC, check_patch, decode_patch_file
from histoscan.serve.errors import ApiError

MAX_PATCH_FILE_BYTES = 16 * 2**20
# with --resize a patch may be any size, but not a decompression bomb
MAX_RESIZE_PIXELS = 4096 * 4096


def read_upload(file: BinaryIO, name: str, max_bytes: int = MAX_PATCH_FILE_BYTES) -> bytes:
    """The bytes of one uploaded file; 400 when empty, 413 when over ``max_bytes``."""
    data = file.read(max_bytes + 1)
    if not data:
        raise ApiError(400, f"{name}: empty file")
    if len(data) > max_bytes:
        raise ApiError(413, f"{name}: a patch file may be at most {max_bytes // 2**20} MB")
    return data


def decode_patch(
    data: bytes, name: str, patch_px: int, resize: bool = False
) -> tuple[np.ndarray, str | None]:
    """Decode one upload to uint8 (patch_px, patch_px, 3) RGB.

    Returns:
        The patch and, when ``resize`` changed its size, the original ``WxH``.

    Raises:
        ApiError: 415 when the bytes are not an image, 422 when the image is not an 8-bit RGB
            patch of ``patch_px`` pixels (and ``resize`` is off).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
        if resize and width * height > MAX_RESIZE_PIXELS:
            raise ApiError(422, f"{name}: {width}x{height} is too large to resize to a patch")
        if not resize and (width, height) != (patch_px, patch_px):
            raise ApiError(
                422,
                f"{name}: not {patch_px}x{patch_px} (got {width}x{height}); "
                "the server accepts other sizes only when started with --resize",
            )
        # the CLI's rules: a 16-bit or 4-channel TIFF is refused here as it is there
        image = decode_patch_file(io.BytesIO(data), data[:4] in TIFF_MAGIC)
    except ApiError:
        raise
    except Exception as exc:  # PIL raises many types for bytes that are not an image
        raise ApiError(415, f"{name}: not a readable image ({type(exc).__name__})") from exc
    # dtype and channels as check_patch words them; the size was checked above
    problem = check_patch(image[:1, :1], 1) if image.ndim >= 2 else "not an image array"
    if problem:
        raise ApiError(422, f"{name}: {problem}; send 8-bit RGB patches")
    resized_from = None
    if image.shape[:2] != (patch_px, patch_px):
        resized_from = f"{image.shape[1]}x{image.shape[0]}"
        resampled = Image.fromarray(image).resize((patch_px, patch_px), Image.Resampling.BILINEAR)
        image = np.asarray(resampled)
    return np.ascontiguousarray(image, dtype=np.uint8), resized_from


def image_pixels(file: BinaryIO) -> int:
    """Width x height from the header only (the file position is restored); 0 if unreadable."""
    start = file.tell()
    try:
        with Image.open(file) as img:
            width, height = img.size
    except Exception:  # not an image: decode_patch reports it properly
        return 0
    finally:
        file.seek(start)
    return width * height


def check_pixel_budget(files: list[BinaryIO], budget: int) -> None:
    """413 when the images of one request would decode to more than ``budget`` pixels."""
    total = 0
    for file in files:
        total += image_pixels(file)
        if total > budget:
            raise ApiError(
                413,
                f"these images hold more than {budget / 1e6:,.0f} million pixels, the most one "
                "request may decode; send fewer or smaller images",
            )


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HWC RGB to PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")
