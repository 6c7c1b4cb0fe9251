"""Metrics agree with scikit-learn; calibration and the evaluate command."""

from __future__ import annotations

import csv
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
from histoscan.data.sources import open_source
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


def test_metrics_on_a_hand_made_list() -> None:
    # threshold 0.5, a score equal to it counts as tumour: TP 0.9, 0.6, 0.5; FN 0.2; FP 0.7;
    # TN 0.1, 0.3, 0.4
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.5, 0.2, 0.7, 0.1, 0.3, 0.4])
    m = compute_metrics(labels, probs, threshold=0.5, n_boot=50)
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert (m["sensitivity"], m["specificity"], m["precision"]) == (0.75, 0.75, 0.75)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.75)
    # 16 positive-negative pairs; the positive outranks the negative in 11 of them
    # (0.9 beats all 4, 0.6 and 0.5 beat 3 each, 0.2 beats only 0.1)
    pairs = [(p, n) for p in probs[labels == 1] for n in probs[labels == 0]]
    assert sum(p > n for p, n in pairs) == 11
    assert m["roc_auc"] == pytest.approx(11 / 16)
    assert m["brier"] == pytest.approx(np.mean((probs - labels) ** 2))
    expected_nll = -np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    assert m["nll"] == pytest.approx(expected_nll)
    assert (m["n"], m["positives"], m["threshold"]) == (8, 4, 0.5)


def delong_se(labels: np.ndarray, scores: np.ndarray) -> float:
    """Standard error of the ROC AUC from DeLong's placement values (DeLong et al. 1988)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (m, n)
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(np.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)))


def test_reported_95_percent_interval_has_the_width_of_a_95_percent_interval() -> None:
    """A 90 % interval labelled 95 % is 16 % too narrow: 2 x 1.645 SE instead of 2 x 1.960 SE."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 800)
    scores = rng.normal(1.2 * labels, 1.0)  # binormal, AUC about 0.80
    se = delong_se(labels, scores)
    lo, hi = compute_metrics(labels, 1 / (1 + np.exp(-scores)), n_boot=2000)["roc_auc_ci95"]
    z = (hi - lo) / (2 * se)
    assert 1.82 < z < 2.10, f"interval is {z:.3f} standard errors each side, want 1.96"
    auc = skm.roc_auc_score(labels, scores)
    assert lo < auc < hi and abs((lo + hi) / 2 - auc) < 0.25 * se


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
    assert metrics["calibrated"]["n"] == 12 and metrics["calibrated"]["positives"] == 6
    assert {"calibrated", "uncalibrated", "temperature"} <= set(metrics)
    assert metrics["inference"]["engine"] in ("torch", "onnx", "onnx-int8")
    assert metrics["inference"]["temperature"] == pytest.approx(metrics["temperature"], abs=1e-6)
    # AUC does not change under temperature scaling (a monotonic map); calibration numbers may
    assert metrics["calibrated"]["roc_auc"] == pytest.approx(metrics["uncalibrated"]["roc_auc"])
    source = open_source(data)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == source.ids
    assert [int(r["true_label"]) for r in rows] == source.labels.tolist()
    probs = np.array([float(r["label"]) for r in rows])
    assert ((probs > 0) & (probs < 1)).all()
    pred = (probs >= metrics["calibrated"]["threshold"]).astype(int)
    assert metrics["calibrated"]["confusion"] == skm.confusion_matrix(source.labels, pred).tolist()
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
