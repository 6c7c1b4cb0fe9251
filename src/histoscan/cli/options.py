"""Argument and option types shared by the subcommands, so each reads and helps the same way.

``name_placeholders(app)`` gives every parameter a placeholder in words (DATA, PATH, N, TEXT;
nothing after a flag) instead of typer's type names (``<bool>``, ``{data}``, ``<list[Path]>``).
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperOption
from typer.models import ArgumentInfo, ParameterInfo

DataArg = Annotated[
    Path, typer.Argument(help="Patches: store, PCam HDF5, Kaggle root or folder.", metavar="DATA")
]
LabelsOpt = Annotated[
    Path | None, typer.Option(help="id,label CSV for a plain image folder.", metavar="CSV")
]
SplitOpt = Annotated[str | None, typer.Option(help="train/valid/test (PCam), train/test (Kaggle).")]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Model file (default: bundled).", metavar="MODEL"),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to create.", metavar="PATH")]
QuietOpt = Annotated[bool, typer.Option(help="No progress bar.")]
EngineOpt = Annotated[
    str, typer.Option(help="auto (int8 ONNX > fp32 ONNX > torch), torch, onnx or onnx-int8.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Patches per forward pass.")]

TTA_RULE = (
    "Default: d4 where the output is a probability per patch (predict, evaluate, report, compare,"
    " serve), none where it is a picture or map (slide, explain, embed)."
)
TtaOpt = Annotated[
    str,
    typer.Option(
        metavar="none|flip|d4",
        help=f"Test-time augmentation: none, flip or d4 (8 views). {TTA_RULE}",
    ),
]


def train_help(field: str, text: str) -> str:
    """Help for a train option that overrides a TrainConfig field, with the field's default."""
    import dataclasses

    from histoscan.config import TrainConfig

    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[field]
    shown = "the model's own" if default is None else default
    return f"{text} (default: {shown}, or the --config file's)"


def command_line(*words: object, **options: object) -> str:
    """The command as a user would retype it: words, then each option that is set (not None or
    False); ``tta="d4"`` -> ``--tta d4``, ``quiet=True`` -> ``--quiet``. Shell-quoted."""
    import shlex

    parts = ["histoscan", *map(str, words)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shlex.join(parts)


_WORDS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}


def _bare(annotation: Any) -> Any:
    """``Path | None`` -> Path, ``Annotated[int, ...]`` -> int."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    return annotation


def _placeholder(name: str, annotation: Any, is_argument: bool) -> str | None:
    kind = _bare(annotation)
    many = typing.get_origin(kind) is list
    if many:
        kind = _bare(typing.get_args(kind)[0])
    if is_argument:
        return name.rstrip("_").upper()  # typer adds "..." when it takes several
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(str(member.value) for member in kind)
    word = _WORDS.get(kind)
    if word is None:
        return None
    return f"{word}..." if many and word else word


def _no_type_for_flags(self: Any, ctx: Any) -> str | None:
    """A flag takes no value, so its help shows no placeholder (typer would print ``<bool>``)."""
    if self.metavar is not None:
        return self.metavar
    return "" if self.is_flag else _option_type_rich(self, ctx)


def _no_type_for_arguments(self: Any, ctx: Any) -> str | None:
    """An argument's name (DATA, SLIDE) already says what it is; no ``<path>`` beside it."""
    return None


_option_type_rich = TyperOption.display_type_rich


def name_placeholders(app: typer.Typer) -> None:
    """Set a worded metavar on every parameter of every registered command that has none.

    Also stops typer (0.29) printing Python type names beside flags (``--help <bool>``) and
    arguments (``MEMBERS <list[Path]>``).
    """
    TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]
    TyperArgument.display_type_rich = _no_type_for_arguments  # type: ignore[method-assign]
    for info in app.registered_commands:
        func = info.callback
        if func is None:
            continue
        inner = inspect.unwrap(func)
        # resolve the string annotations once and keep the objects, so the metavars set here are
        # the ones typer reads (each evaluation of a string annotation builds a new typer.Option)
        hints = typing.get_type_hints(inner, include_extras=True)
        inner.__annotations__ = hints
        for name, param in inspect.signature(func).parameters.items():
            annotation = hints.get(name, param.annotation)
            infos = [
                m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, ParameterInfo)
            ]
            if isinstance(param.default, ParameterInfo):
                infos.append(param.default)
            for meta in infos:
                if meta.metavar is None:
                    word = _placeholder(name, annotation, isinstance(meta, ArgumentInfo))
                    if word is not None:
                        meta.metavar = word
