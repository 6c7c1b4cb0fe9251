"""Check every item of a patch source and collect everything that is wrong, without stopping.

``verify_source`` decodes each patch once. Indexing problems (a label without an image, a duplicate
id, an HDF5 x/y length mismatch, ...) come from ``source.problems``; decoding adds unreadable or
truncated files and patches that are not 96x96 uint8 RGB. With ``check_hash`` every id that is a
SHA-1 (Kaggle) must equal the SHA-1 of the raw pixel bytes; sources without such ids (PCam's
"split/index") are checked for exact-duplicate pixels instead, and a packed store is also checked
against the SHA-256 recorded in its store.json when it was written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import struct
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoscan.data.sources import PatchSource, Problem, atomic_write_bytes, check_patch
from histoscan.data.store import PatchStore
from histoscan.errors import DataError
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)

SHA1_RE = re.compile(r"[0-9a-f]{40}")
CHUNK = 256  # items per unit of work: one progress step, one task for a worker process
# Below this a process pool is not worth its start-up; on 2 busy cores it did not help at all
# (10,000 WebP: 2,400/s serial, 2,600/s with 2 processes), so small sets stay serial.
POOL_MIN_ITEMS = 50_000
REPORT_FIELDS = ("id", "location", "kind", "detail")

# a checked chunk: its problems, and the pixel SHA-1 of each item (None where not hashed)
Chunk = tuple[list[Problem], list[bytes | None]]


@dataclass
class VerifyResult:
    """What ``verify_source`` found: counts for the summary and every problem for the report."""

    description: str
    checked: int
    positives: int
    negatives: int
    unlabelled: int
    hash_mode: str | None  # "id" (id == SHA-1 of pixels), "duplicates", or None (not hashed)
    seconds: float
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())


def verify_source(
    source: PatchSource, check_hash: bool = False, workers: int | None = None, progress: bool = True
) -> VerifyResult:
    """Decode every patch of ``source`` and return every problem found, indexing ones first.

    Args:
        source: any opened source (``open_source``); nothing is raised for bad items.
        check_hash: also hash the pixels (see the module docstring for what is compared).
        workers: processes that decode files; None: 1 below ``POOL_MIN_ITEMS`` items, else one
            per CPU. HDF5 and store sources are read in slices in this process.
        progress: show a rich progress bar.
    """
    start = time.perf_counter()
    hash_mode = _hash_mode(source) if check_hash else None
    store = source if isinstance(source, PatchStore) else None
    content = hashlib.sha256() if check_hash and store is not None else None
    problems = list(source.problems)
    if len(source) == 0:
        detail = "nothing to check: an empty folder, label file or dataset"
        problems.append(Problem(str(source.root), "*", "no patches", detail))
    first_seen: dict[bytes, int] = {}
    bar_context = progress_bar("verify", total=len(source), show=progress, unit="patches")
    with warnings.catch_warnings(), bar_context as bar:
        warnings.simplefilter("ignore")  # PIL warns about truncated files; we report them anyway
        for lo, (chunk_problems, digests) in _checked_chunks(source, hash_mode, workers, content):
            problems += chunk_problems
            if hash_mode == "duplicates":
                problems += _duplicate_problems(source, lo, digests, first_seen)
            bar.advance(len(digests))
    if store is not None and content is not None:
        problems += _store_content_problems(store, content)
    labels = source.labels
    result = VerifyResult(
        description=source.describe(),
        checked=len(source),
        positives=int((labels == 1).sum()),
        negatives=int((labels == 0).sum()),
        unlabelled=int((labels < 0).sum()),
        hash_mode=hash_mode,
        seconds=time.perf_counter() - start,
        problems=problems,
    )
    log.debug("verified %d patches in %.1f s", len(source), result.seconds)
    return result


def write_report(problems: Sequence[Problem], path: Path) -> None:
    """Write the problems as an ``id,location,kind,detail`` CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REPORT_FIELDS)
    for p in problems:
        writer.writerow([p.id, p.location, p.kind, p.detail])
    try:
        atomic_write_bytes(Path(path), buffer.getvalue().encode())
    except OSError as exc:
        raise DataError(f"{path}: cannot write the report ({exc})") from exc


def _patch_problem(where: str, key: str, message: str) -> Problem:
    """A ``check_patch`` message as a Problem: 'not 3-channel (grayscale)' -> kind, detail."""
    kind, _, detail = message.partition(" (")
    return Problem(where, key, kind, detail.rstrip(")") or message)


def _hash_mode(source: PatchSource) -> str:
    """Compare ids with pixel hashes when most ids are SHA-1s; else look for duplicate pixels."""
    if not source.id_is_hash or len(source) == 0:
        return "duplicates"
    n_sha1 = sum(1 for key in source.ids if SHA1_RE.fullmatch(key))
    return "id" if n_sha1 * 2 > len(source) else "duplicates"


def _checked_chunks(
    source: PatchSource, hash_mode: str | None, workers: int | None, content: hashlib._Hash | None
) -> Iterator[tuple[int, Chunk]]:
    """(first index, checked chunk) for chunks of ``CHUNK`` items, in index order."""
    ranges = [(lo, min(lo + CHUNK, len(source))) for lo in range(0, len(source), CHUNK)]
    if _reads_arrays(source):
        for lo, hi in ranges:
            yield lo, _check_array_range(source, lo, hi, hash_mode, content)
        return
    if workers is None:
        workers = (os.cpu_count() or 1) if len(source) >= POOL_MIN_ITEMS else 1
    if workers <= 1:
        for lo, hi in ranges:
            yield lo, _check_file_range(source, lo, hi, hash_mode)
        return
    # the source travels once per worker (initializer), not once per chunk
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(source, hash_mode)) as ex:
        for (lo, _), chunk in zip(ranges, ex.map(_worker_range, ranges), strict=True):
            yield lo, chunk


