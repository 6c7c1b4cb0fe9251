"""The packed store returns every pixel it was given, across chunk boundaries; verify is clean."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import make_patch, write_labels, write_patches
from histoscan.data.sources import open_source
from histoscan.data.store import PatchStore, write_store
from histoscan.data.verify import verify_source


def write_pcam(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "camelyonpatch_level_2_split_train_x.h5", "w") as f:
        f["x"] = images
    with h5py.File(folder / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f["y"] = labels.reshape(-1, 1, 1, 1)
    return folder


def test_store_larger_than_one_chunk_returns_every_pixel(tmp_path: Path) -> None:
    # 1,100 patches: two full 512-patch chunks and a partial one; each patch is unique noise
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1100, 96, 96, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 1100).astype(np.uint8)
    source = open_source(write_pcam(tmp_path / "pcam", images, labels))
    store = write_store(source, tmp_path / "store", progress=False)

    reopened = PatchStore(tmp_path / "store")
    assert reopened.images.shape == images.shape
    assert np.array_equal(reopened.images, images)  # every pixel, chunk boundaries included
    assert np.array_equal(reopened.labels, labels)
    assert reopened.ids == [f"train/{i}" for i in range(1100)]
    assert np.array_equal(
        reopened.read_many([511, 512, 1023, 1024, 1099]), images[[511, 512, 1023, 1024, 1099]]
    )
    assert store.meta["count"] == 1100 and store.meta["positives"] == int(labels.sum())

    result = verify_source(reopened, check_hash=True, progress=False)
    assert result.ok, result.problems[:3]
    assert result.checked == 1100


@pytest.mark.parametrize("chunk", [1, 3, 8, 512])
def test_small_chunks_on_tiny_data(tmp_path: Path, chunk: int) -> None:
    images = [make_patch(i) for i in range(8)]
    ids = write_patches(tmp_path / "data", images, ".png")
    write_labels(tmp_path / "data_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    source = open_source(tmp_path / "data")
    expected = np.stack([source.read(i) for i in range(len(source))])

    store = write_store(source, tmp_path / "store", chunk=chunk, progress=False)

    assert np.array_equal(store.images, expected)
    assert store.ids == source.ids and np.array_equal(store.labels, source.labels)
    result = verify_source(PatchStore(tmp_path / "store"), check_hash=True, progress=False)
    assert result.ok and result.hash_mode == "id", result.problems


def test_manifest_store_keeps_exactly_the_kept_patches(tmp_path: Path) -> None:
    images = [make_patch(10 + i) for i in range(7)]
    ids = write_patches(tmp_path / "data", images, ".png")
    write_labels(tmp_path / "data_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    keep = {ids[0], ids[3], ids[6]}
    manifest = tmp_path / "clean.csv"
    manifest.write_text("id,keep\n" + "".join(f"{k},{int(k in keep)}\n" for k in ids))

    store = write_store(
        open_source(tmp_path / "data"), tmp_path / "store", manifest, chunk=2, progress=False
    )

    by_id = dict(zip(ids, images, strict=True))
    assert set(store.ids) == keep and len(store) == 3
    for i, key in enumerate(store.ids):
        assert np.array_equal(store.images[i], by_id[key])
    assert verify_source(store, check_hash=True, progress=False).ok


def test_a_changed_pixel_is_found_by_verify_hash(tmp_path: Path) -> None:
    ids = write_patches(tmp_path / "data", [make_patch(i) for i in range(5)], ".png")
    write_labels(tmp_path / "data_labels.csv", [(k, 0) for k in ids])
    store = write_store(open_source(tmp_path / "data"), tmp_path / "store", chunk=2, progress=False)
    assert sorted(store.ids) == sorted(ids)
    images = np.load(tmp_path / "store" / "images.npy", mmap_mode="r+")
    images[4, 95, 95, 2] ^= 1  # the very last byte of the last chunk
    images.flush()
    del images

    result = verify_source(PatchStore(tmp_path / "store"), check_hash=True, progress=False)

    kinds = sorted(p.kind for p in result.problems)
    assert kinds == ["hash mismatch", "store checksum mismatch"]
    assert [p.id for p in result.problems if p.kind == "hash mismatch"] == [store.ids[4]]
