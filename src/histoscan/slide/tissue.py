"""Where the tissue is, from a thumbnail: colour or stain above fixed floors, then morphology.

A pixel is tissue when its HSV saturation or its optical density (OD = -log10(I / 255), the
largest of the three channels) clears a floor. The floors sit just above glass and were tuned on
the real PCam sample (../shared/data/pcam-real) at about 12 um per thumbnail pixel: with
saturation >= 0.06 or OD >= 0.07, 0.5 % of tissue patches (>= 5 % stained pixels at full
resolution) keep less than 10 % tissue, and 3 of the 53 glass-only patches are taken for tissue.
A data-driven split (Otsu) was what lost pale stroma and fat before: on a slide that is mostly
tissue it separates dark tissue from pale tissue, not tissue from glass.

Then morphology sized in micrometres, as TIAToolbox's MorphologicalMasker sizes its dilation
from the resolution: specks under 15 um go first (dust, so scattered dust is not closed into a
blob), a closing of 30 um radius joins fat cells and the gaps of loose stroma, objects under a
quarter of a tile go, and small holes are filled.
"""

from __future__ import annotations

import numpy as np

from histoscan.errors import DataError

SATURATION_FLOOR = 0.06  # glass: below 0.03 in the real sample; pale eosin: 0.06-0.1
OD_FLOOR = 0.07  # optical density of the densest channel: glass 0.02-0.06
CLOSING_UM = 30.0  # closing radius: fat cells are 50-150 um across
DUST_UM = 15.0  # specks narrower than this are dust (a lymphocyte is 7-10 um; tissue is more)
GREY_SPREAD = 3  # a colour slide has pixels whose channels differ by more than this


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of uint8 (H, W, 3), as float32 (H, W)."""
    rgb = rgb.astype(np.float32)
    top = rgb.max(axis=-1)
    spread = top - rgb.min(axis=-1)
    return np.divide(spread, top, out=np.zeros_like(top), where=top > 0)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """The largest per-channel optical density -log10((I + 1) / 256) of uint8 (H, W, 3)."""
    darkest = rgb.min(axis=-1).astype(np.float32)  # the densest channel transmits least
    return -np.log10((darkest + 1.0) / 256.0)


def tissue_mask(
    thumbnail: np.ndarray,
    min_object_px: int = 16,
    closing_px: int = 0,
    dust_px: int = 0,
) -> np.ndarray:
    """Boolean (H, W) tissue mask of a uint8 RGB thumbnail.

    Args:
        thumbnail: the slide, small enough to hold (a few thousand pixels a side).
        min_object_px: specks of tissue up to this many thumbnail pixels are dropped (dust), and
            holes up to this size inside tissue are filled.
        closing_px: radius in thumbnail pixels of the morphological closing (0: none).
        dust_px: specks up to this many pixels are dropped before the closing, so that
            scattered dust is not closed into a blob.
    """
    from skimage.morphology import remove_small_holes, remove_small_objects

    if thumbnail.size == 0:
        return np.zeros(thumbnail.shape[:2], dtype=bool)
    mask = (saturation(thumbnail) >= SATURATION_FLOOR) | (optical_density(thumbnail) >= OD_FLOOR)
    if dust_px > 0:
        mask = remove_small_objects(mask, max_size=dust_px)
    if closing_px > 0 and mask.any():
        mask = close_disk(mask, closing_px)
    if min_object_px > 0:
        mask = remove_small_objects(mask, max_size=min_object_px)
        mask = remove_small_holes(mask, max_size=min_object_px)
    return mask


def close_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary closing with a disk of ``radius`` pixels, through two Euclidean distance maps.

    Dilation keeps pixels within ``radius`` of the mask, erosion keeps pixels farther than
    ``radius`` from what the dilation left out: the same as a disk-shaped footprint (up to
    where the disk's rim falls between pixels), in linear time instead of radius² per pixel.
    Outside the image counts as background, so nothing grows in from the border.
    """
    from scipy.ndimage import distance_transform_edt

    pad = int(np.ceil(radius)) + 1
    padded = np.pad(mask, pad)
    dilated = distance_transform_edt(~padded) <= radius
    closed = distance_transform_edt(dilated) > radius
    return closed[pad:-pad, pad:-pad]


def closing_radius_px(thumb_mpp: float) -> int:
    """The closing radius in thumbnail pixels of ``thumb_mpp`` micrometres."""
    return round(CLOSING_UM / thumb_mpp) if thumb_mpp > 0 else 0


def dust_area_px(thumb_mpp: float) -> int:
    """Pixels of a disk DUST_UM across, in thumbnail pixels of ``thumb_mpp`` micrometres."""
    return int(np.pi * (DUST_UM / 2 / thumb_mpp) ** 2) if thumb_mpp > 0 else 0


def check_colour(thumbnail: np.ndarray, where: str) -> None:
    """Refuse a grey-level slide: the model reads H&E colour, and tissue is found by it.

    A slide is grey when every pixel's channels agree within GREY_SPREAD, yet some of it is
    darker than glass (a blank slide is not an error: it has no tissue).
    """
    if thumbnail.size == 0:
        return
    spread = thumbnail.max(axis=-1).astype(np.int16) - thumbnail.min(axis=-1)
    dark = optical_density(thumbnail) >= OD_FLOOR
    if dark.mean() > 0.001 and (spread <= GREY_SPREAD).mean() > 0.999:
        raise DataError(
            f"{where}: a grey-level (one-channel) image; histoscan needs an RGB H&E slide"
        )
