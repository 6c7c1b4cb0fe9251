"""``histoscan compare``: two models on the same held-out patches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    EngineOpt,
    LabelsOpt,
    SplitOpt,
    TtaOpt,
    command_line,
)


@command("compare")
def compare(
    model_a: Annotated[Path, typer.Argument(help="First model file (.pt or .onnx).")],
    model_b: Annotated[Path, typer.Argument(help="Second model file, on the same patches.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", metavar="DATA", help="Labelled patches neither model trained on."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder to create: compare.json, roc.png, predictions.csv."
        ),
    ],
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    tta: TtaOpt = "d4",
    threshold: Annotated[
        str | None,
        typer.Option(help="0.5, youden or sens:0.95 for both (default: each model's own)."),
    ] = None,
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Compare two models: paired AUC difference (DeLong), McNemar at the thresholds, ROC plot."""
    from histoscan.compare import compare_models
    from histoscan.data.sources import open_source
    from histoscan.predict import Predictor

    source = open_source(data, labels=labels, split=split)
    source.require_clean()
    # --engine picks how a .pt model runs; an .onnx file runs on the engine it is made for
    a, b = (
        Predictor.load(
            m,
            engine="auto" if m.suffix == ".onnx" else engine,
            device=device,
            batch_size=batch_size,
        )
        for m in (model_a, model_b)
    )
    r = compare_models(
        a,
        b,
        source,
        out,
        tta=tta,
        threshold=threshold,
        progress=not quiet,
        command=command_line(
            "compare",
            model_a,
            model_b,
            data=data,
            out=out,
            labels=labels,
            split=split,
            tta=tta,
            threshold=threshold,
            engine=None if engine == "auto" else engine,
        ),
    )
    d, m = r["auc_difference"], r["mcnemar"]
    typer.echo(
        f"{r['n']:,} held-out patches ({r['n_seen_in_training']:,} seen in training left out): "
        f"AUC A {r['models']['a']['roc_auc']:.4f}, B {r['models']['b']['roc_auc']:.4f}, "
        f"A - B {d['a_minus_b']:+.4f} (95% CI {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}, "
        f"DeLong p = {d['p_value']:.3g}); McNemar: only A right {m['only_a_right']}, only B "
        f"right {m['only_b_right']}, p = {m['p_value']:.3g}. Written to {out}"
    )
