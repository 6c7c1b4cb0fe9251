"""Tiles per second of `histoscan slide` on this machine, with the bundled model.

    .venv/bin/python benchmarks/slide_throughput.py [--side 20] [--tta none d4] [--batch-size 256]

A slide is assembled from ``side`` x ``side`` real patches of ../shared/data/pcam-real (plus a
white margin) and written as a JPEG-tiled pyramidal TIFF at 0.486 um/px, so tiles are read from
level 1 (0.972 um/px) as from a 20x scan. Each row is one full ``analyse_slide`` run: tissue
detection, reading, scoring, tiles.csv, heatmap and GeoJSON. ``tiles/s`` is the scoring loop
(read + predict + write rows); reading alone and the model alone are timed for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from histoscan.data.sources import open_source
from histoscan.predict import Predictor
from histoscan.slide.reader import open_slide
from histoscan.slide.run import analyse_slide
from histoscan.slide.tiling import plan_tiles, read_tiles

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pcam-real"
LEVEL0_MPP = 0.486


def build_slide(path: Path, data: Path, side: int, seed: int = 0) -> Path:
    """A pyramidal TIFF of side x side real patches with a one-patch white margin."""
    source = open_source(data, split="train")
    idx = np.random.default_rng(seed).choice(len(source), side * side, replace=False)
    n = side + 2
    base = np.full((n * 96, n * 96, 3), 255, dtype=np.uint8)
    for k, image in enumerate(source.read_many(idx)):
        row, col = divmod(k, side)
        base[(row + 1) * 96 : (row + 2) * 96, (col + 1) * 96 : (col + 2) * 96] = image
    level0 = base.repeat(2, axis=0).repeat(2, axis=1)
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            step = 2**k
            level = level0 if k == 0 else _box(level0, step)
            res = 1e4 / (LEVEL0_MPP * step)
            tif.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
            )
    return path


def _box(image: np.ndarray, f: int) -> np.ndarray:
    h, w = image.shape[0] // f, image.shape[1] // f
    blocks = image[: h * f, : w * f].reshape(h, f, w, f, 3)  # (h, f, w, f, 3)
    return blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def component_rates(slide: Path, predictor: Predictor, n: int) -> tuple[float, float]:
    """Tiles/s of reading alone (first ``n`` tiles of the grid) and of the model alone."""
    with open_slide(slide) as reader:
        spec = predictor.spec
        plan = plan_tiles(reader, reader.mpp, spec.mpp, spec.patch_px, spec.patch_px)
        rows, cols = np.divmod(np.arange(n), plan.n_cols)
        x, y = plan.origins(rows, cols)
        start = time.perf_counter()
        tiles = read_tiles(reader, plan, x, y)
        read_rate = n / (time.perf_counter() - start)
    predictor.predict_proba(tiles[:8], tta="none")  # warm up
    start = time.perf_counter()
    predictor.predict_proba(tiles, tta="none")
    return read_rate, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--side", type=int, default=20, help="patches per side of the mosaic")
    parser.add_argument("--tta", nargs="+", default=["none", "d4"])
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    predictor = Predictor.load(batch_size=args.batch_size)
    card = predictor.model_file.card
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}")
    print(
        f"model: {predictor.name} (val AUC d4 {card.get('val_auc_tta_d4', '?')}), "
        f"batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        slide = build_slide(Path(tmp) / "mosaic.tif", args.data, args.side)
        read_rate, model_rate = component_rates(slide, predictor, min(512, args.side**2))
        print(
            f"slide: {args.side}x{args.side} patches, {slide.stat().st_size / 1e6:.1f} MB "
            f"JPEG-tiled pyramidal TIFF at {LEVEL0_MPP} um/px (tiles read at level 1)"
        )
        print(
            f"reading alone: {read_rate:,.0f} tiles/s; model alone (tta none): "
            f"{model_rate:,.0f} tiles/s"
        )
        print(f"{'tta':<6}{'tiles':>7}{'tiles/s':>10}{'total s':>9}")
        for tta in args.tta:
            out = Path(tmp) / f"out-{tta}"
            summary = analyse_slide(
                slide, out, predictor, tta=tta, batch_size=args.batch_size, progress=False
            )
            print(
                f"{tta:<6}{summary['tiles_scored']:>7}{summary['tiles_per_s']:>10,.1f}"
                f"{summary['seconds']:>9.1f}"
            )


if __name__ == "__main__":
    main()
