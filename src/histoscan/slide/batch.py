"""Many slides in one run: inputs, one folder per slide, slides.csv, resume, and the executor.

``histoscan slide A.svs B.svs --out DIR`` (or a folder of slides, or a text file listing them)
comes here. With one slide its outputs go straight into DIR, as they always did; with several,
each slide gets ``DIR/<stem>/`` and ``DIR/slides.csv`` one row per slide. A slide that fails is
recorded (status ``failed`` and its one-line error) and the others go on. A slide whose folder
already holds complete outputs for the same model and settings (``summary.json["settings"]``)
is skipped; ``overwrite`` redoes it. Scoring runs in this process (``local``) or on Ray Data
(``ray``, see ``ray_exec``); both write the same outputs through the same code.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoscan.errors import DataError, HistoscanError
from histoscan.io import OutputError, atomic_dir, atomic_write, made_by_histoscan
from histoscan.slide.reader import SLIDE_SUFFIXES, open_slide
from histoscan.slide.run import (
    OUTPUTS,
    PreparedSlide,
    Progress,
    SlideSettings,
    analyse_reader,
    prepare_slide,
    run_record,
    write_outputs,
)

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp"}
LIST_SUFFIXES = {".txt", ".lst", ".csv"}
SLIDES_CSV_HEADER = (
    "slide",
    "status",
    "error",
    "tiles",
    "tissue_area_mm2",
    "tumor_area_mm2",
    "slide_score_max",
    "slide_score_top_k",
    "seconds",
    "out_dir",
)


@dataclass
class SlideResult:
    """One row of slides.csv."""

    slide: Path
    out_dir: Path
    status: str = "failed"  # done, skipped or failed
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        s = self.summary
        return {
            "slide": str(self.slide),
            "status": self.status,
            "error": self.error,
            "tiles": s.get("tiles_scored", ""),
            "tissue_area_mm2": s.get("tissue_area_mm2", ""),
            "tumor_area_mm2": s.get("tumor_area_mm2", ""),
            "slide_score_max": _blank(s.get("slide_score_max")),
            "slide_score_top_k": _blank(s.get("slide_score_top_k")),
            "seconds": round(self.seconds, 3),
            "out_dir": str(self.out_dir),
        }


def _blank(value: Any) -> Any:
    return "" if value is None else value


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Slides named by ``inputs``: files as given, the slides in a folder (sorted, not
    recursive), and the lines of a .txt/.lst/.csv list (relative to the list's folder; blank
    lines, ``#`` comments and a ``slide`` header are skipped). Duplicates are dropped."""
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.is_file()
                and not p.name.startswith(".")
                and p.suffix.lower() in IMAGE_SUFFIXES | SLIDE_SUFFIXES
            )
            if not found:
                raise DataError(f"{item}: a folder with no slides in it")
            slides.extend(found)
        elif item.suffix.lower() in LIST_SUFFIXES and item.is_file():
            slides.extend(_read_list(item))
        else:
            slides.append(item)
    unique = list(dict.fromkeys(slides))
    if not unique:
        raise DataError("no slides given")
    return unique


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the list of slides ({exc})") from exc
    slides = []
    for k, row in enumerate(csv.reader(io.StringIO(text))):
        name = row[0].strip() if row else ""
        if not name or name.startswith("#") or (k == 0 and name.lower() == "slide"):
            continue
        slide = Path(name)
        slides.append(slide if slide.is_absolute() else path.parent / slide)
    if not slides:
        raise DataError(f"{path}: the list names no slides")
    return slides


