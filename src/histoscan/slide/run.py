"""Whole-slide analysis: tissue -> tiles -> p_tumor -> tiles.csv, heatmap.png, tumor.geojson.

``analyse_slide`` is what the CLI and the web service call. Tiles are read, scored and written
one batch at a time (the next batch is read while the model scores this one), so memory stays
bounded whatever the slide size. Everything is written into a temporary folder beside the output
folder and renamed at the end: a failed or interrupted run never leaves a half-written folder.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.errors import DataError, HistoscanError
from histoscan.progress import progress_bar
from histoscan.slide.geojson import feature_collection, tumor_features
from histoscan.slide.heatmap import render_heatmap
from histoscan.slide.reader import SlideReader, open_slide
from histoscan.slide.tiling import TilePlan, plan_tiles, read_tiles, tissue_fractions
from histoscan.slide.tissue import tissue_mask

log = logging.getLogger(__name__)

MIN_TISSUE_FRACTION = 0.25  # tiles with less tissue than this are background, never scored
THUMB_PX_PER_TILE = 8  # thumbnail resolution: about this many pixels per tile side ...
THUMB_MAX_PX = (1024, 4096)  # ... but at least this for a legible heatmap, and at most this
TILES_HEADER = ("x", "y", "width", "height", "p_tumor", "tissue_fraction")
Progress = bool | Callable[[int, int], None]


@dataclass(frozen=True)
class SlideSettings:
    """The user's choices for one slide; None means "from the slide or the model"."""

    mpp: float | None = None  # overrides the slide's own micrometres per pixel
    stride_px: int | None = None  # grid step at model resolution (default: the patch size)
    tta: str = "none"
    threshold: float | None = None  # p_tumor for tumor.geojson (default: the model's)
    batch_size: int = 256  # tiles read and scored together
    min_tissue: float = MIN_TISSUE_FRACTION


def analyse_slide(
    path: Path,
    out_dir: Path,
    predictor: Any,
    mpp: float | None = None,
    stride_px: int | None = None,
    tta: str = "none",
    threshold: float | None = None,
    batch_size: int = 256,
    progress: Progress = True,
) -> dict[str, Any]:
    """Score every tissue tile of a slide and write the outputs into ``out_dir``.

    Args:
        path: a slide (any format ``open_slide`` reads).
        out_dir: folder to create (it may exist only if empty) with tiles.csv, heatmap.png,
            tumor.geojson and summary.json.
        predictor: a ``histoscan.predict.Predictor``.
        mpp: micrometres per level-0 pixel, overriding the slide's metadata; required when the
            file does not say.
        stride_px: grid step in pixels at the model's resolution (default: the patch size).
        tta: test-time augmentation: none, flip or d4.
        threshold: p_tumor at or above which a tile is tumour (default: the model's threshold).
        batch_size: tiles read and scored together.
        progress: a progress bar (True), nothing (False), or ``callback(done, total)`` in tiles.

    Returns:
        The summary written to summary.json. No tissue is not an error: zero tiles are scored
        and ``summary["message"]`` says so.
    """
    settings = SlideSettings(
        mpp=mpp, stride_px=stride_px, tta=tta, threshold=threshold, batch_size=batch_size
    )
    reader = open_slide(path)
    try:
        return analyse_reader(reader, Path(out_dir), predictor, settings, progress)
    finally:
        reader.close()


def analyse_reader(
    reader: SlideReader,
    out_dir: Path,
    predictor: Any,
    settings: SlideSettings | None = None,
    progress: Progress = True,
) -> dict[str, Any]:
    """``analyse_slide`` on an open reader (any backend)."""
    start = time.perf_counter()
    settings = settings or SlideSettings()
    _check_settings(settings)
    _check_out_dir(out_dir)
    mpp0, mpp_source = resolve_mpp(reader, settings.mpp)
    layout = locate_tissue(reader, mpp0, predictor.spec, settings)
    threshold = predictor.threshold(settings.threshold)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would follow the folder into place
    try:
        scoring_start = time.perf_counter()
        probs = score_tiles(reader, layout, predictor, settings, tmp / "tiles.csv", progress)
        scoring_s = time.perf_counter() - scoring_start
        summary = summarise(reader, layout, probs, threshold)
        features = write_maps(tmp, reader.path.name, layout, probs, threshold)
        n = summary["tiles_scored"]
        summary.update(
            mpp_source=mpp_source,
            model=predictor.name,
            model_version=predictor.version,
            model_mpp=predictor.spec.mpp,
            tta=settings.tta,
            min_tissue_fraction=settings.min_tissue,
            tumor_regions=len(features),
            seconds=round(time.perf_counter() - start, 3),
            tiles_per_s=round(n / scoring_s, 1) if n else 0.0,
        )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


