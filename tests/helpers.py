"""Small data builders shared by tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA = Path("shared") / "data" / "pcam-real"

# every training augmentation switched off (AugmentConfig keywords): the identity
AUGMENT_OFF = dict(
    dihedral=False,
    shift_px=0,
    hed_sigma=0.0,
    hed_bias=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    blur_prob=0.0,
)


def find_real_root(start: Path = Path(__file__)) -> Path:
    """``../shared/data/pcam-real`` beside the project, found upward from ``start``.

    Searching upward (rather than one fixed ``parents[n]``) also finds it from a copy of the
    tests nested inside the project, as mutation testing makes under ``mutants/``.
    """
    for parent in start.resolve().parents:
        if (parent / REAL_DATA / "train_labels.csv").is_file():
            return parent / REAL_DATA
    return start.resolve().parents[2] / REAL_DATA  # where it should be: for the message


def in_ci() -> bool:
    """True under a CI runner (GitHub Actions, GitLab and most others set CI=true)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_real_data() -> Path:
    """The real sample's root; fails loudly under CI when it is missing, skips locally.

    A CI run without the data must not pass with a quarter of the suite quietly skipped.
    """
    root = find_real_root()
    if (root / "train_labels.csv").is_file():
        return root
    message = f"real sample not found at {root} (see ../shared/data/pcam-real/README.md)"
    if in_ci():
        pytest.fail(f"CI=true but {message}: CI must provide the real data", pytrace=False)
    pytest.skip(message)


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


def make_patch(seed: int, size: int = 96) -> np.ndarray:
    """A random uint8 RGB patch; different seeds give different pixels."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def pixel_id(image: np.ndarray) -> str:
    """Kaggle's id: the SHA-1 of the raw pixel bytes."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def write_patches(folder: Path, images: list[np.ndarray], suffix: str = ".png") -> list[str]:
    """Write images named by their pixel hash; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for image in images:
        key = pixel_id(image)
        kwargs = {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(image).save(folder / f"{key}{suffix}", **kwargs)
        ids.append(key)
    return ids


def write_labels(path: Path, rows: list[tuple[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label"])
        writer.writerows(rows)


def subset_source(source, indices):  # type: ignore[no-untyped-def]
    """The patches at ``indices`` of ``source`` as a source of their own, as a folder of just
    them would be."""
    from histoscan.data.sources import PatchSource

    idx = np.asarray(indices, dtype=np.int64)

    class Subset(PatchSource):
        kind = "subset"

        def read_raw(self, i: int) -> np.ndarray:
            return source.read_raw(int(idx[i]))

        def locate(self, i: int) -> str:
            return source.locate(int(idx[i]))

    return Subset(source.root, [source.ids[i] for i in idx], source.labels[idx])


def bundled_held_out(real_root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 96, 96, 3), labels (n,)) of the first ``n`` validation patches recorded in the
    bundled model's card: real patches it was never trained on."""
    from histoscan.data.sources import open_source
    from histoscan.models.modelfile import load_model_file

    model = load_model_file()
    val_ids = model.card["val_ids"][:n]
    assert not model.meta.seen_in_training(val_ids).any()
    source = open_source(real_root / "train")
    position = {key: i for i, key in enumerate(source.ids)}
    indices = [position[k] for k in val_ids]
    return source.read_many(indices), source.labels[indices].astype(int)


class RecordedBars:
    """A stand-in for ``histoscan.progress.progress_bar``: ``monkeypatch.setattr(module,
    "progress_bar", bars)``; ``calls`` holds each bar's (args, kwargs), ``advances`` each step."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.advances: list[int] = []

    @contextlib.contextmanager
    def __call__(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self.calls.append((args, kwargs))
        yield self

    def advance(self, n: int) -> None:
        self.advances.append(n)
