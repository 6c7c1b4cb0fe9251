"""Probabilities worked out from first principles, never through the predictor under test.

A histocnn with fixed random weights, a head scaled so logits spread over several units, and
T = 2: the expected probability of a patch is ``sigmoid(mean over its views of net((x/255 - mean)
/ std)) / T)``, with the eight dihedral views and the normalisation written out here in numpy.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import write_separable_folder
from histoscan.cli import app
from histoscan.data.sources import open_source
from histoscan.models.bundle import save_model_file
from histoscan.models.modelfile import ModelMeta
from histoscan.models.registry import create_model, model_spec
from histoscan.predict import Predictor

T = 2.0
VAL_LOGITS = np.array([-3.0, -1.0, -0.2, 0.4, 0.8, 1.6, 2.4, 4.0])
VAL_LABELS = np.array([0, 0, 1, 0, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(5)
    net = create_model("histocnn").eval()
    with torch.no_grad():
        net.fc.weight.mul_(40.0)  # logits of several units, so T and the views matter
        net.fc.bias.fill_(0.3)
    meta = ModelMeta(
        spec=model_spec("histocnn"),
        temperature=T,
        threshold=0.35,
        val_logits=VAL_LOGITS,
        val_labels=VAL_LABELS,
        card={"name": "known-weights"},
    )
    path = tmp_path_factory.mktemp("known") / "known.pt"
    save_model_file(path, meta, net)
    return path, net


def network_logit(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """One view: uint8 (N, H, W, 3) -> ImageNet-normalised (N, 3, H, W) -> logit (N,)."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (images.astype(np.float32) / 255.0 - mean) / std  # (N, H, W, 3)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, 3, H, W)
    with torch.no_grad():
        return net(x)[:, 0].double().numpy()


def views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """none: the patch; flip: and its mirror (width axis); d4: all 4 rotations of both."""
    mirror = images[:, :, ::-1]
    if tta == "none":
        return [images]
    if tta == "flip":
        return [images, mirror]
    return [np.rot90(im, k, axes=(1, 2)) for im in (images, mirror) for k in range(4)]


def expected_probs(net: torch.nn.Module, images: np.ndarray, tta: str) -> np.ndarray:
    mean_logit = np.mean([network_logit(net, v) for v in views(images, tta)], axis=0)
    return 1.0 / (1.0 + np.exp(-mean_logit / T))


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    rng = np.random.default_rng(11)
    images = rng.integers(140, 230, (12, 96, 96, 3), dtype=np.uint8)
    images[::2, 20:60, 30:50] = rng.integers(30, 90, (6, 40, 20, 3), dtype=np.uint8)  # asymmetric
    return images


@pytest.mark.parametrize("tta", ["none", "flip", "d4"])
def test_probabilities_are_sigmoid_of_mean_view_logit_over_t(known, patches, tta) -> None:
    path, net = known
    predictor = Predictor.load(path, engine="torch", device="cpu", precision="fp32")
    expected = expected_probs(net, patches, tta)
    assert np.ptp(expected) > 0.01  # the patches really get different answers
    np.testing.assert_allclose(predictor.predict_proba(patches, tta=tta), expected, atol=2e-5)
    mean_logit = np.mean([network_logit(net, v) for v in views(patches, tta)], axis=0)
    np.testing.assert_allclose(predictor.logits(patches, tta=tta), mean_logit, atol=1e-4)


def test_the_views_matter_for_this_model(known, patches) -> None:
    _, net = known
    per_view = np.stack([network_logit(net, v) for v in views(patches, "d4")])  # (8, N)
    assert per_view.std(axis=0).min() > 1e-3  # so a wrong or missing view changes the mean


def test_onnx_engine_gives_the_same_probabilities(known, patches) -> None:
    path, net = known
    predictor = Predictor.load(path, engine="onnx", device="cpu")
    np.testing.assert_allclose(
        predictor.predict_proba(patches, tta="d4"), expected_probs(net, patches, "d4"), atol=1e-4
    )


def test_threshold_rules_use_calibrated_validation_probabilities(known) -> None:
    path, _ = known
    predictor = Predictor.load(path, engine="torch", device="cpu", precision="fp32")
    assert predictor.threshold() == 0.35
    assert predictor.threshold(0.6) == 0.6
    # every positive is caught down to the lowest positive logit, -0.2: sigmoid(-0.2 / T)
    assert predictor.threshold("sens:0.95") == pytest.approx(1 / (1 + math.exp(0.1)), abs=1e-6)
    # Youden at logit 0.8 (sens 4/5, spec 4/4 -> 0.8) beats -0.2 (1 + 2/3 - 1 = 0.667)
    assert predictor.threshold("youden") == pytest.approx(1 / (1 + math.exp(-0.4)), abs=1e-6)


def test_evaluate_writes_calibrated_probabilities_and_their_metrics(known, tmp_path) -> None:
    path, net = known
    data = write_separable_folder(tmp_path / "data", n_per_class=5)
    source = open_source(data)
    images = source.read_many(range(len(source)))
    expected = expected_probs(net, images, "d4")
    raw = 1.0 / (1.0 + np.exp(-np.log(expected / (1 - expected)) * T))  # sigmoid(mean logit)
    labels = source.labels.astype(float)

    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(data),
            "--out",
            str(out),
            "--model",
            str(path),
            "--engine",
            "onnx",
        ],
    )

    assert result.exit_code == 0, result.output
    with open(out / "predictions.csv", newline="") as fh:
        rows = {r["id"]: float(r["label"]) for r in csv.DictReader(fh)}
    got = np.array([rows[k] for k in source.ids])
    np.testing.assert_allclose(got, expected, atol=1e-4)  # fp32 ONNX: the CLI picks no bf16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["temperature"] == pytest.approx(T)
    brier = np.mean((expected - labels) ** 2)
    assert metrics["calibrated"]["brier"] == pytest.approx(brier, abs=1e-4)
    assert metrics["uncalibrated"]["brier"] == pytest.approx(np.mean((raw - labels) ** 2), abs=1e-4)
    p = np.clip(expected, 1e-7, 1 - 1e-7)
    nll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert metrics["calibrated"]["nll"] == pytest.approx(nll, abs=1e-4)
