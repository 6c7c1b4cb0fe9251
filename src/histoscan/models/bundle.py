"""The torch side of the model format: ``.pt`` weights and the network with preprocessing inside.

A ``.pt`` model file is loaded with ``torch.load(weights_only=True)``, so it can hold only tensors
and plain values, never code. Its metadata is ``ModelMeta`` (``models/modelfile.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoscan.errors import ModelError
from histoscan.io import atomic_file
from histoscan.models.modelfile import (
    FORMAT,
    ModelFile,
    ModelMeta,
    bundled_model_path,
    load_model_file,
)
from histoscan.models.registry import ModelSpec, create_model

__all__ = [
    "InferenceNet",
    "ModelFile",
    "bundled_model_path",
    "load_model_file",
    "load_pt",
    "save_model_file",
]


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

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,) and pooled pre-logit features (B, D) from one pass."""
        feats = self.net.forward_features(self.preprocess(images))  # (B, C, h, w)
        logits = self.net.forward_head(feats)[:, 0]  # (B,)
        return logits, self.net.forward_head(feats, pre_logits=True)  # (B, D)


class WithFeatures(nn.Module):
    """``InferenceNet.forward_with_features`` as ``forward``, for export with two outputs."""

    def __init__(self, net: InferenceNet) -> None:
        super().__init__()
        self.inner = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.forward_with_features(images)


def save_model_file(path: Path, model: ModelMeta | ModelFile, net: nn.Module | None = None) -> None:
    """Write a ``.pt`` model file atomically: a temporary file in the same folder, then rename.

    ``model`` is the metadata (with ``net``), or a ModelFile holding its network.
    """
    if isinstance(model, ModelFile):
        meta, net = model.meta, model.torch_net()
    else:
        meta = model
    if net is None:
        raise ValueError("save_model_file needs the network")
    data = meta.to_json()
    payload = {
        **{k: v for k, v in data.items() if k not in ("val_logits", "val_labels")},
        "state_dict": {
            k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
            for k, v in net.state_dict().items()
        },
        "val_logits": torch.as_tensor(np.asarray(meta.val_logits, dtype=np.float32)),
        "val_labels": torch.as_tensor(np.asarray(meta.val_labels, dtype=np.int64)),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def _read_payload(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a histoscan model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a histoscan model file (no {FORMAT} header)")
    return payload


def load_pt(path: Path) -> tuple[ModelMeta, nn.Module]:
    """Metadata and the plain network (eval mode) of a ``.pt`` model file."""
    payload = _read_payload(path)
    data = dict(payload)
    for key in ("val_logits", "val_labels"):
        value = payload.get(key)
        data[key] = [] if value is None else value.numpy().tolist()
    meta = ModelMeta.from_json(data, str(path))
    return meta, _build_net(path, meta.spec, payload["state_dict"])


def load_torch_weights(path: Path, spec: ModelSpec) -> nn.Module:
    """The plain network of a ``.pt`` model file."""
    return _build_net(path, spec, _read_payload(path)["state_dict"])


def _build_net(path: Path, spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    net = create_model(spec.name, **spec.kwargs)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit model {spec.name} ({exc})") from exc
    return net.eval()


def model_file_from_net(meta: ModelMeta, net: nn.Module, path: Path | None = None) -> ModelFile:
    """A ModelFile for a network held in memory (training, ensembles) before it is saved."""
    return ModelFile(meta=meta, path=path or Path("<memory>"), kind="pt", _net=net.eval())


def memory_model_file(spec: ModelSpec, net: nn.Module, **meta: Any) -> ModelFile:
    """``model_file_from_net`` from a spec and metadata fields (tests, notebooks)."""
    return model_file_from_net(ModelMeta(spec=spec, **meta), net)
