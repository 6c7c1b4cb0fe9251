"""Prediction: TTA semantics, ONNX parity, the submission CSV, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from helpers import write_separable_folder
from histoscan.cli import app
from histoscan.models.bundle import ModelFile, load_model_file
from histoscan.models.registry import model_spec
from histoscan.predict import Predictor, export_onnx

runner = CliRunner()


class ColourMean(nn.Module):
    """Logit from the mean colour only: invariant under every flip and rotation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # (B, 1)


def test_tta_of_a_flip_invariant_model_changes_nothing() -> None:
    torch.manual_seed(0)
    predictor = Predictor(ModelFile(spec=model_spec("histocnn"), net=ColourMean().eval()))
    images = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    none = predictor.predict_proba(images, tta="none")
    np.testing.assert_allclose(predictor.predict_proba(images, tta="flip"), none, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(images, tta="d4"), none, atol=1e-6)


def test_d4_averages_the_eight_distinct_views(untrained_model_file: Path) -> None:
    predictor = Predictor.load(untrained_model_file)
    image = np.random.default_rng(1).integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    views = []
    for k in range(8):
        view = image[:, :, ::-1] if k >= 4 else image
        views.append(np.ascontiguousarray(np.rot90(view, k % 4, axes=(1, 2))))
    assert len({v.tobytes() for v in views}) == 8
    manual = np.mean([predictor.logits(v, tta="none") for v in views])
    np.testing.assert_allclose(predictor.logits(image, tta="d4"), [manual], rtol=1e-5)


def test_onnx_engine_matches_torch(
    untrained_model_file: Path, real_root: Path, tmp_path: Path
) -> None:
    from histoscan.data.sources import open_source

    images = open_source(real_root / "train").read_many(range(64))
    onnx_path = tmp_path / "m.onnx"
    export_onnx(load_model_file(untrained_model_file), onnx_path)
    torch_probs = Predictor.load(untrained_model_file).predict_proba(images)
    onnx_probs = Predictor.load(onnx_path).predict_proba(images)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)


def test_predict_cli_writes_a_kaggle_submission(real_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = runner.invoke(
        app, ["predict", str(real_root / "test"), "--output", str(out), "--tta", "flip", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    expected = {r["id"] for r in csv.DictReader(open(real_root / "sample_submission.csv"))}
    assert {r["id"] for r in rows} == expected
    assert all(0.0 <= float(r["label"]) <= 1.0 for r in rows)


def test_corrupt_image_is_named_and_no_csv_is_written(
    tmp_path: Path, untrained_model_file: Path
) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=3)
    broken = data / "1" / "1_001.png"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    out = tmp_path / "preds.csv"
    result = runner.invoke(
        app, ["predict", str(data), "-o", str(out), "--model", str(untrained_model_file), "--quiet"]
    )
    assert result.exit_code == 2
    assert "1_001.png" in result.output and "unreadable" in result.output
    assert not out.exists() and not list(tmp_path.glob(".preds.csv*"))


@pytest.mark.parametrize("case", ["not-a-model", "empty-folder", "missing-data"])
def test_bad_input_exits_2_with_one_line(
    case: str, tmp_path: Path, untrained_model_file: Path
) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=2)
    model = untrained_model_file
    if case == "not-a-model":
        model = tmp_path / "model.pt"
        model.write_text("hello")
    elif case == "empty-folder":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = tmp_path / "nowhere"
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(data), "-o", str(out), "-m", str(model)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_threshold_rules_use_validation_data(untrained_model_file: Path) -> None:
    mf = load_model_file(untrained_model_file)
    rng = np.random.default_rng(0)
    mf.val_labels = rng.integers(0, 2, 200)
    mf.val_logits = mf.val_labels * 2.0 + rng.normal(0, 1, 200)
    predictor = Predictor(mf)
    assert predictor.threshold() == 0.5
    sens = predictor.threshold("sens:0.95")
    probs = 1 / (1 + np.exp(-mf.val_logits))
    assert (probs[mf.val_labels == 1] >= sens).mean() >= 0.95
    assert 0 < predictor.threshold("youden") < 1


def test_auto_engine_prefers_exported_onnx_beside_the_model(
    untrained_model_file: Path, tmp_path: Path, real_root: Path
) -> None:
    from histoscan.data.sources import open_source
    from histoscan.predict import quantize_onnx

    model = tmp_path / "m.pt"
    model.write_bytes(untrained_model_file.read_bytes())
    assert Predictor.load(model).engine == "torch"
    fp32 = export_onnx(load_model_file(model), tmp_path / "m.onnx")
    assert Predictor.load(model).engine == "onnx"
    images = open_source(real_root / "train").read_many(range(64))
    (tmp_path / "m.int8.onnx").write_bytes(quantize_onnx(fp32, images))
    int8 = Predictor.load(model)
    assert int8.engine == "onnx-int8" and int8.model_file.net is not None  # Grad-CAM still works
    torch_probs = Predictor.load(model, engine="torch").predict_proba(images)
    assert np.abs(int8.predict_proba(images) - torch_probs).max() < 0.05
