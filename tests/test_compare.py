"""histoscan compare: DeLong's paired AUC test and McNemar against first principles; the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from histoscan.cli import app
from histoscan.compare import delong_paired, mcnemar_exact

runner = CliRunner()


def delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """AUC difference and its variance from DeLong's definition, O(m n) with explicit loops."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10 = np.array([[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)])
    v01 = np.array([[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)])
    auc = v10.mean(axis=1)

    def cov(v: np.ndarray, k: int, j: int) -> float:
        return float(((v[k] - v[k].mean()) * (v[j] - v[j].mean())).sum() / (v.shape[1] - 1))

    var = sum(
        sign * (cov(v10, k, j) / m + cov(v01, k, j) / n)
        for k, j, sign in ((0, 0, 1), (1, 1, 1), (0, 1, -2))
    )
    return float(auc[0] - auc[1]), var


def test_delong_matches_its_definition_and_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 70)
    a = np.round(y + rng.normal(0, 0.8, 70), 1)  # rounded: ties within and across classes
    b = np.round(y + rng.normal(0, 1.2, 70), 1)
    r = delong_paired(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    diff, var = delong_by_definition(y, a, b)
    assert r.diff == pytest.approx(diff, abs=1e-12)
    assert r.se == pytest.approx(math.sqrt(var), rel=1e-9)
    half = 1.959963984540054 * r.se
    assert r.ci95 == pytest.approx((diff - half, diff + half))
    assert r.p_value == pytest.approx(math.erfc(abs(diff) / r.se / math.sqrt(2)), rel=1e-9)


def test_a_model_compared_with_itself_differs_by_nothing():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    r = delong_paired(y, s, s)
    assert r.diff == 0 and r.se == 0 and r.p_value == 1


def test_mcnemar_counts_and_exact_p():
    y = np.ones(14, int)
    a = np.array([1] * 10 + [0] * 4)  # right on the first ten
    b = np.array([1] * 2 + [0] * 8 + [1] * 2 + [0] * 2)
    r = mcnemar_exact(y, a, b)
    assert (r["only_a_right"], r["only_b_right"]) == (8, 2)
    assert (r["both_right"], r["both_wrong"]) == (2, 2)
    # exact two-sided binomial: 10 discordant, 2 the rarer way: 2 (C(10,0)+C(10,1)+C(10,2)) / 2^10
    assert r["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_compare_cli_on_real_patches_leaves_out_training_patches(real_root: Path, tmp_path: Path):
    """The bundled model's torch weights against its int8 ONNX copy on 40 real patches."""
    from helpers import write_labels
    from histoscan.models.modelfile import bundled_model_path, load_model_file

    mf = load_model_file(None)
    val_ids = sorted(mf.card["val_ids"])
    with open(real_root / "train_labels.csv") as fh:
        labels = dict(csv.reader(fh))
    train_ids = sorted(i for i in labels if i in labels and i not in set(val_ids))[:6]
    chosen = val_ids[:34] + train_ids
    folder = tmp_path / "patches"
    folder.mkdir()
    for key in chosen:
        (folder / f"{key}.webp").symlink_to(real_root / "train" / f"{key}.webp")
    write_labels(tmp_path / "labels.csv", [(k, labels[k]) for k in chosen])
    onnx = Path(bundled_model_path()).with_suffix(".int8.onnx")
    out = tmp_path / "cmp"
    args = [str(bundled_model_path()), str(onnx), "--data", str(folder), "--out", str(out)]
    result = runner.invoke(
        app, ["compare", *args, "--labels", str(tmp_path / "labels.csv"), "--tta", "none",
              "--engine", "torch", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "compare.json").read_text())
    assert r["n"] == 34 and r["n_seen_in_training"] == 6
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["id"] for row in rows) == sorted(val_ids[:34])
    y = np.array([int(row["label"]) for row in rows])
    p_a = np.array([float(row["p_a"]) for row in rows])
    p_b = np.array([float(row["p_b"]) for row in rows])
    assert r["models"]["a"]["roc_auc"] == pytest.approx(roc_auc_score(y, p_a), abs=1e-6)
    assert r["models"]["b"]["roc_auc"] == pytest.approx(roc_auc_score(y, p_b), abs=1e-6)
    assert abs(r["auc_difference"]["a_minus_b"]) < 0.05  # int8 is close to fp32
    assert r["models"]["a"]["engine"] != r["models"]["b"]["engine"]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
