"""The typer app and the one wrapper every subcommand uses for errors and logging.

Heavy libraries (torch, h5py, openslide) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

app = typer.Typer(
    name="histoscan",
    help="Find metastatic cancer in H&E lymph-node patches and slides.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a subcommand whose user-facing errors become one line and exit code 2."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kw: Any) -> Any:
            from histoscan.errors import HistoscanError

            logging.basicConfig(level=logging.INFO, format="%(message)s")
            try:
                return func(*args, **kw)
            except HistoscanError as exc:
                typer.secho(f"error: {exc}", fg="red", err=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                typer.secho("interrupted", fg="red", err=True)
                raise typer.Exit(130) from None

        app.command(name, **kwargs)(run)
        return func

    return wrap


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    typer.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _print_version(value: bool) -> None:
    """Eager, so ``histoscan --version`` answers before typer asks for a command."""
    if value:
        from histoscan import __version__

        typer.echo(f"histoscan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Find metastatic cancer in H&E lymph-node patches and slides."""
