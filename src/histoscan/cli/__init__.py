"""histoscan's command line: ``histoscan --help``."""

from histoscan.cli import audit_cmd, data_cmds, model_cmds  # noqa: F401  (registers subcommands)
from histoscan.cli.app import app

__all__ = ["app"]
