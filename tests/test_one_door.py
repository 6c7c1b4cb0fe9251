"""One inference door: every command gives the same probability for the same patch, model and
engine; evaluate and report give identical numbers; the default path runs without torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from helpers import subset_source
from histoscan.cli import app
from histoscan.data.sources import open_source
from histoscan.predict import Predictor

runner = CliRunner()
HISTOSCAN = Path(sys.executable).with_name("histoscan")


@pytest.fixture(scope="module")
def val_patches(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """16 of the bundled model's validation patches (8 per class) as .tif files with labels."""
    source = open_source(real_root / "train")
    val = set(Predictor.load().model_file.card["val_ids"])
    picks: list[int] = []
    for cls in (0, 1):
        picks += [i for i, k in enumerate(source.ids) if k in val and source.labels[i] == cls][:8]
    folder = tmp_path_factory.mktemp("val16") / "patches"
    folder.mkdir()
    rows = []
    for i in picks:
        tifffile.imwrite(folder / f"{source.ids[i]}.tif", source.read(i), photometric="rgb")
        rows.append((source.ids[i], int(source.labels[i])))
    labels = folder.parent / "labels.csv"
    with open(labels, "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "label"), *rows])
    return folder, rows


def read_csv_probs(path: Path, column: str = "label") -> dict[str, float]:
    return {r["id"]: float(r[column]) for r in csv.DictReader(open(path))}


def test_predict_evaluate_serve_and_slide_agree(val_patches, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from histoscan.serve import ServeSettings, create_app
    from histoscan.slide.run import analyse_slide

    folder, rows = val_patches
    ids = [k for k, _ in rows]
    images = np.stack([tifffile.imread(folder / f"{k}.tif") for k in ids])
    predictor = Predictor.load()
    assert predictor.describe()["engine"] == "onnx-int8"  # the default on a CPU
    expected = dict(zip(ids, predictor.predict_proba(images, "none"), strict=True))

    out = tmp_path / "p.csv"
    result = runner.invoke(
        app, ["predict", str(folder), "-o", str(out), "--tta", "none", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    predicted = read_csv_probs(out)

    labels = folder.parent / "labels.csv"
    ev = tmp_path / "ev"
    args = ["evaluate", str(folder), "--labels", str(labels), "--out", str(ev), "--tta", "none"]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = read_csv_probs(ev / "predictions.csv")
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["inference"]["engine"] == "onnx-int8" and metrics["n_seen_in_training"] == 0

    settings = ServeSettings(tta="none")
    with TestClient(create_app(predictor, settings), base_url="http://127.0.0.1:8000") as client:
        files = [
            ("files", (f"{k}.tif", (folder / f"{k}.tif").read_bytes(), "image/tiff")) for k in ids
        ]
        body = client.post("/v1/predict", files=files).json()
    served = {r["id"][: -len(".tif")]: r["p_tumor"] for r in body["results"]}

    # a 4 x 4 mosaic of the same patches at the model's resolution, each patch one tile
    mosaic = np.zeros((4 * 96, 4 * 96, 3), dtype=np.uint8)
    for j, image in enumerate(images):
        r, c = divmod(j, 4)
        mosaic[r * 96 : (r + 1) * 96, c * 96 : (c + 1) * 96] = image
    slide = tmp_path / "mosaic.tif"
    per_cm = 1e4 / 0.972
    tifffile.imwrite(
        slide,
        mosaic,
        photometric="rgb",
        tile=(128, 128),
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    analyse_slide(slide, tmp_path / "slide", predictor, tta="none", min_tissue=0.01, progress=False)
    tiles = {
        (int(t["x"]), int(t["y"])): float(t["p_tumor"])
        for t in csv.DictReader(open(tmp_path / "slide" / "tiles.csv"))
    }
    slid = {k: tiles[(j % 4 * 96, j // 4 * 96)] for j, k in enumerate(ids)}

    for key in ids:
        want = expected[key]
        for name, got in (
            ("predict", predicted),
            ("evaluate", evaluated),
            ("serve", served),
            ("slide", slid),
        ):
            assert abs(got[key] - want) <= 2e-6, (name, key, got[key], want)


def test_evaluate_and_report_give_identical_numbers(real_root: Path, tmp_path: Path) -> None:
    from histoscan.evaluate import evaluate_model
    from histoscan.report.build import collect

    source = open_source(real_root / "train")
    predictor = Predictor.load()
    val = set(predictor.model_file.card["val_ids"])
    # the report evaluates the validation ids it finds; give it 120 of them and nothing else
    idx = np.array([i for i, k in enumerate(source.ids) if k in val][:120])
    sub = subset_source(source, idx)
    evaluated = evaluate_model(predictor, sub, None, tmp_path / "ev", tta="d4", progress=False)
    reported = collect(predictor, sub, None, "d4", progress=False)
    assert reported.inference == evaluated["inference"]
    for key, value in evaluated["calibrated"].items():
        assert reported.metrics[key] == value, key


def test_the_default_path_runs_without_torch(val_patches, tmp_path: Path) -> None:
    """`histoscan predict` and `evaluate` with torch unimportable: the int8 engine needs none."""
    folder, rows = val_patches
    stub = tmp_path / "stub"
    for name in ("torch", "lightning", "timm", "torchvision"):
        (stub / name).mkdir(parents=True)
        (stub / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked in this test')\n"
        )
    env = {**os.environ, "PYTHONPATH": str(stub)}
    out = tmp_path / "p.csv"
    done = subprocess.run(
        [str(HISTOSCAN), "predict", str(folder), "-o", str(out), "--tta", "d4", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    images = np.stack([tifffile.imread(folder / f"{k}.tif") for k, _ in rows])
    expected = Predictor.load().predict_proba(images, "d4")
    got = read_csv_probs(out)
    np.testing.assert_allclose([got[k] for k, _ in rows], expected, atol=2e-6)

    labels = folder.parent / "labels.csv"
    done = subprocess.run(
        [
            str(HISTOSCAN),
            "evaluate",
            str(folder),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "ev"),
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # and a command that needs torch says so in one line
    done = subprocess.run(
        [str(HISTOSCAN), "predict", str(folder), "-o", str(out), "--engine", "torch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "histoscan[train]" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_evaluate_counts_and_leaves_out_patches_seen_in_training(
    real_root: Path, tmp_path: Path
) -> None:
    source = open_source(real_root / "train")
    meta = Predictor.load().model_file.meta
    val = set(meta.card["val_ids"])
    train_idx = [i for i, k in enumerate(source.ids) if k not in val][:30]
    val_idx = [i for i, k in enumerate(source.ids) if k in val][:20]
    folder = tmp_path / "mixed"
    folder.mkdir()
    rows = [("id", "label")]
    for i in train_idx + val_idx:
        tifffile.imwrite(folder / f"{source.ids[i]}.tif", source.read(i), photometric="rgb")
        rows.append((source.ids[i], int(source.labels[i])))
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(folder),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--out",
            str(tmp_path / "ev"),
            "--tta",
            "none",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_seen_in_training"] == 30
    assert metrics["n_evaluated"] == 20 == metrics["calibrated"]["n"]
    held_out = {source.ids[i] for i in val_idx}
    assert set(read_csv_probs(tmp_path / "ev" / "predictions.csv")) == held_out
