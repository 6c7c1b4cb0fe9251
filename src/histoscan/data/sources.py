"""Patch sources: every layout a user brings, behind one interface.

A source is an indexed collection of patches. ``source[i]`` gives ``(id, image, label)`` with
``image`` uint8 HxWx3 and ``label`` 0, 1 or None. Problems found while indexing (a label without an
image, a duplicate id, ...) are collected in ``source.problems`` rather than raised, so ``verify``
can report them all; code that trains or predicts calls ``source.require_clean()``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from histoscan.errors import DataError
from histoscan.io import atomic_file, atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".webp", ".jpg", ".jpeg", ".bmp"}
PATCH_PX = 96
UNLABELLED = -1
POSITIVE_DIRS = ("1", "positive", "tumor", "tumour")
NEGATIVE_DIRS = ("0", "negative", "normal")
PCAM_RE = re.compile(r"camelyonpatch_level_2_split_(train|valid|test)_([xy])\.h5(\.gz)?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one item: where it is, which id, and what is wrong."""

    location: str
    id: str
    kind: str
    detail: str

    def __str__(self) -> str:
        # the id is named unless the location already does (a file named by its id)
        named = self.id in ("", "*") or self.id in self.location or self.id in self.detail
        who = "" if named else f" (id {self.id})"
        return f"{self.location}: {self.kind}{who}: {self.detail}"


class PatchSource:
    """Base class: subclasses fill ``ids``, ``labels`` (int8, -1 = unlabelled) and ``read_raw``."""

    kind: str = "source"
    id_is_hash: bool = True  # Kaggle ids are the SHA-1 of the pixels

    def __init__(self, root: Path, ids: Sequence[str], labels: np.ndarray) -> None:
        self.root = Path(root)
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int8)
        self.problems: list[Problem] = []
        if len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return len(self) > 0 and bool((self.labels >= 0).all())

    def locate(self, i: int) -> str:
        """Where item ``i`` lives, for error messages (a file path, or file[index])."""
        raise NotImplementedError

    def read_raw(self, i: int) -> np.ndarray:
        """Decode item ``i`` as stored, whatever its shape and dtype."""
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        """Decode item ``i`` as uint8 (96, 96, 3); raise DataError naming the file otherwise."""
        try:
            image = self.read_raw(i)
        except DataError:
            raise
        except Exception as exc:  # decoders raise many types for a broken file
            raise DataError(f"{self.locate(i)}: unreadable image ({exc})") from exc
        problem = check_patch(image)
        if problem:
            raise DataError(f"{self.locate(i)}: {problem}")
        return image

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        """Decode several items into one (N, 96, 96, 3) uint8 array."""
        out = np.empty((len(indices), PATCH_PX, PATCH_PX, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            out[j] = self.read(int(i))
        return out

    def label(self, i: int) -> int | None:
        value = int(self.labels[i])
        return None if value == UNLABELLED else value

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, int | None]:
        return self.ids[i], self.read(i), self.label(i)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, int | None]]:
        for i in range(len(self)):
            yield self[i]

    def describe(self) -> str:
        n_pos = int((self.labels == 1).sum())
        n_neg = int((self.labels == 0).sum())
        counts = f"{len(self)} patches, {n_pos} positive, {n_neg} negative"
        return f"{self.kind} at {self.root} ({counts})"

    def require_clean(self, need_labels: bool = False) -> None:
        """Raise DataError on the first indexing problem, or if labels are needed but missing."""
        if len(self) == 0:
            raise DataError(f"{self.root}: no patches found")
        if self.problems:
            extra = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DataError(f"{self.problems[0]}{extra}; run `histoscan verify {self.root}`")
        if need_labels and not self.labelled:
            missing = int((self.labels < 0).sum())
            raise DataError(f"{self.root}: {missing} of {len(self)} patches have no label")


def check_patch(image: np.ndarray, patch_px: int = PATCH_PX) -> str | None:
    """Return what is wrong with a decoded patch, or None if it is a uint8 RGB patch of size."""
    if image.dtype != np.uint8:
        return f"not 8-bit (dtype {image.dtype})"
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return "not 3-channel (grayscale)"
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else "?"
        return f"not 3-channel ({channels} channels{', RGBA' if channels == 4 else ''})"
    if image.shape[:2] != (patch_px, patch_px):
        return f"not {patch_px}x{patch_px} (got {image.shape[1]}x{image.shape[0]})"
    return None


def decode_image(path: Path) -> np.ndarray:
    """Decode an image file to a numpy array without changing its mode (16-bit stays 16-bit)."""
    with Image.open(path) as img:
        img.load()
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int32)
        return np.asarray(img)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _decode_tiff(path: Path | BinaryIO) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def decode_patch_file(file: Path | BinaryIO, is_tiff: bool) -> np.ndarray:
    """Decode as every reader does: tifffile for TIFF (16-bit and extra channels stay visible),
    PIL for the rest and for TIFFs tifffile cannot read."""
    if is_tiff:
        try:
            return _decode_tiff(file)
        except Exception:  # not every TIFF is tifffile-friendly; PIL is the fallback
            if not isinstance(file, Path):
                file.seek(0)
    return decode_image(file)  # type: ignore[arg-type]  (PIL takes files too)


