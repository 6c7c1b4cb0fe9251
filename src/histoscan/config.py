"""Settings as frozen dataclasses: defaults here, YAML overrides them, CLI flags override YAML."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from histoscan.errors import HistoscanError

PRECISIONS = ("auto", "32", "bf16", "16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


class ConfigError(HistoscanError, ValueError):
    """A setting of the wrong type or out of range, named with what is allowed."""


def _coerce(cls: type, obj: Any) -> None:
    """Check (and, for numbers written as text in YAML, convert) every field to its type."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if value is None and optional:
            continue
        converted = _convert(f.name, value, base)
        if converted is not value:
            object.__setattr__(obj, f.name, converted)


def _convert(name: str, value: Any, base: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        if base is int:
            if number != int(number):
                raise ConfigError(f"{name}: expected a whole number, got {value!r}")
            return int(number) if not isinstance(value, int) else value
        return number if not isinstance(value, float) else value
    if base is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # precision: 32 in YAML is a number
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected text, got {value!r}")
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied to float batches on the training device."""

    dihedral: bool = True  # the 8 rotations/flips: tissue has no orientation
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    hed_sigma: float = 0.03  # H&E stain jitter: per-channel scale noise in HED space
    hed_bias: float = 0.01
    blur_prob: float = 0.0
    shift_px: int = 4  # random translation; the label region stays in the centre 32x32

    def __post_init__(self) -> None:
        _coerce(AugmentConfig, self)
        for name in ("brightness", "contrast", "saturation", "hed_sigma", "hed_bias"):
            _check(0 <= getattr(self, name) <= 1, f"augment.{name}: must be between 0 and 1")
        _check(0 <= self.hue <= 0.5, "augment.hue: must be between 0 and 0.5")
        _check(0 <= self.blur_prob <= 1, "augment.blur_prob: a probability, between 0 and 1")
        _check(0 <= self.shift_px <= 32, "augment.shift_px: must be between 0 and 32 pixels")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, optimisation and scale-out."""

    model: str = "histocnn"
    pretrained: bool = False
    input_px: int | None = None  # None keeps the model's default input size
    epochs: int = 30
    max_minutes: float = 0  # a wall-clock budget: stop, and end the LR cosine, by then; 0 = none
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 disables the exponential moving average of weights
    val_fraction: float = 0.1
    group_col: str | None = None
    seed: int = 42  # weights, augmentation and batch order
    split_seed: int = 42  # the validation split, kept apart so ensemble members share it
    threads: int = 0  # torch CPU threads per process; 0 keeps torch's default
    precision: str = "auto"  # auto | 32 | bf16
    patience: int = 0  # early-stopping patience in epochs; 0 disables
    num_workers: int = 0
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    limit_train_batches: float = 1.0  # fraction (or count, if > 1) of batches per epoch
    limit_val_batches: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", _from_dict(AugmentConfig, self.augment))
        _coerce(TrainConfig, self)
        _check(self.epochs >= 1, f"epochs: must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size: must be at least 1, got {self.batch_size}")
        _check(self.lr > 0, f"lr: must be a positive number, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay: must be 0 or more, got {self.weight_decay}")
        _check(self.max_minutes >= 0, "max_minutes: must be 0 (no budget) or more")
        _check(self.warmup_epochs >= 0, "warmup_epochs: must be 0 or more")
        _check(0 <= self.label_smoothing < 1, "label_smoothing: must be in [0, 1)")
        _check(0 <= self.ema_decay < 1, "ema_decay: must be in [0, 1) (0 disables EMA)")
        _check(
            0 < self.val_fraction < 1,
            f"val_fraction: must be between 0 and 1 (exclusive), got {self.val_fraction}",
        )
        _check(self.input_px is None or 16 <= self.input_px <= 1024, "input_px: 16 to 1024")
        for name in ("threads", "patience", "num_workers"):
            _check(getattr(self, name) >= 0, f"{name}: must be 0 or more")
        for name in ("devices", "num_nodes"):
            _check(getattr(self, name) >= 1, f"{name}: must be at least 1")
        for name in ("limit_train_batches", "limit_val_batches"):
            _check(getattr(self, name) > 0, f"{name}: must be positive (a fraction or a count)")
        _check(
            self.precision in PRECISIONS,
            f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}",
        )
        _check(
            self.accelerator in ACCELERATORS,
            f"accelerator: {self.accelerator!r} is not one of {', '.join(ACCELERATORS)}",
        )
        _check(bool(self.model.strip()), "model: must name an architecture (histoscan models)")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of settings, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} settings: {', '.join(sorted(map(str, unknown)))}"
        )
    kwargs = {}
    for name, value in data.items():
        if name == "augment" and isinstance(value, dict):
            value = _from_dict(AugmentConfig, value)
        kwargs[name] = value
    return cls(**kwargs)


def load_train_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file (if any), then non-None overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{path}: not valid YAML{line}; fix or remove it") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings (name: value)")
        data.update(loaded)
    aug_over = overrides.pop("augment", None) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if aug_over:
        data["augment"] = {**data.get("augment", {}), **aug_over}
    try:
        return _from_dict(TrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
