"""Every layout a user brings opens through open_source and yields (id, uint8 HxWx3, label)."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import make_patch, pixel_id, write_labels, write_patches
from histoscan.data.pcam import PCamSource
from histoscan.data.sources import FileSource, open_source
from histoscan.errors import DataError


def write_pcam(
    folder: Path, images: np.ndarray, labels: np.ndarray | None, split: str = "train"
) -> Path:
    """The official PCam pair: x (N, 96, 96, 3) uint8 and y (N, 1, 1, 1) uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    x_path = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=images)
    if labels is not None:
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=np.asarray(labels, np.uint8).reshape(-1, 1, 1, 1))
    return x_path


def gzip_file(path: Path) -> Path:
    """Replace ``path`` by ``path.gz``, as the files come from Zenodo."""
    zipped = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(zipped, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return zipped


def assert_items(source, images: dict[str, np.ndarray], labels: dict[str, int | None]) -> None:
    """Every item is (id, the exact pixels as uint8 (96, 96, 3), its label)."""
    assert len(source) == len(images)
    assert source.problems == []
    seen = set()
    for key, image, label in source:
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
        np.testing.assert_array_equal(image, images[key])
        assert label == labels[key]
        seen.add(key)
    assert seen == set(images)


@pytest.mark.parametrize("suffix", [".tif", ".webp", ".png"])
def test_kaggle_root_every_format(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "kaggle"
    images = [make_patch(i) for i in range(6)]
    ids = write_patches(root / "train", images, suffix)
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    source = open_source(root)
    assert isinstance(source, FileSource) and source.kind == "Kaggle train"
    assert source.id_is_hash
    assert_items(source, dict(zip(ids, images, strict=True)), {k: i % 2 for i, k in enumerate(ids)})
    assert source.labelled


def test_kaggle_test_split_is_unlabelled(tiny_kaggle: Path) -> None:
    source = open_source(tiny_kaggle, split="test")
    assert len(source) == 3 and source.kind == "Kaggle test"
    assert all(label is None for _, _, label in source)  # sample_submission holds no labels
    assert not source.labelled


def test_kaggle_unknown_split_is_an_error(tiny_kaggle: Path) -> None:
    with pytest.raises(DataError, match="unknown split"):
        open_source(tiny_kaggle, split="valid")


def test_folder_with_labels_csv(tmp_path: Path) -> None:
    images = [make_patch(10 + i) for i in range(4)]
    ids = write_patches(tmp_path / "imgs", images, ".png")
    # Excel writes a byte-order mark; labels may also be written as floats
    csv_path = tmp_path / "my_labels.csv"
    csv_path.write_text(
        "\ufeffid,label\n" + "".join(f"{k},{float(i % 2)}\n" for i, k in enumerate(ids)),
        encoding="utf-8",
    )
    source = open_source(tmp_path / "imgs", labels=csv_path)
    assert_items(source, dict(zip(ids, images, strict=True)), {k: i % 2 for i, k in enumerate(ids)})


def test_labels_csv_that_does_not_exist(tmp_path: Path) -> None:
    write_patches(tmp_path / "imgs", [make_patch(1)])
    with pytest.raises(DataError, match="no such labels file"):
        open_source(tmp_path / "imgs", labels=tmp_path / "missing.csv")


def test_folder_beside_its_labels_csv(tmp_path: Path) -> None:
    """``train/`` next to ``train_labels.csv`` opens as labelled even when pointed at directly."""
    images = [make_patch(i) for i in range(3)]
    ids = write_patches(tmp_path / "train", images, ".webp")
    write_labels(tmp_path / "train_labels.csv", [(k, 1) for k in ids])
    source = open_source(tmp_path / "train")
    assert_items(source, dict(zip(ids, images, strict=True)), dict.fromkeys(ids, 1))


@pytest.mark.parametrize(
    ("neg", "pos"), [("0", "1"), ("negative", "positive"), ("normal", "tumor")]
)
def test_class_folders(tmp_path: Path, neg: str, pos: str) -> None:
    neg_images = [make_patch(20 + i) for i in range(3)]
    pos_images = [make_patch(30 + i) for i in range(2)]
    neg_ids = write_patches(tmp_path / neg, neg_images, ".png")
    pos_ids = write_patches(tmp_path / pos, pos_images, ".tif")
    source = open_source(tmp_path)
    assert source.kind == "class folders"
    images = dict(zip(neg_ids + pos_ids, neg_images + pos_images, strict=True))
    assert_items(source, images, {**dict.fromkeys(neg_ids, 0), **dict.fromkeys(pos_ids, 1)})


def test_unlabelled_folder(tmp_path: Path) -> None:
    images = [make_patch(40 + i) for i in range(3)]
    ids = write_patches(tmp_path, images, ".png")
    (tmp_path / "notes.txt").write_text("not an image")  # ignored, not a problem
    source = open_source(tmp_path)
    assert source.kind == "unlabelled folder"
    assert_items(source, dict(zip(ids, images, strict=True)), dict.fromkeys(ids))


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images found"):
        open_source(tmp_path)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "nope")


def pcam_data(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([make_patch(50 + i) for i in range(n)]), np.arange(n) % 2


def test_pcam_folder_and_file(tmp_path: Path) -> None:
    images, labels = pcam_data()
    x_path = write_pcam(tmp_path, images, labels, split="valid")
    expected = {f"valid/{i}": images[i] for i in range(len(images))}
    expected_labels = {f"valid/{i}": int(labels[i]) for i in range(len(images))}
    for path in (tmp_path, x_path):
        source = open_source(path)
        assert isinstance(source, PCamSource) and source.split == "valid"
        assert not source.id_is_hash
        assert_items(source, expected, expected_labels)


def test_pcam_read_many_any_order(tmp_path: Path) -> None:
    images, labels = pcam_data(6)
    source = open_source(write_pcam(tmp_path, images, labels))
    for indices in ([1, 2, 3], [4, 0, 2], [3, 3, 1], []):
        np.testing.assert_array_equal(source.read_many(indices), images[indices])


def test_pcam_label_file_is_not_the_entry_point(tmp_path: Path) -> None:
    write_pcam(tmp_path, *pcam_data())
    with pytest.raises(DataError, match="label file"):
        open_source(tmp_path / "camelyonpatch_level_2_split_train_y.h5")


def test_pcam_without_labels_is_unlabelled(tmp_path: Path) -> None:
    images, _ = pcam_data(3)
    source = open_source(write_pcam(tmp_path, images, None, split="test"))
    assert [label for _, _, label in source] == [None, None, None]


def test_pcam_gz_is_decompressed_once_into_a_cache_beside_it(tmp_path: Path, monkeypatch) -> None:
    images, labels = pcam_data()
    x_path = write_pcam(tmp_path, images, labels)
    y_path = x_path.with_name("camelyonpatch_level_2_split_train_y.h5")
    gzip_file(x_path)
    gzip_file(y_path)
    source = open_source(tmp_path)
    assert source.x_path == x_path and x_path.is_file()  # the cache sits next to the .gz
    assert_items(source, {f"train/{i}": im for i, im in enumerate(images)},
                 {f"train/{i}": int(v) for i, v in enumerate(labels)})  # fmt: skip
    mtime = x_path.stat().st_mtime_ns

    import histoscan.data.sources as sources

    def no_second_decompression(*args, **kwargs):
        raise AssertionError("decompressed again")

    monkeypatch.setattr(sources.gzip, "GzipFile", no_second_decompression)
    again = open_source(tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz")
    assert again.x_path == x_path and x_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.read(4), images[4])


def test_pcam_pickle_drops_the_h5_handle(tmp_path: Path) -> None:
    images, labels = pcam_data()
    source = open_source(write_pcam(tmp_path, images, labels))
    source.read(0)  # opens the file in this process
    assert source._file is not None
    clone = pickle.loads(pickle.dumps(source))
    assert clone._file is None  # each DataLoader worker opens its own
    np.testing.assert_array_equal(clone.read(2), images[2])
    assert clone.labels.tolist() == labels.tolist()


def test_ids_of_kaggle_files_are_pixel_hashes(tiny_kaggle: Path) -> None:
    source = open_source(tiny_kaggle)
    for key, image, _ in source:
        assert key == pixel_id(image)


def test_bad_patch_read_names_the_file(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(make_patch(1)[:, :, 0]).save(tmp_path / "gray.png")
    source = open_source(tmp_path)
    with pytest.raises(DataError, match=r"gray\.png: not 3-channel"):
        source.read(0)
