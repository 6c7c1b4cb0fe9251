"""``verify_source`` on sources held in memory: every problem, count and message by hand.

Written to kill the mutants of ``histoscan/data/verify.py`` (scripts/mutants.py): hash modes,
duplicates across chunks, array sources read in slices, the store's content hash, the report CSV,
truncation, and the worker pool's plumbing. Expected SHA-1s come from hashlib here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import histoscan.data.verify as verify
from helpers import RecordedBars
from histoscan.data.sources import PatchSource, Problem
from histoscan.data.store import write_store
from histoscan.data.verify import VerifyResult, verify_source, write_report
from histoscan.errors import DataError


def patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def sha1(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class Memory(PatchSource):
    """Items are arrays, or exceptions to raise when read."""

    kind = "memory"

    def __init__(self, root: Path, items: list, labels=None, ids=None) -> None:  # type: ignore[no-untyped-def]
        ids = ids or [
            sha1(x) if isinstance(x, np.ndarray) else f"bad{i}" for i, x in enumerate(items)
        ]
        labels = np.zeros(len(items), np.int8) if labels is None else labels
        super().__init__(root, ids, np.asarray(labels))
        self.items = items

    def read_raw(self, i: int) -> np.ndarray:
        if isinstance(self.items[i], Exception):
            raise self.items[i]
        return self.items[i]

    def locate(self, i: int) -> str:
        return f"mem[{i}]"


class Arrays(Memory):
    """An array-backed source: verify reads it in slices through ``read_many``."""

    fail_slices = False

    def read_many(self, indices):  # type: ignore[no-untyped-def]
        if self.fail_slices:
            raise OSError("slice failed")
        return np.stack([self.items[int(i)] for i in indices])


def test_counts_and_description(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = list(patches(6))
    source = Memory(tmp_path, images, labels=[1, 0, -1, 1, 1, 1])
    with caplog.at_level(logging.DEBUG, logger="histoscan.data.verify"):
        result = verify_source(source, progress=False)
    assert result.ok and result.problems == [] and result.counts() == {}
    assert (result.checked, result.positives, result.negatives, result.unlabelled) == (6, 4, 1, 1)
    assert any(re.fullmatch(r"verified 6 patches in \d+\.\d s", m) for m in caplog.messages)
    assert result.description == source.describe() and result.hash_mode is None
    assert 0 <= result.seconds < 60


def test_result_counts_most_frequent_first() -> None:
    problems = [Problem("a", "1", k, "") for k in ("x", "y", "y", "z", "y", "z")]
    result = VerifyResult("d", 6, 0, 0, 0, None, 0.0, problems)
    assert list(result.counts().items()) == [("y", 3), ("z", 2), ("x", 1)]
    assert not result.ok
    assert VerifyResult("d", 0, 0, 0, 0, None, 0.0).problems == []


def test_every_bad_item_in_a_file_source(tmp_path: Path) -> None:
    good = patches(2)
    items = [
        good[0],
        ValueError("cannot identify image"),
        EOFError("early end"),
        OSError("image file is Truncated (3 bytes not processed)"),
        np.zeros((96, 96), np.uint8),
        np.zeros((96, 95, 3), np.uint8),
        np.zeros((96, 96, 3), np.uint16),
        good[1],
    ]
    source = Memory(tmp_path, items)
    result = verify_source(source, check_hash=True, progress=False)
    assert [(p.location, p.id, p.kind, p.detail) for p in result.problems] == [
        ("mem[1]", "bad1", "unreadable file", "ValueError: cannot identify image"),
        ("mem[2]", "bad2", "truncated file", "EOFError: early end"),
        (
            "mem[3]",
            "bad3",
            "truncated file",
            "OSError: image file is Truncated (3 bytes not processed)",
        ),
        ("mem[4]", source.ids[4], "not 3-channel", "grayscale"),
        ("mem[5]", source.ids[5], "not 96x96", "got 95x96"),
        ("mem[6]", source.ids[6], "not 8-bit", "dtype uint16"),
    ]
    assert result.hash_mode == "id"


def test_indexing_problems_come_first(tmp_path: Path) -> None:
    source = Memory(tmp_path, [np.zeros((2, 2), np.uint8)])
    source.problems.append(Problem("labels.csv", "x", "label without image", "x"))
    kinds = [p.kind for p in verify_source(source, progress=False).problems]
    assert kinds == ["label without image", "not 3-channel"]


def test_an_empty_source_says_so(tmp_path: Path) -> None:
    result = verify_source(Memory(tmp_path, []), check_hash=True, progress=False)
    assert [(p.location, p.id, p.kind, p.detail) for p in result.problems] == [
        (
            str(tmp_path),
            "*",
            "no patches",
            "nothing to check: an empty folder, label file or dataset",
        )
    ]
    assert result.hash_mode == "duplicates"


def test_ids_that_are_not_the_pixel_sha1(tmp_path: Path) -> None:
    images = list(patches(3))
    ids = [sha1(images[0]), sha1(images[2]), sha1(images[2])]  # the second is someone else's
    result = verify_source(Memory(tmp_path, images, ids=ids), check_hash=True, progress=False)
    (problem,) = result.problems
    assert (problem.location, problem.id, problem.kind) == ("mem[1]", ids[1], "hash mismatch")
    assert problem.detail == f"id is not the SHA-1 of the pixels ({sha1(images[1])})"


def test_hash_mode_follows_the_ids(tmp_path: Path) -> None:
    images = list(patches(4))
    by_sha = [sha1(x) for x in images]
    # three of four ids are SHA-1s: ids are compared
    mode = verify_source(Memory(tmp_path, images, ids=[*by_sha[:3], "x"]), True, progress=False)
    assert mode.hash_mode == "id" and [p.id for p in mode.problems] == ["x"]
    # two of four: not a majority, so duplicate pixels are looked for instead
    half = Memory(tmp_path, images, ids=[*by_sha[:2], "x", "y"])
    assert verify_source(half, True, progress=False).hash_mode == "duplicates"
    upper = Memory(tmp_path, images, ids=[s.upper() for s in by_sha])
    assert verify_source(upper, True, progress=False).hash_mode == "duplicates"
    one = Memory(tmp_path, images[:1])  # one patch whose id is its SHA-1: ids are compared
    assert verify_source(one, True, progress=False).hash_mode == "id"
    source = Memory(tmp_path, images)
    source.id_is_hash = False
    assert verify_source(source, True, progress=False).hash_mode == "duplicates"


def test_duplicates_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "CHUNK", 2)
    a, b, c = patches(3)
    items = [a, b, ValueError("x"), a.copy(), c, b.copy(), a.copy()]
    source = Memory(tmp_path, items, ids=[f"p{i}" for i in range(7)])
    result = verify_source(source, check_hash=True, progress=False)
    dups = [(p.location, p.id, p.detail) for p in result.problems if p.kind == "duplicate pixels"]
    assert dups == [
        ("mem[3]", "p3", "same pixels as p0 (mem[0])"),
        ("mem[5]", "p5", "same pixels as p1 (mem[1])"),
        ("mem[6]", "p6", "same pixels as p0 (mem[0])"),
    ]
    assert [p.kind for p in result.problems].count("unreadable file") == 1


def test_progress_per_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "CHUNK", 3)
    bars = RecordedBars()
    calls, advances = bars.calls, bars.advances
    monkeypatch.setattr(verify, "progress_bar", bars)
    verify_source(Memory(tmp_path, list(patches(7))))
    verify_source(Arrays(tmp_path, list(patches(4))), progress=False)
    assert calls == [
        (("verify",), {"total": 7, "show": True, "unit": "patches"}),
        (("verify",), {"total": 4, "show": False, "unit": "patches"}),
    ]
    assert advances == [3, 3, 1, 3, 1]


def test_array_sources_are_read_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "CHUNK", 4)
    images = list(patches(6))
    ids = [sha1(x) for x in images]
    ids[5] = "f" * 40
    source = Arrays(tmp_path, images, ids=ids)
    result = verify_source(source, check_hash=True, progress=False)
    assert [(p.location, p.kind) for p in result.problems] == [("mem[5]", "hash mismatch")]
    assert result.hash_mode == "id"
    assert verify_source(source, progress=False).ok  # no hash: nothing to compare


def test_a_failing_slice_is_retried_item_by_item(tmp_path: Path) -> None:
    images = list(patches(3))
    ids = [sha1(images[0]), "bad1", "e" * 40]  # the third id is not its pixels' SHA-1
    source = Arrays(tmp_path, [images[0], ValueError("bad item"), images[2]], ids=ids)
    source.fail_slices = True
    result = verify_source(source, check_hash=True, progress=False)
    assert [(p.location, p.kind) for p in result.problems] == [
        ("mem[1]", "unreadable file"),
        ("mem[2]", "hash mismatch"),  # items read one by one are still hashed
    ]


def test_a_wrong_array_shape_is_said_once_per_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "CHUNK", 4)
    source = Arrays(
        tmp_path, [np.zeros((96, 95, 3), np.uint8)] * 6, ids=[f"p{i}" for i in range(6)]
    )
    result = verify_source(source, check_hash=True, progress=False)
    assert [(p.location, p.id, p.kind, p.detail) for p in result.problems] == [
        ("mem[0] to [3]", "*", "not 96x96", "got 95x96"),
        ("mem[4] to [5]", "*", "not 96x96", "got 95x96"),
    ]
    # indexing already refused the whole array: nothing more per slice
    source.problems.append(Problem("x.h5", "*", "not 96x96", "the dataset"))
    result = verify_source(source, check_hash=True, progress=False)
    assert [p.location for p in result.problems] == ["x.h5"]
    source.problems[0] = Problem("x.h5", "*", "label without image", "")
    assert len(verify_source(source, progress=False).problems) == 3  # other kinds do not hide it
    source.problems[0] = Problem("x.h5", "p1", "not 96x96", "one item")
    assert len(verify_source(source, progress=False).problems) == 3  # nor one item's


def test_a_refused_array_still_moves_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "CHUNK", 4)
    bars = RecordedBars()
    advances = bars.advances
    monkeypatch.setattr(verify, "progress_bar", bars)
    source = Arrays(
        tmp_path, [np.zeros((96, 95, 3), np.uint8)] * 6, ids=[f"p{i}" for i in range(6)]
    )
    source.problems.append(Problem("x.h5", "*", "not 96x96", "the dataset"))
    verify_source(source)
    assert advances == [4, 2]


def test_store_content_hash(tmp_path: Path) -> None:
    images = patches(5)
    src = Memory(tmp_path / "src", list(images), labels=[0, 1, 1, 0, -1])
    (tmp_path / "src").mkdir()
    store = write_store(src, tmp_path / "store", progress=False)
    assert verify_source(store, check_hash=True, progress=False).ok
    assert verify_source(store, progress=False).ok
    arr = np.load(tmp_path / "store" / "images.npy", mmap_mode="r+")
    arr[2, 0, 0, 0] ^= 1
    arr.flush()
    del arr
    from histoscan.data.store import PatchStore

    tampered = PatchStore(tmp_path / "store")
    result = verify_source(tampered, check_hash=True, progress=False)
    content = hashlib.sha256(
        np.asarray(tampered.images).tobytes()
        + np.array([0, 1, 1, 0, -1], np.int8).tobytes()
        + "\n".join(tampered.ids).encode()
    ).hexdigest()
    store_problems = [p for p in result.problems if p.kind == "store checksum mismatch"]
    assert [(p.location, p.id, p.detail) for p in store_problems] == [
        (
            str(tmp_path / "store"),
            "*",
            f"content SHA-256 is {content}, store.json records {store.meta['sha256']}",
        )
    ]
    assert not [p for p in verify_source(tampered, progress=False).problems]  # no hash: no check
    tampered.meta["sha256"] = None
    kinds = {p.kind for p in verify_source(tampered, check_hash=True, progress=False).problems}
    assert kinds == {"hash mismatch"}  # nothing recorded: only the id of the changed patch


def test_report_csv(tmp_path: Path) -> None:
    problems = [
        Problem("a/b.png", "b", "not 96x96", "got 95x96"),
        Problem("x", "*", "k, v", 'say "hi"'),
    ]
    write_report(problems, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_bytes() == (
        b'id,location,kind,detail\r\nb,a/b.png,not 96x96,got 95x96\r\n*,x,"k, v","say ""hi"""\r\n'
    )
    write_report([], tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_bytes() == b"id,location,kind,detail\r\n"


def test_a_report_that_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verify, "atomic_write_bytes", full_disk)
    with pytest.raises(DataError, match=r"r\.csv: cannot write the report \(\[Errno 28\] No space"):
        write_report([], tmp_path / "r.csv")


