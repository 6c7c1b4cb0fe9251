"""Whole-slide analysis: tissue -> tiles -> p_tumor -> tiles.csv, heatmap.png, tumor.geojson,
lesions.csv and summary.json.

``analyse_slide`` is what the CLI and the web service call for one slide; ``batch.run_slides``
runs many. The work is split in three steps that both executors share: ``prepare_slide`` (the
grid and the tissue, on the thumbnail), scoring (``score_local`` here, or Ray Data in
``ray_exec``), and ``write_outputs``. Tiles are read and scored one batch at a time (the next
batch is read while the model scores this one), so memory stays bounded whatever the slide size.
Everything is written through ``histoscan.io.atomic_dir``: a failed or interrupted run never
leaves a half-written folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.errors import DataError, HistoscanError
from histoscan.io import atomic_dir
from histoscan.progress import progress_bar
from histoscan.slide.geojson import cell_area_mm2, feature_collection, tumor_features
from histoscan.slide.heatmap import render_heatmap
from histoscan.slide.lesions import TOP_K, find_lesions, slide_scores, write_lesions
from histoscan.slide.reader import SlideReader, open_slide
from histoscan.slide.tiling import TilePlan, plan_tiles, read_tiles, tissue_fractions
from histoscan.slide.tissue import check_colour, closing_radius_px, dust_area_px, tissue_mask

log = logging.getLogger(__name__)

MIN_TISSUE_FRACTION = 0.2  # tiles with less tissue than this are background, never scored
UNSCORED_TISSUE = 0.05  # the heatmap hatches unscored tiles with at least this much tissue
TISSUE_DETECTOR = "sat0.06-od0.07-dust15um-close30um"  # recorded: a new detector means new outputs
THUMB_PX_PER_TILE = 16  # thumbnail resolution: about this many pixels per tile side ...
THUMB_MAX_PX = (1024, 4096)  # ... but at least this for a legible heatmap, and at most this
TILES_HEADER = ("x", "y", "width", "height", "p_tumor", "tissue_fraction")
OUTPUTS = ("tiles.csv", "heatmap.png", "tumor.geojson", "lesions.csv", "summary.json")
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
    top_k: int = TOP_K  # tiles in the top-k slide score

    def check(self) -> None:
        """Refuse impossible settings before any work."""
        from histoscan.data.views import TTA_VIEWS

        if self.tta not in TTA_VIEWS:
            raise HistoscanError(
                f"unknown TTA mode {self.tta!r}; choose from {', '.join(TTA_VIEWS)}"
            )
        if self.batch_size < 1:
            raise HistoscanError(f"batch size must be at least 1, not {self.batch_size}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise HistoscanError(f"threshold must be a probability in [0, 1], not {self.threshold}")
        if not 0.0 < self.min_tissue <= 1.0:
            raise HistoscanError(f"--min-tissue must be in (0, 1], not {self.min_tissue}")
        if self.top_k < 1:
            raise HistoscanError(f"top-k must be at least 1, not {self.top_k}")


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
    min_tissue: float = MIN_TISSUE_FRACTION,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every tissue tile of a slide and write the outputs into ``out_dir``.

    Args:
        path: a slide (any format ``open_slide`` reads).
        out_dir: folder to create (it may exist only if empty, or with ``overwrite``) with
            tiles.csv, heatmap.png, tumor.geojson, lesions.csv and summary.json.
        predictor: a ``histoscan.predict.Predictor``.
        mpp: micrometres per level-0 pixel, overriding the slide's metadata; required when the
            file does not say.
        stride_px: grid step in pixels at the model's resolution (default: the patch size).
        tta: test-time augmentation: none, flip or d4.
        threshold: p_tumor at or above which a tile is tumour (default: the model's threshold).
        batch_size: tiles read and scored together.
        progress: a progress bar (True), nothing (False), or ``callback(done, total)`` in tiles.
        min_tissue: tiles whose footprint is less tissue than this fraction are not scored.
        overwrite: replace an ``out_dir`` that histoscan wrote before.

    Returns:
        The summary written to summary.json. No tissue is not an error: zero tiles are scored
        and ``summary["message"]`` says so.
    """
    settings = SlideSettings(
        mpp=mpp,
        stride_px=stride_px,
        tta=tta,
        threshold=threshold,
        batch_size=batch_size,
        min_tissue=min_tissue,
    )
    settings.check()
    reader = open_slide(path)
    try:
        return analyse_reader(reader, Path(out_dir), predictor, settings, progress, overwrite)
    finally:
        reader.close()


