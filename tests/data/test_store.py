"""The packed store: exact round trip, manifest filtering, atomic writes, zero-copy reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import make_patch, write_labels, write_patches
from histoscan.cli import data_cmds  # noqa: F401  (registers verify/prepare/download)
from histoscan.cli.app import app
from histoscan.data.sources import FileSource, open_source
from histoscan.data.store import PatchStore, is_store, write_store
from histoscan.errors import DataError

runner = CliRunner()


def write_manifest(path: Path, keep: dict[str, bool]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reason", "keep"])
        writer.writerows([k, "" if v else "blurry", "yes" if v else "no"] for k, v in keep.items())


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders that a failed write might leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_prepare_round_trip(tiny_kaggle: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    result = runner.invoke(app, ["prepare", str(tiny_kaggle), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "wrote 8 patches (4 positive, 4 negative, 0 unlabelled)" in result.output
    source = open_source(tiny_kaggle)
    store = open_source(out)  # auto-detected as a store
    assert isinstance(store, PatchStore)
    assert store.ids == source.ids
    np.testing.assert_array_equal(store.labels, source.labels)
    np.testing.assert_array_equal(store.images, source.read_many(range(len(source))))
    assert store.id_is_hash and store.meta["count"] == 8
    assert leftovers(tmp_path) == []


def test_prepare_refuses_to_overwrite_without_flag(tiny_kaggle: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    args = ["prepare", str(tiny_kaggle), "--out", str(out), "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "already exists" in result.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert leftovers(tmp_path) == []


def test_prepare_pcam_split_keeps_labels(tmp_path: Path) -> None:
    import h5py

    images = np.stack([make_patch(i) for i in range(5)])
    folder = tmp_path / "pcam"
    folder.mkdir()
    with h5py.File(folder / "camelyonpatch_level_2_split_valid_x.h5", "w") as f:
        f.create_dataset("x", data=images)
    with h5py.File(folder / "camelyonpatch_level_2_split_valid_y.h5", "w") as f:
        f.create_dataset("y", data=np.array([0, 1, 1, 0, 1], np.uint8).reshape(-1, 1, 1, 1))
    store = write_store(open_source(folder, split="valid"), tmp_path / "store", progress=False)
    assert store.ids == [f"valid/{i}" for i in range(5)]
    assert store.labels.tolist() == [0, 1, 1, 0, 1]
    assert not store.id_is_hash
    np.testing.assert_array_equal(store.images, images)


def test_manifest_keeps_only_marked_ids(tiny_kaggle: Path, tmp_path: Path) -> None:
    source = open_source(tiny_kaggle)
    keep = {key: i % 3 != 0 for i, key in enumerate(source.ids)}
    manifest = tmp_path / "clean.csv"
    write_manifest(manifest, keep)
    out = tmp_path / "store"
    args = ["prepare", str(tiny_kaggle), "-o", str(out), "--manifest", str(manifest), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = PatchStore(out)
    kept = [i for i, key in enumerate(source.ids) if keep[key]]
    assert store.ids == [source.ids[i] for i in kept]
    np.testing.assert_array_equal(store.images, source.read_many(kept))
    np.testing.assert_array_equal(store.labels, source.labels[kept])


def test_manifest_that_keeps_nothing_is_an_error(tiny_kaggle: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "clean.csv"
    write_manifest(manifest, {"someone-else": True})
    with pytest.raises(DataError, match="keeps none"):
        write_store(open_source(tiny_kaggle), tmp_path / "store", manifest, progress=False)
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("error", "raised"), [(RuntimeError("disk on fire"), DataError), (KeyboardInterrupt(), None)]
)
def test_interrupted_prepare_leaves_nothing(
    tiny_kaggle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    raised: type[BaseException] | None,
) -> None:
    source = open_source(tiny_kaggle)
    real_read_raw = FileSource.read_raw
    calls = []

    def failing_read_raw(self: FileSource, i: int) -> np.ndarray:
        calls.append(i)
        if len(calls) == 5:  # part-way through the first chunk
            raise error
        return real_read_raw(self, i)

    monkeypatch.setattr(FileSource, "read_raw", failing_read_raw)
    out = tmp_path / "store"
    with pytest.raises(raised or type(error)):  # a decoder failure names the file
        write_store(source, out, progress=False)
    assert not out.exists() and not is_store(out)
    assert leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_store(
    tiny_kaggle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store"
    write_store(open_source(tiny_kaggle), out, progress=False)
    before = json.loads((out / "store.json").read_text())

    def broken(self: FileSource, i: int) -> np.ndarray:
        raise RuntimeError("unplugged")

    monkeypatch.setattr(FileSource, "read_raw", broken)
    with pytest.raises(DataError, match="unreadable"):
        write_store(open_source(tiny_kaggle), out, overwrite=True, progress=False)
    assert json.loads((out / "store.json").read_text()) == before
    assert len(PatchStore(out)) == 8 and leftovers(tmp_path) == []


def test_unclean_source_is_refused(tmp_path: Path) -> None:
    ids = write_patches(tmp_path / "train", [make_patch(i) for i in range(3)], ".png")
    write_labels(tmp_path / "train_labels.csv", [(ids[0], 1), (ids[1], 7)])
    with pytest.raises(DataError, match="histoscan verify"):
        write_store(open_source(tmp_path), tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_store_reads_are_zero_copy_views(tiny_kaggle: Path, tmp_path: Path) -> None:
    store = write_store(open_source(tiny_kaggle), tmp_path / "store", progress=False)
    image = store.read(3)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert np.shares_memory(image, store.images)
    assert isinstance(store.images, np.memmap)
    _, item, _ = store[3]
    assert np.shares_memory(item, store.images)


def test_dataloader_with_workers_over_a_store(tiny_kaggle: Path, tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from histoscan.train import PatchDataset

    store = write_store(open_source(tiny_kaggle), tmp_path / "store", progress=False)
    store.read(0)  # maps the file here; each worker must map its own, not receive a copy
    indices = np.array([7, 0, 3, 5, 2, 6, 1, 4])
    loader = DataLoader(PatchDataset(store, indices), batch_size=3, num_workers=2)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])  # (N, 96, 96, 3) uint8
    labels = torch.cat([b[1] for b in batches])
    assert images.dtype == torch.uint8 and images.shape == (8, 96, 96, 3)
    np.testing.assert_array_equal(images.numpy(), store.images[indices])
    np.testing.assert_array_equal(labels.numpy(), store.labels[indices].astype(np.float32))


def test_real_sample_prepare_and_dataloader(real_root: Path, tmp_path: Path) -> None:
    """The 10,000 real patches pack exactly and a DataLoader pass sees every one once."""
    import torch
    from torch.utils.data import DataLoader

    from histoscan.train import PatchDataset

    source = open_source(real_root)
    store = write_store(source, tmp_path / "store", progress=False)
    assert store.ids == source.ids and len(store) == 10_000
    assert store.meta["positives"] == 4028 and store.meta["negatives"] == 5972
    for i in (0, 4321, 9999):
        np.testing.assert_array_equal(store.read(i), source.read(i))
    loader = DataLoader(PatchDataset(store, np.arange(len(store))), batch_size=500, shuffle=True)
    n_seen, n_pos = 0, 0.0
    for images, labels in loader:
        assert images.shape[1:] == (96, 96, 3) and images.dtype == torch.uint8
        n_seen += len(images)
        n_pos += float(labels.sum())
    assert n_seen == 10_000 and n_pos == 4028
