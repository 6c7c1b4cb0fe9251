"""The torch engine: eager PyTorch on cpu or cuda (channels_last, bf16 autocast where it pays)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from histoscan.data.transforms import dihedral
from histoscan.errors import ModelError
from histoscan.models.bundle import InferenceNet
from histoscan.models.engines import cpu_has_bf16

PRECISIONS = ("auto", "32", "fp32", "bf16")


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 when asked, or for ``auto`` where the hardware computes it natively."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose from auto, fp32 or bf16")
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``use_bf16``, else nothing (training uses this too)."""
    if use_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TorchEngine:
    """uint8 (B, H, W, 3) -> logits (B,) [, pooled features (B, D)] with eager PyTorch."""

    name = "torch"
    has_features = True

    def __init__(self, net: InferenceNet, device: str = "cpu", precision: str = "auto") -> None:
        self._device = torch.device(device)
        self.device = str(self._device)
        self._bf16 = use_bf16(self._device, precision)
        self.precision = "bf16" if self._bf16 else "fp32"
        self.net = net.eval().to(self._device, memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._bf16:
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run(self, images: np.ndarray, features: bool = False) -> tuple[np.ndarray, np.ndarray]:
        logits, out = self.run_views(images, [0], features)  # the identity view alone
        return logits[:, 0], out

    @torch.inference_mode()
    def run_views(
        self, images: np.ndarray, views: list[int], features: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each dihedral view made on the device from one copy of the batch: on a GPU the views
        cost nothing, where moving eight numpy copies over dominated d4 (1,722 img/s on an H200
        against 63,693 without TTA)."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(self._device)
        logits = torch.empty(len(images), len(views), dtype=torch.float64, device=self._device)
        out = np.zeros((len(images), 0), dtype=np.float32)
        with self._autocast():
            for j, k in enumerate(views):
                view = dihedral(x, k, dims=(1, 2)) if k else x
                if features and j == 0:
                    logits[:, j], feats = self.net.forward_with_features(view)
                    out = feats.float().cpu().numpy()
                else:
                    logits[:, j] = self.net(view)
        return logits.cpu().numpy(), out
