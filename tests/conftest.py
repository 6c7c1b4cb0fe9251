"""Shared fixtures: the real sample beside the repo, and tiny generated patches in tmp_path."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-real"


@pytest.fixture(scope="session")
def real_root() -> Path:
    """../shared/data/pcam-real: 10,000 labelled and 564 unlabelled real Kaggle patches."""
    if not (REAL_ROOT / "train_labels.csv").is_file():
        pytest.skip(f"real sample not found at {REAL_ROOT}")
    return REAL_ROOT


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


@pytest.fixture
def tiny_kaggle(tmp_path: Path) -> Path:
    """A Kaggle-layout root with 8 labelled train patches (4 per class) and 3 test patches."""
    root = tmp_path / "kaggle"
    images = [make_patch(i) for i in range(8)]
    ids = write_patches(root / "train", images, ".tif")
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    test_ids = write_patches(root / "test", [make_patch(100 + i) for i in range(3)], ".tif")
    write_labels(root / "sample_submission.csv", [(k, 0) for k in test_ids])
    return root


@pytest.fixture(scope="session")
def untrained_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A histocnn model file with random weights: fast, for plumbing tests."""
    import torch

    from histoscan.models.bundle import ModelFile, save_model_file
    from histoscan.models.registry import create_model, model_spec

    torch.manual_seed(0)
    spec = model_spec("histocnn")
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    save_model_file(
        path,
        ModelFile(spec=spec, net=create_model("histocnn").eval(), card={"name": "untrained-test"}),
    )
    return path
