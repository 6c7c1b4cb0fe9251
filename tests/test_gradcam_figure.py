"""The Grad-CAM gallery a pathologist reads: a colour bar that says what the colours mean, and
under each overlay the share of the map inside the labelled centre, computed here by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from histoscan.explain import figures


def test_gallery_has_a_colour_bar_and_honest_centre_shares(monkeypatch: pytest.MonkeyPatch):
    shown: list[Any] = []

    def keep(fig: Any, dpi: int = 100) -> bytes:
        shown.append(fig)
        return b"png"

    monkeypatch.setattr(figures, "png_bytes", keep)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    maps = np.zeros((3, 96, 96), dtype=np.float32)
    maps[0, 32:64, 32:64] = 1.0  # all weight in the centre 32x32: 100 %
    maps[1, :48, :] = 1.0  # top half: rows 32-47 of the centre's columns 32-63 -> 16*32/(48*96)
    # map 2 is empty: no tumour evidence
    figures.gallery_png(images, maps, np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0]), ["TP"] * 3)
    (fig,) = shown
    axes = fig.get_axes()
    bars = [ax for ax in axes if "Grad-CAM weight" in ax.get_xlabel()]
    assert len(bars) == 1  # one colour bar, labelled with what 0 and 1 mean
    assert "0 no evidence, 1 most tumour" in bars[0].get_xlabel()
    labels = [
        ax.get_xlabel()
        for ax in axes
        if "centre" in ax.get_xlabel() or "no tumour" in ax.get_xlabel()
    ]
    share_top_half = 16 * 32 / (48 * 96)
    assert labels == [
        "100% in centre",
        f"{100 * share_top_half:.0f}% in centre",
        "no tumour evidence",
    ]
