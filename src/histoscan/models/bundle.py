"""The model file: weights, preprocessing, calibration and the model card in one ``.pt``.

Loaded with ``torch.load(weights_only=True)``, so a model file can hold only tensors and plain
values, never code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoscan.errors import ModelError
from histoscan.io import atomic_file
from histoscan.models.registry import ModelSpec, create_model

FORMAT = "histoscan-model/1"
BUNDLED_NAME = "histocnn-pcam.pt"


def bundled_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("histoscan") / "weights" / BUNDLED_NAME))


class InferenceNet(nn.Module):
    """uint8 patches (B, H, W, 3) in, logits (B,) out: preprocessing lives inside the network."""

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.input_px = spec.input_px
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        x = (x - self.mean) / self.std
        if x.shape[-1] != self.input_px:
            x = nn.functional.interpolate(
                x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False
            )
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images)).squeeze(1)  # (B,)


@dataclass
class ModelFile:
    """A loaded model file."""

    spec: ModelSpec
    net: nn.Module
    temperature: float = 1.0
    threshold: float = 0.5
    val_logits: np.ndarray | None = None  # TTA logits on the validation split, for thresholds
    val_labels: np.ndarray | None = None
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def inference_net(self) -> InferenceNet:
        return InferenceNet(self.net, self.spec).eval()


def save_model_file(path: Path, mf: ModelFile) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    payload = {
        "format": FORMAT,
        "spec": mf.spec.to_dict(),
        "state_dict": {
            k: v.detach().float() if v.is_floating_point() else v
            for k, v in mf.net.state_dict().items()
        },
        "temperature": float(mf.temperature),
        "threshold": float(mf.threshold),
        "val_logits": None if mf.val_logits is None else torch.as_tensor(mf.val_logits).float(),
        "val_labels": None if mf.val_labels is None else torch.as_tensor(mf.val_labels).long(),
        "card": json.loads(json.dumps(mf.card, default=str)),  # plain values only
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_model_file(path: str | Path | None = None) -> ModelFile:
    """Load a model file (the bundled model when ``path`` is None)."""
    path = Path(path) if path is not None else bundled_model_path()
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a histoscan model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a histoscan model file (no {FORMAT} header)")
    spec = ModelSpec.from_dict(payload["spec"])
    net = create_model(spec.name, **spec.kwargs)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit model {spec.name} ({exc})") from exc
    net.eval()
    val_logits = payload.get("val_logits")
    val_labels = payload.get("val_labels")
    return ModelFile(
        spec=spec,
        net=net,
        temperature=float(payload.get("temperature", 1.0)),
        threshold=float(payload.get("threshold", 0.5)),
        val_logits=None if val_logits is None else val_logits.numpy(),
        val_labels=None if val_labels is None else val_labels.numpy(),
        card=payload.get("card") or {},
        path=path,
    )
