"""Figures for explanations and embeddings, returned as PNG bytes (files and HTML both use them)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from histoscan.explain.gradcam import centre_box, centre_fraction, overlay

CASE_TITLES = {
    "TP": "true positive: tumour, called tumour",
    "TN": "true negative: normal, called normal",
    "FP": "false positive: normal, called tumour",
    "FN": "false negative: tumour, called normal",
}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return buf.getvalue()


LABEL_WORDS = {0: "normal", 1: "tumour"}
PATCH_IN = 1.92  # inches per 96 px patch at 100 dpi: thumbnails at 2x (192 px)


def caption(prob: float, label: int) -> str:
    """'P(tumour) 0.93, label tumour' ('label ?' when unlabelled)."""
    return f"P(tumour) {prob:.2f}, label {LABEL_WORDS.get(label, '?')}"


def _show(ax: Any, image: np.ndarray, box: bool = True, title: str | None = None) -> None:
    ax.imshow(image, interpolation="nearest")
    if box:
        from matplotlib.patches import Rectangle

        lo, hi = centre_box(image.shape[0])
        ax.add_patch(
            Rectangle(
                (lo - 0.5, lo - 0.5),
                hi - lo,
                hi - lo,
                fill=False,
                edgecolor="#00ff00",
                linewidth=1.0,
            )
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, pad=2)


def gallery_png(
    images: np.ndarray,
    maps: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    alpha: float = 0.45,
) -> bytes:
    """Patches (top) and Grad-CAM overlays (below) in one row pair per group, e.g. TP/TN/FP/FN.

    The green square is the centre 32x32 region the label refers to; under each overlay, the
    share of the map's weight inside it (11 % if spread evenly). One colour bar explains the
    overlay colours.
    """
    import matplotlib as mpl

    plt = pyplot()
    order = list(dict.fromkeys(groups))  # groups in first-seen order
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in order}
    ncols = max(1, max(len(m) for m in members.values()))
    shares = centre_fraction(maps)  # (N,), NaN for an empty map
    fig = plt.figure(figsize=(1.7 * ncols + 1.2, 3.9 * len(order) + 0.7))
    top, bar = fig.subfigures(2, 1, height_ratios=[3.9 * len(order), 0.7])
    for sub, g in zip(top.subfigures(len(order), 1, squeeze=False)[:, 0], order, strict=True):
        sub.suptitle(
            f"{g}: {CASE_TITLES[g]}" if g in CASE_TITLES else g,
            x=0.01,
            ha="left",
            fontsize=11,
            weight="bold",
        )
        axes = sub.subplots(2, ncols, squeeze=False)
        sub.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.08, wspace=0.08, hspace=0.3)
        axes[0, 0].set_ylabel("patch", fontsize=9)
        axes[1, 0].set_ylabel("Grad-CAM", fontsize=9)
        for c in range(ncols):
            if c >= len(members[g]):
                axes[0, c].axis("off")
                axes[1, c].axis("off")
                continue
            i = members[g][c]
            _show(axes[0, c], images[i], title=caption(float(probs[i]), int(labels[i])))
            _show(axes[1, c], overlay(images[i], maps[i], alpha))
            share = shares[i]
            axes[1, c].set_xlabel(
                "no tumour evidence" if np.isnan(share) else f"{100 * share:.0f}% in centre",
                fontsize=8,
                labelpad=2,
            )
    ax = bar.add_axes((0.25, 0.45, 0.5, 0.22))
    fig.colorbar(
        mpl.cm.ScalarMappable(mpl.colors.Normalize(0, 1), cmap="jet"),
        cax=ax,
        orientation="horizontal",
        label="Grad-CAM weight, scaled to each patch's maximum: 0 no evidence, 1 most tumour "
        "evidence",
    )
    return png_bytes(fig, dpi=100)


def scatter_png(
    xy: np.ndarray, values: np.ndarray, kind: str, title: str, seen: np.ndarray | None = None
) -> bytes:
    """The 2-D map coloured by label (``kind='label'``, -1 = unlabelled) or probability.

    ``seen`` (N,) bool marks patches the model was trained on: drawn as small crosses under the
    held-out dots, so a map of mostly training patches cannot pass for generalisation.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    size = float(np.clip(3000 / max(len(xy), 1), 1.5, 30))
    if seen is not None and seen.any():
        held = ~seen
        ax.scatter(
            xy[seen, 0],
            xy[seen, 1],
            s=size * 0.7,
            c="#9a9a9a",
            marker="x",
            lw=0.5,
            alpha=0.5,
            label=f"seen in training, n={int(seen.sum())}",
            rasterized=True,
        )
        xy, values = xy[held], values[held]
        size = float(np.clip(3000 / max(len(xy), 1), 1.5, 30))  # the held-out dots stand out
        title += f" ({int(held.sum())} held-out in colour)"
    if kind == "label":
        for value, colour, name in (
            (-1, "#bbbbbb", "unlabelled"),
            (0, "#2166ac", "normal (0)"),
            (1, "#d6604d", "tumour (1)"),
        ):
            sel = values == value
            if sel.any():
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=size,
                    c=colour,
                    alpha=0.6,
                    lw=0,
                    label=f"{name}, n={int(sel.sum())}",
                    rasterized=True,
                )
        ax.legend(loc="best", fontsize=8, markerscale=3, frameon=True)
    else:
        sc = ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=size,
            c=values,
            cmap="coolwarm",
            vmin=0,
            vmax=1,
            alpha=0.7,
            lw=0,
            rasterized=True,
        )
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label="P(tumour)")
        if seen is not None and seen.any():
            ax.legend(loc="best", fontsize=8, markerscale=3, frameon=True)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return png_bytes(fig)


def thumbnail_grid_png(images: np.ndarray, captions: Sequence[str], ncols: int = 5) -> bytes:
    """Patches at 2x (192 px) in a grid with a caption above each and the centre outlined."""
    plt = pyplot()
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(PATCH_IN * 1.12 * ncols, PATCH_IN * 1.3 * nrows), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k < n:
            _show(ax, images[k], title=captions[k])
        else:
            ax.axis("off")
    fig.subplots_adjust(wspace=0.06, hspace=0.3)
    return png_bytes(fig)


def cluster_strip_png(exemplars: Sequence[np.ndarray], row_titles: Sequence[str]) -> bytes:
    """One row per cluster: its title, then the exemplar patches nearest its centre."""
    plt = pyplot()
    ncols = max(1, max((len(e) for e in exemplars), default=1))
    nrows = max(1, len(exemplars))
    fig, axes = plt.subplots(
        nrows,
        ncols + 1,
        figsize=(PATCH_IN * 1.05 * ncols + 2.6, PATCH_IN * 1.08 * nrows),
        squeeze=False,
        gridspec_kw={"width_ratios": [2.3] + [1] * ncols},
    )
    for r in range(nrows):
        axes[r, 0].axis("off")
        if r < len(exemplars):
            axes[r, 0].text(0.0, 0.5, row_titles[r], fontsize=10, va="center", ha="left")
        for c in range(ncols):
            ax = axes[r, c + 1]
            if r < len(exemplars) and c < len(exemplars[r]):
                _show(ax, exemplars[r][c], box=False)
            else:
                ax.axis("off")
    fig.subplots_adjust(wspace=0.04, hspace=0.08)
    return png_bytes(fig)


def message_png(text: str) -> bytes:
    """A small image holding one line of text, for a figure with nothing to show."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    return png_bytes(fig)
