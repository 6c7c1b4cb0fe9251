"""analyse_slide end to end with a random-weight model: where every tile lands, what is written,
and what happens with bad input. The model's quality does not matter here: a tile read at the
right place gives exactly the probability of the patch placed there."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from histoscan.cli import slide_cmd  # noqa: F401  (registers `histoscan slide`)
from histoscan.cli.app import app
from histoscan.errors import DataError, HistoscanError
from histoscan.io import OutputError
from histoscan.predict import Predictor
from histoscan.slide.reader import open_slide
from histoscan.slide.run import OUTPUTS as RUN_OUTPUTS
from histoscan.slide.run import SlideSettings, analyse_reader, analyse_slide

from .conftest import MARGIN, MODEL_MPP, Mosaic, write_pyramid

runner = CliRunner()
OUTPUTS = {*RUN_OUTPUTS, ".histoscan"}


@pytest.fixture(scope="module")
def predictor(untrained_model_file: Path) -> Predictor:
    return Predictor.load(untrained_model_file)


@pytest.fixture(scope="module")
def patch_probs(predictor: Predictor, mosaic: Mosaic) -> np.ndarray:
    """p_tumor of each original patch, (12, 12)."""
    return predictor.predict_proba(mosaic.patches, tta="none").reshape(mosaic.labels.shape)


def read_tiles(out: Path) -> list[dict[str, float]]:
    with open(out / "tiles.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def check_tiles_land_on_their_patches(
    out: Path, mosaic: Mosaic, patch_probs: np.ndarray, tile_l0: int, atol: float = 1e-5
) -> None:
    tiles = read_tiles(out)
    seen = set()
    for t in tiles:
        assert t["width"] == t["height"] == tile_l0
        cell = mosaic.cell(int(t["x"]), int(t["y"]), tile_l0)
        assert cell is not None, f"glass scored at ({t['x']}, {t['y']})"
        assert t["p_tumor"] == pytest.approx(patch_probs[cell], abs=atol), cell
        seen.add(cell)
    assert len(seen) == len(tiles) == mosaic.labels.size  # every patch, once


def no_partial_dirs(parent: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in parent.iterdir())


def test_exact_level_tiles_are_the_patches_placed_there(
    predictor: Predictor, mosaic: Mosaic, patch_probs: np.ndarray, exact_tiff: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = analyse_slide(exact_tiff, out, predictor, progress=False)
    assert {p.name for p in out.iterdir()} == OUTPUTS
    check_tiles_land_on_their_patches(out, mosaic, patch_probs, tile_l0=192)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (summary["level"], summary["mpp"], summary["resampled"]) == (1, MODEL_MPP / 2, False)
    assert summary["tiles_scored"] == 144 and summary["mpp_source"] == "metadata"
    patch_mm2 = (96 * MODEL_MPP / 1000) ** 2
    assert 0.6 * 144 * patch_mm2 < summary["tissue_area_mm2"] < 1.1 * 144 * patch_mm2
    best = np.unravel_index(np.argmax(patch_probs), patch_probs.shape)
    at = summary["max_p_tumor_at"]
    assert mosaic.cell(at["x"], at["y"], 192) == best
    assert summary["max_p_tumor"] == pytest.approx(patch_probs.max(), abs=1e-5)
    assert no_partial_dirs(tmp_path)


def test_both_backends_resample_to_the_same_tiles_and_probabilities(
    predictor: Predictor, mosaic: Mosaic, resample_tiff: Path, tmp_path: Path
) -> None:
    scored = {}
    for backend in ("openslide", "tifffile"):
        with open_slide(resample_tiff, backend) as reader:
            summary = analyse_reader(reader, tmp_path / backend, predictor, progress=False)
        assert (summary["level"], summary["read_px"], summary["tile_l0_px"]) == (1, 144, 288)
        assert summary["resampled"] and summary["tiles_scored"] == 144
        tiles = read_tiles(tmp_path / backend)
        for t in tiles:
            assert mosaic.cell(int(t["x"]), int(t["y"]), 288) is not None
        scored[backend] = {(int(t["x"]), int(t["y"])): float(t["p_tumor"]) for t in tiles}
    assert scored["openslide"].keys() == scored["tifffile"].keys()
    # the two readers decode the same JPEG level and histoscan resamples it: the same pixels,
    # so the same probabilities (measured: identical to 1e-6)
    diff = [abs(scored["openslide"][k] - scored["tifffile"][k]) for k in scored["tifffile"]]
    assert max(diff) <= 1e-6, max(diff)


def test_png_with_mpp_reads_level0_as_is(
    predictor: Predictor, mosaic: Mosaic, patch_probs: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "mosaic.png"
    Image.fromarray(mosaic.image).save(path)
    with pytest.raises(DataError, match="unknown resolution"):
        analyse_slide(path, tmp_path / "out", predictor, progress=False)
    assert not (tmp_path / "out").exists() and no_partial_dirs(tmp_path)
    summary = analyse_slide(path, tmp_path / "out", predictor, mpp=MODEL_MPP, progress=False)
    assert summary["backend"] == "pillow" and summary["mpp_source"] == "argument"
    assert summary["level"] == 0 and not summary["resampled"]
    check_tiles_land_on_their_patches(tmp_path / "out", mosaic, patch_probs, tile_l0=96)


def test_half_stride_scores_tiles_between_patches(
    predictor: Predictor, exact_tiff: Path, tmp_path: Path
) -> None:
    summary = analyse_slide(exact_tiff, tmp_path / "out", predictor, stride_px=48, progress=False)
    tiles = read_tiles(tmp_path / "out")
    xs = {int(t["x"]) for t in tiles}
    assert all(x % 96 == 0 for x in xs) and any(x % 192 for x in xs)
    assert summary["stride_l0_px"] == 96 and 23**2 <= len(tiles) <= 25**2  # 2n - 1 = 23 a side
    left = MARGIN["left"] * 192  # no tile that is mostly glass
    assert min(xs) >= left - 96


def test_tumor_geojson_outlines_the_positive_tiles(
    predictor: Predictor, exact_tiff: Path, patch_probs: np.ndarray, tmp_path: Path
) -> None:
    threshold = float(np.median(patch_probs))
    summary = analyse_slide(
        exact_tiff, tmp_path / "out", predictor, threshold=threshold, progress=False
    )
    collection = json.loads((tmp_path / "out" / "tumor.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    positive = int((patch_probs >= threshold).sum())
    assert summary["tumor_tiles"] == positive
    area_px = 0.0
    for feature in collection["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation" and props["classification"]["name"] == "Tumor"
        assert feature["geometry"]["type"] == "Polygon"
        for k, ring in enumerate(feature["geometry"]["coordinates"]):
            xy = np.asarray(ring)
            assert (xy[0] == xy[-1]).all() and (xy % 192 == 0).all()  # tile corners, level 0
            area = 0.5 * np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
            assert (area > 0) == (k == 0)
            area_px += area
    assert area_px == positive * 192**2
    assert summary["tumor_regions"] == len(collection["features"]) > 0


def test_slide_without_tissue_gives_an_explicit_empty_result(
    predictor: Predictor, tmp_path: Path
) -> None:
    glass = np.full((1200, 1500, 3), 246, dtype=np.uint8)
    path = write_pyramid(tmp_path / "glass.tif", glass, upscale=1, mpp0=0.5)
    result = runner.invoke(
        app,
        [
            "slide",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(predictor.model_file.path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no tissue" in result.output
    assert (
        tmp_path / "out" / "tiles.csv"
    ).read_text() == "x,y,width,height,p_tumor,tissue_fraction\n"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tiles_scored"] == 0 and summary["max_p_tumor"] is None
    assert json.loads((tmp_path / "out" / "tumor.geojson").read_text())["features"] == []
    assert (tmp_path / "out" / "lesions.csv").read_text() == ""
    assert summary["slide_score_max"] is None and summary["tumor_area_mm2"] == 0


def test_progress_callback_counts_tiles(
    predictor: Predictor, exact_tiff: Path, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []
    analyse_slide(
        exact_tiff,
        tmp_path / "out",
        predictor,
        batch_size=50,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(0, 144), (50, 144), (100, 144), (144, 144)]


class FailingPredictor:
    """Scores one batch, then fails like a model running out of memory."""

    def __init__(self, inner: Predictor) -> None:
        self.inner, self.calls = inner, 0
        self.spec, self.name, self.version = inner.spec, inner.name, inner.version
        self.threshold, self.describe = inner.threshold, inner.describe

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        self.calls += 1
        if self.calls > 1:
            raise MemoryError("out of memory")
        return self.inner.predict_proba(images, tta)


def test_a_failure_midway_leaves_no_output_folder(
    predictor: Predictor, exact_tiff: Path, tmp_path: Path
) -> None:
    with pytest.raises(MemoryError):
        analyse_slide(
            exact_tiff, tmp_path / "out", FailingPredictor(predictor), batch_size=32, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_output_folder_must_be_new_or_empty(
    predictor: Predictor, exact_tiff: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    analyse_slide(exact_tiff, tmp_path / "empty", predictor, progress=False)
    assert {p.name for p in (tmp_path / "empty").iterdir()} == OUTPUTS
    before = (tmp_path / "empty" / "summary.json").read_text()
    with pytest.raises(OutputError, match="already exists"):
        analyse_slide(exact_tiff, tmp_path / "empty", predictor, progress=False)
    assert (tmp_path / "empty" / "summary.json").read_text() == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's own file")
    with pytest.raises(OutputError, match="not made by histoscan"):
        analyse_slide(exact_tiff, tmp_path / "mine", predictor, progress=False, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's own file"


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (SlideSettings(tta="d8"), "unknown TTA mode"),
        (SlideSettings(threshold=1.5), "threshold"),
        (SlideSettings(stride_px=-4), "stride"),
        (SlideSettings(mpp=0.0), "mpp must be positive"),
        (SlideSettings(min_tissue=0.0), "min-tissue"),
        (SlideSettings(min_tissue=1.5), "min-tissue"),
    ],
)
def test_bad_settings_are_refused_before_any_work(
    settings: SlideSettings, match: str, predictor: Predictor, exact_tiff: Path, tmp_path: Path
) -> None:
    with open_slide(exact_tiff) as reader, pytest.raises(HistoscanError, match=match):
        analyse_reader(reader, tmp_path / "out", predictor, settings, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["text", "truncated", "no-resolution", "bad-tta"])
def test_cli_bad_input_is_one_line_and_exit_2(
    case: str, untrained_model_file: Path, exact_tiff: Path, tmp_path: Path
) -> None:
    path, extra = tmp_path / "slide.tif", []
    if case == "text":
        path = tmp_path / "slide.txt"
        path.write_text("not a slide\n")
    elif case == "truncated":
        path.write_bytes(exact_tiff.read_bytes()[:200_000])
    elif case == "no-resolution":
        tifffile.imwrite(path, np.full((500, 500, 3), 200, np.uint8), photometric="rgb")
    else:
        path, extra = exact_tiff, ["--tta", "d8"]
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "slide",
            str(path),
            "--out",
            str(out),
            "--quiet",
            "--model",
            str(untrained_model_file),
            *extra,
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not out.exists() and no_partial_dirs(tmp_path)
