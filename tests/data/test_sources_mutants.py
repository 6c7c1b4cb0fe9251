"""Patch sources, message by message: what each layout opens as and every problem it reports.

Written to kill the mutants of ``histoscan/data/sources.py`` (scripts/mutants.py). Files are tiny
generated PNG/TIFF patches in tmp_path; expected problems, line numbers and texts are written out.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import histoscan.data.sources as sources
from helpers import make_patch
from histoscan.data.sources import (
    FileSource,
    PatchSource,
    Problem,
    check_patch,
    gunzip_cached,
    list_images,
    open_class_folders,
    open_kaggle,
    open_labelled_folder,
    open_source,
    parse_label,
    read_labels_csv,
    read_labels_table,
)
from histoscan.errors import DataError


def save(folder: Path, name: str, image: np.ndarray | None = None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(make_patch(seed) if image is None else image).save(path)
    return path


def problems_of(source: PatchSource) -> list[tuple[str, str, str, str]]:
    return [(p.location, p.id, p.kind, p.detail) for p in source.problems]


def test_problem_text_names_the_id_once() -> None:
    assert str(Problem("a.png", "x1", "k", "d")) == "a.png: k (id x1): d"
    assert str(Problem("dir/x1.png", "x1", "k", "d")) == "dir/x1.png: k: d"
    assert str(Problem("f.csv:3", "x1", "k", "id x1 twice")) == "f.csv:3: k: id x1 twice"
    assert str(Problem("f", "*", "k", "d")) == "f: k: d"
    assert str(Problem("f", "", "k", "d")) == "f: k: d"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((96, 96, 3), np.uint16), "not 8-bit (dtype uint16)"),
        (np.zeros((96, 96), np.uint8), "not 3-channel (grayscale)"),
        (np.zeros((96, 96, 1), np.uint8), "not 3-channel (grayscale)"),
        (np.zeros((96, 96, 4), np.uint8), "not 3-channel (4 channels, RGBA)"),
        (np.zeros((96, 96, 2), np.uint8), "not 3-channel (2 channels)"),
        (np.zeros((2, 96, 96, 3), np.uint8), "not 3-channel (? channels)"),
        (np.zeros((96, 95, 3), np.uint8), "not 96x96 (got 95x96)"),
        (np.zeros((95, 96, 3), np.uint8), "not 96x96 (got 96x95)"),
        (np.zeros((96, 96, 3), np.uint8), None),
    ],
)
def test_check_patch_messages(image: np.ndarray, message: str | None) -> None:
    assert check_patch(image) == message


def test_check_patch_other_size() -> None:
    assert check_patch(np.zeros((8, 8, 3), np.uint8), patch_px=8) is None
    assert check_patch(np.zeros((96, 96, 3), np.uint8), patch_px=8) == "not 8x8 (got 96x96)"


class Memory(PatchSource):
    kind = "memory"

    def __init__(self, items: list, labels: list[int], root: Path = Path("/m")) -> None:
        super().__init__(root, [f"i{k}" for k in range(len(items))], np.array(labels))
        self.items = items

    def read_raw(self, i: int) -> np.ndarray:
        if isinstance(self.items[i], Exception):
            raise self.items[i]
        return self.items[i]

    def locate(self, i: int) -> str:
        return f"m[{i}]"


def test_base_source_reads_and_describes() -> None:
    a, b = make_patch(1), make_patch(2)
    source = Memory([a, b, np.zeros((96, 95, 3), np.uint8), ValueError("boom")], [1, 0, -1, 1])
    assert source.labels.dtype == np.int8 and len(source) == 4
    assert not source.labelled
    assert Memory([a], [0]).labelled and not Memory([], []).labelled
    assert source.label(0) == 1 and source.label(1) == 0 and source.label(2) is None
    assert source[1][0] == "i1" and np.array_equal(source[1][1], b) and source[1][2] == 0
    assert [k for k, _, _ in Memory([a, b], [0, 1])] == ["i0", "i1"]
    many = Memory([a, b], [0, 1]).read_many([1, 0, 1])
    assert many.dtype == np.uint8 and np.array_equal(many, np.stack([b, a, b]))
    with pytest.raises(DataError, match=r"^m\[2\]: not 96x96 \(got 95x96\)$"):
        source.read(2)
    with pytest.raises(DataError, match=r"^m\[3\]: unreadable image \(boom\)$"):
        source.read(3)
    inner = Memory([DataError("m[0]: said already")], [0])
    with pytest.raises(DataError, match=r"^m\[0\]: said already$"):
        inner.read(0)
    assert source.describe() == "memory at /m (4 patches, 2 positive, 1 negative)"
    assert Memory([a] * 5, [1, 1, 1, 0, -1]).describe() == (
        "memory at /m (5 patches, 3 positive, 1 negative)"
    )
    assert source.problems == []
    with pytest.raises(ValueError, match=r"^ids and labels differ in length$"):
        PatchSource(Path("/x"), ["a"], np.array([0, 1]))


def test_the_base_class_needs_a_reader() -> None:
    base = PatchSource(Path("/x"), ["a"], np.array([0]))
    with pytest.raises(NotImplementedError):
        base.read_raw(0)
    with pytest.raises(NotImplementedError):
        base.locate(0)
    assert base.kind == "source" and base.id_is_hash is True


def test_require_clean() -> None:
    with pytest.raises(DataError, match=r"^/m: no patches found$"):
        Memory([], []).require_clean()
    source = Memory([make_patch(0)] * 3, [0, -1, -1])
    source.require_clean()
    with pytest.raises(DataError, match=r"^/m: 2 of 3 patches have no label$"):
        source.require_clean(need_labels=True)
    source.problems = [Problem("a", "x", "k", "d")]
    with pytest.raises(DataError, match=r"^a: k \(id x\): d; run `histoscan verify /m`$"):
        source.require_clean()
    source.problems.append(Problem("b", "y", "k", "d"))
    with pytest.raises(DataError, match=r"^a: k \(id x\): d \(and 1 more\); run"):
        source.require_clean()
    source.problems.append(Problem("c", "z", "k", "d"))
    with pytest.raises(DataError, match=r"^a: k \(id x\): d \(and 2 more\); run `histoscan"):
        source.require_clean()


def test_labels_csv_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(
        "\ufeff id , label \n"  # BOM and spaces in the header
        "a,1\n"
        " b ,0 \n"
        "c,1,extra\n"
        "d\n"
        ",1\n"
        "a,0\n"
        "e,\n"
        " \n".encode()  # neither an id nor a label
    )
    labels, problems, lines = read_labels_table(path)
    assert labels == {"a": "1", "b": "0", "e": ""}
    assert lines == {"a": 2, "b": 3, "e": 8}
    assert [(p.location, p.id, p.kind, p.detail) for p in problems] == [
        (f"{path}:4", "c", "malformed row", "more fields than the header: ['extra']"),
        (f"{path}:5", "d", "malformed row", "fewer fields than the header (id,label)"),
        (f"{path}:6", "?", "empty id", "the id column is empty"),
        (f"{path}:7", "a", "duplicate id", "id a listed again (first on line 2)"),
        (f"{path}:9", "?", "malformed row", "fewer fields than the header (id,label)"),
    ]
    assert read_labels_csv(path) == (labels, problems)


def test_labels_csv_refusals(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("name,label\na,1\n")
    with pytest.raises(
        DataError, match=r"l\.csv: expected a CSV with columns id,label \(found name,label\)$"
    ):
        read_labels_table(path)
    path.write_text("")
    with pytest.raises(DataError, match=r"\(found nothing\)$"):
        read_labels_table(path)
    path.write_bytes(b"id,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match=r"l\.csv: cannot read labels \("):
        read_labels_table(path)
    with pytest.raises(DataError, match="cannot read labels"):
        read_labels_table(tmp_path / "missing.csv")
    path.write_text("id,label\n,\n")
    assert read_labels_table(path)[1][0].kind == "empty id"
    path.write_text("label,id\n1,a\n")
    assert read_labels_table(path)[0] == {"a": "1"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("1.0", 1),
        ("0.0", 0),
        (" 1 ", 1),
        ("2", None),
        ("0.5", None),
        ("-1", None),
        ("yes", None),
        ("", None),
        ("nan", None),
    ],
)
def test_parse_label(text: str, value: int | None) -> None:
    assert parse_label(text) == value


def test_file_source_and_listing(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    save(folder, "b.PNG", seed=1)
    tif = folder / "a.tif"
    tifffile_image = make_patch(2)
    Image.fromarray(tifffile_image).save(tif)
    save(folder, "c.webp", seed=3)
    (folder / "notes.txt").write_text("x")
    (folder / "sub.png").mkdir()  # a folder with an image name is not an image
    (folder / "gone.jpg").symlink_to(folder / "missing.jpg")  # dangling: listed, fails on read
    (folder / "link.png").symlink_to(folder / "b.PNG")  # a working link is an image
    names = [p.name for p in list_images(folder)]
    assert names == ["a.tif", "b.PNG", "c.webp", "gone.jpg", "link.png"]
    source = FileSource(folder, list_images(folder), [0, 1, 0, 1, -1], kind="mine")
    assert source.kind == "mine" and FileSource(folder, [], []).kind == "image folder"
    assert source.ids == ["a", "b", "c", "gone", "link"]
    assert source.locate(1) == str(folder / "b.PNG")
    assert np.array_equal(source.read_raw(0), tifffile_image)
    with pytest.raises(DataError, match=r"gone\.jpg: unreadable image"):
        source.read(3)
    with pytest.raises(DataError, match=r"nothing: cannot list \(No such file or directory\)$"):
        list_images(tmp_path / "nothing")


def test_tiff_goes_through_tifffile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, "x.TIFF", seed=4)
    save(tmp_path, "y.png", seed=5)
    save(tmp_path, "z.tif", seed=6)
    used: list[str] = []
    real = sources._decode_tiff
    monkeypatch.setattr(sources, "_decode_tiff", lambda p: used.append(Path(p).name) or real(p))
    source = FileSource(tmp_path, [tmp_path / "x.TIFF", tmp_path / "y.png"], [0, 0])
    assert np.array_equal(source.read(0), make_patch(4)) and np.array_equal(
        source.read(1), make_patch(5)
    )
    assert used == ["x.TIFF"]
    FileSource(tmp_path, [tmp_path / "z.tif"], [0]).read(0)
    assert used == ["x.TIFF", "z.tif"]


def test_a_tiff_tifffile_refuses_falls_back_to_pil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path, "x.tif", seed=6)

    def refuse(file):  # type: ignore[no-untyped-def]
        if not isinstance(file, Path):
            file.read(10)  # a stream moved on must be rewound for PIL
        raise ValueError("not for tifffile")

    monkeypatch.setattr(sources, "_decode_tiff", refuse)
    assert np.array_equal(sources.decode_patch_file(path, True), make_patch(6))
    with open(path, "rb") as fh:
        assert np.array_equal(sources.decode_patch_file(fh, True), make_patch(6))


def test_decode_keeps_16_bit_and_palettes(tmp_path: Path) -> None:
    deep = np.arange(96 * 96, dtype=np.uint16).reshape(96, 96)
    Image.fromarray(deep).save(tmp_path / "d.png")
    got = sources.decode_image(tmp_path / "d.png")
    assert got.dtype == np.uint16 and np.array_equal(got, deep)
    rgb = make_patch(7)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert sources.decode_image(tmp_path / "p.png").shape == (96, 96, 3)
    Image.fromarray(rgb).convert("P").save(tmp_path / "t.png", transparency=0)
    assert sources.decode_image(tmp_path / "t.png").shape == (96, 96, 4)
    Image.fromarray(np.full((96, 96), 70000, np.int32), "I").save(tmp_path / "i.tif")
    assert sources.decode_image(tmp_path / "i.tif").dtype == np.int32


def test_labelled_folder_problems(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for k, name in enumerate(["a.png", "b.png", "c.png", "d.png", "a.tif", "aa.png"]):
        save(folder, name, seed=k)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,label\na,1\nb,0.0\nc,2\nghost,1\n")
    source = open_labelled_folder(folder, csv_path, "my kind")
    assert source.kind == "my kind" and source.ids == ["a", "a", "aa", "b", "c", "d"]
    assert source.labels.tolist() == [1, 1, -1, 0, -1, -1]
    assert problems_of(source) == [
        (str(folder / "a.tif"), "a", "duplicate id", "same id as a.png"),
        (str(folder / "aa.png"), "aa", "image without label", f"id aa is not in {csv_path}"),
        (f"{csv_path}:4", "c", "label not 0/1", "id c has label '2'; labels must be 0 or 1"),
        (str(folder / "d.png"), "d", "image without label", f"id d is not in {csv_path}"),
        (f"{csv_path}:5", "ghost", "label without image", f"id ghost has no image in {folder}"),
    ]
    bare = open_labelled_folder(folder, None, "bare")
    assert bare.labels.tolist() == [-1] * 6 and [p.kind for p in bare.problems] == ["duplicate id"]


def test_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "c"
    save(root / "Normal", "n1.png", seed=1)
    save(root / "0", "n2.png", seed=2)
    save(root / "TUMOUR", "t1.png", seed=3)
    save(root / "positive", "t2.png", seed=4)
    save(root / "positive", "n1.png", seed=5)
    (root / "notes.png").write_text("a file, not a class folder")
    source = open_class_folders(root)
    assert source is not None and source.kind == "class folders"
    # negatives first (0/ before normal/), then positive/ before tumour/, each folder sorted
    assert source.ids == ["n2", "n1", "n1", "t2", "t1"]
    assert source.labels.tolist() == [0, 0, 1, 1, 1]
    assert [p.kind for p in source.problems] == ["duplicate id"]
    only_neg = tmp_path / "n"
    save(only_neg / "negative", "x.png")
    assert open_class_folders(only_neg) is None
    only_pos = tmp_path / "p"
    save(only_pos / "tumor", "x.png")
    save(only_pos / "1", "y.png", seed=1)
    assert open_class_folders(only_pos) is None


def kaggle(root: Path, train: bool = True, test: bool = True, csv: bool = True) -> Path:
    if train:
        save(root / "train", "a.png", seed=1)
    if csv:
        (root / "train_labels.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / "train_labels.csv").write_text("id,label\na,1\n")
    if test:
        save(root / "test", "t.png", seed=2)
        (root / "sample_submission.csv").write_text("id,label\nt,1\n")
    return root


def test_kaggle_layout(tmp_path: Path) -> None:
    both = kaggle(tmp_path / "k")
    train = open_kaggle(both, None)
    assert train is not None and train.kind == "Kaggle train" and train.labels.tolist() == [1]
    test = open_kaggle(both, "test")
    assert test is not None and test.kind == "Kaggle test" and test.labels.tolist() == [-1]
    with pytest.raises(
        DataError, match=r"k: unknown split 'valid' for the Kaggle layout \(train or test\)$"
    ):
        open_kaggle(both, "valid")
    only_test = kaggle(tmp_path / "t", train=False, csv=False)
    assert open_kaggle(only_test, None).kind == "Kaggle test"  # type: ignore[union-attr]
    with pytest.raises(DataError, match=r"t: no train/ with train_labels\.csv$"):
        open_kaggle(only_test, "train")
    only_train = kaggle(tmp_path / "r", test=False)
    with pytest.raises(DataError, match=r"r: no test/ folder$"):
        open_kaggle(only_train, "test")
    no_csv = kaggle(tmp_path / "n", test=False, csv=False)
    assert open_kaggle(no_csv, None) is None  # train/ without its CSV is not the layout
    assert open_kaggle(tmp_path / "n" / "train", None) is None


def test_open_source_dispatch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: no such file or folder$"):
        open_source(tmp_path / "nowhere")
    both = kaggle(tmp_path / "k")
    assert open_source(both).kind == "Kaggle train"
    assert open_source(both, prefer_split="test").kind == "Kaggle test"
    assert open_source(both, split="train", prefer_split="test").kind == "Kaggle train"
    assert open_source(both, prefer_split="valid").kind == "Kaggle train"  # no valid/: train
    folder = tmp_path / "plain"
    save(folder, "x.png")
    with pytest.raises(DataError, match=r"lab\.csv: no such labels file$"):
        open_source(folder, labels=tmp_path / "lab.csv")
    (tmp_path / "lab.csv").write_text("id,label\nx,0\n")
    chosen = open_source(folder, labels=tmp_path / "lab.csv")
    assert chosen.kind == "image folder" and chosen.labels.tolist() == [0]
    assert open_source(folder).kind == "unlabelled folder"
    (tmp_path / "plain_labels.csv").write_text("id,label\nx,1\n")
    beside = open_source(folder)
    assert beside.kind == "Kaggle train" and beside.labels.tolist() == [1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DataError,
        match=r"empty: no images found \(looked for "
        r"\.bmp, \.jpeg, \.jpg, \.png, \.tif, \.tiff, \.webp\)$",
    ):
        open_source(empty)
    classes = tmp_path / "cls"
    save(classes / "0", "a.png")
    save(classes / "1", "b.png", seed=1)
    assert open_source(classes).kind == "class folders"


def test_preferred_pcam_split(tmp_path: Path) -> None:
    folder = tmp_path / "pcam"
    folder.mkdir()
    (folder / "camelyonpatch_level_2_split_test_x.h5.gz").write_bytes(b"")
    (folder / "camelyonpatch_level_2_split_valid_x.h5").write_bytes(b"")
    assert sources._preferred_pcam(folder, "test") == "test"
    assert sources._preferred_pcam(folder, "valid") == "valid"
    assert sources._preferred_pcam(folder, "train") is None
    assert sources._preferred_pcam(folder, None) is None
    assert (
        sources._preferred_pcam(folder / "camelyonpatch_level_2_split_valid_x.h5", "valid") is None
    )
    assert sources._safe_iterdir(folder / "camelyonpatch_level_2_split_valid_x.h5") == []


def test_gunzip_once_and_reuse(tmp_path: Path) -> None:
    data = os.urandom(5_000_000)  # more than one 4 MiB read
    src = tmp_path / "x.h5.gz"
    src.write_bytes(gzip.compress(data, compresslevel=1))
    dest = tmp_path / "x.h5"
    assert gunzip_cached(src, dest, progress=False) == dest
    assert dest.read_bytes() == data
    dest.write_bytes(b"cached")
    os.utime(dest, (src.stat().st_mtime + 10,) * 2)
    assert gunzip_cached(src, dest, progress=False).read_bytes() == b"cached"  # newer: reused
    os.utime(dest, (src.stat().st_mtime - 10,) * 2)
    assert gunzip_cached(src, dest, progress=False).read_bytes() == data  # older: redone
    os.utime(dest, (src.stat().st_mtime,) * 2)
    dest.write_bytes(b"same time")
    os.utime(dest, (src.stat().st_mtime,) * 2)
    assert gunzip_cached(src, dest, progress=False).read_bytes() == b"same time"


def test_gunzip_damage_is_one_error_and_no_file(tmp_path: Path) -> None:
    gone = tmp_path / "gone.h5.gz"  # the input is missing: said of the input, not the output
    with pytest.raises(DataError, match=rf"^{gone}: cannot read \(No such file or directory\)$"):
        gunzip_cached(gone, tmp_path / "gone.h5", progress=False)
    assert not (tmp_path / "gone.h5").exists()
    src = tmp_path / "bad.h5.gz"
    src.write_bytes(gzip.compress(b"x" * 1000)[:-12])
    with pytest.raises(DataError, match=r"bad\.h5\.gz: cannot decompress \("):
        gunzip_cached(src, tmp_path / "bad.h5", progress=False)
    assert not (tmp_path / "bad.h5").exists()
    src.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.h5\.gz: cannot decompress \(Not a gzipped file"):
        gunzip_cached(src, tmp_path / "bad.h5", progress=False)
    whole = bytearray(gzip.compress(os.urandom(4000)))
    whole[40:60] = bytes(20)  # damage inside the deflate stream
    src.write_bytes(bytes(whole))
    with pytest.raises(DataError, match=r"bad\.h5\.gz: cannot decompress \("):
        gunzip_cached(src, tmp_path / "bad.h5", progress=False)
    assert not (tmp_path / "bad.h5").exists()


def test_gunzip_progress_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    import histoscan.progress as progress

    calls, updates = [], []

    class Bar:
        def update(self, n: int) -> None:
            updates.append(n)

    @contextlib.contextmanager
    def bar(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((args, kwargs))
        yield Bar()

    monkeypatch.setattr(progress, "progress_bar", bar)
    src = tmp_path / "y.h5.gz"
    src.write_bytes(gzip.compress(b"abc" * 100))
    gunzip_cached(src, tmp_path / "y.h5")
    assert calls == [
        (("decompress y.h5.gz",), {"total": src.stat().st_size, "show": True, "unit": "B"})
    ]
    assert updates == [src.stat().st_size]


def test_open_source_finds_a_store_and_the_preferred_pcam_split(tmp_path: Path) -> None:
    import h5py

    from histoscan.data.store import PatchStore, write_store

    folder = tmp_path / "imgs"
    save(folder, "x.png")
    write_store(open_source(folder), tmp_path / "store", progress=False)
    store = open_source(tmp_path / "store")
    assert isinstance(store, PatchStore) and store.root == tmp_path / "store"
    pcam = tmp_path / "pcam"
    pcam.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        with h5py.File(pcam / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=np.stack([make_patch(i) for i in range(n)]))
    assert open_source(pcam, prefer_split="test").ids == ["test/0", "test/1"]
    assert open_source(pcam, split="train", prefer_split="test").ids[0] == "train/0"
    assert len(open_source(pcam, prefer_split="valid")) == 3  # no valid split: train


def test_atomic_write_bytes(tmp_path: Path) -> None:
    sources.atomic_write_bytes(tmp_path / "x.bin", b"\x00abc")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00abc"
