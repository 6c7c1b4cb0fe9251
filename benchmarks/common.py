"""Helpers shared by the benchmark scripts: timing, FLOP counts, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REAL_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-real" / "train"


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (oneDNN picks kernels then)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gflop_per_image(net: torch.nn.Module, px: int = 96) -> float:
    """Forward GFLOP for one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, px, px))
    return counter.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), repeats) / 1e9


def print_machine() -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, LD_PRELOAD={os.environ.get('LD_PRELOAD', '-')}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"matmul 2048^3: fp32 {matmul_gflops(torch.float32):.0f} GFLOP/s, "
        f"bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s"
    )
