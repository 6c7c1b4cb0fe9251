"""The packed store: every patch decoded once into one memory-mapped uint8 array.

Layout of a store directory::

    images.npy   (N, 96, 96, 3) uint8, memory-mapped when read
    labels.npy   (N,) int8, -1 for unlabelled
    ids.txt      one id per line
    store.json   source, counts, a SHA-256 of the content (checked by ``verify --hash``) and one
                 of the ids and labels (checked on every open); written last
    .histoscan   the marker that lets ``--overwrite`` replace it

A store is built in a hidden temporary folder beside the target and renamed into place, so an
interrupted ``prepare`` never leaves something that looks like a finished store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoscan import __version__
from histoscan.data.sources import PATCH_PX, PatchSource
from histoscan.errors import DataError
from histoscan.io import atomic_dir, ensure_free_space, preallocate, prepare_out_dir
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)

META = "store.json"
FORMAT = "histoscan-store/1"
KEEP_WORDS = {"1", "true", "yes", "keep"}
PATCH_BYTES = PATCH_PX * PATCH_PX * 3


def is_store(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


class PatchStore(PatchSource):
    """A packed store opened read-only; ``images`` is a copy-on-write memmap (no copy on read)."""

    kind = "packed store"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            self.meta = json.loads((path / META).read_text())
            ids = (path / "ids.txt").read_text().splitlines()
            labels = np.load(path / "labels.npy")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable histoscan store ({exc})") from exc
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise DataError(f"{path}: unknown store format {found!r}")
        if labels.ndim != 1 or len(ids) != len(labels):
            raise DataError(f"{path}: ids.txt has {len(ids)} ids, labels.npy {len(labels)} labels")
        _check_store_labels(path, ids, labels)
        recorded = self.meta.get("index_sha256")
        if recorded is not None and index_digest(labels, ids) != recorded:
            raise DataError(
                f"{path}: ids.txt or labels.npy changed after prepare (checksum mismatch); "
                "rebuild the store with `histoscan prepare`"
            )
        if self.meta.get("count") not in (None, len(ids)):
            raise DataError(
                f"{path}: store.json says {self.meta['count']} patches, found {len(ids)}"
            )
        super().__init__(path, ids, labels)
        self.id_is_hash = bool(self.meta.get("id_is_hash", True))
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        """(N, 96, 96, 3) uint8; opened lazily so each worker process maps its own."""
        if self._images is None:
            try:
                self._images = np.load(self.root / "images.npy", mmap_mode="c")
            except (OSError, ValueError) as exc:
                raise DataError(f"{self.root / 'images.npy'}: unreadable ({exc})") from exc
            expected = (len(self.ids), PATCH_PX, PATCH_PX, 3)
            if self._images.shape != expected or self._images.dtype != np.uint8:
                raise DataError(
                    f"{self.root / 'images.npy'}: holds {self._images.dtype} "
                    f"{self._images.shape}, expected uint8 {expected}; rebuild the store"
                )
        return self._images

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None  # pickling a memmap would copy the whole array
        return state

    def locate(self, i: int) -> str:
        return f"{self.root}[{i}] (id {self.ids[i]})"

    def read_raw(self, i: int) -> np.ndarray:
        return self.images[i]

    def read(self, i: int) -> np.ndarray:
        return self.images[i]  # checked when the store was written

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]

    def describe(self) -> str:
        return f"packed store at {self.root} ({len(self)} patches from {self.meta.get('source')})"


def read_manifest(path: Path) -> set[str]:
    """Ids marked to keep in an ``id,...,keep`` CSV (the audit's clean_manifest.csv)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"id", "keep"} <= set(reader.fieldnames):
                raise DataError(f"{path}: a manifest needs columns id and keep")
            return {
                (row["id"] or "").strip()
                for row in reader
                if (row["keep"] or "").strip().lower() in KEEP_WORDS
            }
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from exc


def select_manifest(source: PatchSource, manifest: Path | None) -> np.ndarray:
    """Indices of the source kept by the manifest (all of them without one)."""
    if manifest is None:
        return np.arange(len(source))
    keep = read_manifest(Path(manifest))
    indices = np.array([i for i, key in enumerate(source.ids) if key in keep], dtype=np.int64)
    log.info("manifest %s keeps %d of %d patches", manifest, len(indices), len(source))
    if len(indices) == 0:
        raise DataError(f"{manifest}: keeps none of the {len(source)} patches in {source.root}")
    return indices


def index_digest(labels: np.ndarray, ids: Sequence[str]) -> str:
    """SHA-256 of the labels and ids: cheap enough to check on every open."""
    digest = hashlib.sha256(np.asarray(labels, dtype=np.int8).tobytes())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()


def _check_store_labels(path: Path, ids: Sequence[str], labels: np.ndarray) -> None:
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path / 'labels.npy'}: labels are {labels.dtype}, expected int8")
    bad = np.flatnonzero(~np.isin(labels, (-1, 0, 1)))
    if len(bad):
        i = int(bad[0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{path / 'labels.npy'}: label {labels[i]} at index {i} (id {ids[i]}) is not 0, 1 "
            f"or -1{more}; rebuild the store with `histoscan prepare`"
        )


def write_store(
    source: PatchSource,
    out: Path,
    manifest: Path | None = None,
    overwrite: bool = False,
    chunk: int = 512,
    progress: bool = True,
    inputs: Sequence[Path | str | None] = (),
) -> PatchStore:
    """Decode every patch of ``source`` (or those the manifest keeps) into a store at ``out``.

    Patches are decoded and written ``chunk`` at a time, so memory stays flat however large the
    source is. ``out`` follows :func:`histoscan.io.atomic_dir`'s overwrite policy; ``inputs``
    (what the user pointed at) are protected along with the source's own folder.
    """
    out = Path(out)
    prepare_out_dir(out, overwrite, [source.root, manifest, *inputs])
    source.require_clean()
    indices = select_manifest(source, manifest)
    ensure_free_space(out.parent, len(indices) * PATCH_BYTES + (1 << 20), "store")
    with atomic_dir(out, overwrite, [source.root, manifest, *inputs], what="store") as tmp:
        digest = _write_arrays(source, indices, tmp, chunk, progress)
        labels = source.labels[indices].astype(np.int8)
        ids = [source.ids[i] for i in indices]
        meta = {
            "format": FORMAT,
            "histoscan_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": source.describe(),
            "source_kind": source.kind,
            "source_path": str(Path(source.root).resolve()),
            "manifest": str(Path(manifest).resolve()) if manifest else None,
            "count": len(indices),
            "positives": int((labels == 1).sum()),
            "negatives": int((labels == 0).sum()),
            "unlabelled": int((labels < 0).sum()),
            "patch_px": PATCH_PX,
            "id_is_hash": source.id_is_hash,
            "sha256": digest,
            "index_sha256": index_digest(labels, ids),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return PatchStore(out)


def _write_arrays(
    source: PatchSource, indices: np.ndarray, folder: Path, chunk: int, progress: bool
) -> str:
    """Stream the patches into images.npy with plain writes (a memmap would grow the RSS)."""
    n = len(indices)
    header = io.BytesIO()
    shape = (n, PATCH_PX, PATCH_PX, 3)
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    path = folder / "images.npy"
    preallocate(path, len(header.getvalue()) + n * PATCH_BYTES)  # a full disk fails here, once
    digest = hashlib.sha256()
    with (
        open(path, "r+b") as fh,
        progress_bar("prepare", total=n, show=progress, unit="patches") as bar,
    ):
        fh.write(header.getvalue())
        for start in range(0, n, chunk):
            block = np.ascontiguousarray(source.read_many(indices[start : start + chunk]))
            if block.shape[1:] != shape[1:] or block.dtype != np.uint8:
                raise DataError(
                    f"{source.locate(int(indices[start]))}: read as {block.dtype} "
                    f"{block.shape[1:]}, expected uint8 {shape[1:]}"
                )
            fh.write(block.data)
            digest.update(block.data)
            bar.advance(len(block))
    labels = source.labels[indices].astype(np.int8)
    ids = [source.ids[i] for i in indices]
    np.save(folder / "labels.npy", labels)
    (folder / "ids.txt").write_text("".join(f"{key}\n" for key in ids))
    digest.update(labels.tobytes())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()
