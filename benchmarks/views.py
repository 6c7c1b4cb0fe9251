"""Milliseconds per dihedral view of a batch of 96x96 RGB patches: numpy's byte-by-byte strided
copy against ``dihedral_hwc``'s whole-pixel copy (what the ONNX engines pay per TTA view).

    python benchmarks/views.py [--batch 512] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from histoscan.data.views import _dihedral, dihedral_hwc


def ms_per_view(fn, images: np.ndarray, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(1, 8):
            fn(images, k)
        times.append((time.perf_counter() - start) / 7)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 96, 96, 3), dtype=np.uint8)
    for k in range(8):
        assert np.array_equal(_dihedral(images, k), dihedral_hwc(images, k))
    byte = ms_per_view(_dihedral, images, args.repeats)
    pixel = ms_per_view(dihedral_hwc, images, args.repeats)
    print(f"{args.batch} patches, median of {args.repeats} rounds of views 1-7")
    print(f"numpy byte copy   {byte:6.1f} ms per view")
    print(f"whole-pixel copy  {pixel:6.1f} ms per view ({byte / pixel:.2f}x)")


if __name__ == "__main__":
    main()
