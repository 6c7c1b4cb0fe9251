"""The shipped model on every engine scores real held-out patches well, and the engines agree.

Uses 300 of the 1,000 validation patches recorded in the model card (never trained on). An engine
that normalises wrongly (``x / 255`` instead of mean/std) drops to chance here, whatever the
other engines do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import bundled_held_out, subset_source
from histoscan.data.sources import open_source
from histoscan.models.modelfile import load_model_file
from histoscan.predict import Predictor

N_PATCHES = 300


@pytest.fixture(scope="module")
def held_out(real_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the first validation patches of the bundled model (never trained on)."""
    return bundled_held_out(real_root, N_PATCHES)


@pytest.fixture(scope="module")
def scores(held_out: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    images, _ = held_out
    out = {}
    for engine, extra in (("torch", {"precision": "fp32"}), ("onnx", {}), ("onnx-int8", {})):
        predictor = Predictor.load(None, engine=engine, device="cpu", **extra)
        assert predictor.describe()["engine"] == engine
        out[engine] = predictor.predict_proba(images, tta="none")
    return out


@pytest.mark.parametrize("engine", ["torch", "onnx", "onnx-int8"])
def test_each_engine_scores_the_held_out_patches_well(engine, scores, held_out) -> None:
    _, labels = held_out
    assert 80 < labels.sum() < 220  # both classes well represented
    auc = roc_auc_score(labels, scores[engine])
    assert auc >= 0.95, f"{engine}: ROC AUC {auc:.4f} on {len(labels)} held-out real patches"


def test_engines_agree_patch_by_patch(scores) -> None:
    torch_p, onnx_p, int8_p = scores["torch"], scores["onnx"], scores["onnx-int8"]
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)  # the same fp32 function
    # int8 is an approximation with its own temperature: close on every patch, same decisions
    assert np.abs(int8_p - torch_p).max() < 0.1
    assert np.abs(int8_p - torch_p).mean() < 0.01
    assert np.mean((int8_p >= 0.5) == (torch_p >= 0.5)) >= 0.97


def test_bf16_torch_engine_agrees_with_fp32(held_out, scores) -> None:
    images, labels = held_out
    bf16 = Predictor.load(None, engine="torch", device="cpu", precision="bf16")
    p = bf16.predict_proba(images[:64], tta="none")
    assert np.abs(p - scores["torch"][:64]).max() < 0.05
    assert roc_auc_score(labels[:64], p) >= 0.9


@pytest.mark.parametrize("engine", ["torch", "onnx-int8"])
def test_the_explain_and_report_paths_score_as_predict_does(engine, real_root, held_out, scores):
    """explain's case choice and the report's predict-once pass run the same door: same numbers,
    and the features for the maps come out of the same pass."""
    from histoscan.explain.runs import choose_patches
    from histoscan.report.build import predict_once

    source = open_source(real_root / "train")
    val_ids = load_model_file().card["val_ids"][:N_PATCHES]
    extra = {"precision": "fp32"} if engine == "torch" else {}
    predictor = Predictor.load(None, engine=engine, device="cpu", **extra)
    _, probs, labels, _, _ = choose_patches(predictor, source, val_ids, n=1, tta="none")
    np.testing.assert_allclose(probs, scores[engine], atol=1e-9)
    assert roc_auc_score(labels, probs) >= 0.95
    position = {key: i for i, key in enumerate(source.ids)}
    subset = subset_source(source, [position[k] for k in val_ids])
    pred = predict_once(predictor, subset, None, "none", progress=False)
    np.testing.assert_allclose(
        1 / (1 + np.exp(-pred.logits_eval / predictor.temperature)), scores[engine], atol=1e-9
    )
    assert pred.features.shape == (N_PATCHES, 512) and np.isfinite(pred.features).all()
