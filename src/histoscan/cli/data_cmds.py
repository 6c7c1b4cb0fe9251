"""Subcommands for data: verify, prepare (packed store) and download (PCam from Zenodo)."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from histoscan.cli.app import command
from histoscan.cli.options import DataArg, LabelsOpt, QuietOpt, SplitOpt

if TYPE_CHECKING:
    from histoscan.data.verify import VerifyResult

SHOW_PROBLEMS = 20


@command("verify")
def verify(
    data: DataArg,
    hash_: Annotated[
        bool,
        typer.Option(
            "--hash", help="Check ids are the SHA-1 of the pixels (PCam: find duplicate pixels)."
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write every problem to this CSV (id,location,kind,detail)."),
    ] = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Decoding processes (default: 1, or one per CPU for large sets)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Check every patch and label; exit 0 only if nothing is wrong, 1 otherwise."""
    from histoscan.data.sources import open_source
    from histoscan.data.verify import verify_source, write_report

    source = open_source(data, labels=labels, split=split)
    result = verify_source(source, check_hash=hash_, workers=workers, progress=not quiet)
    _print_verify(result)
    if report is not None:
        write_report(result.problems, report)
        typer.echo(f"report written to {report}")
    if not result.ok:
        raise typer.Exit(1)


def _print_verify(result: VerifyResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"verified {result.description}", markup=False, soft_wrap=True)
    table = Table()
    table.add_column("check")
    table.add_column("count", justify="right")
    table.add_row("items checked", f"{result.checked:,}")
    table.add_row("positives", f"{result.positives:,}")
    table.add_row("negatives", f"{result.negatives:,}")
    if result.unlabelled:
        table.add_row("unlabelled", f"{result.unlabelled:,}")
    hashed = {"id": "ids = SHA-1 of pixels", "duplicates": "duplicate pixels (by SHA-1)"}
    if result.hash_mode:
        table.add_row(f"hashed: {hashed[result.hash_mode]}", f"{result.checked:,}")
    for kind, n in result.counts().items():
        table.add_row(f"[red]{kind}[/red]", f"[red]{n:,}[/red]")
    console.print(table)
    for problem in result.problems[:SHOW_PROBLEMS]:
        console.print(f"  {problem}", markup=False, soft_wrap=True)  # paths stay whole
    if len(result.problems) > SHOW_PROBLEMS:
        console.print(f"  ... and {len(result.problems) - SHOW_PROBLEMS:,} more (see --report)")
    if result.ok:
        console.print(f"[green]OK[/green]: no problems ({result.seconds:.1f} s)")
    else:
        n = len(result.problems)
        console.print(f"[red]{n:,} problem{'s' if n > 1 else ''}[/red] ({result.seconds:.1f} s)")


@command("prepare")
def prepare(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory to create.")],
    manifest: Annotated[
        Path | None,
        typer.Option(help="Audit manifest (id,...,keep): pack kept ids only."),
    ] = None,
    labels: LabelsOpt = None,
    split: SplitOpt = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an existing store (only a folder histoscan made)."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Decode every patch once into a packed store that training reads without decoding."""
    from histoscan.data.sources import open_source
    from histoscan.data.store import write_store

    source = open_source(data, labels=labels, split=split)
    start = time.perf_counter()
    store = write_store(
        source,
        out,
        manifest=manifest,
        overwrite=overwrite,
        progress=not quiet,
        inputs=[data, labels],
    )
    size_mb = sum(f.stat().st_size for f in store.root.iterdir()) / 1e6
    meta = store.meta
    typer.echo(
        f"wrote {meta['count']:,} patches ({meta['positives']:,} positive, "
        f"{meta['negatives']:,} negative, {meta['unlabelled']:,} unlabelled) to {store.root} "
        f"({size_mb:,.0f} MB) in {time.perf_counter() - start:.1f} s"
    )


class Downloadable(StrEnum):
    pcam = "pcam"


@command("download")
def download(
    what: Annotated[Downloadable, typer.Argument(help="What to download (only pcam for now).")],
    dest: Annotated[Path, typer.Option(help="Folder to download into.")],
    splits: Annotated[str, typer.Option(help="Comma-separated: train,valid,test.")] = (
        "train,valid,test"
    ),
    base_url: Annotated[
        str | None,
        typer.Option(help="Where the files are (default: Zenodo record 2546921)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download the official PatchCamelyon files (resumable, MD5-checked); ~7.7 GB for all."""
    from histoscan.data.download import ZENODO_URL, download_pcam

    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    paths = download_pcam(dest, wanted, base_url=base_url or ZENODO_URL, progress=not quiet)
    for path in paths:
        typer.echo(f"{path} ({path.stat().st_size / 1e6:,.1f} MB)")
    typer.echo(f"next: histoscan verify {dest} --split {wanted[0]}")