def read_labels_csv(path: Path) -> tuple[dict[str, str], list[Problem]]:
    """Read an ``id,label`` CSV; labels are kept as text here so bad values can be reported.

    Every problem names the CSV line (``labels.csv:17``) and the id. ``source.label_lines`` maps
    each id to its line, for problems found later (a label without an image).
    """
    labels, problems, _ = read_labels_table(path)
    return labels, problems


def read_labels_table(path: Path) -> tuple[dict[str, str], list[Problem], dict[str, int]]:
    """``read_labels_csv`` plus the line number of every id."""
    labels: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a BOM
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            if not {"id", "label"} <= set(fields):
                found = ",".join(fields) if fields else "nothing"
                raise DataError(f"{path}: expected a CSV with columns id,label (found {found})")
            reader.fieldnames = fields
            for row in reader:
                line = reader.line_num
                key = (row.get("id") or "").strip()
                where = f"{path}:{line}"
                if None in row or row.get("label") is None:
                    problems.append(Problem(where, key or "?", "malformed row", _row_text(row)))
                    continue
                if not key:
                    problems.append(Problem(where, "?", "empty id", "the id column is empty"))
                    continue
                if key in lines:
                    detail = f"id {key} listed again (first on line {lines[key]})"
                    problems.append(Problem(where, key, "duplicate id", detail))
                    continue
                labels[key] = (row["label"] or "").strip()
                lines[key] = line
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read labels ({exc})") from exc
    return labels, problems, lines


def _row_text(row: dict) -> str:
    extra = row.get(None)
    if extra:
        return f"more fields than the header: {extra!r}"
    return "fewer fields than the header (id,label)"


