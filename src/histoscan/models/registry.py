"""One factory for every architecture: ``create_model(name) -> nn.Module`` giving logits (B, 1).

Each registered name carries its preprocessing (mean, std, input size) and the layer Grad-CAM
should look at, so nothing downstream guesses. Every model exposes ``forward_features`` (B, C, h, w)
and ``forward_head(features, pre_logits=False)`` as timm models do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from histoscan.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PCam patches are taken at 10x from 40x Camelyon16 scans: about 0.97 micrometres per pixel
PCAM_MPP = 0.972


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and feed it: stored in every model file."""

    name: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_px: int = 96  # patches are resized to this before the network when it differs
    patch_px: int = 96
    mpp: float = PCAM_MPP  # resolution the model was trained at, micrometres per pixel
    target_layer: str = ""  # module path for Grad-CAM
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        return cls(**data)


_BUILDERS: dict[str, Callable[..., Any]] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(pretrained: bool, **kwargs) -> nn.Module`` under spec.name."""

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[spec.name] = builder
        _SPECS[spec.name] = spec
        return builder

    return wrap


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_BUILDERS)


def model_spec(name: str, input_px: int | None = None) -> ModelSpec:
    """The registered spec for ``name``, with the input size overridden when given."""
    _load_builtin()
    if name not in _SPECS:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    spec = _SPECS[name]
    return dataclasses.replace(spec, input_px=input_px) if input_px else spec


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """Build a registered model returning logits (B, 1)."""
    spec = model_spec(name)
    return _BUILDERS[name](pretrained=pretrained, **{**spec.kwargs, **kwargs})


def _load_builtin() -> None:
    # importing the modules runs their @register_model decorators
    from histoscan.models import backbones, ensemble, histocnn  # noqa: F401
