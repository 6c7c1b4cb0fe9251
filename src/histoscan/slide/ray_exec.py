"""``--executor ray``: tiles of many slides flow through Ray Data to a pool of Predictor actors.

The driver finds each slide's tissue tiles (cheap: one thumbnail per slide) and writes the
outputs; Ray Data does the heavy part. The dataset's rows are tile batches ``(slide, start)``;
a read stage (tasks, one CPU each) turns each into up to ``batch_size`` uint8 tiles with the
same ``read_tiles`` the local executor uses, and a scoring stage (``map_batches`` with a callable
class: an actor pool, each actor a ``Predictor`` loaded in its ``__init__``, one GPU per actor
where the cluster has GPUs) turns tiles into probabilities. Ray's streaming executor bounds the
tiles in flight (back-pressure), so memory does not grow with the number or size of slides. The
driver gathers (slide, tile index, p) and groups them back per slide.

A slide that cannot be read fails alone: its read errors travel as a column, not as exceptions
that would stop the dataset. Slide paths must be readable by the workers (one machine, or a
shared file system on a cluster).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from histoscan.errors import DataError, HistoscanError
from histoscan.slide.batch import SlideResult, prepare, publish, record_failure
from histoscan.slide.run import PreparedSlide, SlideSettings

log = logging.getLogger(__name__)

SLIDES_PER_ROUND = 16  # slides prepared, scored in one dataset, and written together
READERS_PER_WORKER = 4  # open slides a read worker keeps (tiles of one slide arrive together)
_readers: OrderedDict[tuple[str, str], Any] = OrderedDict()


def run_on_ray(
    todo: list[SlideResult],
    predictor: Any,
    settings: SlideSettings,
    options: dict[str, Any],
    single: bool,
) -> None:
    """Score ``todo`` on Ray and write each slide's outputs; failures are recorded per slide.

    Slides go in rounds of SLIDES_PER_ROUND, so the driver holds only that many thumbnails
    and tile lists (a thumbnail is up to 48 MB) however many slides the run has.
    """
    if not todo:
        return
    init_ray(options.get("address"))  # before any work: an unreachable cluster fails at once
    for first in range(0, len(todo), SLIDES_PER_ROUND):
        _run_round(todo[first : first + SLIDES_PER_ROUND], predictor, settings, options, single)


def _run_round(
    todo: list[SlideResult],
    predictor: Any,
    settings: SlideSettings,
    options: dict[str, Any],
    single: bool,
) -> None:
    prepared: dict[int, tuple[PreparedSlide, float]] = {}
    for k, result in enumerate(todo):
        start = time.perf_counter()
        try:
            slide = prepare(result, predictor, settings)
        except Exception as exc:  # one bad slide must not stop the others
            if single:
                raise
            record_failure(result, exc)
            continue
        prepared[k] = (slide, time.perf_counter() - start)  # and seconds spent preparing
    if not prepared:
        return
    keys = sorted(prepared)
    slides = [prepared[k][0] for k in keys]
    start = time.perf_counter()
    probs, errors = score_on_ray(slides, settings, options)
    scoring_s = time.perf_counter() - start
    total_tiles = max(1, sum(len(s.layout.rows) for s in slides))
    for i, k in enumerate(keys):
        result, slide = todo[k], slides[i]
        share_s = scoring_s * len(slide.layout.rows) / total_tiles
        began = time.perf_counter() - prepared[k][1] - share_s
        if i in errors:
            if single:
                raise DataError(errors[i])
            record_failure(result, DataError(errors[i]))
            continue
        try:
            publish(
                result, slide, probs[i], predictor, settings, {"start": began, "scoring_s": share_s}
            )
        except Exception as exc:
            if single:
                raise
            record_failure(result, exc)
        result.seconds = time.perf_counter() - began


def score_on_ray(
    slides: list[PreparedSlide], settings: SlideSettings, options: dict[str, Any]
) -> tuple[list[np.ndarray], dict[int, str]]:
    """(n_rows, n_cols) probabilities per slide, and the read error of each slide that had one.

    Args:
        slides: prepared slides (their tile grids and tissue tiles).
        settings: tta and batch size.
        options: ``address`` (None: a local Ray sized to this machine; ``auto`` or
            ``ray://host:10001``: an existing cluster), ``model`` (path or None for the bundled
            model), ``engine``, ``device``, ``actors`` (default: one per GPU, else one per 4
            CPUs of the cluster).
    """
    import ray

    init_ray(options.get("address"))
    bs = settings.batch_size
    specs = [(str(s.path), s.backend, s.layout.plan, s.layout.rows, s.layout.cols) for s in slides]
    items = [
        {"slide": i, "start": start}
        for i, s in enumerate(slides)
        for start in range(0, len(s.layout.rows), bs)
    ]
    probs = [np.full((s.layout.plan.n_rows, s.layout.plan.n_cols), np.nan) for s in slides]
    errors: dict[int, str] = {}
    if not items:
        return probs, errors
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = int(options.get("actors") or (gpus if gpus else max(1, cpus // 4)))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_batch,
        fn_kwargs={"specs": specs, "batch_size": bs},
        batch_size=1,
        num_cpus=1,
        batch_format="numpy",
    )
    ds = ds.map_batches(
        TileScorer,
        fn_constructor_args=(
            options.get("model"),
            options.get("engine", "auto"),
            options.get("device", "auto"),
            bs,
            settings.tta,
        ),
        batch_size=bs,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=0 if gpus else 1,
        num_gpus=1 if gpus else 0,
        batch_format="numpy",
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, index, p, error in zip(
            batch["slide"], batch["index"], batch["p"], batch["error"], strict=True
        ):
            i = int(i)
            if error:
                errors.setdefault(i, str(error))
                continue
            s = slides[i].layout
            probs[i][s.rows[index], s.cols[index]] = p
    return probs, errors


def init_ray(address: str | None) -> None:
    """Join ``address`` (``auto``, ``ray://...``), or start a local Ray sized to this machine;
    a Ray already started in this process (a test's ``ray.init(num_cpus=2)``) is used as is."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HistoscanError(f"cannot start or join Ray at {address or 'local'}: {exc}") from exc


def read_batch(batch: dict[str, np.ndarray], specs: list, batch_size: int) -> dict[str, Any]:
    """One tile batch ``(slide, start)`` -> up to ``batch_size`` rows of tiles (a read task)."""
    from histoscan.slide.tiling import read_tiles

    i, start = int(batch["slide"][0]), int(batch["start"][0])
    path, backend, plan, rows, cols = specs[i]
    index = np.arange(start, min(start + batch_size, len(rows)))
    try:
        reader = _reader(path, backend)
        x, y = plan.origins(rows[index], cols[index])
        images = read_tiles(reader, plan, x, y)  # (B, patch_px, patch_px, 3) uint8
        error = ""
    except Exception as exc:  # travels to the driver as this slide's error
        images = np.zeros((len(index), plan.patch_px, plan.patch_px, 3), dtype=np.uint8)
        error = str(exc) if isinstance(exc, HistoscanError) else f"{type(exc).__name__}: {exc}"
    return {
        "slide": np.full(len(index), i, dtype=np.int64),
        "index": index,
        "image": images,
        "error": np.full(len(index), error, dtype=object),
    }


def _reader(path: str, backend: str) -> Any:
    """An open reader for ``path``, kept between tasks of this worker process."""
    from histoscan.slide.reader import open_slide

    key = (path, backend)
    if key in _readers:
        _readers.move_to_end(key)
        return _readers[key]
    reader = open_slide(path, backend)
    _readers[key] = reader
    while len(_readers) > READERS_PER_WORKER:
        _, old = _readers.popitem(last=False)
        old.close()
    return reader


class TileScorer:
    """A Predictor in a Ray actor: tiles in, calibrated p_tumor out."""

    def __init__(
        self, model: str | None, engine: str, device: str, batch_size: int, tta: str
    ) -> None:
        from histoscan.predict import Predictor

        self.predictor = Predictor.load(model, engine=engine, device=device, batch_size=batch_size)
        self.tta = tta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        p = np.full(len(ok), np.nan)
        if ok.any():
            p[ok] = self.predictor.predict_proba(batch["image"][ok], tta=self.tta)
        return {"slide": batch["slide"], "index": batch["index"], "p": p, "error": batch["error"]}
