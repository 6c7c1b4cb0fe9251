"""histoscan's command line: ``histoscan --help``."""

from histoscan.cli import (  # noqa: F401  (importing registers the subcommands)
    audit_cmd,
    compare_cmd,
    data_cmds,
    explain_cmds,
    model_cmds,
    serve_cmd,
    slide_cmd,
    slide_eval_cmd,
)
from histoscan.cli.app import app
from histoscan.cli.options import name_placeholders

name_placeholders(app)

__all__ = ["app"]
