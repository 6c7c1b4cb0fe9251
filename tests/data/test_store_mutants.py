"""The packed store, byte by byte: what ``write_store`` writes and what ``PatchStore`` refuses.

Written to kill the mutants of ``histoscan/data/store.py`` (scripts/mutants.py). Sources live in
memory; the expected files (ids.txt, store.json, the SHA-256s) are computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import histoscan.data.store as store_module
from helpers import RecordedBars
from histoscan import __version__
from histoscan.data.sources import PatchSource, Problem
from histoscan.data.store import (
    PATCH_BYTES,
    PatchStore,
    is_store,
    read_manifest,
    select_manifest,
    write_store,
)
from histoscan.errors import DataError, HistoscanError


class Memory(PatchSource):
    kind = "memory"

    def __init__(self, root: Path, images: np.ndarray, labels, ids=None) -> None:  # type: ignore[no-untyped-def]
        ids = ids or [f"m{i}" for i in range(len(images))]
        super().__init__(root, ids, np.asarray(labels))
        self.images = images

    def read_raw(self, i: int) -> np.ndarray:
        return self.images[i]

    def locate(self, i: int) -> str:
        return f"mem[{i}]"


def patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


LABELS = [1, 0, -1, 1, 0, 1, 1]  # 4 positive, 2 negative, 1 unlabelled


@pytest.fixture
def source(tmp_path: Path) -> Memory:
    root = tmp_path / "src"
    root.mkdir()
    return Memory(root, patches(7), LABELS)


def test_files_of_a_store_by_hand(source: Memory, tmp_path: Path) -> None:
    out = tmp_path / "store"
    store = write_store(source, out, chunk=3, progress=False)
    ids = [f"m{i}" for i in range(7)]
    labels = np.array(LABELS, dtype=np.int8)
    assert (out / "ids.txt").read_text() == "".join(f"{k}\n" for k in ids)
    saved = np.load(out / "labels.npy")
    assert saved.dtype == np.int8 and saved.tolist() == LABELS
    raw = (out / "images.npy").read_bytes()
    assert raw.startswith(b"\x93NUMPY\x01\x00")  # format 1.0 header
    assert raw[-7 * PATCH_BYTES :] == source.images.tobytes()  # every byte, chunk edges too
    assert len(raw) % 64 == 0 and len(raw) - 7 * PATCH_BYTES < 256
    assert np.array_equal(np.load(out / "images.npy"), source.images)

    content = hashlib.sha256(source.images.tobytes() + labels.tobytes() + "\n".join(ids).encode())
    index = hashlib.sha256(labels.tobytes() + "\n".join(ids).encode())
    meta = json.loads((out / "store.json").read_text())
    created = meta.pop("created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", created)
    assert meta == {
        "format": "histoscan-store/1",
        "histoscan_version": __version__,
        "source": f"memory at {source.root} (7 patches, 4 positive, 2 negative)",
        "source_kind": "memory",
        "source_path": str(source.root.resolve()),
        "manifest": None,
        "count": 7,
        "positives": 4,
        "negatives": 2,
        "unlabelled": 1,
        "patch_px": 96,
        "id_is_hash": True,
        "sha256": content.hexdigest(),
        "index_sha256": index.hexdigest(),
    }
    assert isinstance(store, PatchStore) and store.root == out
    assert json.loads((out / ".histoscan").read_text())["what"] == "store"
    with pytest.raises(HistoscanError, match="already exists"):
        write_store(source, out, progress=False)  # no overwrite unless asked
    assert is_store(out) and not is_store(source.root) and not is_store(out / "store.json")


def test_what_a_store_reads_back(source: Memory, tmp_path: Path) -> None:
    out = tmp_path / "store"
    source.id_is_hash = False
    write_store(source, out, chunk=2, progress=False)
    store = PatchStore(out)
    assert store.kind == "packed store" and not store.id_is_hash
    assert store.ids == source.ids and store.labels.tolist() == LABELS
    assert store.locate(3) == f"{out}[3] (id m3)"
    assert store.describe() == (
        f"packed store at {out} (7 patches from memory at {source.root} "
        "(7 patches, 4 positive, 2 negative))"
    )
    assert np.array_equal(store.read(4), source.images[4])
    assert np.array_equal(store.read_raw(6), source.images[6])
    assert np.array_equal(store.read_many([6, 0, 6]), source.images[[6, 0, 6]])
    assert store.images.dtype == np.uint8 and store.images.shape == (7, 96, 96, 3)
    store.images[0, 0, 0, 0] ^= 255  # copy-on-write: the file never changes
    assert np.array_equal(PatchStore(out).images[0], source.images[0])
    clone = pickle.loads(pickle.dumps(store))
    assert clone._images is None and store._images is not None  # the memmap is not pickled
    assert np.array_equal(clone.images[1], source.images[1])


def test_id_is_hash_defaults_to_true(source: Memory, tmp_path: Path) -> None:
    out = tmp_path / "store"
    write_store(source, out, progress=False)
    meta = json.loads((out / "store.json").read_text())
    del meta["id_is_hash"]
    (out / "store.json").write_text(json.dumps(meta))
    assert PatchStore(out).id_is_hash is True


def test_progress_per_chunk(
    source: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = RecordedBars()
    calls, advances = bars.calls, bars.advances
    monkeypatch.setattr(store_module, "progress_bar", bars)
    write_store(source, tmp_path / "a", chunk=3)
    write_store(source, tmp_path / "b", progress=False)
    assert calls == [
        (("prepare",), {"total": 7, "show": True, "unit": "patches"}),
        (("prepare",), {"total": 7, "show": False, "unit": "patches"}),
    ]
    assert advances == [3, 3, 1, 7]  # chunk 3, then the default chunk of 512


def test_free_space_is_checked_for_the_whole_store(
    source: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple] = []
    monkeypatch.setattr(store_module, "ensure_free_space", lambda *a: asked.append(a))
    write_store(source, tmp_path / "s", progress=False)
    assert asked == [(tmp_path, 7 * 96 * 96 * 3 + (1 << 20), "store")]


def test_a_block_of_the_wrong_shape_is_named(source: Memory, tmp_path: Path) -> None:
    class Short(Memory):
        def read_many(self, indices):  # type: ignore[no-untyped-def]
            block = self.images[np.asarray(indices)]
            return block[:, :95] if indices[0] >= 3 else block  # the second chunk is short

    short = Short(source.root, source.images, LABELS)
    with pytest.raises(
        DataError,
        match=r"^mem\[3\]: read as uint8 \(95, 96, 3\), expected uint8 \(96, 96, 3\)$",
    ):
        write_store(short, tmp_path / "s", chunk=3, progress=False)

    class Wide(Memory):
        def read_many(self, indices):  # type: ignore[no-untyped-def]
            return self.images[np.asarray(indices)].astype(np.uint16)

    with pytest.raises(DataError, match=r"^mem\[0\]: read as uint16 \(96, 96, 3\)"):
        write_store(Wide(source.root, source.images, LABELS), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_inputs_and_unclean_sources_are_refused(source: Memory, tmp_path: Path) -> None:
    with pytest.raises(HistoscanError, match=r"contains the input .*src; choose an output folder"):
        write_store(source, source.root.parent, progress=False)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(HistoscanError, match="elsewhere: is the input; choose an output folder"):
        write_store(source, other, progress=False, inputs=[other])
    source.problems.append(Problem("mem[2]", "m2", "duplicate id", "twice"))
    with pytest.raises(DataError, match="duplicate id"):
        write_store(source, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_manifest_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        "\ufeffid,keep,reason\n"
        " a ,1,\nb,true,\nc,YES,\nd, keep ,\ne,0,blur\nf,no,\ng,,\nh,2,\n".encode()
    )
    assert read_manifest(path) == {"a", "b", "c", "d"}
    path.write_text("id,keep\ni\n")  # a short row: keep is missing
    assert read_manifest(path) == set()
    path.write_text("id,label\na,1\n")
    with pytest.raises(DataError, match=r"m\.csv: a manifest needs columns id and keep$"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(DataError, match="needs columns id and keep"):
        read_manifest(path)
    with pytest.raises(DataError, match=r"^.*nothing\.csv: cannot read manifest \("):
        read_manifest(tmp_path / "nothing.csv")
    path.write_bytes(b"id,keep\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="cannot read manifest"):
        read_manifest(path)


def test_select_manifest(source: Memory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert select_manifest(source, None).tolist() == list(range(7))
    path = tmp_path / "m.csv"
    path.write_text("id,keep\nm5,1\nm1,1\nm2,0\nzz,1\n")
    with caplog.at_level(logging.INFO, logger="histoscan.data.store"):
        kept = select_manifest(source, path)
    assert kept.tolist() == [1, 5] and kept.dtype == np.int64
    assert f"manifest {path} keeps 2 of 7 patches" in caplog.messages
    path.write_text("id,keep\nm5,0\n")
    with pytest.raises(DataError, match=rf"^{path}: keeps none of the 7 patches in {source.root}$"):
        select_manifest(source, path)


def test_store_with_a_manifest_records_it(source: Memory, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,keep\nm6,1\nm0,1\n")
    store = write_store(source, tmp_path / "s", manifest=path, progress=False)
    assert store.ids == ["m0", "m6"] and store.meta["manifest"] == str(path.resolve())
    assert np.array_equal(store.images, source.images[[0, 6]])
    with pytest.raises(HistoscanError, match=r"m\.csv: is the input; choose an output folder"):
        write_store(source, path, manifest=path, progress=False)


def build(tmp_path: Path, source: Memory) -> Path:
    out = tmp_path / "store"
    write_store(source, out, progress=False)
    return out


def test_unreadable_or_foreign_stores(source: Memory, tmp_path: Path) -> None:
    out = build(tmp_path, source)
    (out / "store.json").write_text("{broken")
    with pytest.raises(DataError, match=rf"^{out}: not a readable histoscan store \("):
        PatchStore(out)
    (out / "store.json").write_text(json.dumps({"format": "other/2"}))
    with pytest.raises(DataError, match=rf"^{out}: unknown store format 'other/2'$"):
        PatchStore(out)
    (out / "store.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=rf"^{out}: unknown store format None$"):
        PatchStore(out)
    (out / "store.json").unlink()
    with pytest.raises(DataError, match="not a readable histoscan store"):
        PatchStore(out)


def rewrite_meta(out: Path, **changes) -> None:  # type: ignore[no-untyped-def]
    meta = json.loads((out / "store.json").read_text())
    meta.update(changes)
    (out / "store.json").write_text(json.dumps(meta))


def test_index_and_count_checks(source: Memory, tmp_path: Path) -> None:
    out = build(tmp_path, source)
    (out / "ids.txt").write_text("".join(f"m{i}\n" for i in range(6)))
    with pytest.raises(DataError, match=rf"^{out}: ids.txt has 6 ids, labels.npy 7 labels$"):
        PatchStore(out)
    (out / "ids.txt").write_text("".join(f"m{i}\n" for i in (1, 0, 2, 3, 4, 5, 6)))
    with pytest.raises(DataError, match=r"changed after prepare \(checksum mismatch\); rebuild"):
        PatchStore(out)
    rewrite_meta(out, index_sha256=None, count=8)
    with pytest.raises(DataError, match=rf"^{out}: store.json says 8 patches, found 7$"):
        PatchStore(out)
    rewrite_meta(out, count=None)
    assert PatchStore(out).ids[0] == "m1"  # nothing recorded: nothing to check
    np.save(out / "labels.npy", np.zeros((7, 1), np.int8))
    with pytest.raises(DataError, match=r"ids\.txt has 7 ids, labels\.npy 7 labels"):
        PatchStore(out)


def test_bad_labels_are_named(source: Memory, tmp_path: Path) -> None:
    out = build(tmp_path, source)
    rewrite_meta(out, index_sha256=None)
    np.save(out / "labels.npy", np.array([0, 1, 2, -1, 5, 1, 0], np.int8))
    with pytest.raises(
        DataError,
        match=r"labels\.npy: label 2 at index 2 \(id m2\) is not 0, 1 or -1 \(and 1 more\); "
        r"rebuild the store",
    ):
        PatchStore(out)
    np.save(out / "labels.npy", np.array([0, 1, 1, -1, 0, 1, -2], np.int8))
    with pytest.raises(DataError, match=r"label -2 at index 6 \(id m6\) is not 0, 1 or -1;"):
        PatchStore(out)
    np.save(out / "labels.npy", np.array([0, 1, 1, -1, 0, 1, 0], np.float32))
    with pytest.raises(DataError, match=r"labels\.npy: labels are float32, expected int8$"):
        PatchStore(out)
    np.save(out / "labels.npy", np.array([0, 1, 1, 0, 0, 1, 0], np.uint8))
    assert PatchStore(out).labels.tolist() == [0, 1, 1, 0, 0, 1, 0]  # unsigned is fine


def test_damaged_images_are_named(source: Memory, tmp_path: Path) -> None:
    out = build(tmp_path, source)
    np.save(out / "images.npy", np.zeros((7, 96, 95, 3), np.uint8))
    store = PatchStore(out)  # opening reads no pixels
    expected = r"holds uint8 \(7, 96, 95, 3\), expected uint8 \(7, 96, 96, 3\); rebuild the store"
    with pytest.raises(DataError, match=rf"images\.npy: {expected}$"):
        _ = store.images
    np.save(out / "images.npy", np.zeros((7, 96, 96, 3), np.int16))
    with pytest.raises(DataError, match=r"holds int16 \(7, 96, 96, 3\)"):
        _ = PatchStore(out).images
    (out / "images.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"images\.npy: unreadable \("):
        _ = PatchStore(out).images
    (out / "images.npy").unlink()
    with pytest.raises(DataError, match="unreadable"):
        _ = PatchStore(out).images
