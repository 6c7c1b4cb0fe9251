"""Argument and option types shared by the subcommands, so each reads and helps the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataArg = Annotated[Path, typer.Argument(help="Patches: store, PCam HDF5, Kaggle root or folder.")]
LabelsOpt = Annotated[Path | None, typer.Option(help="id,label CSV for a plain image folder.")]
SplitOpt = Annotated[str | None, typer.Option(help="train/valid/test (PCam), train/test (Kaggle).")]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="Model file (default: bundled).")
]
QuietOpt = Annotated[bool, typer.Option(help="No progress bar.")]
