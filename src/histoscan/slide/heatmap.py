"""heatmap.png: tumour probability per tile over the slide thumbnail, read the way it is meant.

The colours cannot be mistaken for stain: H&E is pink, purple and blue-black, so the map runs
from yellow through orange to brown (matplotlib's YlOrBr without its near-white start), and no
low value is dark, purple or pink. Scored tiles below ``FLOOR`` are not coloured (the tissue
shows through under a light grey veil); tissue that was not scored (too little of it in the
tile) is hatched; glass is left as it is. A legend titled "tumour probability", a key to the
grey and the hatching, and a scale bar in millimetres go with it. Drawn on a matplotlib
``Figure`` without pyplot, so it is safe in a web service's threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histoscan.slide.tiling import TilePlan

FLOOR = 0.2  # probabilities below this are not coloured
ALPHA = 0.6
BELOW_FLOOR_RGBA = (0.55, 0.55, 0.55, 0.35)
UNSCORED_HATCH = "#1f4e79"
OUTLINE = "#00b4d8"  # tumour polygons: cyan, outside the map's colours and the stain's


def probability_cmap() -> Any:
    """The colour map over [FLOOR, 1]: YlOrBr from light yellow (0.25 of the way in) to brown."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base = colormaps["YlOrBr"]
    cmap = ListedColormap(base(np.linspace(0.25, 1.0, 256)), name="histoscan-p-tumor")
    return cmap.with_extremes(under=BELOW_FLOOR_RGBA, bad=(0, 0, 0, 0))


def render_heatmap(
    path: Path,
    thumbnail: np.ndarray,
    probs: np.ndarray,
    plan: TilePlan,
    scale: tuple[float, float],
    features: list[dict[str, Any]],
    title: str,
    unscored_tissue: np.ndarray | None = None,
) -> None:
    """Write the thumbnail with probabilities on top and the tumour regions outlined.

    Args:
        path: the PNG to write.
        thumbnail: uint8 (h, w, 3).
        probs: (n_rows, n_cols) p_tumor per tile, NaN where nothing was scored.
        plan: the tile grid.
        scale: level-0 pixels per thumbnail pixel along (x, y).
        features: tumour polygons in level-0 pixels (GeoJSON features), outlined.
        title: a line above the image.
        unscored_tissue: (n_rows, n_cols) bool, tiles with some tissue that were not scored.
    """
    from matplotlib import rc_context

    with rc_context({"hatch.color": UNSCORED_HATCH, "hatch.linewidth": 0.8}):
        _render(path, thumbnail, probs, plan, scale, features, title, unscored_tissue)


def _render(
    path: Path,
    thumbnail: np.ndarray,
    probs: np.ndarray,
    plan: TilePlan,
    scale: tuple[float, float],
    features: list[dict[str, Any]],
    title: str,
    unscored_tissue: np.ndarray | None,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = thumbnail.shape[:2]
    width_in = 9.0
    fig = Figure(figsize=(width_in, max(3.0, width_in * h / w)), dpi=120)
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
    cmap = probability_cmap()
    image = ax.imshow(
        np.ma.masked_invalid(probs),
        cmap=cmap,
        norm=Normalize(vmin=FLOOR, vmax=1.0),
        alpha=ALPHA,
        interpolation="nearest",
        extent=extent,
    )
    handles = [Patch(facecolor=BELOW_FLOOR_RGBA, label=f"scored, p < {FLOOR:g}")]
    if unscored_tissue is not None and unscored_tissue.any():
        ax.contourf(
            np.arange(plan.n_cols) * plan.stride_l0 / scale[0] + x0 + plan.stride_l0 / scale[0] / 2,
            np.arange(plan.n_rows) * plan.stride_l0 / scale[1] + y0 + plan.stride_l0 / scale[1] / 2,
            unscored_tissue.astype(float),
            levels=[0.5, 1.5],
            colors="none",
            hatches=["////"],
        )
        handles.append(
            Patch(
                facecolor="none", edgecolor=UNSCORED_HATCH, hatch="////", label="tissue, not scored"
            )
        )
    for feature in features:
        for ring in feature["geometry"]["coordinates"]:
            xy = np.asarray(ring) / np.asarray(scale)
            ax.plot(xy[:, 0], xy[:, 1], color=OUTLINE, linewidth=1.0)
    if features:
        handles.append(Patch(facecolor="none", edgecolor=OUTLINE, label="tumour region"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    _scale_bar(ax, plan.mpp0 * scale[0], w)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.01),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_ax = make_axes_locatable(ax).append_axes("right", size="3%", pad=0.1)
    bar = fig.colorbar(image, cax=bar_ax, extend="min", extendfrac=0.05)
    bar.solids.set_alpha(1.0)
    bar.set_label("tumour probability")
    fig.savefig(path, bbox_inches="tight")


def scale_bar_mm(width_mm: float) -> float:
    """A round length (1, 2 or 5 times a power of ten, in mm) near a fifth of ``width_mm``."""
    target = width_mm / 5
    power = 10.0 ** np.floor(np.log10(target))
    return float(max(s * power for s in (1, 2, 5) if s * power <= target))


def _scale_bar(ax: Any, um_per_px: float, width_px: int) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    px_per_mm = 1000.0 / um_per_px
    length = scale_bar_mm(width_px / px_per_mm)
    label = f"{length:g} mm"
    bar = AnchoredSizeBar(
        ax.transData,
        length * px_per_mm,
        label,
        "lower right",
        pad=0.4,
        color="black",
        frameon=True,
        size_vertical=max(1.0, width_px / 300),
    )
    bar.patch.set_alpha(0.7)
    ax.add_artist(bar)
