"""The packed store: every patch decoded once into one memory-mapped uint8 array.

Layout of a store directory::

    images.npy   (N, 96, 96, 3) uint8, memory-mapped when read
    labels.npy   (N,) int8, -1 for unlabelled
    ids.txt      one id per line
    store.json   source, counts, a SHA-256 of the content; written last

A store is built in a hidden temporary folder beside the target and renamed into place, so an
interrupted ``prepare`` never leaves something that looks like a finished store.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoscan import __version__
from histoscan.data.sources import PATCH_PX, PatchSource
from histoscan.errors import DataError
from histoscan.io import atomic_dir
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)

META = "store.json"
FORMAT = "histoscan-store/1"
KEEP_WORDS = {"1", "true", "yes", "keep"}


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
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{path}: unknown store format {self.meta.get('format')!r}")
        if len(ids) != len(labels):
            raise DataError(f"{path}: ids.txt has {len(ids)} ids, labels.npy {len(labels)} labels")
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
            if self._images.shape != (len(self.ids), PATCH_PX, PATCH_PX, 3):
                raise DataError(f"{self.root}: images.npy does not match ids.txt")
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


def write_store(
    source: PatchSource,
    out: Path,
    manifest: Path | None = None,
    overwrite: bool = False,
    chunk: int = 512,
    progress: bool = True,
) -> PatchStore:
    """Decode every patch of ``source`` (or those the manifest keeps) into a store at ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (use --overwrite to replace it)")
    source.require_clean()
    indices = select_manifest(source, manifest)
    with atomic_dir(out) as tmp:
        digest = _write_arrays(source, indices, tmp, chunk, progress)
        meta = {
            "format": FORMAT,
            "histoscan_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": source.describe(),
            "source_kind": source.kind,
            "source_path": str(Path(source.root).resolve()),
            "manifest": str(Path(manifest).resolve()) if manifest else None,
            "count": len(indices),
            "positives": int((source.labels[indices] == 1).sum()),
            "negatives": int((source.labels[indices] == 0).sum()),
            "unlabelled": int((source.labels[indices] < 0).sum()),
            "patch_px": PATCH_PX,
            "id_is_hash": source.id_is_hash,
            "sha256": digest,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return PatchStore(out)


def _write_arrays(
    source: PatchSource, indices: np.ndarray, folder: Path, chunk: int, progress: bool
) -> str:
    n = len(indices)
    images = np.lib.format.open_memmap(
        folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, PATCH_PX, PATCH_PX, 3)
    )
    digest = hashlib.sha256()
    with progress_bar("prepare", total=n, show=progress, unit="patches") as bar:
        for start in range(0, n, chunk):
            block = source.read_many(indices[start : start + chunk])
            images[start : start + len(block)] = block
            digest.update(block.tobytes())
            bar.advance(len(block))
    images.flush()
    del images
    labels = source.labels[indices].astype(np.int8)
    ids = [source.ids[i] for i in indices]
    np.save(folder / "labels.npy", labels)
    (folder / "ids.txt").write_text("".join(f"{key}\n" for key in ids))
    digest.update(labels.tobytes())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()
