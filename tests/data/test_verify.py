"""`histoscan verify`: every defect is reported with its file and kind; exit codes are right."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from helpers import make_patch, pixel_id, write_labels, write_patches
from histoscan.cli import data_cmds  # noqa: F401  (registers verify/prepare/download)
from histoscan.cli.app import app
from histoscan.data.sources import open_source
from histoscan.data.store import write_store
from histoscan.data.verify import verify_source

runner = CliRunner()


def save(folder: Path, name: str, image: np.ndarray, **kwargs: object) -> Path:
    path = folder / name
    Image.fromarray(image).save(path, **kwargs)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def broken_kaggle(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A Kaggle root with one of each defect; returns it and {expected kind: file stem or id}."""
    root = tmp_path / "broken"
    train = root / "train"
    good = [make_patch(i) for i in range(4)]
    ids = write_patches(train, good, ".tif")
    labels: list[tuple[str, object]] = [(k, i % 2) for i, k in enumerate(ids)]
    expect: dict[str, str] = {}

    def add(kind: str, image: np.ndarray | None, suffix: str = ".png", label: object = 1) -> Path:
        key = pixel_id(image) if image is not None else hashlib.sha1(kind.encode()).hexdigest()
        path = train / f"{key}{suffix}"
        if image is not None:
            Image.fromarray(image).save(path, **({"lossless": True} if suffix == ".webp" else {}))
        expect[kind] = key
        if label is not None:
            labels.append((key, label))
        return path

    add("unreadable file", None, ".png").write_bytes(b"this is not a PNG")
    truncate(add("truncated file", make_patch(10), ".webp"))
    add("not 96x96", make_patch(11, size=64))
    add("not 3-channel", make_patch(12)[:, :, 0])  # grayscale
    rgba = np.dstack([make_patch(13), np.full((96, 96), 255, np.uint8)])
    add("not 3-channel RGBA", rgba)
    deep = add("not 8-bit", None, ".tif")
    tifffile.imwrite(deep, make_patch(14).astype(np.uint16) * 257)  # 16-bit RGB
    add("label not 0/1", make_patch(15), label="2")
    add("image without label", make_patch(16), label=None)
    # the same id twice: one patch saved as .tif beside its .png
    dup = add("duplicate id", make_patch(17))
    Image.fromarray(make_patch(17)).save(dup.with_suffix(".tif"))
    # a file renamed: its id is no longer the SHA-1 of its pixels
    wrong = make_patch(18)
    save(train, f"{'0' * 40}.png", wrong)
    labels.append(("0" * 40, 0))
    expect["hash mismatch"] = "0" * 40
    labels.append(("f" * 40, 1))
    expect["label without image"] = "f" * 40
    write_labels(root / "train_labels.csv", labels)
    return root, expect


def kinds_by_id(problems) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for p in problems:
        found.setdefault(p.id, set()).add(p.kind)
    return found


def test_every_defect_is_reported(broken_kaggle: tuple[Path, dict[str, str]]) -> None:
    root, expect = broken_kaggle
    result = verify_source(open_source(root), check_hash=True, progress=False)
    found = kinds_by_id(result.problems)
    for kind, key in expect.items():
        assert kind.split(" RGBA")[0] in found.get(key, set()), (kind, found.get(key))
    # each problem names the file (or the CSV line), the id, and what is wrong
    lines = (root / "train_labels.csv").read_text().splitlines()
    for p in result.problems:
        assert p.id in p.location or p.id in p.detail, p
        assert p.id in str(p)
        if ".csv:" in p.location:  # the line it names holds that id
            assert lines[int(p.location.rsplit(":", 1)[1]) - 1].startswith(p.id), p
        assert p.detail
    rgba = next(p for p in result.problems if p.id == expect["not 3-channel RGBA"])
    assert "RGBA" in rgba.detail
    assert "grayscale" in next(p for p in result.problems if p.id == expect["not 3-channel"]).detail
    assert "uint16" in next(p for p in result.problems if p.id == expect["not 8-bit"]).detail
    assert not result.ok
    assert result.checked == len(open_source(root))
    # the four good patches and the broken-label ones are not reported for decoding
    assert result.counts()["duplicate id"] == 1


def test_without_hash_a_renamed_file_passes(broken_kaggle: tuple[Path, dict[str, str]]) -> None:
    root, _ = broken_kaggle
    result = verify_source(open_source(root), check_hash=False, progress=False)
    assert "hash mismatch" not in result.counts()
    assert result.hash_mode is None


def test_worker_processes_find_the_same(broken_kaggle: tuple[Path, dict[str, str]]) -> None:
    root, _ = broken_kaggle
    serial = verify_source(open_source(root), check_hash=True, workers=1, progress=False)
    pooled = verify_source(open_source(root), check_hash=True, workers=2, progress=False)
    assert pooled.problems == serial.problems


