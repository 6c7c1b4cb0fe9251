"""The torch engine (``histoscan/models/torch_engine.py``) on a network whose every output is a
line of numpy: precision choice, device, logits, features and views on the device.

Written to kill the mutants of torch_engine.py (scripts/mutants.py).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import histoscan.models.torch_engine as torch_engine
from histoscan.errors import ModelError
from histoscan.models.bundle import InferenceNet
from histoscan.models.registry import ModelSpec
from histoscan.models.torch_engine import TorchEngine, autocast_for, use_bf16

SPEC = ModelSpec(name="histocnn", mean=(0.5, 0.25, 0.75), std=(0.2, 0.4, 0.1))
PX = 8


def position_map(seed: int = 0) -> np.ndarray:
    """(3, PX, PX) weights that differ at every pixel: every view gives a different logit."""
    return np.random.default_rng(seed).normal(0, 1, (3, PX, PX)).astype(np.float32)


class WeightedMean(nn.Module):
    """features = mean over pixels of (x * map) per channel (B, 3); logit = features . w + b."""

    def __init__(self, weights: np.ndarray, w: tuple[float, float, float], b: float) -> None:
        super().__init__()
        self.map = nn.Parameter(torch.from_numpy(weights)[None], requires_grad=False)
        self.fc = nn.Linear(3, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w]))
            self.fc.bias.fill_(b)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.map  # (B, 3, H, W)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = feats.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


W, B = (0.5, -1.0, 2.0), 0.25


def engine(precision: str = "fp32", seed: int = 0) -> TorchEngine:
    spec = ModelSpec(**{**SPEC.to_dict(), "input_px": PX, "patch_px": PX})
    return TorchEngine(InferenceNet(WeightedMean(position_map(seed), W, B), spec), "cpu", precision)


def by_hand(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N,), features (N, 3)) of uint8 (N, H, W, 3) patches, with numpy only."""
    x = images.astype(np.float64) / 255.0
    x = (x - np.array(SPEC.mean)) / np.array(SPEC.std)  # (N, H, W, 3)
    weights = position_map(seed).astype(np.float64).transpose(1, 2, 0)  # (H, W, 3)
    feats = (x * weights).mean(axis=(1, 2))  # (N, 3)
    return feats @ np.array(W) + B, feats


def patches(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, PX, PX, 3), dtype=np.uint8)


def test_precision_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert [use_bf16(cpu, p) for p in ("auto", "32", "fp32", "bf16")] == [
        False,
        False,
        False,
        True,
    ]
    assert use_bf16(cuda, "auto") is True and use_bf16(cuda, "fp32") is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: 0)
    assert use_bf16(cuda, "auto") is False  # a bool, whatever torch returns
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: True)
    assert use_bf16(cpu, "auto") is True
    assert use_bf16(cuda, "auto") is False  # a GPU without bf16 ignores the CPU's flags
    for bad in ("fp16", "AUTO", "", "16"):
        with pytest.raises(
            ModelError, match=rf"^unknown precision '{bad}'; choose from auto, fp32 or bf16$"
        ):
            use_bf16(cpu, bad)


def test_autocast_is_bf16_only_when_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: False)
    off = autocast_for(torch.device("cpu"), "auto")
    assert isinstance(off, contextlib.nullcontext)
    on = autocast_for(torch.device("cpu"), "bf16")
    assert isinstance(on, torch.autocast)
    with on:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_the_engine_describes_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: False)
    e = engine("auto")
    assert (e.name, e.device, e.precision, e.has_features) == ("torch", "cpu", "fp32", True)
    assert e.net.training is False
    assert engine("bf16").precision == "bf16"
    assert engine("32").precision == "fp32"


def test_logits_and_features_by_hand() -> None:
    e = engine()
    images = patches(5)
    expected, feats = by_hand(images)
    logits, none = e.run(images)
    assert logits.dtype == np.float64 and logits.shape == (5,)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert none.shape == (5, 0) and none.dtype == np.float32
    logits, got = e.run(images, features=True)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, feats, atol=1e-5)
    strided = np.ascontiguousarray(images[..., ::-1])[..., ::-1]  # same pixels, other strides
    np.testing.assert_allclose(e.run(strided)[0], expected, atol=1e-5)


def test_bf16_runs_under_autocast_and_stays_close() -> None:
    images = patches(6)
    expected, _ = by_hand(images)
    logits, feats = engine("bf16").run(images, features=True)
    assert logits.dtype == np.float64 and feats.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=0.1)
    exact = engine("fp32").run(images)[0]
    assert not np.array_equal(logits, exact)  # bf16 really ran: it rounds


def hand_view(images: np.ndarray, k: int) -> np.ndarray:
    """View k written out: mirror the width when k >= 4, then k % 4 quarter turns, where one
    turn puts in[j][W-1-i] at out[i][j] (np.rot90's direction)."""
    x = images[:, :, ::-1] if k >= 4 else images
    for _ in range(k % 4):
        x = x.transpose(0, 2, 1, 3)[:, ::-1]
    return x


def test_views_on_the_device_by_hand() -> None:
    e = engine()
    images = patches(4)
    views = [0, 1, 4, 6, 7]
    logits, feats = e.run_views(images, views, features=True)
    assert logits.dtype == np.float64 and logits.shape == (4, 5)
    for j, k in enumerate(views):
        np.testing.assert_allclose(logits[:, j], by_hand(hand_view(images, k))[0], atol=1e-5)
    np.testing.assert_allclose(feats, by_hand(images)[1], atol=1e-5)
    assert feats.dtype == np.float32
    logits, none = e.run_views(images, [3, 0])
    assert none.shape == (4, 0) and none.dtype == np.float32
    np.testing.assert_allclose(logits[:, 0], by_hand(hand_view(images, 3))[0], atol=1e-5)
    # features come from the first view asked for, whichever it is
    _, first = e.run_views(images, [2], features=True)
    np.testing.assert_allclose(first, by_hand(hand_view(images, 2))[1], atol=1e-5)


def test_bf16_views_run_under_autocast() -> None:
    images = patches(3)
    logits, _ = engine("bf16").run_views(images, [0, 5])
    exact, _ = engine("fp32").run_views(images, [0, 5])
    np.testing.assert_allclose(logits, exact, atol=0.1)
    assert not np.array_equal(logits, exact)


def test_defaults_and_where_the_weights_go(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(**{**SPEC.to_dict(), "input_px": PX, "patch_px": PX})
    monkeypatch.setattr(torch_engine, "cpu_has_bf16", lambda: True)
    plain = TorchEngine(InferenceNet(WeightedMean(position_map(), W, B), spec))
    assert (plain.device, plain.precision) == ("cpu", "bf16")  # cpu, auto by default
    weights = plain.net.net.map
    assert weights.is_contiguous(memory_format=torch.channels_last)
    assert not weights.is_contiguous()  # really re-laid out, not (1, 3, 8, 8) as made
    meta = TorchEngine(InferenceNet(WeightedMean(position_map(), W, B), spec), "meta", "fp32")
    assert meta.device == "meta" and meta.net.net.map.device.type == "meta"


def test_bf16_is_asked_for_whatever_autocast_defaults_to() -> None:
    """On CUDA, autocast without a dtype means float16: the engine must ask for bfloat16."""
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    try:
        assert autocast_for(torch.device("cpu"), "bf16").fast_dtype == torch.bfloat16
        assert engine("bf16")._autocast().fast_dtype == torch.bfloat16
    finally:
        torch.set_autocast_dtype("cpu", default)
