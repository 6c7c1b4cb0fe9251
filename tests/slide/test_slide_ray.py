"""--executor ray gives what --executor local gives: the same slides.csv, tiles and outputs.

One small Ray session for the module (``ray.init(num_cpus=2)``), shut down at the end.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from histoscan.predict import Predictor
from histoscan.slide.batch import run_slides
from histoscan.slide.run import SlideSettings

ray = pytest.importorskip("ray")

TIMING = {"seconds", "tiles_per_s"}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_an_unreachable_cluster_is_one_line_before_any_work(
    exact_tiff: Path, untrained_model_file: Path, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from histoscan.cli import slide_cmd  # noqa: F401  (registers `histoscan slide`)
    from histoscan.cli.app import app

    assert not ray.is_initialized()  # runs before the module's Ray session starts
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    slides = [shutil.copy(exact_tiff, tmp_path / f"{n}.tif") for n in ("a", "b")]
    result = CliRunner().invoke(
        app,
        ["slide", *map(str, slides), "--out", str(tmp_path / "out"), "--quiet",
         "--model", str(untrained_model_file), "--executor", "ray", "--ray-address", "auto"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot start or join Ray at auto")
    assert not (tmp_path / "out").exists()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def same_summary(a: Path, b: Path) -> None:
    sa, sb = (json.loads(p.read_text()) for p in (a, b))
    for key in set(sa) | set(sb):
        if key not in TIMING:
            assert sa.get(key) == sb.get(key), key


def test_ray_matches_local_and_a_rerun_skips_everything(
    ray_session, exact_tiff: Path, untrained_model_file: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("histoscan.slide.ray_exec.SLIDES_PER_ROUND", 2)  # rounds of 2, then 1
    slides = []
    for name in ("a", "b", "c"):
        slides.append(Path(shutil.copy(exact_tiff, tmp_path / f"{name}.tif")))
    predictor = Predictor.load(untrained_model_file, batch_size=64)
    settings = SlideSettings(batch_size=64, threshold=0.5)
    options = {"model": untrained_model_file, "engine": "auto", "device": "cpu"}
    local = run_slides(slides, tmp_path / "local", predictor, settings, progress=False)
    start = time.perf_counter()
    remote = run_slides(
        slides, tmp_path / "ray", predictor, settings, "ray", progress=False, ray_options=options
    )
    ray_s = time.perf_counter() - start
    assert [r.status for r in remote] == ["done"] * 3, [r.error for r in remote]
    rows_local, rows_ray = (
        read_csv(tmp_path / "local" / "slides.csv"),
        read_csv(tmp_path / "ray" / "slides.csv"),
    )
    for a, b in zip(rows_local, rows_ray, strict=True):
        for key in a:
            if key not in ("seconds", "out_dir"):
                assert a[key] == b[key], key
    for r in local:
        name = r.out_dir.name
        tl, tr = read_csv(r.out_dir / "tiles.csv"), read_csv(tmp_path / "ray" / name / "tiles.csv")
        assert [(t["x"], t["y"]) for t in tl] == [(t["x"], t["y"]) for t in tr]
        assert len(tl) == 144
        pl, pr = (np.array([float(t["p_tumor"]) for t in ts]) for ts in (tl, tr))
        assert np.abs(pl - pr).max() <= 1e-3
        same_summary(r.out_dir / "summary.json", tmp_path / "ray" / name / "summary.json")
        for f in ("lesions.csv", "tumor.geojson"):
            assert (r.out_dir / f).read_text() == (tmp_path / "ray" / name / f).read_text()
    start = time.perf_counter()
    again = run_slides(
        slides, tmp_path / "ray", predictor, settings, "ray", progress=False, ray_options=options
    )
    assert [r.status for r in again] == ["skipped"] * 3
    assert time.perf_counter() - start < ray_s / 3


def test_a_slide_that_cannot_be_read_fails_alone_on_ray(
    ray_session, exact_tiff: Path, untrained_model_file: Path, tmp_path: Path
) -> None:
    good = Path(shutil.copy(exact_tiff, tmp_path / "good.tif"))
    bad = tmp_path / "bad.tif"
    bad.write_text("not a slide")
    predictor = Predictor.load(untrained_model_file, batch_size=64)
    results = run_slides(
        [good, bad],
        tmp_path / "out",
        predictor,
        SlideSettings(batch_size=64),
        "ray",
        progress=False,
        ray_options={"model": untrained_model_file, "device": "cpu"},
    )
    assert [r.status for r in results] == ["done", "failed"]
    assert "bad.tif" in results[1].error
