"""Small data builders shared by tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_separable_folder(folder: Path, n_per_class: int = 16, seed: int = 0) -> Path:
    """Class folders 0/ and 1/ where tumour patches have a dark centre: learnable in seconds."""
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image = rng.integers(150, 230, (96, 96, 3), dtype=np.uint8)
            if label:
                image[32:64, 32:64] = rng.integers(20, 90, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / str(label) / f"{label}_{i:03d}.png")
    return folder