def test_cli_exit_codes_and_report(
    broken_kaggle: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expect = broken_kaggle
    report = tmp_path / "problems.csv"
    result = runner.invoke(app, ["verify", str(root), "--hash", "--report", str(report), "--quiet"])
    assert result.exit_code == 1, result.output
    for kind in ("unreadable file", "truncated file", "label without image", "hash mismatch"):
        assert kind in result.output
    with open(report, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"id", "location", "kind", "detail"}
    assert {row["id"] for row in rows} >= set(expect.values())
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # written atomically


def test_cli_clean_data_exits_0(tiny_kaggle: Path) -> None:
    result = runner.invoke(app, ["verify", str(tiny_kaggle), "--hash", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "items checked" in result.output


def test_cli_bad_path_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no such file" in result.output


def test_folder_with_labels_option(tmp_path: Path) -> None:
    ids = write_patches(tmp_path / "imgs", [make_patch(i) for i in range(3)], ".png")
    labels = tmp_path / "labels.csv"
    write_labels(labels, [(ids[0], 0), (ids[1], 1), (ids[2], "maybe"), (ids[0], 0)])
    args = ["verify", str(tmp_path / "imgs"), "--labels", str(labels), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "label not 0/1" in result.output and "duplicate id" in result.output


def write_pcam(folder: Path, images: np.ndarray, y: np.ndarray, split: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=images)
    with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=np.asarray(y, np.uint8).reshape(-1, 1, 1, 1))


def test_pcam_length_mismatch_bad_label_and_duplicate_pixels(tmp_path: Path) -> None:
    images = np.stack([make_patch(i) for i in range(6)])
    images[4] = images[1]  # an exact duplicate under another index
    write_pcam(tmp_path, images, [0, 1, 3, 0, 1])  # one label short, one label not 0/1
    source = open_source(tmp_path)
    result = verify_source(source, check_hash=True, progress=False)
    assert result.hash_mode == "duplicates"  # PCam ids are split/index, not hashes
    counts = result.counts()
    assert counts == {"HDF5 x/y length mismatch": 1, "label not 0/1": 1, "duplicate pixels": 1}
    dup = next(p for p in result.problems if p.kind == "duplicate pixels")
    assert dup.id == "train/4" and "train/1" in dup.detail and dup.location.endswith("[4]")
    bad = next(p for p in result.problems if p.kind == "label not 0/1")
    assert bad.id == "train/2" and "3" in bad.detail


def test_pcam_wrong_shape_reported_once(tmp_path: Path) -> None:
    write_pcam(tmp_path, np.zeros((600, 64, 64, 3), np.uint8), np.zeros(600))
    result = verify_source(open_source(tmp_path), check_hash=True, progress=False)
    assert result.counts() == {"not 96x96x3": 1}


def test_pcam_wrong_dtype_reported_once(tmp_path: Path) -> None:
    write_pcam(tmp_path, np.zeros((10, 96, 96, 3), np.uint16), np.zeros(10))
    result = verify_source(open_source(tmp_path), progress=False)
    assert result.counts() == {"not 8-bit": 1}


def test_store_verifies_and_detects_tampering(tiny_kaggle: Path, tmp_path: Path) -> None:
    store = write_store(open_source(tiny_kaggle), tmp_path / "store", progress=False)
    assert verify_source(open_source(store.root), check_hash=True, progress=False).ok
    images = np.load(store.root / "images.npy", mmap_mode="r+")
    images[2, 0, 0, 0] ^= 1  # one bit of one pixel
    images.flush()
    del images
    result = verify_source(open_source(store.root), check_hash=True, progress=False)
    assert result.counts() == {"hash mismatch": 1, "store checksum mismatch": 1}
    assert next(p for p in result.problems if p.kind == "hash mismatch").id == store.ids[2]


def test_real_sample_verify_hash(real_root: Path) -> None:
    """All 10,000 real patches decode to 96x96x3 and hash to their ids (a few seconds)."""
    result = runner.invoke(app, ["verify", str(real_root), "--hash", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "10,000" in result.output and "4,028" in result.output and "5,972" in result.output


def test_real_sample_one_changed_pixel_is_caught(real_root: Path, tmp_path: Path) -> None:
    src = sorted((real_root / "train").iterdir())[0]
    image = np.asarray(Image.open(src)).copy()
    image[50, 50, 1] ^= 1
    save(tmp_path, src.name, image, lossless=True)
    result = verify_source(open_source(tmp_path), check_hash=True, progress=False)
    assert [p.kind for p in result.problems] == ["hash mismatch"]
    assert hashlib.sha1(image.tobytes()).hexdigest() in result.problems[0].detail
