"""Peak memory of `histoscan prepare` from PCam HDF5 as the data grows: it must stay flat.

    python benchmarks/prepare_memory.py [--sizes 10000 40000]

Builds PCam-layout HDF5 pairs (gzip, as Zenodo ships them) of the requested sizes by repeating
the 10,000 real patches, then runs `histoscan prepare` on each as its own process and prints its
wall time and peak resident memory (``wait4``'s ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REAL_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-real" / "train"
HISTOSCAN = Path(sys.executable).with_name("histoscan")


def write_pcam(folder: Path, images: np.ndarray, labels: np.ndarray, n: int) -> None:
    """``n`` patches (the real ones repeated) as camelyonpatch_level_2_split_train_{x,y}.h5."""
    folder.mkdir(parents=True)
    x_path = folder / "camelyonpatch_level_2_split_train_x.h5"
    y_path = folder / "camelyonpatch_level_2_split_train_y.h5"
    with h5py.File(x_path, "w") as fx, h5py.File(y_path, "w") as fy:
        x = fx.create_dataset(
            "x", (n, 96, 96, 3), dtype=np.uint8, chunks=(32, 96, 96, 3), compression="gzip"
        )
        y = fy.create_dataset("y", (n, 1, 1, 1), dtype=np.uint8)
        for start in range(0, n, len(images)):
            stop = min(n, start + len(images))
            x[start:stop] = images[: stop - start]
            y[start:stop, 0, 0, 0] = labels[: stop - start]


def peak_run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    args = parser.parse_args()
    from histoscan.data.sources import open_source

    source = open_source(REAL_TRAIN)
    images = source.read_many(np.arange(len(source)))
    labels = source.labels.astype(np.uint8)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{'patches':>8s} {'seconds':>8s} {'peak MiB':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"pcam{n}"
            write_pcam(folder, images, labels, n)
            out = Path(tmp) / f"store{n}"
            seconds, peak = peak_run([str(HISTOSCAN), "prepare", str(folder), "--out", str(out)])
            print(f"{n:8d} {seconds:8.1f} {peak:9.0f}")


if __name__ == "__main__":
    main()