@dataclass(frozen=True)
class TissueLayout:
    """The tile grid of one slide, its thumbnail, and which tiles hold tissue."""

    plan: TilePlan
    thumbnail: np.ndarray  # uint8 (h, w, 3)
    scale: tuple[float, float]  # level-0 pixels per thumbnail pixel along (x, y)
    mask: np.ndarray  # bool (h, w): tissue in the thumbnail
    fractions: np.ndarray  # (n_rows, n_cols) tissue fraction of each tile
    rows: np.ndarray  # grid rows and columns of the tiles to score, row-major
    cols: np.ndarray


def locate_tissue(
    reader: SlideReader, mpp0: float, spec: Any, settings: SlideSettings
) -> TissueLayout:
    """Plan the grid at the model's resolution and keep the tiles with enough tissue."""
    plan = plan_tiles(reader, mpp0, spec.mpp, spec.patch_px, settings.stride_px or spec.patch_px)
    thumbnail, scale = slide_thumbnail(reader, plan)
    tile_thumb_px = plan.tile_l0 / max(scale)  # a tile's side in thumbnail pixels
    mask = tissue_mask(thumbnail, min_object_px=int(tile_thumb_px**2 / 4))
    fractions = tissue_fractions(mask, plan, scale)
    rows, cols = np.nonzero(fractions >= settings.min_tissue)
    log.info(
        "%s: %d tissue tiles at level %d (%.3f um/px%s)",
        reader.path.name,
        len(rows),
        plan.level,
        plan.mpp0 * plan.level_downsample,
        ", resampled" if plan.resampled else "",
    )
    return TissueLayout(plan, thumbnail, scale, mask, fractions, rows, cols)


def write_maps(
    folder: Path, name: str, layout: TissueLayout, probs: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """tumor.geojson and heatmap.png in ``folder``; returns the GeoJSON features."""
    features = tumor_features(probs, threshold, layout.plan)
    (folder / "tumor.geojson").write_text(json.dumps(feature_collection(features)))
    n = int(np.isfinite(probs).sum())
    title = f"{name}: {n} tiles, {len(features)} regions at p >= {threshold:.2f}"
    render_heatmap(
        folder / "heatmap.png", layout.thumbnail, probs, layout.plan, layout.scale, features, title
    )
    return features


def _check_settings(settings: SlideSettings) -> None:
    from histoscan.data.views import TTA_VIEWS

    if settings.tta not in TTA_VIEWS:
        raise HistoscanError(
            f"unknown TTA mode {settings.tta!r}; choose from {', '.join(TTA_VIEWS)}"
        )
    if settings.batch_size < 1:
        raise HistoscanError(f"batch size must be at least 1, not {settings.batch_size}")
    if settings.threshold is not None and not 0.0 <= settings.threshold <= 1.0:
        raise HistoscanError(f"threshold must be a probability in [0, 1], not {settings.threshold}")


def resolve_mpp(reader: SlideReader, mpp: float | None) -> tuple[float, str]:
    """Micrometres per level-0 pixel and where it came from: the caller, else the slide."""
    if mpp is not None:
        if not mpp > 0:
            raise DataError(f"mpp must be positive, not {mpp}")
        if reader.mpp is not None and abs(reader.mpp - mpp) > 0.01 * reader.mpp:
            log.warning(
                "%s: using mpp %.4g instead of the slide's %.4g", reader.path, mpp, reader.mpp
            )
        return float(mpp), "argument"
    if reader.mpp is None:
        raise DataError(
            f"{reader.path}: unknown resolution (the file does not say how many "
            "micrometres a pixel is); give it with --mpp, e.g. --mpp 0.25 for 40x"
        )
    return float(reader.mpp), "metadata"


def slide_thumbnail(reader: SlideReader, plan: TilePlan) -> tuple[np.ndarray, tuple[float, float]]:
    """A thumbnail about THUMB_PX_PER_TILE pixels per tile, and level-0 pixels per its pixel."""
    width, height = reader.level_dimensions[0]
    wanted = int(np.ceil(max(width, height) * THUMB_PX_PER_TILE / plan.tile_l0))
    max_px = min(max(wanted, THUMB_MAX_PX[0]), THUMB_MAX_PX[1], max(width, height))
    thumbnail = reader.thumbnail(max_px)
    h, w = thumbnail.shape[:2]
    return thumbnail, (width / w, height / h)


def score_tiles(
    reader: SlideReader,
    layout: TissueLayout,
    predictor: Any,
    settings: SlideSettings,
    csv_path: Path,
    progress: Progress,
) -> np.ndarray:
    """Score the layout's tiles batch by batch, appending to tiles.csv; (n_rows, n_cols) probs."""
    plan, rows, cols = layout.plan, layout.rows, layout.cols
    probs = np.full((plan.n_rows, plan.n_cols), np.nan, dtype=np.float64)
    x, y = plan.origins(rows, cols)
    size = plan.tile_l0
    step = settings.batch_size
    batches = [slice(i, i + step) for i in range(0, len(rows), step)]
    with (
        open(csv_path, "w", newline="") as fh,
        ThreadPoolExecutor(1) as pool,
        _reporter(progress, len(rows)) as report,
    ):
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TILES_HEADER)
        pending = pool.submit(read_tiles, reader, plan, x[:step], y[:step]) if batches else None
        for k, part in enumerate(batches):
            images = pending.result()  # (B, patch_px, patch_px, 3) uint8
            if k + 1 < len(batches):  # read the next batch while this one is scored
                nxt = batches[k + 1]
                pending = pool.submit(read_tiles, reader, plan, x[nxt], y[nxt])
            p = predictor.predict_proba(images, tta=settings.tta)
            probs[rows[part], cols[part]] = p
            tissue = layout.fractions[rows[part], cols[part]]
            writer.writerows(
                (xi, yi, size, size, f"{pi:.6f}", f"{ti:.3f}")
                for xi, yi, pi, ti in zip(x[part], y[part], p, tissue, strict=True)
            )
            report(part.start + len(images))
    return probs


