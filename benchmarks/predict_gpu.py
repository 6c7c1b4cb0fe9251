"""Images/s of the bundled model through ``Predictor`` on a CUDA device, fp32 and bf16, per TTA.

    python benchmarks/predict_gpu.py [--data ../shared/data/pcam-real/train] [--n 300]
        [--repeat 40] [--batch 512]

Decoded real patches (``--n`` of them, tiled ``--repeat`` times) go through the whole door:
uint8 to the GPU, preprocessing, the network, views and the copy back. The CPU int8 ONNX engine
runs the same patches for the ratio. Median of 3 timed passes after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import REAL_TRAIN
from histoscan.data.sources import open_source
from histoscan.predict import Predictor


def rate(predictor: Predictor, images: np.ndarray, tta: str) -> float:
    predictor.logits(images[: predictor.batch_size], tta)  # warm-up: kernels, allocator
    times = []
    for _ in range(3):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.logits(images, tta)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_TRAIN)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path")
    source = open_source(args.data)
    images = np.tile(source.read_many(range(min(args.n, len(source)))), (args.repeat, 1, 1, 1))
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"patches: {len(images)} ({args.n} real, tiled {args.repeat}x), batch {args.batch}")
    for precision in ("fp32", "bf16"):
        gpu = Predictor.load(
            None, engine="torch", device="cuda", precision=precision, batch_size=args.batch
        )
        for tta in ("none", "d4"):
            print(f"torch cuda {precision:4} tta {tta:4}: {rate(gpu, images, tta):9.0f} img/s")
    cpu = Predictor.load(None, engine="onnx-int8", device="cpu")
    few = images[: 4 * cpu.batch_size]
    print(f"onnx-int8 cpu      tta none: {rate(cpu, few, 'none'):9.0f} img/s")


if __name__ == "__main__":
    main()
