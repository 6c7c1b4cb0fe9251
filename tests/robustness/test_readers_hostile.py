"""Silent garbage becomes a clear error: bad HDF5 arrays, empty data, tampered stores, label files
whose every problem names the id and the CSV line, dangling symlinks, and fuzzed input."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_patch, write_labels, write_patches
from histoscan.data.sources import FileSource, open_source, read_labels_csv
from histoscan.data.store import PatchStore, write_store
from histoscan.errors import DataError
from robustness.common import assert_one_line_error, cli, kaggle_folder, write_pcam

# --- PCam HDF5 variants --------------------------------------------------------------------------

BAD_X = {
    "float32": (np.random.default_rng(0).random((6, 96, 96, 3), dtype=np.float32), "float32"),
    "uint16": (np.full((6, 96, 96, 3), 40000, np.uint16), "uint16"),
    "64 px": (np.zeros((6, 64, 64, 3), np.uint8), "64x64"),
    "4 channels": (np.zeros((6, 96, 96, 4), np.uint8), "4 channels"),
    "2-D": (np.zeros((6, 96), np.uint8), "shape"),
}


@pytest.mark.parametrize("case", BAD_X, ids=list(BAD_X))
def test_bad_pcam_x_is_refused_by_every_command(case: str, tmp_path: Path) -> None:
    x, words = BAD_X[case]
    x_path = write_pcam(tmp_path / "pcam", x, np.arange(6) % 2)
    source = open_source(tmp_path / "pcam")
    with pytest.raises(DataError, match=words):
        source.read_many([0, 1])
    with pytest.raises(DataError, match=words):
        source.read(0)
    assert_one_line_error(cli("prepare", x_path, "--out", tmp_path / "s", "--quiet"), 2, words)
    assert not (tmp_path / "s").exists()
    verify = cli("verify", x_path, "--quiet")
    assert verify.exit_code == 1 and words in verify.output and "Traceback" not in verify.output


def test_zero_row_pcam_fails_verify(tmp_path: Path) -> None:
    write_pcam(tmp_path, np.zeros((0, 96, 96, 3), np.uint8), np.zeros(0, np.uint8))
    result = cli("verify", tmp_path, "--quiet")
    assert result.exit_code == 1 and "no patches" in result.output


def test_empty_kaggle_root_fails_verify(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    write_labels(tmp_path / "train_labels.csv", [])
    result = cli("verify", tmp_path, "--quiet")
    assert result.exit_code == 1 and "no patches" in result.output and "OK" not in result.output


# --- stores --------------------------------------------------------------------------------------


def test_tampered_store_labels_are_refused_on_open(tmp_path: Path) -> None:
    kaggle_folder(tmp_path / "X")
    store = write_store(open_source(tmp_path / "X"), tmp_path / "s", progress=False)
    labels = store.labels.copy()
    labels[3] = 7
    np.save(tmp_path / "s" / "labels.npy", labels)
    with pytest.raises(DataError, match=rf"label 7 at index 3 \(id {store.ids[3]}\)"):
        PatchStore(tmp_path / "s")
    assert_one_line_error(cli("verify", tmp_path / "s", "--quiet"), 2, "labels.npy")
    assert_one_line_error(cli("train", tmp_path / "s", "--out", tmp_path / "run"), 2, "label 7")


def test_flipped_store_label_fails_the_checksum(tmp_path: Path) -> None:
    kaggle_folder(tmp_path / "X")
    store = write_store(open_source(tmp_path / "X"), tmp_path / "s", progress=False)
    labels = store.labels.copy()
    labels[0] = 1 - labels[0]  # still a valid label: only the checksum can tell
    np.save(tmp_path / "s" / "labels.npy", labels)
    with pytest.raises(DataError, match="checksum"):
        PatchStore(tmp_path / "s")


def test_truncated_store_images(tmp_path: Path) -> None:
    kaggle_folder(tmp_path / "X")
    write_store(open_source(tmp_path / "X"), tmp_path / "s", progress=False)
    images = tmp_path / "s" / "images.npy"
    images.write_bytes(images.read_bytes()[:-1000])
    with pytest.raises(DataError, match=r"images\.npy"):
        PatchStore(tmp_path / "s").read(0)


# --- label files: every problem names the id and the line ----------------------------------------


def kaggle_with_csv(tmp_path: Path, lines: list[str]) -> tuple[Path, list[str]]:
    ids = write_patches(tmp_path / "train", [make_patch(i) for i in range(3)])
    text = "id,label\n" + "\n".join(line.format(*ids) for line in lines) + "\n"
    (tmp_path / "train_labels.csv").write_text(text)
    return tmp_path, ids


def only_problem(root: Path, kind: str):
    problems = [p for p in open_source(root).problems if p.kind == kind]
    assert len(problems) == 1, open_source(root).problems
    return problems[0]


def test_duplicate_id_names_id_and_both_lines(tmp_path: Path) -> None:
    root, ids = kaggle_with_csv(tmp_path, ["{0},1", "{1},0", "{2},1", "{1},0"])
    p = only_problem(root, "duplicate id")
    assert p.location.endswith("train_labels.csv:5") and p.id == ids[1]
    assert ids[1] in str(p) and "line 3" in str(p)


def test_label_without_image_names_id_and_line(tmp_path: Path) -> None:
    root, _ = kaggle_with_csv(tmp_path, ["{0},1", "{1},0", "{2},1", "deadbeef,0"])
    p = only_problem(root, "label without image")
    assert p.location.endswith("train_labels.csv:5") and "deadbeef" in str(p)


def test_bad_label_value_names_id_and_line(tmp_path: Path) -> None:
    root, ids = kaggle_with_csv(tmp_path, ["{0},1", "{1},maybe", "{2},1"])
    p = only_problem(root, "label not 0/1")
    assert p.location.endswith("train_labels.csv:3") and ids[1] in str(p) and "maybe" in str(p)
    line = assert_one_line_error(cli("prepare", root, "--out", tmp_path / "s", "--quiet"), 2)
    assert ids[1] in line and "train_labels.csv:3" in line


def test_image_without_label_names_id(tmp_path: Path) -> None:
    root, ids = kaggle_with_csv(tmp_path, ["{0},1", "{1},0"])
    p = only_problem(root, "image without label")
    assert ids[2] in str(p)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name,value\na,1\n", "columns id,label"),
        ("", "columns id,label"),
        ("id,label\n,1\n", "empty id"),
        ("id,label\nabc,1,extra\n", "more fields"),
        ("id,label\nabc\n", "fewer fields"),
    ],
)
def test_malformed_label_files(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    try:
        _, problems = read_labels_csv(path)
    except DataError as exc:
        assert words in str(exc) and str(path) in str(exc)
        return
    assert any(words in str(p) and str(path) in p.location for p in problems), problems


def test_undecodable_label_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"id,label\n\xff\xfe\x00bad,1\n")
    with pytest.raises(DataError, match="cannot read labels"):
        read_labels_csv(path)


def test_dangling_symlink_is_reported_not_skipped(tmp_path: Path) -> None:
    ids = kaggle_folder(tmp_path)
    (tmp_path / "train" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    source = open_source(tmp_path)
    assert "gone" in source.ids
    result = cli("verify", tmp_path, "--quiet")
    assert result.exit_code == 1 and "gone" in result.output
    assert len(ids) == 8


# --- fuzzing -------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.lists(st.lists(st.text(max_size=12), min_size=0, max_size=4), max_size=12))
def test_fuzzed_label_files_give_problems_or_one_error(
    tmp_path: Path, rows: list[list[str]]
) -> None:
    path = tmp_path / "fuzz.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "label"])
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")
    try:
        labels, problems = read_labels_csv(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    for p in problems:  # every one points at a line of the file
        assert p.location.startswith(f"{path}:") and p.location.rsplit(":", 1)[1].isdigit()
    assert all(key.strip() == key and key for key in labels)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([".png", ".tif", ".webp", ".jpg"]))
def test_fuzzed_image_bytes_give_a_patch_or_a_data_error(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image = FileSource(tmp_path, [path], [0]).read(0)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.uint8 and image.shape == (96, 96, 3)


@FUZZ
@given(st.integers(0, 4096), st.integers(0, 200), st.data())
def test_corrupted_real_images_give_a_data_error(
    tmp_path: Path, cut: int, flips: int, data
) -> None:
    good = io.BytesIO()
    from PIL import Image

    Image.fromarray(make_patch(5)).save(good, format="PNG")
    raw = bytearray(good.getvalue()[: max(8, len(good.getvalue()) - cut)])
    for _ in range(flips % 8):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 0xFF
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(raw))
    try:
        image = FileSource(tmp_path, [path], [0]).read(0)
    except DataError:
        return
    assert image.shape == (96, 96, 3)


def test_predict_on_a_kaggle_root_predicts_test_not_train(
    tiny_kaggle: Path, tmp_path: Path, untrained_model_file: Path
) -> None:
    test_ids = sorted(p.stem for p in (tiny_kaggle / "test").iterdir())
    assert sorted(open_source(tiny_kaggle, prefer_split="test").ids) == test_ids
    assert len(open_source(tiny_kaggle)) == 8  # verify/prepare/train still take train/
    out = tmp_path / "sub.csv"
    result = cli("predict", tiny_kaggle, "-o", out, "-m", untrained_model_file,
                 "--engine", "torch", "--tta", "none", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["id"] for r in rows) == test_ids
