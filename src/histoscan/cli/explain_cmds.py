"""Subcommands that explain a model: explain (Grad-CAM), embed (feature map), report (HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import (
    BatchSizeOpt,
    DataArg,
    DeviceOpt,
    EngineOpt,
    LabelsOpt,
    ModelOpt,
    SplitOpt,
    TtaOpt,
    command_line,
)

LimitOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Use at most this many patches (random, seed 0; default: all)."),
]


def _open(data: Path, labels: Path | None, split: str | None):  # type: ignore[no-untyped-def]
    from histoscan.data.sources import open_source

    source = open_source(data, labels=labels, split=split)
    source.require_clean()
    return source


def _check_tta(tta: str) -> None:
    from histoscan.data.views import TTA_VIEWS
    from histoscan.errors import HistoscanError

    if tta not in TTA_VIEWS:
        raise HistoscanError(f"unknown --tta {tta!r}; choose from {', '.join(TTA_VIEWS)}")


@command("explain")
def explain(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
    model: ModelOpt = None,
    ids: Annotated[str | None, typer.Option(help="Comma-separated patch ids to explain.")] = None,
    n: Annotated[int, typer.Option(min=1, help="Patches per case (TP, TN, FP, FN).")] = 8,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    tta: TtaOpt = "none",
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    overwrite: Annotated[bool, typer.Option(help="Replace an OUT folder histoscan made.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Grad-CAM of chosen patches, or of the most confident TP, TN, FP and FN.

    Writes OUT/gradcam.png (gallery), OUT/patches/*.png (patch beside overlay) and
    OUT/explain.json (id, case, label, probability, share of the map inside the centre).
    """
    from histoscan.explain.runs import run_explain
    from histoscan.predict import Predictor

    _check_tta(tta)
    wanted = [key.strip() for key in ids.split(",") if key.strip()] if ids else None
    predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
    summary = run_explain(
        predictor,
        _open(data, labels, split),
        out,
        ids=wanted,
        n=n,
        tta=tta,
        limit=limit,
        overwrite=overwrite,
        progress=not quiet,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    typer.echo(f"explained {len(summary['patches'])} patches ({counts}) into {out}")


@command("embed")
def embed(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.")],
    model: ModelOpt = None,
    clusters: Annotated[int, typer.Option(min=1, help="k-means clusters.")] = 8,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    limit: LimitOpt = None,
    tta: TtaOpt = "none",
    method: Annotated[str, typer.Option(help="2-D projection: umap or tsne.")] = "umap",
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    overwrite: Annotated[bool, typer.Option(help="Replace an OUT folder histoscan made.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Map patches by the model's features: UMAP, k-means clusters and mislabel candidates.

    Writes embedding.csv (id,x,y,label,prob,cluster), umap_label.png, umap_prob.png,
    clusters.json, clusters.png and mislabel_candidates.csv/.png into OUT.
    """
    from histoscan.errors import HistoscanError
    from histoscan.explain.embedding import PROJECTIONS
    from histoscan.explain.runs import run_embed
    from histoscan.predict import Predictor

    _check_tta(tta)
    if method not in PROJECTIONS:
        raise HistoscanError(f"unknown --method {method!r}; choose from {', '.join(PROJECTIONS)}")
    predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
    summary = run_embed(
        predictor,
        _open(data, labels, split),
        out,
        n_clusters=clusters,
        limit=limit,
        tta=tta,
        method=method,
        overwrite=overwrite,
        progress=not quiet,
    )
    typer.echo(
        f"mapped {summary['n']} patches ({summary['method']}), "
        f"{summary['mislabel_candidates']} mislabel candidates, into {out}"
    )


@command("report")
def report(
    data: DataArg,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="Model file, or a run directory with model.pt (default: bundled).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"
    ),
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    audit: Annotated[Path | None, typer.Option(help="audit.json to summarise.")] = None,
    limit: LimitOpt = None,
    tta: TtaOpt = "d4",
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """One self-contained HTML page: training, metrics with CIs, calibration, errors, embedding."""
    from histoscan.models.modelfile import bundled_model_path
    from histoscan.report import build_report

    _check_tta(tta)
    summary = build_report(
        model if model is not None else bundled_model_path(),
        _open(data, labels, split),
        out,
        audit=audit,
        limit=limit,
        tta=tta,
        progress=not quiet,
        engine=engine,
        device=device,
        batch_size=batch_size,
        command=command_line(
            "report",
            data,
            model=model,
            out=out,
            labels=labels,
            split=split,
            audit=audit,
            limit=limit,
            tta=tta,
            engine=None if engine == "auto" else engine,
        ),
    )
    typer.echo(
        f"report on {summary['n_eval']} evaluated / {summary['n_mapped']} mapped patches "
        f"(ROC AUC {summary['roc_auc']:.4f}) written to {out}"
    )
