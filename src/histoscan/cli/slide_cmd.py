"""``histoscan slide``: a tumour heatmap, tile scores and QuPath annotations for one slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command


@command("slide")
def slide(
    slide: Annotated[Path, typer.Argument(help="Slide: SVS, NDPI, MRXS, TIFF, PNG, JPEG, ...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder to create.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Model file (default: bundled).")
    ] = None,
    mpp: Annotated[
        float | None,
        typer.Option(
            help="Micrometres per level-0 pixel, when the slide does not say (or says wrong)."
        ),
    ] = None,
    stride_px: Annotated[
        int | None,
        typer.Option(
            help="Grid step in pixels at the model's resolution (default: the patch size)."
        ),
    ] = None,
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none, flip or d4.")] = "none",
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Tumour threshold: a probability, 'youden' or 'sens:0.95' (default: the model's)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles read and scored together.")] = 256,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Score every tissue tile; write tiles.csv, heatmap.png, tumor.geojson and summary.json."""
    from histoscan.predict import Predictor
    from histoscan.slide.run import analyse_slide

    predictor = Predictor.load(model, batch_size=batch_size)
    summary = analyse_slide(
        slide,
        out,
        predictor,
        mpp=mpp,
        stride_px=stride_px,
        tta=tta,
        threshold=None if threshold is None else predictor.threshold(threshold),
        batch_size=batch_size,
        progress=not quiet,
    )
    typer.echo(f"{summary['message']}\nwritten to {out}")
