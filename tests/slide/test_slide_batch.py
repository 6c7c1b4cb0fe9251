"""Many slides in one call: folders per slide, slides.csv, one failure does not stop the rest,
resume by model and settings, --overwrite; one tumour area; slide scores and lesions.csv."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histoscan.cli import slide_cmd  # noqa: F401  (registers `histoscan slide`)
from histoscan.cli.app import app
from histoscan.slide.batch import expand_inputs, slide_dirs
from histoscan.slide.lesions import find_lesions, read_lesions, slide_scores
from histoscan.slide.run import OUTPUTS
from histoscan.slide.tiling import TilePlan

runner = CliRunner()


def slide_cli(model: Path, *args: str):
    return runner.invoke(app, ["slide", *args, "--quiet", "--model", str(model)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def three_slides(exact_tiff: Path, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "slides"
    folder.mkdir()
    a = shutil.copy(exact_tiff, folder / "a.tif")
    b = shutil.copy(exact_tiff, folder / "b.ome.tif")
    broken = folder / "broken.tif"
    broken.write_bytes(Path(exact_tiff).read_bytes()[:100_000])  # truncated
    return [Path(a), Path(b), broken]


def test_many_slides_get_a_folder_each_and_one_failure_is_recorded(
    three_slides: list[Path], untrained_model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = slide_cli(untrained_model_file, *map(str, three_slides), "--out", str(out))
    assert result.exit_code == 1, result.output  # one slide failed
    assert "2 done, 0 skipped" in result.output and "1 failed" in result.output
    rows = read_csv(out / "slides.csv")
    assert [(r["slide"], r["status"]) for r in rows] == [
        (str(three_slides[0]), "done"),
        (str(three_slides[1]), "done"),
        (str(three_slides[2]), "failed"),
    ]
    assert "broken.tif" in rows[2]["error"] and "\n" not in rows[2]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "slides.csv"]
    for row, name in zip(rows[:2], ["a", "b"], strict=True):
        assert row["out_dir"] == str(out / name)
        assert set(OUTPUTS) <= {p.name for p in (out / name).iterdir()}
        summary = json.loads((out / name / "summary.json").read_text())
        assert int(row["tiles"]) == summary["tiles_scored"] == 144
        assert float(row["tumor_area_mm2"]) == summary["tumor_area_mm2"]
        assert float(row["slide_score_max"]) == summary["slide_score_max"]
        assert float(row["slide_score_top_k"]) == summary["slide_score_top_k"]
        assert summary["settings"]["tta"] == "none" and summary["predictor"]["engine"]
    assert not any(".partial" in p.name for p in out.iterdir())


def test_rerun_skips_done_slides_and_overwrite_redoes_them(
    three_slides: list[Path], untrained_model_file: Path, tmp_path: Path
) -> None:
    out, listing = tmp_path / "out", tmp_path / "slides.txt"
    listing.write_text("# two slides\nslides/a.tif\n\nslides/b.ome.tif\n")
    start = time.perf_counter()
    assert slide_cli(untrained_model_file, str(listing), "--out", str(out)).exit_code == 0
    first_s = time.perf_counter() - start
    stamp = (out / "a" / "tiles.csv").stat().st_mtime_ns
    start = time.perf_counter()
    result = slide_cli(untrained_model_file, str(listing), "--out", str(out))
    rerun_s = time.perf_counter() - start
    assert result.exit_code == 0 and "0 done, 2 skipped" in result.output, result.output
    assert [r["status"] for r in read_csv(out / "slides.csv")] == ["skipped", "skipped"]
    assert read_csv(out / "slides.csv")[0]["tiles"] == "144"  # figures kept from summary.json
    assert (out / "a" / "tiles.csv").stat().st_mtime_ns == stamp
    assert rerun_s < first_s
    # other settings: the old outputs are not silently replaced ...
    result = slide_cli(untrained_model_file, str(listing), "--out", str(out), "--tta", "flip")
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert json.loads((out / "a" / "summary.json").read_text())["tta"] == "none"
    # ... --overwrite redoes them
    result = slide_cli(
        untrained_model_file, str(listing), "--out", str(out), "--tta", "flip", "--overwrite"
    )
    assert result.exit_code == 0 and "2 done" in result.output, result.output
    assert json.loads((out / "a" / "summary.json").read_text())["tta"] == "flip"


def test_one_slide_keeps_its_outputs_in_out_and_resumes(
    exact_tiff: Path, untrained_model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert slide_cli(untrained_model_file, str(exact_tiff), "--out", str(out)).exit_code == 0
    assert set(OUTPUTS) <= {p.name for p in out.iterdir()} and not (out / "slides.csv").exists()
    result = slide_cli(untrained_model_file, str(exact_tiff), "--out", str(out))
    assert result.exit_code == 0 and result.output.startswith("skipped"), result.output
    result = slide_cli(untrained_model_file, str(exact_tiff), "--out", str(out), "--mpp", "0.5")
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_inputs_expand_folders_and_lists_and_stems_do_not_clash(tmp_path: Path) -> None:
    for name in ("b.svs", "a.tif", "notes.md", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.tiff").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("slide,label\nmore/a.tiff,1\n")
    slides = expand_inputs([tmp_path, tmp_path / "list.csv", tmp_path / "a.tif"])
    assert slides == [tmp_path / "a.tif", tmp_path / "b.svs", tmp_path / "more" / "a.tiff"]
    assert slide_dirs(slides, Path("o")) == [Path("o/a"), Path("o/b"), Path("o/a-2")]
    assert slide_dirs(slides[:1], Path("o")) == [Path("o")]


def test_tumour_area_is_one_number_in_summary_csv_and_geojson(
    exact_tiff: Path, untrained_model_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("s1.tif", "s2.tif"):
        shutil.copy(exact_tiff, folder / name)
    out = tmp_path / "out"
    result = slide_cli(untrained_model_file, str(folder), "--out", str(out), "--threshold", "0.0")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "s1" / "summary.json").read_text())
    features = json.loads((out / "s1" / "tumor.geojson").read_text())["features"]
    polygon_px = 0.0  # shoelace over every ring, holes negative, in level-0 pixels
    for feature in features:
        for ring in feature["geometry"]["coordinates"]:
            xy = np.asarray(ring, dtype=float)
            polygon_px += 0.5 * np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
    polygon_mm2 = polygon_px * (summary["mpp"] / 1000) ** 2
    assert summary["tumor_tiles"] == 144  # threshold 0: every scored tile
    assert polygon_mm2 == pytest.approx(144 * (96 * 0.972 / 1000) ** 2)
    assert summary["tumor_area_mm2"] == pytest.approx(polygon_mm2, abs=1e-6)
    in_features = sum(f["properties"]["measurements"]["area_mm2"] for f in features)
    assert in_features == pytest.approx(polygon_mm2, abs=1e-5)
    assert float(read_csv(out / "slides.csv")[0]["tumor_area_mm2"]) == summary["tumor_area_mm2"]


def test_lesions_csv_holds_the_top_tile_in_camelyon_format(
    exact_tiff: Path, untrained_model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert slide_cli(untrained_model_file, str(exact_tiff), "--out", str(out)).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "lesions.csv").read_text().splitlines()
    first = text[0].split(",")  # no header: confidence,x,y as CAMELYON16's script reads
    at = summary["max_p_tumor_at"]
    assert float(first[0]) == pytest.approx(summary["max_p_tumor"], abs=1e-6)
    assert (int(first[1]), int(first[2])) == (at["x"] + 96, at["y"] + 96)  # tile centre
    tiles = read_csv(out / "tiles.csv")
    probs = np.sort([float(t["p_tumor"]) for t in tiles])[::-1]
    assert summary["slide_score_top_k"] == pytest.approx(probs[:10].mean(), abs=1e-6)


def grid_plan(n_rows: int, n_cols: int) -> TilePlan:
    return TilePlan(0.5, 96, 96, 1, 2.0, 96, 2.0, n_cols, n_rows)  # tiles of 192 level-0 px


def test_lesions_are_local_maxima_at_tile_centres() -> None:
    probs = np.full((6, 8), 0.05)
    probs[1, 1], probs[1, 2] = 0.9, 0.7  # one focus: only its peak is a candidate
    probs[4, 6] = 0.6  # a second focus, far away
    probs[5, 0] = np.nan  # not scored
    probs[4, 2] = 0.15  # below the floor
    rows = find_lesions(probs, grid_plan(6, 8), floor=0.2)
    # centres: x = col * 192 + 96, y = row * 192 + 96
    assert rows.tolist() == [[0.9, 288.0, 288.0], [0.6, 1248.0, 864.0]]
    assert find_lesions(np.full((3, 3), np.nan), grid_plan(3, 3)).shape == (0, 3)


def test_slide_scores_and_lesions_round_trip(tmp_path: Path) -> None:
    probs = np.array([[0.1, np.nan, 0.3], [0.9, 0.5, np.nan]])
    assert slide_scores(probs, top_k=2) == {"max": 0.9, "top_k_mean": 0.7}
    assert slide_scores(np.full((2, 2), np.nan)) == {"max": None, "top_k_mean": None}
    path = tmp_path / "lesions.csv"
    path.write_text("0.9,288,288\n0.6,1248,864\n")
    assert read_lesions(path).tolist() == [[0.9, 288, 288], [0.6, 1248, 864]]
