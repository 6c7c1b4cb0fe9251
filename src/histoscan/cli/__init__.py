"""histoscan's command line: ``histoscan --help``."""

from histoscan.cli import model_cmds  # noqa: F401  (registers subcommands)
from histoscan.cli.app import app

__all__ = ["app"]
