"""``histoscan slide``: tumour heatmaps, tile scores, lesions and QuPath annotations for slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import BatchSizeOpt, DeviceOpt, EngineOpt, ModelOpt, QuietOpt, TtaOpt


@command("slide")
def slide(
    slides: Annotated[
        list[Path],
        typer.Argument(
            help="Slides (SVS, NDPI, MRXS, TIFF, PNG, ...), folders of slides, or .txt/.csv "
            "files listing them.",
            metavar="SLIDE...",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: one slide's outputs, or DIR/STEM/ per slide + slides.csv.",
            metavar="DIR",
        ),
    ],
    model: ModelOpt = None,
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    mpp: Annotated[
        float | None,
        typer.Option(
            help="Micrometres per level-0 pixel (default: what the slide says, if it says)."
        ),
    ] = None,
    stride_px: Annotated[
        int | None,
        typer.Option(
            help="Grid step in pixels at the model's resolution (default: the patch size)."
        ),
    ] = None,
    tta: TtaOpt = "none",
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Tumour threshold: a probability, 'youden' or 'sens:0.95' (default: the model's)."
        ),
    ] = None,
    min_tissue: Annotated[
        float | None,
        typer.Option(
            help="Score a tile when at least this fraction of it is tissue (default 0.2).",
            metavar="FRACTION",
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this process) or ray (Ray Data, an actor pool).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: 'auto' or ray://HOST:10001 (default: a local Ray).",
            metavar="ADDRESS",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Redo slides whose outputs exist (default: skip them).")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every tissue tile; write tiles.csv, heatmap.png, tumor.geojson, lesions.csv and
    summary.json per slide (and slides.csv for several). Exit 1 if any slide failed."""
    from histoscan.predict import Predictor
    from histoscan.slide.batch import run_slides
    from histoscan.slide.run import SlideSettings

    predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
    settings = SlideSettings(
        mpp=mpp,
        stride_px=stride_px,
        tta=tta,
        threshold=None if threshold is None else predictor.threshold(threshold),
        batch_size=batch_size,
        **({} if min_tissue is None else {"min_tissue": min_tissue}),
    )
    results = run_slides(
        slides,
        out,
        predictor,
        settings,
        executor=executor,
        overwrite=overwrite,
        progress=not quiet,
        ray_options={"address": ray_address, "model": model, "engine": engine, "device": device},
    )
    if len(results) == 1:
        [result] = results
        if result.status == "skipped":
            typer.echo(f"skipped: {out} already holds this slide's outputs (--overwrite redoes it)")
        else:
            typer.echo(f"{result.summary['message']}\nwritten to {out}")
        return
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    for r in results:
        if r.status == "failed":
            typer.secho(f"failed: {r.slide}: {r.error}", fg="red", err=True)
    typer.echo(
        f"{len(results)} slides: {counts['done']} done, {counts['skipped']} skipped "
        f"(outputs complete for this model and settings), {counts['failed']} failed\n"
        f"written to {out} (slides.csv)"
    )
    if counts["failed"]:
        raise typer.Exit(1)
