"""``histoscan slide-eval``: CAMELYON16 slide AUC and lesion FROC of ``histoscan slide`` results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command


@command("slide-eval")
def slide_eval(
    results: Annotated[
        Path,
        typer.Argument(help="Output folder of `histoscan slide` (slides.csv or summary.json)."),
    ],
    annotations: Annotated[
        Path,
        typer.Option(
            help="Folder of tumour annotations per slide: STEM.geojson (QuPath) or "
            "STEM.xml (ASAP), level-0 pixels.",
            metavar="DIR",
        ),
    ],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="slide,label CSV (tumor/normal or 1/0); default: tumour when annotated.",
            metavar="CSV",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder to write (default: RESULTS/slide-eval).", metavar="DIR"
        ),
    ] = None,
) -> None:
    """Slide-level ROC AUC and lesion-level FROC (mean sensitivity at 1/4..8 FP per slide)."""
    import json

    from histoscan.io import atomic_dir
    from histoscan.slide.evaluation import evaluate_slides, plot_froc

    metrics, _ = evaluate_slides(results, annotations, labels)
    out = out or results / "slide-eval"
    with atomic_dir(out, overwrite=True, what="slide-eval") as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_froc(tmp / "froc.png", metrics)
    auc, score = metrics["slide_auc"], metrics["froc"]["score"]
    typer.echo(
        f"slide AUC {'n/a (one class)' if auc is None else f'{auc:.4f}'} "
        f"({metrics['slides']} slides, {metrics['tumour_slides']} tumour); "
        f"FROC {'n/a' if score is None else f'{score:.4f}'} "
        f"({metrics['froc']['lesions']} lesions)\nwritten to {out}"
    )