def parse_label(text: str) -> int | None:
    """'0'/'1' (also '0.0'/'1.0') to int; anything else to None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


class FileSource(PatchSource):
    """A set of image files, one patch each, with labels from a CSV, folder names, or none."""

    kind = "image folder"

    def __init__(
        self, root: Path, files: Sequence[Path], labels: Sequence[int], kind: str | None = None
    ) -> None:
        super().__init__(root, [f.stem for f in files], np.asarray(labels, dtype=np.int8))
        self.files = list(files)
        if kind:
            self.kind = kind

    def locate(self, i: int) -> str:
        return str(self.files[i])

    def read_raw(self, i: int) -> np.ndarray:
        path = self.files[i]
        return decode_patch_file(path, path.suffix.lower() in (".tif", ".tiff"))


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder``; a dangling symlink is listed too, so reading it is reported."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list ({exc.strerror or exc})") from exc
    return sorted(
        p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or _dangling(p))
    )


def _dangling(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _duplicate_id_problems(files: Sequence[Path]) -> list[Problem]:
    seen: dict[str, Path] = {}
    problems = []
    for f in files:
        if f.stem in seen:
            problems.append(
                Problem(str(f), f.stem, "duplicate id", f"same id as {seen[f.stem].name}")
            )
        else:
            seen[f.stem] = f
    return problems


def open_labelled_folder(folder: Path, labels_csv: Path | None, kind: str) -> FileSource:
    """A folder of images; labels from ``labels_csv`` if given (every mismatch is a problem)."""
    files = list_images(folder)
    problems = _duplicate_id_problems(files)
    if labels_csv is None:
        source = FileSource(folder, files, [UNLABELLED] * len(files), kind=kind)
        source.problems = problems
        return source
    table, csv_problems, lines = read_labels_table(labels_csv)
    problems += csv_problems
    labels = []
    for f in files:
        text = table.get(f.stem)
        if text is None:
            detail = f"id {f.stem} is not in {labels_csv}"
            problems.append(Problem(str(f), f.stem, "image without label", detail))
            labels.append(UNLABELLED)
            continue
        value = parse_label(text)
        if value is None:
            where = f"{labels_csv}:{lines[f.stem]}"
            detail = f"id {f.stem} has label {text!r}; labels must be 0 or 1"
            problems.append(Problem(where, f.stem, "label not 0/1", detail))
            labels.append(UNLABELLED)
        else:
            labels.append(value)
    stems = {f.stem for f in files}
    for key in table:
        if key not in stems:
            where = f"{labels_csv}:{lines[key]}"
            detail = f"id {key} has no image in {folder}"
            problems.append(Problem(where, key, "label without image", detail))
    source = FileSource(folder, files, labels, kind=kind)
    source.problems = problems
    return source


def open_class_folders(root: Path) -> FileSource | None:
    """``0/`` and ``1/`` (or negative|normal, positive|tumor) subfolders; None if not so."""
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    neg = [subdirs[n] for n in NEGATIVE_DIRS if n in subdirs]
    pos = [subdirs[n] for n in POSITIVE_DIRS if n in subdirs]
    if not neg or not pos:
        return None
    files: list[Path] = []
    labels: list[int] = []
    for label, dirs in ((0, neg), (1, pos)):
        for d in dirs:
            found = list_images(d)
            files += found
            labels += [label] * len(found)
    source = FileSource(root, files, labels, kind="class folders")
    source.problems = _duplicate_id_problems(files)
    return source


def open_kaggle(root: Path, split: str | None) -> FileSource | None:
    """The Kaggle competition layout: ``train/`` + ``train_labels.csv`` and/or ``test/``."""
    has_train = (root / "train").is_dir() and (root / "train_labels.csv").is_file()
    has_test = (root / "test").is_dir()
    if not (has_train or has_test):
        return None
    split = split or ("train" if has_train else "test")
    if split == "train":
        if not has_train:
            raise DataError(f"{root}: no train/ with train_labels.csv")
        return open_labelled_folder(root / "train", root / "train_labels.csv", "Kaggle train")
    if split == "test":
        if not has_test:
            raise DataError(f"{root}: no test/ folder")
        # sample_submission.csv holds placeholder labels, never real ones
        return open_labelled_folder(root / "test", None, "Kaggle test")
    raise DataError(f"{root}: unknown split {split!r} for the Kaggle layout (train or test)")


def open_source(
    path: str | Path,
    labels: str | Path | None = None,
    split: str | None = None,
    prefer_split: str | None = None,
) -> PatchSource:
    """Open whatever the user points at: a store, PCam HDF5, Kaggle root, class or image folder.

    Args:
        path: a store directory, a PCam ``*_x.h5[.gz]`` file or folder, a Kaggle root, a folder
            with class subfolders, or a plain folder of images.
        labels: an ``id,label`` CSV for a plain image folder.
        split: ``train``/``valid``/``test`` for PCam, ``train``/``test`` for a Kaggle root.
        prefer_split: the split to take, when ``split`` is not given and the data has it
            (``predict`` prefers ``test``); otherwise ``train`` when present.
    """
    from histoscan.data.pcam import open_pcam
    from histoscan.data.store import PatchStore, is_store

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if is_store(path):
        return PatchStore(path)
    if path.is_file() or any(PCAM_RE.match(p.name) for p in _safe_iterdir(path)):
        return open_pcam(path, split or _preferred_pcam(path, prefer_split))
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise DataError(f"{labels}: no such labels file")
        return open_labelled_folder(path, labels, "image folder")
    if split is None and prefer_split and (path / prefer_split).is_dir():
        split = prefer_split  # e.g. predict on a Kaggle root: test/, not train/
    kaggle = open_kaggle(path, split)
    if kaggle is not None:
        return kaggle
    classes = open_class_folders(path)
    if classes is not None:
        return classes
    sibling = path.parent / f"{path.name}_labels.csv"  # e.g. train/ beside train_labels.csv
    if sibling.is_file():
        return open_labelled_folder(path, sibling, "Kaggle train")
    source = open_labelled_folder(path, None, "unlabelled folder")
    if len(source) == 0:
        raise DataError(f"{path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return source


def _preferred_pcam(path: Path, prefer_split: str | None) -> str | None:
    if prefer_split is None or not path.is_dir():
        return None
    names = {p.name for p in path.iterdir()}
    stem = f"camelyonpatch_level_2_split_{prefer_split}_x.h5"
    return prefer_split if stem in names or f"{stem}.gz" in names else None


def _safe_iterdir(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.is_dir() else []


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name in the same folder, then rename."""
    atomic_write(path, data)


def gunzip_cached(src: Path, dest: Path, progress: bool = True) -> Path:
    """Decompress ``src`` (.gz) to ``dest`` once; later calls reuse it. Atomic."""
    if dest.exists() and dest.stat().st_mtime >= src.stat().st_mtime:
        return dest
    from histoscan.progress import progress_bar

    try:  # opened before the output, so a missing or unreadable input is not blamed on it
        raw = open(src, "rb")
    except OSError as exc:
        raise DataError(f"{src}: cannot read ({exc.strerror or exc})") from exc
    with (
        raw,
        atomic_file(dest) as tmp,
        gzip.GzipFile(fileobj=raw) as zipped,
        open(tmp, "wb") as out,
        progress_bar(
            f"decompress {src.name}", total=os.fstat(raw.fileno()).st_size, show=progress, unit="B"
        ) as bar,
    ):
        while chunk := _read_gzip_block(zipped, src):  # damage: DataError naming src
            out.write(chunk)  # a full disk: OutputError naming dest (atomic_file)
            bar.update(raw.tell())
    return dest


def _read_gzip_block(zipped: gzip.GzipFile, src: Path) -> bytes:
    """The next 4 MiB; a damaged archive is the input's fault (atomic_file blames the output)."""
    try:
        return zipped.read(1 << 22)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{src}: cannot decompress ({exc})") from exc
