"""Metrics agree with scikit-learn; calibration and the evaluate command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm
from typer.testing import CliRunner

from helpers import write_separable_folder
from histoscan.calibration import fit_temperature, sigmoid
from histoscan.cli import app
from histoscan.evaluate import compute_metrics, expected_calibration_error


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(0.3 * labels + rng.uniform(0, 0.7, 500), 0, 1)
    return labels, probs


def test_metrics_agree_with_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = scored
    m = compute_metrics(labels, probs, threshold=0.5, n_boot=200)
    pred = probs >= 0.5
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(labels, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(labels, pred, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, probs))
    assert m["nll"] == pytest.approx(skm.log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)))
    assert m["confusion"] == skm.confusion_matrix(labels, pred).tolist()
    lo, hi = m["roc_auc_ci95"]
    assert lo < m["roc_auc"] < hi


def test_ece_is_zero_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    probs = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, probs.size) < probs).astype(int)
    assert expected_calibration_error(labels, probs) < 0.01
    assert expected_calibration_error(labels, np.clip(probs * 0.5, 0, 1)) > 0.2


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2, 50_000)
    labels = (rng.uniform(0, 1, true_logits.size) < sigmoid(true_logits)).astype(int)
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.05)


def test_evaluate_cli_writes_metrics_and_plots(tmp_path: Path, untrained_model_file: Path) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=6)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(data),
            "--out",
            str(out),
            "-m",
            str(untrained_model_file),
            "--tta",
            "none",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibrated"]["n"] == 12
    assert {"calibrated", "uncalibrated", "temperature"} <= set(metrics)
    for name in ("roc", "pr", "reliability", "confusion"):
        with Image.open(out / f"{name}.png") as img:
            img.verify()


def test_evaluate_needs_labels(tmp_path: Path, untrained_model_file: Path) -> None:
    data = tmp_path / "unlabelled"
    write_separable_folder(tmp_path / "tmp", n_per_class=2)
    (tmp_path / "tmp" / "0").rename(data)
    result = CliRunner().invoke(
        app, ["evaluate", str(data), "--out", str(tmp_path / "e"), "-m", str(untrained_model_file)]
    )
    assert result.exit_code == 2 and "label" in result.output
