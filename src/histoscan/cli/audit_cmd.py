"""``histoscan audit``: an EDA and cleaning report (audit.html, audit.json, clean_manifest.csv)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import DataArg


@command("audit")
def audit(
    data: DataArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder to create: audit.html, audit.json, clean_manifest.csv."
        ),
    ],
    labels: Annotated[
        Path | None, typer.Option(help="id,label CSV for a plain image folder.")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="train/valid/test (PCam), train/test (Kaggle); several: train,test."),
    ] = None,
    tissue_saturation: Annotated[
        float, typer.Option(help="A pixel is tissue at this HSV saturation or more.")
    ] = 0.07,
    min_tissue: Annotated[
        float, typer.Option(help="Background-only below this tissue fraction (0: off).")
    ] = 0.02,
    black_max: Annotated[
        float, typer.Option(help="Near-black below this mean brightness, 0-255 (0: off).")
    ] = 35.0,
    white_min: Annotated[
        float, typer.Option(help="Near-white above this mean brightness (255: off).")
    ] = 245.0,
    blur_max: Annotated[
        float, typer.Option(help="Blurred below this variance of the Laplacian (0: off).")
    ] = 100.0,
    colour_max: Annotated[
        float,
        typer.Option(help="Colour outlier above this kNN-distance / median ratio (0: off)."),
    ] = 6.0,
    near_dup_bits: Annotated[
        int, typer.Option(help="Near-duplicate within this pHash Hamming distance (-1: off).")
    ] = 4,
    near_dup_grey: Annotated[
        float, typer.Option(help="... and 8x8 grey thumbnails within this many levels (0-255).")
    ] = 16.0,
    seed: Annotated[int, typer.Option(help="Seed for sample grids and CV folds.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Audit a patch set: what is in it, what predicts the label, what to clean."""
    from histoscan.audit import AuditConfig, open_audit_source, run_audit

    cfg = AuditConfig(
        tissue_saturation=tissue_saturation, min_tissue=min_tissue, black_max=black_max,
        white_min=white_min, blur_max=blur_max, colour_max=colour_max,
        near_dup_bits=near_dup_bits, near_dup_grey=near_dup_grey, seed=seed,
    )  # fmt: skip
    source = open_audit_source(data, labels, split)
    given = {"labels": labels, "split": split, "overwrite": overwrite or None}
    cmd = _command_line(data, out, given, cfg)
    result = run_audit(source, out, cfg, overwrite=overwrite, progress=not quiet, command=cmd)
    removed = int((~result.keep).sum())
    typer.echo(f"{len(source):,} patches audited, {removed:,} removed by cleaning")
    typer.echo(f"report written to {out / 'audit.html'}")


def _command_line(data: Path, out: Path, given: dict, cfg: object) -> str:
    """The command that reproduces this audit (options at their default left out)."""
    from dataclasses import fields

    words = ["histoscan", "audit", str(data), "--out", str(out)]
    for name, value in given.items():
        if value is True:
            words.append(f"--{name}")
        elif value is not None:
            words += [f"--{name}", str(value)]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value != f.default:
            words += [f"--{f.name.replace('_', '-')}", str(value)]
    return shlex.join(words)
