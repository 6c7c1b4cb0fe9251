"""The typer app and the one wrapper every subcommand uses for errors and logging.

Heavy libraries (torch, h5py, openslide) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
    """Register a subcommand: user-facing errors become one line and exit code 2.

    An unexpected exception prints one line naming where its full traceback was logged, and
    exits 1; Ctrl-C and SIGTERM exit 130 (partial output is removed by ``histoscan.io``).
    """

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kw: Any) -> Any:
            import click

            from histoscan.errors import HistoscanError

            logging.basicConfig(level=logging.INFO, format="%(message)s")
            try:
                return func(*args, **kw)
            except (click.exceptions.Exit, click.exceptions.ClickException, click.Abort):
                raise
            except HistoscanError as exc:
                fail(str(exc))
            except KeyboardInterrupt:
                typer.secho("interrupted", fg="red", err=True)
                raise typer.Exit(130) from None
            except OSError as exc:
                fail(_os_error_line(exc), 2 if exc.filename or exc.errno == 28 else 1, exc)
            except MemoryError as exc:
                fail("out of memory: the input is too large for this machine", 1, exc)
            except Exception as exc:
                fail(f"unexpected {type(exc).__name__}: {_first_line(exc)}", 1, exc)

        app.command(name, **kwargs)(run)
        return func

    return wrap


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def _os_error_line(exc: OSError) -> str:
    """A file-system error as one line naming the file: disk full, no rights, no such file."""
    import errno

    from histoscan.io import output_error

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(output_error(exc.filename or "output", exc))
    if exc.filename is None:
        return exc.strerror or _first_line(exc)
    return f"{exc.filename}: {exc.strerror or _first_line(exc)}"


def log_traceback(exc: BaseException) -> Path | None:
    """Write ``exc``'s full traceback to a log file; return its path (None if nowhere writable)."""
    import os
    import tempfile
    import time
    import traceback

    text = "histoscan " + " ".join(sys.argv[1:]) + "\n\n"
    text += "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    for folder in (Path(state) / "histoscan" / "logs", Path(tempfile.gettempdir())):
        path = folder / f"histoscan-error-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return path
    return None


def fail(message: str, code: int = 2, exc: BaseException | None = None) -> NoReturn:
    """Print one error line (and, for an unexpected ``exc``, where its traceback went); exit."""
    if exc is not None and code != 2:
        where = log_traceback(exc)
        message += f" (full traceback in {where})" if where else ""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


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