def _reads_arrays(source: PatchSource) -> bool:
    """Sources that override ``read_many`` (PCam HDF5, the store) are read in slices."""
    return type(source).read_many is not PatchSource.read_many


_WORKER: tuple[PatchSource, str | None] | None = None


def _init_worker(source: PatchSource, hash_mode: str | None) -> None:
    global _WORKER
    _WORKER = (source, hash_mode)
    warnings.simplefilter("ignore")


def _worker_range(bounds: tuple[int, int]) -> Chunk:
    assert _WORKER is not None, "worker not initialised"
    source, hash_mode = _WORKER
    return _check_file_range(source, bounds[0], bounds[1], hash_mode)


def _check_file_range(source: PatchSource, lo: int, hi: int, hash_mode: str | None) -> Chunk:
    problems: list[Problem] = []
    digests: list[bytes | None] = []
    for i in range(lo, hi):
        problem, digest = _check_item(source, i, hash_mode)
        if problem is not None:
            problems.append(problem)
        digests.append(digest)
    return problems, digests


def _check_item(
    source: PatchSource, i: int, hash_mode: str | None
) -> tuple[Problem | None, bytes | None]:
    """Decode item ``i``: what is wrong with it (or None) and its pixel SHA-1 (or None)."""
    try:
        image = source.read_raw(i)
    except Exception as exc:  # decoders raise many types for a broken file
        where = source.locate(i)
        kind = "truncated file" if _looks_truncated(where, exc) else "unreadable file"
        return Problem(where, source.ids[i], kind, f"{type(exc).__name__}: {exc}"), None
    message = check_patch(image)
    if message is not None:
        return _patch_problem(source.locate(i), source.ids[i], message), None
    if hash_mode is None:
        return None, None
    digest = hashlib.sha1(np.ascontiguousarray(image)).digest()
    return _id_problem(source, i, digest, hash_mode), digest


def _check_array_range(
    source: PatchSource, lo: int, hi: int, hash_mode: str | None, content: hashlib._Hash | None
) -> Chunk:
    """One slice of an array-backed source; a slice that fails to read is retried per item."""
    if any(p.id == "*" and p.kind.startswith("not ") for p in source.problems):
        return [], [None] * (hi - lo)  # the whole array is refused, and said so once already
    try:
        block = np.ascontiguousarray(source.read_many(np.arange(lo, hi)))  # (n, H, W, C)
    except Exception:
        return _check_file_range(source, lo, hi, hash_mode)
    if content is not None:
        content.update(block)
    message = check_patch(block[0]) if len(block) else None
    if message is not None:
        # one array has one shape and dtype: say so once per slice, not once per item (a dataset
        # that indexing refused whole was returned above, so it is not said twice)
        where = f"{source.locate(lo)} to [{hi - 1}]"
        return [_patch_problem(where, "*", message)], [None] * len(block)
    if hash_mode is None:
        return [], [None] * len(block)
    problems: list[Problem] = []
    digests: list[bytes | None] = []
    for i, image in zip(range(lo, hi), block, strict=True):
        digest = hashlib.sha1(image).digest()
        if (problem := _id_problem(source, i, digest, hash_mode)) is not None:
            problems.append(problem)
        digests.append(digest)
    return problems, digests


def _id_problem(source: PatchSource, i: int, digest: bytes, hash_mode: str) -> Problem | None:
    if hash_mode != "id" or digest.hex() == source.ids[i]:
        return None
    detail = f"id is not the SHA-1 of the pixels ({digest.hex()})"
    return Problem(source.locate(i), source.ids[i], "hash mismatch", detail)


def _duplicate_problems(
    source: PatchSource, lo: int, digests: Sequence[bytes | None], first_seen: dict[bytes, int]
) -> list[Problem]:
    """Items whose pixels equal an earlier item's; ``first_seen`` carries over between chunks."""
    problems = []
    for i, digest in enumerate(digests, start=lo):
        if digest is None:
            continue
        first = first_seen.setdefault(digest, i)
        if first != i:
            detail = f"same pixels as {source.ids[first]} ({source.locate(first)})"
            problems.append(Problem(source.locate(i), source.ids[i], "duplicate pixels", detail))
    return problems


def _store_content_problems(store: PatchStore, content: hashlib._Hash) -> list[Problem]:
    """Finish the store's content hash the way ``write_store`` does and compare."""
    content.update(np.asarray(store.labels, dtype=np.int8).tobytes())
    content.update("\n".join(store.ids).encode())
    recorded = store.meta.get("sha256")
    if recorded is None or content.hexdigest() == recorded:
        return []
    detail = f"content SHA-256 is {content.hexdigest()}, store.json records {recorded}"
    return [Problem(str(store.root), "*", "store checksum mismatch", detail)]


def _looks_truncated(where: str, exc: Exception) -> bool:
    """PIL says 'truncated' for most formats; a WebP's RIFF header records its full size."""
    if isinstance(exc, EOFError) or "truncat" in str(exc).lower():
        return True
    path = Path(where)
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return struct.unpack("<I", head[4:8])[0] + 8 > path.stat().st_size
    except OSError:
        pass
    return False
