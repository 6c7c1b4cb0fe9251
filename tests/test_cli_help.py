"""Every command's --help: worded placeholders, help text on every option, one naming scheme."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from histoscan.cli import app
from histoscan.cli.options import TTA_RULE

runner = CliRunner()
GROUP = typer.main.get_command(app)
NAMES = sorted(GROUP.commands)  # type: ignore[attr-defined]


def options_of(name: str) -> dict[str, Any]:
    """Option string (--out, -o) -> its typer parameter."""
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    return {o: p for p in command.params if p.param_type_name == "option" for o in p.opts}


def arguments_of(name: str) -> list[Any]:
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    return [p for p in command.params if p.param_type_name == "argument"]


# where the output is a probability per patch TTA defaults to d4; where it is a map, to none
TTA_DEFAULT = {"predict": "d4", "evaluate": "d4", "report": "d4", "compare": "d4", "serve": "d4"}
TTA_DEFAULT |= {"slide": "none", "explain": "none", "embed": "none"}


def help_text(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_version_prints_the_package_version():
    from histoscan import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"histoscan {__version__}"


def test_every_command_is_listed_with_a_summary():
    text = help_text()
    for name in NAMES:
        assert re.search(rf"│ {re.escape(name)}\s+\S", text), name
    assert "compare" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_help_reads_as_words(name: str):
    text = help_text(name)
    # no Python type names (<bool>, <path>, <list[Path]>) and no lower-case {data}
    assert not re.search(r"<[a-z][^>]*>", text), text
    assert not re.search(r"\{[a-z_]+\}", text), text
    command = GROUP.commands[name]  # type: ignore[attr-defined]
    assert command.help and command.help.strip()
    for param in set(options_of(name).values()):
        if param.name == "help" or param.hidden:
            continue
        assert param.help and len(param.help) > 8, f"{name} {param.opts}: no help text"
        numeric = param.type_descriptor.annotation in (int, float)
        if numeric and param.default is None:  # say what happens without it
            assert "default" in param.help.lower(), f"{name} {param.opts}: default not stated"
    for param in arguments_of(name):
        assert param.metavar and param.metavar.isupper(), f"{name} {param.name}"


@pytest.mark.parametrize("name", NAMES)
def test_one_naming_scheme(name: str):
    options = options_of(name)
    arguments = arguments_of(name)
    assert "--output" not in options, f"{name}: --out, not --output"
    if "-o" in options:
        assert "--out" in options["-o"].opts
    if "--model" in options:  # a model FILE everywhere; train names an architecture --arch
        assert options["--model"].type_descriptor.annotation is Path, name
    if "--data" in options or any(a.name == "data" for a in arguments):
        # data is positional wherever one data set is read (ensemble and compare read models)
        assert name in ("ensemble", "compare") or any(a.name == "data" for a in arguments), name
    if "--tta" in options:
        tta = options["--tta"]
        assert TTA_RULE in tta.help, f"{name}: --tta help does not state the rule"
        assert tta.default == TTA_DEFAULT[name], f"{name}: default {tta.default}"


def test_train_names_the_architecture_with_arch():
    options = options_of("train")
    assert "--arch" in options and "--model" not in options