def analyse_reader(
    reader: SlideReader,
    out_dir: Path,
    predictor: Any,
    settings: SlideSettings | None = None,
    progress: Progress = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``analyse_slide`` on an open reader (any backend)."""
    start = time.perf_counter()
    settings = settings or SlideSettings()
    settings.check()
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty folder is as good as none
    prepared = prepare_slide(reader, predictor, settings)
    with atomic_dir(out_dir, overwrite=overwrite, inputs=[reader.path], what="slide") as tmp:
        scoring_start = time.perf_counter()
        probs = score_local(reader, prepared.layout, predictor, settings, progress)
        timing = {"scoring_s": time.perf_counter() - scoring_start, "start": start}
        summary = write_outputs(tmp, prepared, probs, predictor, settings, timing)
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


@dataclass(frozen=True)
class PreparedSlide:
    """Everything about one slide that scoring and writing need, without the open file."""

    path: Path
    backend: str
    width_px: int
    height_px: int
    mpp0: float
    mpp_source: str
    threshold: float
    layout: TissueLayout


def prepare_slide(reader: SlideReader, predictor: Any, settings: SlideSettings) -> PreparedSlide:
    """Resolution, threshold, tile grid and tissue of one slide (errors come out here)."""
    mpp0, mpp_source = resolve_mpp(reader, settings.mpp)
    layout = locate_tissue(reader, mpp0, predictor.spec, settings)
    threshold = predictor.threshold(settings.threshold)
    width, height = reader.level_dimensions[0]
    return PreparedSlide(
        reader.path, reader.backend, width, height, mpp0, mpp_source, threshold, layout
    )


def locate_tissue(
    reader: SlideReader, mpp0: float, spec: Any, settings: SlideSettings
) -> TissueLayout:
    """Plan the grid at the model's resolution and keep the tiles with enough tissue."""
    plan = plan_tiles(reader, mpp0, spec.mpp, spec.patch_px, settings.stride_px or spec.patch_px)
    thumbnail, scale = slide_thumbnail(reader, plan)
    check_colour(thumbnail, str(reader.path))
    tile_thumb_px = plan.tile_l0 / max(scale)  # a tile's side in thumbnail pixels
    thumb_mpp = mpp0 * max(scale)
    mask = tissue_mask(
        thumbnail,
        min_object_px=int(tile_thumb_px**2 / 4),
        closing_px=closing_radius_px(thumb_mpp),
        dust_px=dust_area_px(thumb_mpp),
    )
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
    if h == 0 or w == 0:
        raise DataError(f"{reader.path}: no readable pyramid level for a thumbnail")
    return thumbnail, (width / w, height / h)


def score_local(
    reader: SlideReader,
    layout: TissueLayout,
    predictor: Any,
    settings: SlideSettings,
    progress: Progress,
) -> np.ndarray:
    """Score the layout's tiles batch by batch in this process; (n_rows, n_cols) probs."""
    plan, rows, cols = layout.plan, layout.rows, layout.cols
    probs = np.full((plan.n_rows, plan.n_cols), np.nan, dtype=np.float64)
    x, y = plan.origins(rows, cols)
    step = settings.batch_size
    batches = [slice(i, i + step) for i in range(0, len(rows), step)]
    with ThreadPoolExecutor(1) as pool, reporter(progress, len(rows)) as report:
        pending = pool.submit(read_tiles, reader, plan, x[:step], y[:step]) if batches else None
        for k, part in enumerate(batches):
            images = pending.result()  # (B, patch_px, patch_px, 3) uint8
            if k + 1 < len(batches):  # read the next batch while this one is scored
                nxt = batches[k + 1]
                pending = pool.submit(read_tiles, reader, plan, x[nxt], y[nxt])
            probs[rows[part], cols[part]] = predictor.predict_proba(images, tta=settings.tta)
            report(part.start + len(images))
    return probs


@contextmanager
def reporter(progress: Progress, total: int) -> Iterator[Callable[[int], None]]:
    """``report(done)``: a rich bar, the caller's ``callback(done, total)``, or nothing."""
    if callable(progress):
        progress(0, total)
        yield lambda done: progress(done, total)
        return
    with progress_bar("slide", total=total, show=bool(progress) and total > 0, unit="tiles") as bar:
        yield bar.update


def run_record(predictor: Any, settings: SlideSettings, threshold: float) -> dict[str, Any]:
    """What decides the outputs: the model and engine, and the settings. A rerun whose record
    equals the one in summary.json can skip the slide (batch size and device do not count)."""
    described = predictor.describe()
    return {
        "model": described.get("model", predictor.name),
        "model_sha1": described.get("model_sha1") or model_sha1(predictor),
        "engine": described.get("engine"),
        "precision": described.get("precision"),
        "tta": settings.tta,
        "mpp": settings.mpp,
        "stride_px": settings.stride_px,
        "threshold": round(float(threshold), 6),
        "min_tissue": settings.min_tissue,
        "top_k": settings.top_k,
        "tissue_detector": TISSUE_DETECTOR,
    }


def model_sha1(predictor: Any) -> str | None:
    """SHA-1 of the model file the predictor was loaded from (None when there is none)."""
    path = getattr(getattr(predictor, "model_file", None), "path", None)
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_outputs(
    folder: Path,
    prepared: PreparedSlide,
    probs: np.ndarray,
    predictor: Any,
    settings: SlideSettings,
    timing: dict[str, float],
) -> dict[str, Any]:
    """tiles.csv, tumor.geojson, lesions.csv, heatmap.png and summary.json in ``folder``."""
    layout, threshold = prepared.layout, prepared.threshold
    write_tiles_csv(folder / "tiles.csv", layout, probs)
    features = tumor_features(probs, threshold, layout.plan)
    (folder / "tumor.geojson").write_text(json.dumps(feature_collection(features)))
    lesions = find_lesions(probs, layout.plan)
    write_lesions(folder / "lesions.csv", lesions)
    summary = summarise(prepared, probs, settings)
    n = summary["tiles_scored"]
    title = f"{prepared.path.name}: {n} tiles, {len(features)} regions at p >= {threshold:.2f}"
    unscored = (layout.fractions >= UNSCORED_TISSUE) & ~np.isfinite(probs)
    render_heatmap(
        folder / "heatmap.png",
        layout.thumbnail,
        probs,
        layout.plan,
        layout.scale,
        features,
        title,
        unscored_tissue=unscored,
    )
    summary.update(
        tumor_regions=len(features),
        lesions=len(lesions),
        predictor=predictor.describe(),
        settings=run_record(predictor, settings, threshold),
        seconds=round(time.perf_counter() - timing["start"], 3),
        tiles_per_s=round(n / timing["scoring_s"], 1) if n and timing["scoring_s"] > 0 else 0.0,
    )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_tiles_csv(path: Path, layout: TissueLayout, probs: np.ndarray) -> None:
    """One row per scored tile, row-major: level-0 box, p_tumor and tissue fraction."""
    rows, cols = layout.rows, layout.cols
    x, y = layout.plan.origins(rows, cols)
    size = layout.plan.tile_l0
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TILES_HEADER)
        writer.writerows(
            (xi, yi, size, size, f"{pi:.6f}", f"{ti:.3f}")
            for xi, yi, pi, ti in zip(
                x, y, probs[rows, cols], layout.fractions[rows, cols], strict=True
            )
        )


