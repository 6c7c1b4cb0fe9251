"""Subcommands that train and use models: train, evaluate, predict, export-onnx."""

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
    train_help,
)


@command("train")
def train(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    arch: Annotated[
        str | None, typer.Option(help=train_help("model", "Architecture (see `histoscan models`)."))
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML preset, e.g. configs/cpu-small.yaml.")
    ] = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Audit manifest: train on kept ids only.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help=train_help("epochs", "Epochs at most."))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=train_help("batch_size", "Patches per training step."))
    ] = None,
    lr: Annotated[float | None, typer.Option(help=train_help("lr", "Peak learning rate."))] = None,
    input_px: Annotated[
        int | None,
        typer.Option(help=train_help("input_px", "Resize patches to this for the network.")),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--scratch",
            help=train_help("pretrained", "Start from ImageNet weights (torchvision models)."),
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help=train_help("val_fraction", "Share of patches held out for validation.")),
    ] = None,
    group_col: Annotated[
        str | None, typer.Option(help="Slide-id column: no slide on both sides.")
    ] = None,
    groups: Annotated[
        Path | None, typer.Option(help="CSV with id and the --group-col column.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=train_help("seed", "Seed for weights and augmentation."))
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help=train_help("precision", "auto, 32 or bf16."))
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help=train_help("patience", "Early-stopping patience in epochs (0: off).")),
    ] = None,
    num_workers: Annotated[
        int | None, typer.Option(help=train_help("num_workers", "DataLoader worker processes."))
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help=train_help("devices", "Processes/GPUs per node (DDP)."))
    ] = None,
    num_nodes: Annotated[
        int | None, typer.Option(help=train_help("num_nodes", "Machines (DDP)."))
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help=train_help("accelerator", "auto, cpu or gpu."))
    ] = None,
    limit_train_batches: Annotated[float | None, typer.Option(hidden=True)] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from RUN_DIR/checkpoints/last.ckpt.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start again in a run folder histoscan made, deleting it.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model; writes checkpoints, metrics, curves and RUN_DIR/model.pt."""
    from histoscan.config import load_train_config
    from histoscan.data.sources import open_source
    from histoscan.train import fit

    cfg = load_train_config(
        config,
        model=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        input_px=input_px,
        pretrained=pretrained,
        val_fraction=val_fraction,
        group_col=group_col,
        seed=seed,
        precision=precision,
        patience=patience,
        num_workers=num_workers,
        devices=devices,
        num_nodes=num_nodes,
        accelerator=accelerator,
        limit_train_batches=limit_train_batches,
    )
    source = open_source(data, labels=labels, split=split)
    model_path = fit(
        source,
        cfg,
        out,
        manifest=manifest,
        groups_csv=groups or labels,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    typer.echo(f"model written to {model_path}")


def _subset_indices(source, model_file, subset: str):  # type: ignore[no-untyped-def]
    """All patches, or only the model's recorded validation ids (never seen in training)."""
    import numpy as np

    from histoscan.errors import DataError

    if subset == "all":
        return np.arange(len(source))
    if subset != "val":
        raise DataError(f"unknown subset {subset!r} (all or val)")
    val_ids = set(model_file.card.get("val_ids") or [])
    idx = np.array([i for i, key in enumerate(source.ids) if key in val_ids], dtype=np.int64)
    if len(idx) == 0:
        raise DataError(f"{source.root}: none of the model's validation ids are in this data")
    return idx


