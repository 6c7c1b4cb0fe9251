"""Many slides: tiles/s of the local and the Ray executor, coverage, and memory as slides grow.

    .venv/bin/python benchmarks/slides.py [--slides 3] [--side 20] [--batch-size 256]

Each slide is ``side`` x ``side`` random real patches of ../shared/data/pcam-real on a white
margin, a JPEG-tiled pyramidal TIFF at 0.486 um/px (tiles read at level 1, as from a 20x scan;
``slide_throughput.build_slide`` with a different seed per slide). Printed:

* coverage: patch cells scored (of side², and of the cells that are tissue: >= 5 % stained pixels
  at full resolution), margin cells scored, and tile AUC against the patch labels next to the AUC
  of the same model on the same patches scored directly;
* ``histoscan slide`` on all slides in one call, ``--executor local`` and ``--executor ray``
  (a local Ray with every CPU), tiles/s over the whole call, and a rerun (all skipped);
* peak resident memory of one local run on a slide of side and of 2 x side (4x the area), each
  in a fresh process.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from histoscan.data.sources import open_source
from histoscan.predict import Predictor
from histoscan.slide.batch import run_slides
from histoscan.slide.run import SlideSettings
from slide_throughput import DEFAULT_DATA, build_slide, machine


def build(path: Path, data: Path, side: int, seed: int) -> tuple[Path, np.ndarray]:
    """A mosaic slide and the source indices of its patches (row-major)."""
    source = open_source(data, split="train")
    idx = np.random.default_rng(seed).choice(len(source), side * side, replace=False)
    build_slide(path, data, side, seed=seed)
    return path, idx


def coverage(out: Path, idx: np.ndarray, side: int, data: Path, predictor: Predictor) -> str:
    from sklearn.metrics import roc_auc_score

    source = open_source(data, split="train")
    images = source.read_many(idx)
    spread = images.max(axis=-1).astype(int) - images.min(axis=-1)
    tissue = ((spread > 25) | (images.min(axis=-1) < 200)).mean(axis=(1, 2)) >= 0.05
    labels = source.labels[idx]
    with open(out / "tiles.csv", newline="") as fh:
        tiles = list(csv.DictReader(fh))
    scored, probs, margin = np.zeros(side * side, bool), np.full(side * side, np.nan), 0
    for t in tiles:  # tiles of 192 level-0 px; the mosaic starts one cell in
        row, col = int(t["y"]) // 192 - 1, int(t["x"]) // 192 - 1
        if 0 <= row < side and 0 <= col < side:
            scored[row * side + col] = True
            probs[row * side + col] = float(t["p_tumor"])
        else:
            margin += 1
    tile_auc = roc_auc_score(labels[scored], probs[scored])
    patch_auc = roc_auc_score(labels, predictor.predict_proba(images, tta="none"))
    return (
        f"{scored.sum()}/{side * side} cells scored, {scored[tissue].sum()}/{tissue.sum()} "
        f"tissue cells ({scored[tissue].mean():.1%}), {margin} margin cells; tile AUC "
        f"{tile_auc:.4f} vs patches scored directly {patch_auc:.4f}"
    )


def child_peak_mib(slide: Path, out: Path, batch_size: int) -> float:
    """Peak RSS of a fresh process that analyses ``slide`` (MiB)."""
    code = (
        "from pathlib import Path; from histoscan.predict import Predictor;"
        "from histoscan.slide.run import analyse_slide;"
        f"analyse_slide(Path({str(slide)!r}), Path({str(out)!r}), "
        f"Predictor.load(batch_size={batch_size}), batch_size={batch_size}, progress=False);"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork and exec
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--slides", type=int, default=3)
    parser.add_argument("--side", type=int, default=20, help="patches per side of each mosaic")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    predictor = Predictor.load(batch_size=args.batch_size)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"predictor: {json.dumps(predictor.describe())}")
    settings = SlideSettings(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        built = [
            build(root / f"slide{k}.tif", args.data, args.side, seed=k) for k in range(args.slides)
        ]
        slides = [path for path, _ in built]
        executors = ["local"] if args.no_ray else ["local", "ray"]
        for executor in executors:
            options = {"engine": "auto", "device": "auto"}
            for attempt in ("run", "rerun"):
                start = time.perf_counter()
                results = run_slides(
                    slides, root / executor, predictor, settings, executor,
                    progress=False, ray_options=options,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                tiles = sum(r.summary.get("tiles_scored", 0) for r in results)
                statuses = ",".join(sorted({r.status for r in results}))
                rate = f"{tiles / seconds:,.0f} tiles/s" if attempt == "run" else ""
                print(
                    f"{executor:<6}{attempt:<6}{len(slides)} slides, {tiles} tiles "
                    f"({statuses}) in {seconds:.1f} s {rate}"
                )
        for k, (_path, idx) in enumerate(built):
            figures = coverage(root / "local" / f"slide{k}", idx, args.side, args.data, predictor)
            print(f"coverage slide{k}: {figures}")
        small, _ = build(root / "small.tif", args.data, args.side, seed=100)
        large, _ = build(root / "large.tif", args.data, 2 * args.side, seed=100)
        peak_small = child_peak_mib(small, root / "mem-small", args.batch_size)
        peak_large = child_peak_mib(large, root / "mem-large", args.batch_size)
        print(
            f"peak memory: {peak_small:,.0f} MiB at {args.side}x{args.side} patches, "
            f"{peak_large:,.0f} MiB at {2 * args.side}x{2 * args.side} (4x the area): "
            f"{peak_large / peak_small:.2f}x"
        )


if __name__ == "__main__":
    main()