def summarise(prepared: PreparedSlide, probs: np.ndarray, settings: SlideSettings) -> dict:
    """The figures of summary.json that follow from the slide, the grid and the scores."""
    plan, threshold = prepared.layout.plan, prepared.threshold
    summary: dict[str, Any] = {
        "slide": str(prepared.path),
        "backend": prepared.backend,
        "width_px": prepared.width_px,
        "height_px": prepared.height_px,
        "mpp": plan.mpp0,
        "mpp_source": prepared.mpp_source,
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
        "tta": settings.tta,
        "min_tissue_fraction": settings.min_tissue,
        **score_figures(prepared.layout, probs, threshold),
    }
    scores = slide_scores(probs, settings.top_k)
    summary.update(slide_score_max=scores["max"], slide_score_top_k=scores["top_k_mean"])
    summary["top_k"] = settings.top_k
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
    """Tiles scored, tissue and tumour areas (mm²), and the highest p_tumor with its tile.

    Tumour area has one definition everywhere (summary.json, slides.csv, tumor.geojson): the
    stride cells of the tiles at or above the threshold, i.e. the area of the GeoJSON polygons.
    """
    plan = layout.plan
    scored = np.isfinite(probs)
    positive = scored & (np.where(scored, probs, 0.0) >= threshold)
    mm2_per_px = (plan.mpp0 / 1000.0) ** 2  # a level-0 pixel
    tissue_px = float(layout.mask.sum()) * layout.scale[0] * layout.scale[1]
    figures: dict[str, Any] = {
        "tiles_scored": int(scored.sum()),
        "tissue_area_mm2": round(tissue_px * mm2_per_px, 4),
        "tumor_area_mm2": round(int(positive.sum()) * cell_area_mm2(plan), 6),
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
