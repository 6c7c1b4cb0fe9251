"""Batched inference with dihedral test-time augmentation, shared by train, predict and slide."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from histoscan.data.transforms import dihedral, tta_views


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX), so autocast pays off."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (or 'auto' and the hardware has fast bf16), else nothing."""
    use_bf16 = precision == "bf16" or (
        precision == "auto"
        and (
            (device.type == "cuda" and torch.cuda.is_bf16_supported())
            or (device.type == "cpu" and cpu_has_bf16())
        )
    )
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def tta_logits(
    net: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    tta: str = "d4",
    device: torch.device | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Mean logit over the TTA views for uint8 patches (N, H, W, 3) -> (N,).

    ``net`` maps uint8 (B, H, W, 3) to logits (B,), as ``InferenceNet`` does.
    """
    device = device or next(net.parameters()).device
    x = torch.as_tensor(images).to(device)
    views = tta_views(tta)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=device)
    with autocast_for(device, precision):
        for k in views:
            # the patches are (N, H, W, 3): transform the spatial dims, not the channels
            view = dihedral(x.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1) if k else x
            total += net(view).float()
    return (total / len(views)).cpu().numpy()
