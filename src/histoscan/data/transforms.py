"""Batch transforms on tensors: dihedral views for TTA, and training augmentation for H&E.

Augmentation runs on whole float batches (B, 3, H, W) in [0, 1] on the training device, which is
much faster than per-image PIL transforms for 96x96 patches. Settings go to ``__init__``, data to
``__call__`` (MONAI style).
"""

from __future__ import annotations

import torch
from torch import nn

from histoscan.config import AugmentConfig
from histoscan.data.views import TTA_VIEWS, tta_views  # noqa: F401  (re-exported)

# skimage.color.rgb_from_hed: optical density of haematoxylin, eosin and DAB, one row each
RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
RGB_FROM_HED = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def dihedral(x: torch.Tensor, k: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms (k in 0..7) on two square dimensions (H, W).

    The same views as ``histoscan.data.views.dihedral_hwc``, which is ``dims=(1, 2)`` on
    (N, H, W, 3) patches.
    """
    if k >= 4:
        x = x.flip(dims[1])
    return torch.rot90(x, k % 4, dims=dims)


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random dihedral transform per sample of (B, C, H, W), H == W."""
    b = x.shape[0]
    flags = torch.rand(3, b, 1, 1, 1, generator=generator, device="cpu").to(x.device) < 0.5
    x = torch.where(flags[0], x.flip(-1), x)
    x = torch.where(flags[1], x.flip(-2), x)
    return torch.where(flags[2], x.transpose(-2, -1), x)


def _rand(b: int, scale: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(b, 1, 1, 1, device=device) * 2 - 1) * scale  # (B, 1, 1, 1) in [-s, s]


class Augment(nn.Module):
    """Dihedral, shifts, colour and H&E stain jitter, optional blur; (B, 3, H, W) in [0, 1]."""

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("hed_from_rgb", HED_FROM_RGB.clone(), persistent=False)
        self.register_buffer("rgb_from_hed", RGB_FROM_HED.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.dihedral:
            x = random_dihedral(x)
        if cfg.shift_px:
            x = self._shift(x, cfg.shift_px)
        if cfg.hed_sigma or cfg.hed_bias:
            x = self._hed_jitter(x)
        x = self._colour_jitter(x)
        if cfg.blur_prob:
            x = self._blur(x)
        return x.clamp_(0.0, 1.0)

    def _shift(self, x: torch.Tensor, max_px: int) -> torch.Tensor:
        b, _, h, w = x.shape
        shifts = torch.randint(-max_px, max_px + 1, (b, 2), device=x.device).float()
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = 1
        theta[:, 1, 1] = 1
        theta[:, 0, 2] = shifts[:, 0] * 2 / w
        theta[:, 1, 2] = shifts[:, 1] * 2 / h
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return nn.functional.grid_sample(
            x, grid, mode="nearest", padding_mode="reflection", align_corners=False
        )

    def _hed_jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        od = -torch.log(x.clamp(min=1e-6))  # optical density, (B, 3, H, W)
        hed = torch.einsum("bchw,cd->bdhw", od, self.hed_from_rgb)
        alpha = 1 + (torch.rand(b, 3, 1, 1, device=x.device) * 2 - 1) * self.cfg.hed_sigma
        beta = (torch.rand(b, 3, 1, 1, device=x.device) * 2 - 1) * self.cfg.hed_bias
        hed = hed * alpha + beta
        od = torch.einsum("bdhw,dc->bchw", hed, self.rgb_from_hed)
        return torch.exp(-od)

    def _colour_jitter(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, dev = x.shape[0], x.device
        if cfg.brightness:
            x = x * (1 + _rand(b, cfg.brightness, dev))
        if cfg.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (1 + _rand(b, cfg.contrast, dev)) + mean
        if cfg.saturation:
            grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = (x - grey) * (1 + _rand(b, cfg.saturation, dev)) + grey
        if cfg.hue:
            x = self._hue_rotate(x, _rand(b, cfg.hue, dev))
        return x

    @staticmethod
    def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        # rotation about the grey axis in RGB: a cheap, differentiable hue shift
        angle = turns.view(-1) * 2 * torch.pi
        cos, sin = torch.cos(angle), torch.sin(angle)
        k = 1 / 3
        sq = (1 / 3) ** 0.5
        m = torch.empty(x.shape[0], 3, 3, device=x.device)
        a = cos + (1 - cos) * k
        bb = k * (1 - cos) - sq * sin
        c = k * (1 - cos) + sq * sin
        m[:, 0] = torch.stack([a, bb, c], 1)
        m[:, 1] = torch.stack([c, a, bb], 1)
        m[:, 2] = torch.stack([bb, c, a], 1)
        return torch.einsum("bij,bjhw->bihw", m, x)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.cfg.blur_prob).float()
        kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        kernel = (kernel[:, None] * kernel[None, :]) / 16
        kernel = kernel.expand(3, 1, 3, 3)
        blurred = nn.functional.conv2d(
            nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=3
        )
        return mask * blurred + (1 - mask) * x