@command("evaluate")
def evaluate(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and plots.")],
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    subset: Annotated[
        str, typer.Option(help="all, or val: only the model's validation ids.")
    ] = "all",
    tta: TtaOpt = "d4",
    threshold: Annotated[str | None, typer.Option(help="0.5, youden or sens:0.95.")] = None,
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an OUT folder an earlier evaluate made.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Metrics with a bootstrap CI, calibration before/after temperature scaling, and plots."""
    from rich.console import Console
    from rich.table import Table

    from histoscan.data.sources import open_source
    from histoscan.evaluate import evaluate_model
    from histoscan.predict import Predictor

    predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
    predictor.threshold(threshold)  # a bad rule is an error before any reading
    source = open_source(data, labels=labels, split=split)
    source.require_clean(need_labels=True)
    idx = _subset_indices(source, predictor.model_file, subset)
    result = evaluate_model(
        predictor,
        source,
        idx,
        out,
        tta=tta,
        threshold_rule=threshold,
        progress=not quiet,
        overwrite=overwrite,
    )
    run = predictor.describe()
    table = Table(
        title=f"{predictor.name} on {result['n_evaluated']} patches ({subset}), TTA {tta}, "
        f"{run['engine']} {run['precision']} on {run['device']}"
    )
    table.add_column("metric")
    table.add_column("calibrated", justify="right")
    table.add_column("before T", justify="right")
    cal, raw = result["calibrated"], result["uncalibrated"]
    lo, hi = cal["roc_auc_ci95"]
    table.add_row("ROC AUC (95% CI)", f"{cal['roc_auc']:.4f} ({lo:.4f}-{hi:.4f})", "same")
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "nll", "brier", "ece"):
        table.add_row(key, f"{cal[key]:.4f}", f"{raw[key]:.4f}")
    Console().print(table)
    typer.echo(f"metrics and plots written to {out}")


@command("predict")
def predict(
    data: DataArg,
    output: Annotated[Path, typer.Option("--out", "-o", help="CSV to write (id,label).")],
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    tta: TtaOpt = "d4",
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Add a prediction column (1 = tumour) at this threshold: a probability, "
            "'model' (the model's own), youden or sens:0.95 (default: none, Kaggle's two columns)."
        ),
    ] = None,
    engine: EngineOpt = "auto",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 256,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Tumour probabilities in Kaggle's submission format (id,label = probability)."""
    from histoscan.data.sources import open_source
    from histoscan.errors import DataError
    from histoscan.predict import Predictor, write_predictions

    predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
    cut = None
    if threshold is not None:  # a bad rule is an error before any reading
        cut = predictor.threshold(None if threshold == "model" else threshold)
    source = open_source(data, labels=labels, split=split, prefer_split="test")
    if len(source) == 0:
        raise DataError(f"{data}: no patches found")
    dup = [p for p in source.problems if p.kind == "duplicate id"]
    if dup:
        raise DataError(f"{dup[0]}; ids must be unique in a submission")
    probs = predictor.predict_source(source, tta=tta, progress=not quiet)
    extra = None if cut is None else {"prediction": (probs >= cut).astype(int).tolist()}
    write_predictions(output, source.ids, probs, extra=extra)
    at = "" if cut is None else f", prediction at threshold {cut:.4f}"
    typer.echo(f"{len(probs)} predictions{at} written to {output}")


@command("export-onnx")
def export_onnx_cmd(
    output: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    model: ModelOpt = None,
    int8: Annotated[
        bool, typer.Option(help="Static int8 quantization (needs --calibration).")
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Patches to calibrate int8 on; when they include the model's validation ids, "
            "the graph also refits its temperature on its own validation logits."
        ),
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="How many calibration patches.")] = 512,
) -> None:
    """Export a model (preprocessing and calibration included) to ONNX for onnxruntime.

    Save it beside the model as STEM.onnx (fp32) or STEM.int8.onnx and `predict --engine`
    picks it up; `auto` uses the int8 file when present on a CPU.
    """
    import numpy as np

    from histoscan.data.sources import atomic_write_bytes, open_source
    from histoscan.errors import DataError
    from histoscan.models.bundle import load_model_file
    from histoscan.models.export import export_onnx, quantize_onnx, recalibrate

    mf = load_model_file(model)
    data = export_onnx(mf)
    source = None
    if int8:
        if calibration is None:
            raise DataError("--int8 needs --calibration DATA (a few hundred real patches)")
        source = open_source(calibration)
        pick = np.random.default_rng(0).permutation(len(source))[:calibration_size]
        data = quantize_onnx(data, source.read_many(np.sort(pick)))
    elif calibration is not None:
        source = open_source(calibration)
    note = ""
    if source is not None:
        position = {key: i for i, key in enumerate(source.ids)}
        val_ids = mf.card.get("val_ids") or []
        found = [position[k] for k in val_ids if k in position]
        if val_ids and len(found) == len(val_ids) and (source.labels[found] >= 0).all():
            data = recalibrate(data, source.read_many(found), source.labels[found])
            note = ", temperature refitted on its own validation logits"
        else:
            note = ", temperature kept from the torch model (validation ids not in --calibration)"
    atomic_write_bytes(output, data)
    typer.echo(f"ONNX model written to {output}" + (" (int8" if int8 else " (fp32") + note + ")")


@command("models")
def models() -> None:
    """List the architectures that `train --model` accepts."""
    from histoscan.models.registry import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        typer.echo(f"{name:18s} input {spec.input_px}px  Grad-CAM layer {spec.target_layer}")


@command("ensemble")
def ensemble(
    members: Annotated[list[Path], typer.Argument(help="Model files of histocnn runs.")],
    data: Annotated[Path, typer.Option(help="The data they were trained on (for validation).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write.")],
    labels: LabelsOpt = None,
    name: Annotated[str | None, typer.Option(help="Name for the model card.")] = None,
    command_note: Annotated[
        str | None, typer.Option("--command", help="How the members were trained, for the card.")
    ] = None,
) -> None:
    """Average several models trained on one split into one calibrated model file."""
    from histoscan.data.sources import open_source
    from histoscan.finalize import build_ensemble

    extra = {"name": name, "command": command_note}
    mf = build_ensemble(
        members,
        open_source(data, labels=labels),
        out,
        extra_card={k: v for k, v in extra.items() if v},
    )
    typer.echo(
        f"ensemble of {len(members)} written to {out} "
        f"(validation AUC with D4 TTA {mf.card['val_auc_tta_d4']:.4f})"
    )


@command("card")
def card(
    model: ModelOpt = None,
    metrics: Annotated[Path | None, typer.Option(help="evaluate's metrics.json to add.")] = None,
) -> None:
    """Print a model's card (data, recipe, validation metrics) as Markdown."""
    import json

    from histoscan.models.bundle import load_model_file
    from histoscan.models.card import render_card

    evaluation = json.loads(metrics.read_text()) if metrics else None
    typer.echo(render_card(load_model_file(model), evaluation), nl=False)
