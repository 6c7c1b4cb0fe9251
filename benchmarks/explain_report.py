"""Seconds per stage of ``explain``, ``embed`` and ``report`` on the real sample.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
    .venv/bin/python benchmarks/explain_report.py [--data ../shared/data/pcam-real/train]
        [--model src/histoscan/weights/histocnn-pcam.pt] [--limit N] [--keep DIR]

Runs the three commands' library calls with their defaults, as the CLI does: ``explain`` scans
every patch with one view and explains the 8 most confident TP/TN/FP/FN; ``embed`` maps every
patch (UMAP, 8 clusters); ``report`` predicts each patch once (its validation patches with 8
views, the rest with one) and reuses the predictions for metrics, Grad-CAM and the map. The load
average is printed because another process on the machine slows every stage.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import REAL_TRAIN, print_machine
from histoscan.data.sources import open_source
from histoscan.explain.runs import run_embed, run_explain
from histoscan.models.bundle import bundled_model_path, load_model_file
from histoscan.report import build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_TRAIN)
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--limit", type=int, default=None, help="patches per stage (default all)")
    parser.add_argument("--keep", type=Path, default=None, help="write outputs here, not to tmp")
    args = parser.parse_args()

    print_machine()
    load_before = os.getloadavg()
    rows: list[tuple[str, float]] = []
    started = time.perf_counter()
    source = open_source(args.data)
    mf = load_model_file(args.model)
    rows.append(("open data + model", time.perf_counter() - started))
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        out = args.keep or Path(tmp)
        clock = time.perf_counter()
        run_explain(mf, source, out / "explain", limit=args.limit, progress=False)
        rows.append(("explain (scan all, Grad-CAM 32)", time.perf_counter() - clock))
        clock = time.perf_counter()
        run_embed(mf, source, out / "embed", limit=args.limit, progress=False)
        rows.append(("embed (features, UMAP, k-means)", time.perf_counter() - clock))
        clock = time.perf_counter()
        summary = build_report(
            args.model, source, out / "report.html", limit=args.limit, progress=False
        )
        report_s = time.perf_counter() - clock
        size_mb = (out / "report.html").stat().st_size / 1e6
    total = time.perf_counter() - started

    print(
        f"data {args.data} ({len(source)} patches), model {args.model.name} "
        f"({mf.spec.name}, card val AUC {mf.card.get('val_auc_tta_d4')})"
    )
    print(f"load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(
        f"report: {summary['n_eval']} patches evaluated (8 views), {summary['n_mapped']} "
        f"mapped, ROC AUC {summary['roc_auc']:.4f}, {size_mb:.1f} MB"
    )
    print()
    print(f"| {'stage':<40} | {'seconds':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:8.1f} |")
    print(f"| {'report':<40} | {report_s:8.1f} |")
    for name, seconds in summary["seconds"].items():
        print(f"| {'  report: ' + name:<40} | {seconds:8.1f} |")
    print(f"| {'total':<40} | {total:8.1f} |")


if __name__ == "__main__":
    main()
