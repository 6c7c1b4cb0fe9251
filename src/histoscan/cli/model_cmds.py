"""Subcommands that train and use models: train, evaluate, predict, export-onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from histoscan.cli.app import command

DataArg = Annotated[Path, typer.Argument(help="Patches: store, PCam HDF5, Kaggle root or folder.")]
LabelsOpt = Annotated[Optional[Path], typer.Option(help="id,label CSV for a plain image folder.")]
SplitOpt = Annotated[Optional[str], typer.Option(help="train/valid/test (PCam), train/test (Kaggle).")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help="Model file (default: bundled).")]


@command("train")
def train(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    model: Annotated[Optional[str], typer.Option(help="Architecture (see `histoscan models`).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML preset, e.g. configs/cpu-small.yaml.")] = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Audit manifest: train on kept ids only.")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option()] = None,
    input_px: Annotated[Optional[int], typer.Option(help="Resize patches to this for the network.")] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained/--scratch")] = None,
    val_fraction: Annotated[Optional[float], typer.Option()] = None,
    group_col: Annotated[Optional[str], typer.Option(help="Slide-id column: no slide on both sides.")] = None,
    groups: Annotated[Optional[Path], typer.Option(help="CSV with id and the --group-col column.")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, 32 or bf16.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience (epochs).")] = None,
    num_workers: Annotated[Optional[int], typer.Option()] = None,
    devices: Annotated[Optional[int], typer.Option(help="Processes/GPUs per node (DDP).")] = None,
    num_nodes: Annotated[Optional[int], typer.Option()] = None,
    accelerator: Annotated[Optional[str], typer.Option(help="auto, cpu or gpu.")] = None,
    limit_train_batches: Annotated[Optional[float], typer.Option(hidden=True)] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model; writes checkpoints, metrics, curves and RUN_DIR/model.pt."""
    from histoscan.config import load_train_config
    from histoscan.data.sources import open_source
    from histoscan.train import fit

    cfg = load_train_config(
        config, model=model, epochs=epochs, batch_size=batch_size, lr=lr, input_px=input_px,
        pretrained=pretrained, val_fraction=val_fraction, group_col=group_col, seed=seed,
        precision=precision, patience=patience, num_workers=num_workers, devices=devices,
        num_nodes=num_nodes, accelerator=accelerator, limit_train_batches=limit_train_batches,
    )
    source = open_source(data, labels=labels, split=split)
    model_path = fit(source, cfg, out, manifest=manifest, groups_csv=groups or labels,
                     resume=resume, progress=not quiet)
    typer.echo(f"model written to {model_path}")
