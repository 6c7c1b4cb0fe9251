"""Settings as frozen dataclasses: defaults here, YAML overrides them, CLI flags override YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


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


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
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
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        data.update(loaded)
    aug_over = overrides.pop("augment", None) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if aug_over:
        data["augment"] = {**data.get("augment", {}), **aug_over}
    return _from_dict(TrainConfig, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
