"""The heatmap's colours cannot be read as stain, and its scale bar is a round length in mm."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoscan.slide.heatmap import FLOOR, probability_cmap, render_heatmap, scale_bar_mm
from histoscan.slide.tiling import TilePlan


def hue_lightness(rgba: tuple[float, ...]) -> tuple[float, float]:
    h, lightness, _ = colorsys.rgb_to_hls(*rgba[:3])
    return h * 360, lightness


def test_colour_map_is_yellow_to_brown_never_purple_pink_or_dark_at_low_values() -> None:
    cmap = probability_cmap()
    for p in np.linspace(FLOOR, 1.0, 41):
        hue, lightness = hue_lightness(cmap((p - FLOOR) / (1 - FLOOR)))
        assert 15 <= hue <= 65, (p, hue)  # orange-yellow-brown: H&E is 270-350 (purple, pink)
        if p <= 0.6:
            assert lightness >= 0.5, (p, lightness)  # low values are light, never near black
    r, g, b, a = cmap(-0.1)  # below the floor: a grey veil
    assert r == g == b and a < 0.5
    assert cmap(np.nan)[3] == 0  # not scored: not drawn


@pytest.mark.parametrize(
    ("width_mm", "bar"), [(2.1, 0.2), (25.0, 5.0), (0.9, 0.1), (10.0, 2.0), (4.9, 0.5)]
)
def test_scale_bar_is_one_two_or_five_times_a_power_of_ten(width_mm: float, bar: float) -> None:
    assert scale_bar_mm(width_mm) == pytest.approx(bar)


def test_render_writes_a_png(tmp_path: Path) -> None:
    plan = TilePlan(0.5, 96, 96, 1, 2.0, 96, 2.0, 6, 4)
    probs = np.full((4, 6), np.nan)
    probs[1:3, 1:4] = [[0.1, 0.5, 0.9], [0.95, 0.3, 0.6]]
    unscored = np.zeros((4, 6), dtype=bool)
    unscored[0, 5] = True
    thumb = np.full((96, 144, 3), 235, dtype=np.uint8)
    render_heatmap(tmp_path / "h.png", thumb, probs, plan, (8.0, 8.0), [], "t", unscored)
    with Image.open(tmp_path / "h.png") as image:
        assert image.format == "PNG" and image.width > 400
