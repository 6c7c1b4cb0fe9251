"""Dihedral views and training augmentation, checked against the geometry written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import AUGMENT_OFF
from histoscan.config import AugmentConfig
from histoscan.data.transforms import HED_FROM_RGB, RGB_FROM_HED, Augment, dihedral, random_dihedral
from histoscan.data.views import Tta, dihedral_hwc, parse_tta, tta_views

# a 3x3 patch whose pixels are all different, one channel: easy to write the views by hand
GRID = np.arange(9).reshape(1, 3, 3, 1)
BY_HAND = [
    [[0, 1, 2], [3, 4, 5], [6, 7, 8]],  # 0: identity
    [[2, 5, 8], [1, 4, 7], [0, 3, 6]],  # 1: a quarter turn (np.rot90 direction)
    [[8, 7, 6], [5, 4, 3], [2, 1, 0]],  # 2: half turn
    [[6, 3, 0], [7, 4, 1], [8, 5, 2]],  # 3: three quarters
    [[2, 1, 0], [5, 4, 3], [8, 7, 6]],  # 4: mirror left-right
    [[0, 3, 6], [1, 4, 7], [2, 5, 8]],  # 5: mirror, then a quarter turn (transpose)
    [[6, 7, 8], [3, 4, 5], [0, 1, 2]],  # 6: mirror, half turn (upside down)
    [[8, 5, 2], [7, 4, 1], [6, 3, 0]],  # 7: mirror, three quarters (anti-transpose)
]


@pytest.mark.parametrize("k", range(8))
def test_each_view_is_the_hand_written_one(k: int) -> None:
    assert dihedral_hwc(GRID, k)[0, :, :, 0].tolist() == BY_HAND[k]
    chw = torch.from_numpy(GRID.transpose(0, 3, 1, 2).copy())  # (1, 1, 3, 3)
    assert dihedral(chw, k)[0, 0].tolist() == BY_HAND[k]


def test_the_eight_views_are_the_whole_dihedral_group() -> None:
    views = {tuple(dihedral_hwc(GRID, k).ravel()) for k in range(8)}
    assert len(views) == 8  # all distinct: no view repeated, none missing
    assert dihedral_hwc(GRID, 0).flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match="dihedral view 8"):
        dihedral_hwc(GRID, 8)
    with pytest.raises(ValueError, match="dihedral view -1"):
        dihedral_hwc(GRID, -1)


def test_tta_modes_name_their_views() -> None:
    assert tta_views("none") == [0]
    assert tta_views("flip") == [0, 4]
    assert tta_views(Tta.d4) == list(range(8))
    assert parse_tta("d4") is Tta.d4 and str(Tta.flip) == "flip"
    with pytest.raises(ValueError, match="unknown TTA mode 'sideways'; choose from none, flip, d4"):
        tta_views("sideways")


def test_random_dihedral_gives_one_of_the_eight_views_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.arange(9.0).view(1, 1, 3, 3).repeat(64, 1, 1, 1)
    out = random_dihedral(x)
    allowed = {tuple(np.array(v).ravel().tolist()) for v in BY_HAND}
    seen = {tuple(o.ravel().int().tolist()) for o in out}
    assert seen <= allowed and len(seen) >= 6  # 64 draws cover most of the 8


def test_hed_matrices_are_inverse_and_unit_rows() -> None:
    eye = RGB_FROM_HED @ HED_FROM_RGB
    assert torch.allclose(eye, torch.eye(3), atol=1e-5)
    assert torch.allclose(RGB_FROM_HED.norm(dim=1), torch.ones(3), atol=1e-6)


def test_augment_with_everything_off_is_the_identity() -> None:
    off = AugmentConfig(**AUGMENT_OFF)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(Augment(off)(x.clone()), x)


def test_augment_stays_in_range_and_changes_the_batch() -> None:
    torch.manual_seed(1)
    x = torch.rand(8, 3, 32, 32)
    out = Augment(AugmentConfig(blur_prob=0.5))(x.clone())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)


def test_hue_rotation_keeps_grey_and_a_full_turn_is_identity() -> None:
    grey = torch.full((2, 3, 4, 4), 0.4)
    turned = Augment._hue_rotate(grey, torch.tensor([0.3, -0.2]))
    assert torch.allclose(turned, grey, atol=1e-6)
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(Augment._hue_rotate(x, torch.tensor([1.0, 0.0])), x, atol=1e-5)


@pytest.mark.parametrize("k", range(8))
def test_rgb_views_whole_pixels_strided_input_and_torch_on_hwc(k: int) -> None:
    """Three channels that differ stay together: the fast whole-pixel copy of a contiguous batch,
    the byte copy of a strided one and torch's views on (N, H, W, 3) all give the written view."""
    rgb = np.stack([GRID[..., 0], GRID[..., 0] + 10, GRID[..., 0] + 20], axis=-1).astype(np.uint8)
    rgb = np.concatenate([rgb, rgb + 100])  # (2, 3, 3, 3): two patches
    expected = np.array(BY_HAND[k])
    strided = np.ascontiguousarray(rgb[..., ::-1])[..., ::-1]  # same pixels, not contiguous
    assert not strided.flags.c_contiguous
    for images in (rgb, strided):
        out = dihedral_hwc(images, k)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 3, 3) and out.flags.c_contiguous
        for n, base in enumerate((0, 100)):
            for c in range(3):
                assert out[n, :, :, c].tolist() == (expected + base + 10 * c).tolist()
    hwc = dihedral(torch.from_numpy(rgb), k, dims=(1, 2)).numpy()
    np.testing.assert_array_equal(hwc, dihedral_hwc(rgb, k))
