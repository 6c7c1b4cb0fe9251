"""PatchCamelyon HDF5 files: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5[.gz]``.

The file is opened once per process (the handle is dropped when pickled, so every DataLoader
worker opens its own), never per sample as torchvision's PCAM dataset does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoscan.data.sources import (
    PATCH_PX,
    PCAM_RE,
    UNLABELLED,
    PatchSource,
    Problem,
    gunzip_cached,
)
from histoscan.errors import DataError

SPLITS = ("train", "valid", "test")


def pcam_name(split: str, part: str) -> str:
    return f"camelyonpatch_level_2_split_{split}_{part}.h5"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def resolve_h5(folder: Path, split: str, part: str) -> Path | None:
    """The plain .h5 for ``split``/``part``, decompressing a .h5.gz once if that is all there is."""
    plain = folder / pcam_name(split, part)
    zipped = folder / (pcam_name(split, part) + ".gz")
    if plain.is_file():
        return plain
    if not zipped.is_file():
        return None
    # the cache lives next to the download; a read-only folder falls back to the user cache
    cache_dir = folder if _writable(folder) else Path.home() / ".cache" / "histoscan" / "pcam"
    return gunzip_cached(zipped, cache_dir / plain.name)


class PCamSource(PatchSource):
    """One PCam split: x (N, 96, 96, 3) uint8 and, when present, y (N, 1, 1, 1)."""

    kind = "PCam HDF5"
    id_is_hash = False  # PCam has no ids; ids are "<split>/<index>"

    def __init__(self, x_path: Path, y_path: Path | None, split: str) -> None:
        import h5py

        self.x_path = x_path
        self.y_path = y_path
        self.split = split
        problems: list[Problem] = []
        try:
            with h5py.File(x_path, "r") as fx:
                if "x" not in fx or not isinstance(fx["x"], h5py.Dataset):
                    raise DataError(f"{x_path}: no dataset 'x' in this HDF5 file")
                full_shape, dtype = fx["x"].shape, fx["x"].dtype
        except OSError as exc:
            raise DataError(f"{x_path}: not a readable HDF5 file ({exc})") from exc
        if not full_shape:
            raise DataError(f"{x_path}: dataset x is a scalar, expected N x 96 x 96 x 3 uint8")
        n, shape = int(full_shape[0]), tuple(full_shape[1:])
        # one array has one dtype and shape: a bad one is refused for every patch, up front
        self.invalid = _invalid_x(shape, dtype)
        if self.invalid:
            problems.append(Problem(str(x_path), "*", self.invalid[0], self.invalid[1]))
        labels = np.full(n, UNLABELLED, dtype=np.int8)
        if y_path is not None:
            labels, y_problems = self._read_labels(y_path, n, split)
            problems += y_problems
        super().__init__(x_path.parent, [f"{split}/{i}" for i in range(n)], labels)
        self.problems = problems
        self._file = None
        self._pid = -1

    @staticmethod
    def _read_labels(y_path: Path, n: int, split: str) -> tuple[np.ndarray, list[Problem]]:
        import h5py

        try:
            with h5py.File(y_path, "r") as fy:
                y = np.asarray(fy["y"]).reshape(-1)
        except (OSError, KeyError) as exc:
            raise DataError(f"{y_path}: not a PCam label file ({exc})") from exc
        problems = []
        if len(y) != n:
            problems.append(
                Problem(str(y_path), "*", "HDF5 x/y length mismatch", f"x has {n}, y has {len(y)}")
            )
        labels = np.full(n, UNLABELLED, dtype=np.int8)
        m = min(n, len(y))
        bad = ~np.isin(y[:m], (0, 1))
        labels[:m] = np.where(bad, UNLABELLED, y[:m]).astype(np.int8)
        for i in np.flatnonzero(bad):  # every one, so verify's counts and report are complete
            detail = f"label is {y[i].item()!r}"
            problems.append(Problem(f"{y_path}[{i}]", f"{split}/{i}", "label not 0/1", detail))
        return labels, problems

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # each process opens its own handle
        return state

    def _x(self):  # type: ignore[no-untyped-def]
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.x_path, "r")
            self._pid = os.getpid()
        return self._file["x"]

    def locate(self, i: int) -> str:
        return f"{self.x_path}[{i}]"

    def _require_valid(self) -> None:
        if self.invalid:
            kind, detail = self.invalid
            raise DataError(f"{self.x_path}: dataset x is {kind} ({detail}); PCam x is uint8 RGB")

    def read_raw(self, i: int) -> np.ndarray:
        return np.asarray(self._x()[i])

    def read(self, i: int) -> np.ndarray:
        self._require_valid()
        return super().read(i)

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        self._require_valid()
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) == 0:
            return np.empty((0, PATCH_PX, PATCH_PX, 3), np.uint8)
        if idx[-1] - idx[0] + 1 == len(idx) and (np.diff(idx) == 1).all():
            return self._x()[int(idx[0]) : int(idx[-1]) + 1]  # a slice: one read, no fancy indexing
        order = np.argsort(idx)
        sorted_idx = idx[order]
        if len(np.unique(sorted_idx)) == len(sorted_idx):
            block = self._x()[sorted_idx]  # h5py fancy indexing needs increasing indices
        else:
            block = np.stack([self._x()[int(i)] for i in sorted_idx])
        out = np.empty_like(block)
        out[order] = block
        return out

    def describe(self) -> str:
        return f"PCam {self.split} split at {self.x_path} ({len(self)} patches)"


def _invalid_x(shape: tuple[int, ...], dtype: np.dtype) -> tuple[str, str] | None:
    """(kind, detail) when PCam's x is not (N, 96, 96, 3) uint8, else None."""
    if len(shape) != 3:
        return "not 96x96x3", f"dataset x has shape (N, {', '.join(map(str, shape))})"
    if shape[2] != 3:
        return "not 96x96x3", f"dataset x has {shape[2]} channels, not 3 (RGB)"
    if shape[:2] != (PATCH_PX, PATCH_PX):
        return "not 96x96x3", f"dataset x holds {shape[1]}x{shape[0]} patches"
    if dtype != np.uint8:
        return "not 8-bit", f"dataset x is {dtype}"
    return None


def open_pcam(path: Path, split: str | None) -> PCamSource:
    """A PCam split from a ``*_x.h5[.gz]`` file or a folder holding the official file names."""
    if path.is_file():
        match = PCAM_RE.match(path.name)
        if not match:
            raise DataError(
                f"{path}: not a recognised data file (expected a folder, or a PCam file named "
                "camelyonpatch_level_2_split_<split>_x.h5[.gz])"
            )
        found_split, part, _ = match.groups()
        if part != "x":
            raise DataError(f"{path}: this is the label file; point at the _x.h5 file or folder")
        split = found_split
        folder = path.parent
    else:
        folder = path
        present = [s for s in SPLITS if any(folder.glob(f"{pcam_name(s, 'x')}*"))]
        if not present:
            raise DataError(f"{path}: no PCam _x.h5 files here")
        split = split or ("train" if "train" in present else present[0])
        if split not in present:
            raise DataError(f"{path}: no PCam {split} split (found {', '.join(present)})")
    x_path = resolve_h5(folder, split, "x")
    if x_path is None:
        raise DataError(f"{folder}: no {pcam_name(split, 'x')}")
    y_path = resolve_h5(folder, split, "y")
    return PCamSource(x_path, y_path, split)
