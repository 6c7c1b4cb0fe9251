"""The audit's figures (matplotlib, Agg), each returned as an ``<img>`` with a base64 PNG."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from histoscan.audit import features as af

if TYPE_CHECKING:
    from histoscan.audit.core import Audit

COLOURS = {"negative": "#2c7bb6", "positive": "#d7191c", "unlabelled": "#777777"}


def _figure(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" src="{uri}" alt="figure">'


def _subplots(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    return fig, axes


# x-axis words per channel; DAB is left out: H&E slides carry no DAB stain, and the third
# rgb2hed channel is only the residual of the colour deconvolution
CHANNEL_UNITS = {
    "red": "red, 0-255",
    "green": "green, 0-255",
    "blue": "blue, 0-255",
    "hue": "hue, 0-1 (HSV)",
    "saturation": "saturation, 0-1 (HSV)",
    "value": "value (brightness), 0-1 (HSV)",
    "haematoxylin": "haematoxylin optical density",
    "eosin": "eosin optical density",
}


def hist_figure(dist: dict, by_region: bool) -> str:
    """Channel histograms per class (share of pixels, %); whole patch, or centre vs border."""
    channels = [ch for ch in dist["histogram_ranges"] if ch in CHANNEL_UNITS]
    fig, axes = _subplots(3, 3, (13, 8.6))
    for ax, ch in zip(axes.flat, channels, strict=False):
        lo, hi = dist["histogram_ranges"][ch]
        x = lo + (np.arange(af.HIST_BINS) + 0.5) * (hi - lo) / af.HIST_BINS
        for group, regions in dist["histograms"].items():
            parts = list(regions.items()) if by_region else [("", _sum(regions, ch))]
            for region, counts in parts:
                counts = np.asarray(counts[ch] if by_region else counts, float)
                style = "--" if region == "border" else "-"
                label = f"{group} {region}".strip()
                share = 100 * counts / max(counts.sum(), 1)
                ax.plot(x, share, style, color=COLOURS[group], label=label)
        ax.set_xlabel(CHANNEL_UNITS[ch], fontsize=9)
        ax.set_ylabel("% of pixels per bin", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(channels) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    return _figure(fig)


def _sum(regions: dict, ch: str) -> np.ndarray:
    return sum(np.asarray(r[ch], float) for r in regions.values())


def mean_figure(audit: Audit) -> str:
    from matplotlib.patches import Rectangle

    stats = audit.scan.stats
    means = stats.mean_images()
    present = [g for g in range(len(af.GROUPS)) if stats.count[g]]
    diff = stats.count[0] > 0 and stats.count[1] > 0
    fig, axes = _subplots(1, len(present) + diff, (3.3 * (len(present) + diff), 3.6))
    lo = (af.PATCH_PX - af.CENTRE_PX) / 2 - 0.5
    for ax, g in zip(axes[0], present, strict=False):
        ax.imshow(np.clip(means[g], 0, 255).astype(np.uint8))
        ax.set_title(f"mean {af.GROUPS[g]} (n={stats.count[g]:,})", fontsize=10)
    if diff:
        luma = means @ np.array([0.299, 0.587, 0.114])
        d = luma[1] - luma[0]
        m = max(np.abs(d).max(), 1e-6)
        im = axes[0, -1].imshow(d, cmap="RdBu_r", vmin=-m, vmax=m)
        axes[0, -1].set_title("brightness: positive - negative", fontsize=10)
        fig.colorbar(im, ax=axes[0, -1], shrink=0.8)
    for ax in axes[0]:
        ax.add_patch(
            Rectangle((lo, lo), af.CENTRE_PX, af.CENTRE_PX, fill=False, ec="#00e5ff", lw=2)
        )
        ax.set_xticks([])
        ax.set_yticks([])
    return _figure(fig)


def balance_figure(about: dict) -> str:
    splits = about["by_split"]
    fig, axes = _subplots(1, 1, (1.6 + 1.4 * len(splits), 2.6))
    ax = axes[0, 0]
    x = np.arange(len(splits))
    for k, group in enumerate(af.GROUPS):
        counts = [s[group] for s in splits.values()]
        if any(counts):
            bars = ax.bar(x + (k - 1) * 0.27, counts, 0.27, color=COLOURS[group], label=group)
            ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xticks(x, list(splits))
    ax.margins(y=0.18)  # room above the tallest bar for its count
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_ylabel("patches")
    return _figure(fig)


def corr_figure(corr: dict) -> str:
    names, m = corr["names"], np.array(corr["matrix"], dtype=float)
    fig, axes = _subplots(1, 1, (7.4, 6.4))
    ax = axes[0, 0]
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.7, label="Pearson r")
    return _figure(fig)


def roc_figure(audit: Audit, baseline: dict) -> str:
    from sklearn.metrics import roc_curve

    ok = audit.scan.readable & (audit.source.labels >= 0)
    fpr, tpr, _ = roc_curve(audit.source.labels[ok], audit.probs)
    fig, axes = _subplots(1, 1, (4.2, 4))
    ax = axes[0, 0]
    label = f"out-of-fold, AUC {baseline['auc_mean']:.3f} ± {baseline['auc_sd']:.3f}"
    ax.plot(fpr, tpr, color="#2c5fb6", label=label)
    ax.plot([0, 1], [0, 1], ":", color="#999")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    return _figure(fig)


def rules_figure(audit: Audit) -> str:
    """Where each threshold falls in the distribution of its score."""
    cfg, scan, ok, flags = audit.cfg, audit.scan, audit.scan.readable, audit.flags
    tissue = ok & ~(flags["near_black"] | flags["near_white"] | flags["background"])
    panels = [
        ("brightness", scan.feature("brightness")[ok], [cfg.black_max, cfg.white_min], False),
        ("tissue fraction", scan.feature("tissue_fraction")[ok], [cfg.min_tissue], False),
        (
            "sharpness (patches with tissue)",
            scan.feature("sharpness")[tissue] + 1,
            [cfg.blur_max],
            True,
        ),
        ("colour score (patches with tissue)", audit.colour[tissue] + 1e-3, [cfg.colour_max], True),
    ]
    fig, axes = _subplots(1, 4, (15, 2.9))
    for ax, (title, values, lines, log) in zip(axes[0], panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("patches per bin", fontsize=9)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        lo, hi = values.min(), values.max()
        if log:
            lo = max(lo, 1e-3)
            edges = np.geomspace(lo, max(hi, lo * 1.01), 61)
        else:
            edges = np.linspace(lo, hi + 1e-6, 61)
        counts, _ = np.histogram(values, edges)
        ax.stairs(counts, edges, fill=True, color="#8a8fa0")
        ax.set_yscale("log")
        if log:
            ax.set_xscale("log")
        for v in lines:
            ax.axvline(v, color="#d7191c", ls="--")
    return _figure(fig)
