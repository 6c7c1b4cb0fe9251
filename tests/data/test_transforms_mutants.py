"""Training augmentation with its randomness scripted: every operation checked against numpy.

Written to kill the mutants of ``histoscan/data/transforms.py`` (scripts/mutants.py). The module's
``torch`` is replaced by a stand-in whose ``rand``/``randint`` hand out chosen numbers (torch itself
is left alone), so each operation's effect is a line or two of numpy worked out here: a draw of 1
is the factor ``1 + s``, a draw of 0 is ``1 - s``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import skimage.color
import torch

import histoscan.data.transforms as transforms
from helpers import AUGMENT_OFF
from histoscan.config import AugmentConfig
from histoscan.data.transforms import Augment, random_dihedral


def config(**on: float) -> AugmentConfig:
    return AugmentConfig(**{**AUGMENT_OFF, **on})


class ScriptedTorch:
    """torch, except that rand and randint return the next scripted draw (uniform in [0, 1)).

    A draw broadcasts to the requested size, so a per-sample draw is given as (B, 1, 1, 1);
    randint maps u to ``low + floor(u * (high - low))``, as a uniform integer draw would. The
    device asked of every tensor made (None when left to torch's default) goes to ``devices``.
    """

    FACTORIES = ("zeros", "empty", "tensor")

    def __init__(self, *draws: object) -> None:
        self.draws = [np.asarray(d, dtype=np.float32) for d in draws]
        self.devices: list[object] = []

    def __getattr__(self, name: str) -> object:
        made = getattr(torch, name)
        if name not in self.FACTORIES:
            return made

        def make(*args: object, **kwargs: object) -> torch.Tensor:
            self.devices.append(kwargs.get("device"))
            return made(*args, **kwargs)

        return make

    def _next(self, size: tuple[int, ...], kwargs: dict) -> torch.Tensor:
        assert self.draws, "more random draws than scripted"
        self.devices.append(kwargs.get("device"))
        return torch.from_numpy(self.draws.pop(0)).expand(size).clone()

    def rand(self, *size: int, **kwargs: object) -> torch.Tensor:
        return self._next(size, kwargs)

    def randint(self, low: int, high: int, size: tuple[int, ...], **kwargs: object) -> torch.Tensor:
        u = self._next(size, kwargs).double()
        return (low + torch.floor(u * (high - low))).long()


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """script(*draws) installs a ScriptedTorch; afterwards every draw must have been used."""
    made: list[ScriptedTorch] = []

    def install(*draws: object) -> ScriptedTorch:
        fake = ScriptedTorch(*draws)
        monkeypatch.setattr(transforms, "torch", fake)
        made.append(fake)
        return fake

    yield install
    for fake in made:
        assert not fake.draws, "scripted draws left unused"


def per_sample(*u: float) -> np.ndarray:
    return np.array(u, dtype=np.float32).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


def augment(cfg: AugmentConfig, x: np.ndarray) -> np.ndarray:
    """Augment on a copy of x, with every warning an error (none should be raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Augment(cfg)(torch.from_numpy(x.astype(np.float32))).numpy()


def batch(b: int, h: int = 5, w: int = 6, low: float = 0.1, high: float = 0.6) -> np.ndarray:
    """(B, 3, H, W) of distinct values in [low, high], channels of different means."""
    n = b * 3 * h * w
    x = np.linspace(low, high, n).reshape(b, 3, h, w)
    return np.random.default_rng(0).permuted(x.ravel()).reshape(b, 3, h, w).astype(np.float32)


# --- numpy, by hand ------------------------------------------------------------------------------

GRID = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
FLIP_W = [[2, 1, 0], [5, 4, 3], [8, 7, 6]]
FLIP_H = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
TRANSPOSE = [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
ALL_THREE = [[8, 5, 2], [7, 4, 1], [6, 3, 0]]  # flip W, flip H (a half turn), then transpose


def mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Indices past either edge reflected, the edge pixel repeated: -1 -> 0, n -> n - 1."""
    i = np.where(i < 0, -1 - i, i)
    return np.where(i >= n, 2 * n - 1 - i, i)


def shift_by_hand(x: np.ndarray, sx: list[int], sy: list[int]) -> np.ndarray:
    """out[b, :, i, j] = x[b, :, i + sy[b], j + sx[b]], reflected at the edges."""
    _, _, h, w = x.shape
    out = np.empty_like(x)
    for n in range(len(x)):
        rows = mirror(np.arange(h) + sy[n], h)
        cols = mirror(np.arange(w) + sx[n], w)
        out[n] = x[n][:, rows][:, :, cols]
    return out


def stain_matrices() -> tuple[np.ndarray, np.ndarray]:
    """skimage's haematoxylin, eosin, DAB optical densities, rows scaled to unit length."""
    rgb_from_hed = skimage.color.rgb_from_hed.astype(np.float64)
    rgb_from_hed = rgb_from_hed / np.sqrt((rgb_from_hed**2).sum(axis=1, keepdims=True))
    return np.linalg.inv(rgb_from_hed), rgb_from_hed


def hed_by_hand(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift each sample's stain amounts; alpha, beta (B, 3)."""
    hed_from_rgb, rgb_from_hed = stain_matrices()
    pixels = x.astype(np.float64).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    od = -np.log(np.maximum(pixels, 1e-6))
    hed = od @ hed_from_rgb
    hed = hed * alpha[:, None, None, :] + beta[:, None, None, :]
    return np.exp(-(hed @ rgb_from_hed)).transpose(0, 3, 1, 2)


def rotation_about_grey(turns: float) -> np.ndarray:
    """Rodrigues: cos I + sin [n]x + (1 - cos) n n^T, n = (1, 1, 1) / sqrt 3."""
    t = 2 * np.pi * turns
    n = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    return np.cos(t) * np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * np.outer(n, n)


def hue_by_hand(x: np.ndarray, turns: list[float]) -> np.ndarray:
    return np.stack(
        [np.einsum("ij,jhw->ihw", rotation_about_grey(t), s) for t, s in zip(turns, x, strict=True)]
    )


def grey(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def blur_by_hand(x: np.ndarray) -> np.ndarray:
    """[1, 2, 1] x [1, 2, 1] / 16 over each channel; the edge mirrored without repeating it."""
    _, _, h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    weights = [1, 2, 1]
    out = np.zeros(x.shape)
    for di in range(3):
        for dj in range(3):
            out += weights[di] * weights[dj] * padded[:, :, di : di + h, dj : dj + w]
    return out / 16


# --- dihedral ------------------------------------------------------------------------------------


def test_random_dihedral_flips_width_height_then_transposes_per_sample(script) -> None:
    x = torch.tensor([[GRID, (np.array(GRID) + 10).tolist()]], dtype=torch.float32).repeat(
        5, 1, 1, 1
    )
    # flags: flip W, flip H, transpose; a draw of exactly 0.5 is "no"
    draws = np.array(
        [
            [0.0, 0.5, 0.9, 0.5, 0.1],  # flip W
            [0.5, 0.49, 0.9, 0.7, 0.2],  # flip H
            [0.9, 0.5, 0.1, 0.6, 0.3],  # transpose
        ]
    ).reshape(3, 5, 1, 1, 1)
    script(draws)
    out = random_dihedral(x)
    expected = [FLIP_W, FLIP_H, TRANSPOSE, GRID, ALL_THREE]
    for n, view in enumerate(expected):
        assert out[n, 0].tolist() == view
        assert out[n, 1].tolist() == (np.array(view) + 10).tolist()  # channels move together


def test_random_dihedral_draws_from_the_generator_it_is_given() -> None:
    x = torch.arange(16 * 2 * 4 * 4, dtype=torch.float32).view(16, 2, 4, 4)
    torch.manual_seed(123)  # the global generator must not be the one used
    out = random_dihedral(x, generator=torch.Generator().manual_seed(7)).numpy()
    flags = torch.rand(3, 16, generator=torch.Generator().manual_seed(7)).numpy() < 0.5
    assert flags.any(axis=1).all() and (~flags).any(axis=1).all()  # each flag both ways
    for n in range(16):
        view = x[n].numpy()
        if flags[0, n]:
            view = view[:, :, ::-1]
        if flags[1, n]:
            view = view[:, ::-1, :]
        if flags[2, n]:
            view = view.transpose(0, 2, 1)
        np.testing.assert_array_equal(out[n], view)


def test_augment_applies_the_random_dihedral_when_on(script) -> None:
    x = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 64
    script(np.array([[0.0, 1.0], [0.9, 0.9], [0.0, 0.9]]).reshape(3, 2, 1, 1, 1))
    out = augment(config(dihedral=True), x)
    np.testing.assert_array_equal(out[0], x[0][:, :, ::-1].transpose(0, 2, 1))
    np.testing.assert_array_equal(out[1], x[1])


# --- shift ---------------------------------------------------------------------------------------


def test_shift_moves_whole_pixels_and_reflects_at_the_edges(script) -> None:
    x = np.arange(3 * 3 * 5 * 7, dtype=np.float32).reshape(3, 3, 5, 7) / 315
    # draws u per (sample, axis); shift = -3 + floor(7 u): 0 -> -3, 0.999 -> 3, 0.5 -> 0, 0.3 -> -1
    script(np.array([[0.0, 0.999], [0.5, 0.3], [0.999, 0.0]]))
    out = augment(config(shift_px=3), x)
    np.testing.assert_array_equal(out, shift_by_hand(x, sx=[-3, 0, 3], sy=[3, -1, -3]))
    # the first sample written out: row i comes from row i + 3 (5 -> 4, 6 -> 3, 7 -> 2)
    assert out[0, 0, :, 3].tolist() == x[0, 0, [3, 4, 4, 3, 2], 0].tolist()


def test_shift_by_one_pixel_repeats_the_edge(script) -> None:
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) / 96
    script(np.array([[0.0, 0.5], [0.9, 0.0]]))  # shift = -1 + floor(3 u)
    out = augment(config(shift_px=1), x)
    np.testing.assert_array_equal(out[0, :, :, 0], x[0, :, :, 0])  # column -1 is column 0
    np.testing.assert_array_equal(out[0, :, :, 1:], x[0, :, :, :-1])
    np.testing.assert_array_equal(
        out[1, :, 0, :-1], x[1, :, 0, 1:]
    )  # the picture moves left and down
    np.testing.assert_array_equal(out[1, :, 1:, :-1], x[1, :, :-1, 1:])
    np.testing.assert_array_equal(out, shift_by_hand(x, sx=[-1, 1], sy=[0, -1]))


# --- H&E stain jitter ----------------------------------------------------------------------------


@pytest.mark.parametrize(("sigma", "bias"), [(0.2, 0.05), (0.2, 0.0), (0.0, 0.05)])
def test_hed_jitter_scales_and_shifts_stain_amounts(script, sigma: float, bias: float) -> None:
    x = batch(2, low=0.2, high=0.95)
    x[1, :, 0, 0] = 0.0  # a black pixel: its optical density is capped, not infinite
    u_alpha = np.array([[1.0, 0.0, 0.25], [0.5, 0.75, 1.0]])
    u_beta = np.array([[0.0, 1.0, 0.5], [0.9, 0.1, 0.0]])
    script(u_alpha.reshape(2, 3, 1, 1), u_beta.reshape(2, 3, 1, 1))
    out = augment(config(hed_sigma=sigma, hed_bias=bias), x)
    alpha = 1 + (2 * u_alpha - 1) * sigma
    beta = (2 * u_beta - 1) * bias
    expected = np.clip(hed_by_hand(x, alpha, beta), 0, 1)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(out - x).max() > 1e-3  # and the jitter did something


def test_hed_with_no_jitter_round_trips() -> None:
    x = batch(2, low=0.05, high=1.0)
    round_trip = Augment(config())._hed_jitter(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(round_trip, x, rtol=1e-4, atol=1e-6)


# --- colour jitter -------------------------------------------------------------------------------


def test_brightness_multiplies_by_one_plus_or_minus_s(script) -> None:
    x = batch(3)
    script(per_sample(1.0, 0.0, 0.75))
    out = augment(config(brightness=0.3), x)
    factors = np.array([1.3, 0.7, 1.15]).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(out, x * factors, rtol=1e-6)


def test_contrast_stretches_about_the_mean_of_each_image(script) -> None:
    x = batch(2)
    x[0, 0] += 0.3  # channel means differ: the mean is over channels and pixels together
    script(per_sample(0.0, 1.0))
    out = augment(config(contrast=0.4), x)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    factors = np.array([0.6, 1.4]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(out, (x - mean) * factors + mean, rtol=1e-5, atol=1e-6)
    assert out[0].mean() == pytest.approx(x[0].mean(), abs=1e-6)


def test_saturation_moves_each_pixel_away_from_its_luma_grey(script) -> None:
    x = batch(2)
    script(per_sample(1.0, 0.25))
    out = augment(config(saturation=0.5), x)
    g = grey(x)  # (B, 1, H, W)
    factors = np.array([1.5, 0.75]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(out, np.clip((x - g) * factors + g, 0, 1), rtol=1e-5, atol=1e-6)
    # one pixel by hand: r, g, b = 0.6, 0.2, 0.1 has grey 0.1794 + 0.1174 + 0.0114 = 0.3082
    pixel = np.array([0.6, 0.2, 0.1], dtype=np.float32).reshape(1, 3, 1, 1)
    script(per_sample(0.0))
    faded = augment(config(saturation=0.5), pixel).ravel()
    np.testing.assert_allclose(faded, [0.4541, 0.2541, 0.2041], atol=1e-6)


def test_a_third_of_a_turn_of_hue_sends_red_to_green_to_blue(script) -> None:
    rgb = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)  # a red, a green and a blue pixel
    script(per_sample(1.0, 1.0, 1.0))
    out = augment(config(hue=1 / 3), rgb).reshape(3, 3)
    np.testing.assert_allclose(out, [[0, 1, 0], [0, 0, 1], [1, 0, 0]], atol=1e-6)


def test_hue_rotates_about_the_grey_axis_by_up_to_hue_turns(script) -> None:
    x = batch(3)
    script(per_sample(1.0, 0.0, 0.6))
    out = augment(config(hue=0.1), x)
    expected = np.clip(hue_by_hand(x, [0.1, -0.1, 0.02]), 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_colour_jitter_runs_brightness_contrast_saturation_then_hue(script) -> None:
    x = batch(2, low=0.2, high=0.5)
    b, c, s, h = per_sample(1.0, 0.0), per_sample(0.0, 1.0), per_sample(1.0, 0.5), per_sample(0, 1)
    script(b, c, s, h)
    out = augment(config(brightness=0.2, contrast=0.3, saturation=0.4, hue=0.05), x)
    y = x.astype(np.float64) * np.array([1.2, 0.8]).reshape(2, 1, 1, 1)
    mean = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - mean) * np.array([0.7, 1.3]).reshape(2, 1, 1, 1) + mean
    g = grey(y)
    y = (y - g) * np.array([1.4, 1.0]).reshape(2, 1, 1, 1) + g
    y = np.clip(hue_by_hand(y, [-0.05, 0.05]), 0, 1)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)


# --- blur and the final clamp --------------------------------------------------------------------


def test_blur_smooths_the_drawn_samples_with_a_binomial_kernel(script) -> None:
    x = batch(4)
    script(per_sample(0.5, 0.49, 0.0, 0.9))  # blurred when the draw is below blur_prob
    out = augment(config(blur_prob=0.5), x)
    blurred = blur_by_hand(x)
    np.testing.assert_array_equal(out[[0, 3]], x[[0, 3]])
    np.testing.assert_allclose(out[[1, 2]], blurred[[1, 2]], rtol=1e-5, atol=1e-7)
    # a corner by hand: (x00 + x01 + x10 + x11) / 4, the mirrored row and column counted twice
    corner = x[1, 0, 0, 0] * 4 + x[1, 0, 0, 1] * 4 + x[1, 0, 1, 0] * 4 + x[1, 0, 1, 1] * 4
    assert out[1, 0, 0, 0] == pytest.approx(corner / 16, rel=1e-5)


def test_the_result_is_clamped_to_zero_and_one(script) -> None:
    x = np.array([0.05, 0.9, 0.5, 0.45], dtype=np.float32).reshape(1, 1, 2, 2).repeat(3, axis=1)
    script(per_sample(1.0), per_sample(1.0))  # brightness x 1.5, then contrast x 2 about 0.7125
    out = augment(config(brightness=0.5, contrast=1.0), x)
    y = x * 1.5
    y = (y - y.mean()) * 2 + y.mean()
    assert y.min() < 0 and y.max() > 1
    np.testing.assert_allclose(out, np.clip(y, 0, 1), rtol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


# --- the whole pipeline --------------------------------------------------------------------------


def test_forward_runs_dihedral_shift_stain_colour_blur_then_clamps(script) -> None:
    x = batch(2, h=6, w=6, low=0.15, high=0.85)
    dihedral_u = np.array([[0.9, 0.1], [0.9, 0.9], [0.0, 0.8]]).reshape(3, 2, 1, 1, 1)
    shift_u = np.array([[0.0, 0.7], [0.99, 0.3]])  # shift = -2 + floor(5 u)
    u_alpha, u_beta = np.full((2, 3, 1, 1), 1.0), np.full((2, 3, 1, 1), 0.0)
    colour = [per_sample(1.0, 0.0), per_sample(0.0, 1.0), per_sample(1.0, 0.0), per_sample(1, 0)]
    fake = script(dihedral_u, shift_u, u_alpha, u_beta, *colour, per_sample(0.2, 0.7))
    cfg = AugmentConfig(
        dihedral=True,
        shift_px=2,
        hed_sigma=0.1,
        hed_bias=0.02,
        brightness=0.1,
        contrast=0.2,
        saturation=0.3,
        hue=0.04,
        blur_prob=0.5,
    )
    out = augment(cfg, x)

    y = x.astype(np.float64).copy()
    y[1] = y[1][:, :, ::-1]  # sample 1: flip W only; sample 0: transposed
    y[0] = y[0].transpose(0, 2, 1)
    y = shift_by_hand(y, sx=[-2, 2], sy=[1, -1])
    y = hed_by_hand(y, np.full((2, 3), 1.1), np.full((2, 3), -0.02))
    y = y * np.array([1.1, 0.9]).reshape(2, 1, 1, 1)
    mean = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - mean) * np.array([0.8, 1.2]).reshape(2, 1, 1, 1) + mean
    g = grey(y)
    y = (y - g) * np.array([1.3, 0.7]).reshape(2, 1, 1, 1) + g
    y = hue_by_hand(y, [0.04, -0.04])
    y[0] = blur_by_hand(y[:1])[0]  # draw 0.2 < 0.5: sample 0 blurred, sample 1 not
    np.testing.assert_allclose(out, np.clip(y, 0, 1), rtol=1e-4, atol=1e-6)
    # every tensor made here names the batch's device (the CPU for the dihedral flags, where a
    # CPU generator draws them), none is left to the default device: on a GPU it would be wrong
    assert len(fake.devices) >= 12
    assert all(d is not None and torch.device(d) == torch.device("cpu") for d in fake.devices)


def test_augment_runs_on_the_batch_device_and_adds_nothing_to_a_checkpoint() -> None:
    """On the meta device any tensor made on the CPU by mistake meets the batch and fails."""
    cfg = AugmentConfig(shift_px=3, blur_prob=0.5, hue=0.1, hed_bias=0.05)
    module = Augment(cfg)
    assert module.state_dict() == {}
    x = torch.empty(2, 3, 8, 8, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = module.to("meta")(x)
    assert out.device.type == "meta" and out.shape == (2, 3, 8, 8)