def test_patch_problem_split() -> None:
    p = verify._patch_problem("where", "key", "not 3-channel (4 channels, RGBA)")
    assert (p.location, p.id, p.kind, p.detail) == (
        "where",
        "key",
        "not 3-channel",
        "4 channels, RGBA",
    )
    p = verify._patch_problem("w", "k", "odd")
    assert (p.kind, p.detail) == ("odd", "odd")


def webp_head(size_field: int) -> bytes:
    return b"RIFF" + struct.pack("<I", size_field) + b"WEBP"


def test_truncation_is_recognised(tmp_path: Path) -> None:
    full = tmp_path / "full.webp"
    full.write_bytes(webp_head(12) + b"\0" * 8)  # 20 bytes: the header's 12 + 8
    cut = tmp_path / "cut.webp"
    cut.write_bytes(webp_head(13) + b"\0" * 8)  # claims one byte more than there is
    exc = ValueError("cannot decode")
    assert not verify._looks_truncated(str(full), exc)
    assert verify._looks_truncated(str(cut), exc)
    short = tmp_path / "short.webp"
    short.write_bytes(webp_head(100)[:11])
    assert not verify._looks_truncated(str(short), exc)  # not even a whole header
    other = tmp_path / "other.bin"
    other.write_bytes(b"RIFX" + struct.pack("<I", 99) + b"WEBP")
    assert not verify._looks_truncated(str(other), exc)
    other.write_bytes(b"RIFF" + struct.pack("<I", 99) + b"WAVE")
    assert not verify._looks_truncated(str(other), exc)
    assert not verify._looks_truncated(str(tmp_path / "missing"), exc)
    huge = tmp_path / "huge.webp"
    huge.write_bytes(webp_head(0xFFFFFFF0) + b"\0" * 8)  # the size field is unsigned
    assert verify._looks_truncated(str(huge), exc)
    assert verify._looks_truncated("mem[0]", EOFError())
    assert verify._looks_truncated("mem[0]", OSError("TRUNCATED file"))