@contextmanager
def _reporter(progress: Progress, total: int) -> Iterator[Callable[[int], None]]:
    """``report(done)``: a rich bar, the caller's ``callback(done, total)``, or nothing."""
    if callable(progress):
        progress(0, total)
        yield lambda done: progress(done, total)
        return
    with progress_bar("slide", total=total, show=bool(progress) and total > 0, unit="tiles") as bar:
        yield bar.update


def summarise(
    reader: SlideReader, layout: TissueLayout, probs: np.ndarray, threshold: float
) -> dict[str, Any]:
    """The figures of summary.json that follow from the slide, the grid and the scores."""
    plan = layout.plan
    width, height = reader.level_dimensions[0]
    summary: dict[str, Any] = {
        "slide": str(reader.path),
        "backend": reader.backend,
        "width_px": width,
        "height_px": height,
        "mpp": plan.mpp0,
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "level_mpp": plan.mpp0 * plan.level_downsample,
        "tile_mpp": round(plan.mpp, 6),
        "resampled": plan.resampled,
        "read_px": plan.read_px,
        "tile_px": plan.patch_px,
        "stride_px": plan.stride_px,
        "tile_l0_px": plan.tile_l0,
        "stride_l0_px": round(plan.stride_l0, 3),
        "threshold": threshold,
        **score_figures(layout, probs, threshold),
    }
    n = summary["tiles_scored"]
    if n == 0:
        summary["message"] = "no tissue found: nothing was scored"
        return summary
    summary["message"] = (
        f"{n} tiles scored, {summary['tumor_tiles']} at p_tumor >= {threshold:.2f} "
        f"(~{summary['tumor_area_mm2']:.2f} mm² of {summary['tissue_area_mm2']:.2f} mm² "
        f"tissue); highest {summary['max_p_tumor']:.3f}"
    )
    return summary


def score_figures(layout: TissueLayout, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Tiles scored, tissue and tumour areas (mm²), and the highest p_tumor with its tile."""
    plan = layout.plan
    scored = np.isfinite(probs)
    positive = scored & (np.where(scored, probs, 0.0) >= threshold)
    mm2_per_px = (plan.mpp0 / 1000.0) ** 2  # a level-0 pixel
    tissue_px = float(layout.mask.sum()) * layout.scale[0] * layout.scale[1]
    # each positive tile counts its stride cell, times the share of it that is tissue
    tumor_px = float(np.minimum(layout.fractions[positive], 1.0).sum()) * plan.stride_l0**2
    figures: dict[str, Any] = {
        "tiles_scored": int(scored.sum()),
        "tissue_area_mm2": round(tissue_px * mm2_per_px, 4),
        "tumor_area_mm2": round(tumor_px * mm2_per_px, 4),
        "tumor_tiles": int(positive.sum()),
        "max_p_tumor": None,
        "max_p_tumor_at": None,  # the tile's top-left and size in level-0 pixels
    }
    if figures["tiles_scored"]:
        row, col = np.unravel_index(np.nanargmax(probs), probs.shape)
        x, y = plan.origins(np.array([row]), np.array([col]))
        figures["max_p_tumor"] = round(float(probs[row, col]), 6)
        size = plan.tile_l0
        figures["max_p_tumor_at"] = {"x": int(x[0]), "y": int(y[0]), "width": size, "height": size}
    return figures


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir}: already exists and is not an empty folder; choose another output folder"
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished temporary folder into place (replacing an empty folder only)."""
    _check_out_dir(out_dir)
    if out_dir.exists():
        out_dir.rmdir()
    tmp.rename(out_dir)
