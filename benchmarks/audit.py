"""Time `histoscan audit` stage by stage, and check it scales linearly with bounded memory.

    python benchmarks/audit.py                      # the 10,000 real patches
    python benchmarks/audit.py DATA --labels CSV    # any patch set
    python benchmarks/audit.py --tile 4             # 4x the patches (rotated/flipped copies)

``--tile K`` audits K dihedral variants of every patch (rotations and flips: new pixels, new
hashes, same statistics), so time per patch and peak memory can be compared across sizes
without more data. Prints seconds per stage, the total, patches per second and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from histoscan.audit import AuditConfig, open_audit_source, run_audit
from histoscan.data.sources import PatchSource

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-real" / "train"
STAGES = {
    "read": "read/decode",
    "features": "features + running histograms/means",
    "hashes": "SHA-1 + pHash",
    "outliers": "outlier rules + colour kNN",
    "duplicates": "exact + near duplicates",
    "baseline": "correlations + LR baseline",
    "report": "plots, thumbnails, HTML, JSON, manifest",
    "total": "total",
}


class TiledSource(PatchSource):
    """``k`` dihedral variants (rot90 x flip) of every patch of ``base``."""

    kind = "tiled"
    id_is_hash = False

    def __init__(self, base: PatchSource, k: int) -> None:
        ids = [f"{key}-{v}" for v in range(k) for key in base.ids]
        super().__init__(base.root, ids, np.tile(base.labels, k))
        self.base, self.n = base, len(base)

    def locate(self, i: int) -> str:
        return f"{self.base.locate(i % self.n)} variant {i // self.n}"

    def read(self, i: int) -> np.ndarray:
        return self.read_many([i])[0]

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices)
        images = self.base.read_many(indices % self.n)
        for j, v in enumerate(indices // self.n):
            image = np.rot90(images[j], v % 4)
            images[j] = image[:, ::-1] if v >= 4 else image
        return images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=REAL)
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--split")
    parser.add_argument("--tile", type=int, default=1, help="1-8 dihedral variants per patch")
    parser.add_argument("--out", type=Path, help="keep the report here (default: a temp dir)")
    args = parser.parse_args(argv)
    source = open_audit_source(args.data, args.labels, args.split)
    if args.tile > 1:
        source = TiledSource(source, min(args.tile, 8))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "audit"
        audit = run_audit(source, out, AuditConfig(), overwrite=True, progress=False)
    seconds = audit.seconds
    print(f"{source.describe()}")
    for key, text in STAGES.items():
        print(f"  {text:42s} {seconds[key]:7.2f} s")
    print(f"  {len(source) / seconds['total']:,.0f} patches/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"  peak memory {peak:,.0f} MiB; removed {int((~audit.keep).sum()):,} patches")


if __name__ == "__main__":
    sys.exit(main())