def test_workers_get_the_source_once_and_keep_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple] = []

    class InlinePool:
        """A process pool that runs in this process (what a worker does, without the fork)."""

        def __init__(self, workers, initializer, initargs):  # type: ignore[no-untyped-def]
            made.append((workers, initializer, initargs))
            initializer(*initargs)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            verify._WORKER = None
            return False

        def map(self, fn, items):  # type: ignore[no-untyped-def]
            return [fn(x) for x in items]

    monkeypatch.setattr(verify, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(verify, "CHUNK", 2)
    images = list(patches(5))
    ids = [sha1(x) for x in images]
    ids[3] = "0" * 40
    source = Memory(tmp_path, images, ids=ids)
    result = verify_source(source, check_hash=True, workers=2, progress=False)
    assert [(p.location, p.kind) for p in result.problems] == [("mem[3]", "hash mismatch")]
    assert made == [(2, verify._init_worker, (source, "id"))]
    # None: one process below POOL_MIN_ITEMS, one per CPU above it
    monkeypatch.setattr(verify, "POOL_MIN_ITEMS", 5)
    monkeypatch.setattr(verify.os, "cpu_count", lambda: 3)
    verify_source(source, progress=False)
    assert made[-1][0] == 3 and made[-1][2] == (source, None)
    monkeypatch.setattr(verify, "POOL_MIN_ITEMS", 6)
    verify_source(source, progress=False)
    assert len(made) == 2
    monkeypatch.setattr(verify, "POOL_MIN_ITEMS", 5)
    monkeypatch.setattr(verify.os, "cpu_count", lambda: None)
    verify_source(source, progress=False, workers=None)
    assert len(made) == 2  # no CPU count: one process, no pool
    verify_source(Arrays(tmp_path, images), workers=4, progress=False)
    assert len(made) == 2  # array sources never use the pool


def test_an_uninitialised_worker_is_an_error() -> None:
    verify._WORKER = None
    with pytest.raises(AssertionError, match=r"^worker not initialised$"):
        verify._worker_range((0, 1))