def slide_dirs(slides: list[Path], out: Path) -> list[Path]:
    """``out`` itself for one slide; ``out/<stem>`` for several (``-2``, ``-3`` on clashes)."""
    if len(slides) == 1:
        return [out]
    seen: dict[str, int] = {}
    dirs = []
    for slide in slides:
        stem = slide.name.split(".")[0] or slide.name
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def completed_summary(out_dir: Path, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What ``out_dir`` holds: "new" (nothing), "same" (this run's outputs, with the summary),
    "other" (outputs of another model or settings) or "foreign" (not made by histoscan)."""
    summary_path = out_dir / "summary.json"
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return "new", {}
    if not made_by_histoscan(out_dir):
        return "foreign", {}
    if not all((out_dir / n).is_file() for n in OUTPUTS):
        return "other", {}
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return "other", {}
    return ("same" if summary.get("settings") == record else "other"), summary


def run_slides(
    inputs: list[Path],
    out: Path,
    predictor: Any,
    settings: SlideSettings,
    executor: str = "local",
    overwrite: bool = False,
    progress: Progress = True,
    ray_options: dict[str, Any] | None = None,
) -> list[SlideResult]:
    """Analyse every slide named by ``inputs`` into ``out``; see the module doc.

    Args:
        inputs: slides, folders of slides, or text files listing slides.
        out: the output folder.
        predictor: a loaded ``Predictor`` (the Ray executor loads its own copies from
            ``ray_options["model"]``).
        settings: the same for every slide.
        executor: ``local`` or ``ray``.
        overwrite: redo slides whose outputs exist.
        progress: a progress bar per slide (local), or nothing.
        ray_options: for ``ray``: ``address``, ``model``, ``engine``, ``device``.

    Returns:
        One result per slide, in input order. A single slide's error is raised, not recorded.
    """
    if executor not in EXECUTORS:
        raise HistoscanError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    settings.check()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose a folder path")
    slides = expand_inputs(inputs)
    single = len(slides) == 1
    record = run_record(predictor, settings, predictor.threshold(settings.threshold))
    results = [SlideResult(s, d) for s, d in zip(slides, slide_dirs(slides, out), strict=True)]
    todo = []
    for result in results:
        state, summary = completed_summary(result.out_dir, record)
        if state == "same" and not overwrite:
            result.status, result.summary = "skipped", summary
            log.info("%s: skipped (done before with the same model and settings)", result.slide)
        elif state == "foreign" or (state == "other" and not overwrite):
            result.error = (
                f"{result.out_dir}: exists and was not made by histoscan; choose another folder"
                if state == "foreign"
                else f"{result.out_dir}: holds outputs of another model or other settings; "
                "use --overwrite to replace them"
            )
            if single:
                raise OutputError(result.error)
        else:
            todo.append(result)
    if executor == "local":
        for result in todo:
            _run_local(result, predictor, settings, progress, single)
    else:
        from histoscan.slide.ray_exec import run_on_ray

        run_on_ray(todo, predictor, settings, ray_options or {}, single)
    if not single:
        write_slides_csv(out / "slides.csv", results)
    return results


def _run_local(
    result: SlideResult, predictor: Any, settings: SlideSettings, progress: Progress, single: bool
) -> None:
    start = time.perf_counter()
    try:
        reader = open_slide(result.slide)
        try:
            result.summary = analyse_reader(
                reader, result.out_dir, predictor, settings, progress, overwrite=True
            )
        finally:
            reader.close()
        result.status, result.error = "done", ""
    except Exception as exc:  # one bad slide must not stop the others
        if single:
            raise
        record_failure(result, exc)
    result.seconds = time.perf_counter() - start


def record_failure(result: SlideResult, exc: BaseException) -> None:
    """Mark ``result`` failed with a one-line reason (a traceback only in the debug log)."""
    result.status = "failed"
    if isinstance(exc, HistoscanError):
        result.error = str(exc)
    else:
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.debug("%s failed", result.slide, exc_info=exc)
    log.warning("%s: failed: %s", result.slide, result.error)


def publish(
    result: SlideResult,
    prepared: PreparedSlide,
    probs: Any,
    predictor: Any,
    settings: SlideSettings,
    timing: dict[str, float],
) -> None:
    """Write one slide's outputs (scored elsewhere) atomically into its folder."""
    with atomic_dir(result.out_dir, overwrite=True, inputs=[result.slide], what="slide") as tmp:
        result.summary = write_outputs(tmp, prepared, probs, predictor, settings, timing)
    result.status, result.error = "done", ""


def prepare(result: SlideResult, predictor: Any, settings: SlideSettings) -> PreparedSlide:
    """Open a slide and find its tiles (closing the file again)."""
    reader = open_slide(result.slide)
    try:
        return prepare_slide(reader, predictor, settings)
    finally:
        reader.close()


def write_slides_csv(path: Path, results: list[SlideResult]) -> None:
    """slides.csv, one row per slide, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SLIDES_CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in results)
    atomic_write(path, buffer.getvalue())
