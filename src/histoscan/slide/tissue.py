"""Where the tissue is, from a thumbnail: Otsu on saturation, then small specks and holes cleaned.

H&E tissue is coloured and the glass around it is white or grey, so saturation separates them
better than brightness does (pale fat and dark debris both fool a grey-level threshold).
"""

from __future__ import annotations

import numpy as np

# Otsu's threshold is clamped: glass sits below 0.05 saturation and stained tissue above about
# 0.15, so an all-white view finds nothing and an all-tissue view keeps its pale half.
SATURATION_RANGE = (0.05, 0.15)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of uint8 (H, W, 3), as float32 (H, W)."""
    rgb = rgb.astype(np.float32)
    top = rgb.max(axis=-1)
    spread = top - rgb.min(axis=-1)
    return np.divide(spread, top, out=np.zeros_like(top), where=top > 0)


def tissue_mask(thumbnail: np.ndarray, min_object_px: int = 16) -> np.ndarray:
    """Boolean (H, W) tissue mask of a uint8 RGB thumbnail.

    Args:
        thumbnail: the slide, small enough to hold (a few thousand pixels a side).
        min_object_px: specks of tissue up to this many thumbnail pixels are dropped, and holes
            up to this size inside tissue are filled.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    sat = saturation(thumbnail)
    if sat.size == 0 or float(sat.max()) <= SATURATION_RANGE[0]:
        return np.zeros(sat.shape, dtype=bool)
    threshold = float(np.clip(threshold_otsu(sat), *SATURATION_RANGE))
    mask = sat > threshold
    if min_object_px > 0:
        mask = remove_small_objects(mask, max_size=min_object_px)
        mask = remove_small_holes(mask, max_size=min_object_px)
    return mask
