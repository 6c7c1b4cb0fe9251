"""Patches per second on the real sample: per-file decoding, HDF5 and the packed store.

    .venv/bin/python benchmarks/loader.py [--data ../shared/data/pcam-real/train] [--limit N]

Copies of the sample are written to a temporary folder first: uncompressed TIFF (like the Kaggle
files), and PCam-style HDF5 x/y pairs with and without gzip (one patch per chunk, the best case
for reading single patches). Every reader returns the same uint8 (96, 96, 3) pixels. Each row is
timed for at most ``--budget`` seconds, on one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import tifffile
from PIL import Image

from histoscan.data.pcam import PCamSource, pcam_name
from histoscan.data.sources import FileSource, open_source
from histoscan.data.store import PatchStore, write_store

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pcam-real" / "train"
Row = tuple[str, float]


def rate(read: Callable[[int], object], images: np.ndarray, budget_s: float) -> float:
    """Items per second of ``read(i)`` for i = 0, 1, ... until every item or the time budget."""
    # warm up (open files, import codecs) and make sure the reader returns the right pixels
    if not np.array_equal(np.asarray(read(1)), images[1]):
        raise AssertionError(f"{read} returns other pixels")
    n = len(images)
    start = time.perf_counter()
    done = 0
    while done < n:
        read(done)
        done += 1
        if done % 64 == 0 and time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def write_h5_pair(folder: Path, images: np.ndarray, labels: np.ndarray, gzip: bool) -> Path:
    """PCam's layout: x (N, 96, 96, 3) uint8, y (N, 1, 1, 1) uint8, under the official names."""
    folder.mkdir(parents=True)
    options = {"chunks": (1, 96, 96, 3), "compression": "gzip"} if gzip else {}
    with h5py.File(folder / pcam_name("train", "x"), "w") as f:
        f.create_dataset("x", data=images, **options)
    with h5py.File(folder / pcam_name("train", "y"), "w") as f:
        f.create_dataset("y", data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    return folder


def torchvision_pcam(root: Path) -> Callable[[int], object]:
    """torchvision.datasets.PCAM as shipped: it reopens both HDF5 files for every sample."""
    from torchvision.datasets import PCAM

    dataset = PCAM(str(root), split="train")  # expects root/pcam/<official names>
    return lambda i: np.asarray(dataset[i][0])


def store_epoch(store_path: Path, n: int, batch_size: int, batched: bool) -> Callable[[], int]:
    """One shuffled pass over a store through a DataLoader (num_workers=0); returns the count.

    Per item: histoscan.train.PatchDataset, one patch per __getitem__, collated into batches.
    Batched: a BatchSampler hands the dataset a whole batch of indices, read with one
    ``read_many`` (sorted, so the memory map is walked forwards) and no collation.
    """
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from histoscan.train import PatchDataset

    store = PatchStore(store_path)
    if batched:
        sampler = BatchSampler(RandomSampler(range(n)), batch_size, drop_last=False)
        loader = DataLoader(StoreBatches(store), sampler=sampler, batch_size=None)
    else:
        loader = DataLoader(PatchDataset(store, np.arange(n)), batch_size=batch_size, shuffle=True)

    def one_epoch() -> int:
        count = 0
        for images, _ in loader:
            assert images.dtype == torch.uint8  # (B, 96, 96, 3)
            count += len(images)
        return count

    return one_epoch


class StoreBatches:
    """A map-style dataset whose keys are lists of indices: one read per batch."""

    def __init__(self, store: PatchStore) -> None:
        self.store = store

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        idx = np.sort(np.asarray(indices, dtype=np.int64))
        images = torch.from_numpy(self.store.read_many(idx))  # (B, 96, 96, 3) uint8
        return images, torch.from_numpy(self.store.labels[idx].astype(np.float32))


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores (load average {load}), Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of image files")
    parser.add_argument("--limit", type=int, default=10_000, help="patches to use")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds per row at most")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    full = open_source(args.data)
    if not isinstance(full, FileSource):
        sys.exit(f"{args.data}: expected a folder of image files, found {full.kind}")
    n = min(args.limit, len(full))
    source = FileSource(full.root, full.files[:n], full.labels[:n], kind=full.kind)
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"data: {full.describe()}; using {n:,}\n")
    with tempfile.TemporaryDirectory(prefix="histoscan-bench-") as tmp:
        rows = measure(source, Path(tmp), args.budget, args.batch_size)
    print_table(rows)


def measure(source: FileSource, tmp: Path, budget_s: float, batch_size: int) -> list[Row]:
    """One (reader, patches/s) row per way of reading; the first row is per-file TIFF."""
    n = len(source)
    images = source.read_many(range(n))  # (n, 96, 96, 3) uint8, to write the copies
    labels = np.clip(source.labels, 0, 1)
    (tmp / "tif").mkdir()
    tif_files = [tmp / "tif" / f"{key}.tif" for key in source.ids]
    for path, image in zip(tif_files, images, strict=True):
        tifffile.imwrite(path, image)  # uncompressed, as Kaggle's files
    tif_source = FileSource(tmp / "tif", tif_files, labels)

    def pil_tif(i: int) -> np.ndarray:
        with Image.open(tif_files[i]) as img:
            return np.asarray(img)

    rows = [
        ("TIFF per file (tifffile, FileSource.read)", rate(tif_source.read, images, budget_s)),
        ("TIFF per file (PIL)", rate(pil_tif, images, budget_s)),
        ("WebP per file (PIL, FileSource.read)", rate(source.read, images, budget_s)),
    ]
    for gzip in (True, False):
        kind = "gzip 1 patch/chunk" if gzip else "uncompressed"
        folder = write_h5_pair(tmp / f"h5-{int(gzip)}" / "pcam", images, labels, gzip)
        reopen = torchvision_pcam(folder.parent)
        rows.append((f"HDF5 {kind}, torchvision PCAM (reopens)", rate(reopen, images, budget_s)))
        x_path, y_path = (folder / pcam_name("train", part) for part in ("x", "y"))
        once = PCamSource(x_path, y_path, "train")
        rows.append((f"HDF5 {kind}, opened once (PCamSource)", rate(once.read, images, budget_s)))
    write_store(source, tmp / "store", progress=False)
    for batched in (False, True):
        one_epoch = store_epoch(tmp / "store", n, batch_size, batched)
        one_epoch()  # warm: page cache, first-batch set-up
        start = time.perf_counter()
        count = one_epoch()
        how = "batched reads" if batched else "per item"
        name = f"store, DataLoader {how} (batch {batch_size}, workers 0)"
        rows.append((name, count / (time.perf_counter() - start)))
    return rows


def print_table(rows: list[Row]) -> None:
    tif_rate = rows[0][1]
    width = max(len(name) for name, _ in rows)
    print(f"{'reader':<{width}}  {'patches/s':>10}  {'vs TIFF':>8}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 8}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10,.0f}  {value / tif_rate:>7.1f}x")
    speedups = ", ".join(f"{v / tif_rate:.1f}x" for name, v in rows if name.startswith("store"))
    print(f"\nstore speed-up over per-file TIFF (tifffile), per item and batched: {speedups}")


if __name__ == "__main__":
    main()
