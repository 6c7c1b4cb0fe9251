"""heatmap.png: tumour probability per tile over the slide thumbnail, with a colour bar.

Drawn on a matplotlib ``Figure`` without pyplot, so it is safe in a web service's threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histoscan.slide.tiling import TilePlan

CMAP = "inferno"
ALPHA = 0.55


def render_heatmap(
    path: Path,
    thumbnail: np.ndarray,
    probs: np.ndarray,
    plan: TilePlan,
    scale: tuple[float, float],
    features: list[dict[str, Any]],
    title: str,
) -> None:
    """Write the thumbnail with probabilities on top and the tumour regions outlined.

    Args:
        path: the PNG to write.
        thumbnail: uint8 (h, w, 3).
        probs: (n_rows, n_cols) p_tumor per tile, NaN where nothing was scored (not drawn).
        plan: the tile grid.
        scale: level-0 pixels per thumbnail pixel along (x, y).
        features: tumour polygons in level-0 pixels (GeoJSON features), outlined.
        title: a line above the image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = thumbnail.shape[:2]
    width_in = 9.0
    fig = Figure(figsize=(width_in, max(2.5, width_in * h / w)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(thumbnail, interpolation="bilinear")
    # each tile's value covers the stride cell centred on it, in thumbnail pixels
    x0 = plan.cell_offset_l0 / scale[0]
    y0 = plan.cell_offset_l0 / scale[1]
    extent = (
        x0,
        x0 + plan.n_cols * plan.stride_l0 / scale[0],
        y0 + plan.n_rows * plan.stride_l0 / scale[1],
        y0,
    )
    image = ax.imshow(
        np.ma.masked_invalid(probs),
        cmap=CMAP,
        vmin=0.0,
        vmax=1.0,
        alpha=ALPHA,
        interpolation="nearest",
        extent=extent,
    )
    for feature in features:
        for ring in feature["geometry"]["coordinates"]:
            xy = np.asarray(ring) / np.asarray(scale)
            ax.plot(xy[:, 0], xy[:, 1], color="#00e5ff", linewidth=1.0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_ax = make_axes_locatable(ax).append_axes("right", size="3%", pad=0.1)
    bar = fig.colorbar(image, cax=bar_ax)  # exactly as tall as the image
    bar.solids.set_alpha(1.0)
    bar.set_label("p_tumor")
    fig.savefig(path, bbox_inches="tight")
