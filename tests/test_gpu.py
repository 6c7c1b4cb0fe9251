"""The CUDA path: the bundled model on the GPU scores as on the CPU, and training runs in bf16.

Marked ``gpu``: skipped where torch sees no CUDA device (CI has none). Run them where it does
with ``pytest -m gpu``. Expected values come from the CPU fp32 torch engine on the same patches,
and the AUC bar is the one the CPU engines meet in tests/models/test_bundled_engines.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import bundled_held_out, write_separable_folder
from histoscan.data.sources import open_source
from histoscan.predict import Predictor

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

N_PATCHES = 300


@pytest.fixture(scope="module")
def held_out(real_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the first validation patches of the bundled model (never trained on)."""
    return bundled_held_out(real_root, N_PATCHES)


@pytest.fixture(scope="module")
def cpu_fp32(held_out: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    predictor = Predictor.load(None, engine="torch", device="cpu", precision="fp32")
    return predictor.infer(held_out[0], tta="d4").logits  # (N, 8): every view


def test_auto_chooses_the_torch_engine_on_the_gpu() -> None:
    predictor = Predictor.load(None)
    described = predictor.describe()
    assert (described["engine"], described["device"]) == ("torch", "cuda:0")
    # bf16 where the GPU computes it natively (Ampere and later)
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert described["precision"] == expected


def test_fp32_on_the_gpu_matches_the_cpu(held_out, cpu_fp32) -> None:
    gpu = Predictor.load(None, engine="torch", device="cuda", precision="fp32")
    logits = gpu.infer(held_out[0], tta="d4").logits
    assert logits.shape == cpu_fp32.shape == (N_PATCHES, 8)
    # view by view; TF32 convolutions may be on: 2e-2 in logit, far below any decision change
    np.testing.assert_allclose(logits, cpu_fp32, atol=2e-2)
    assert roc_auc_score(held_out[1], logits.mean(axis=1)) >= 0.95


def test_bf16_on_the_gpu_scores_as_the_cpu_does(held_out, cpu_fp32) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no native bf16")
    gpu = Predictor.load(None, engine="torch", device="cuda", precision="bf16")
    assert gpu.describe()["precision"] == "bf16"
    t = gpu.temperature
    p_gpu = 1 / (1 + np.exp(-gpu.logits(held_out[0], tta="d4") / t))
    p_cpu = 1 / (1 + np.exp(-cpu_fp32.mean(axis=1) / t))
    assert np.abs(p_gpu - p_cpu).max() < 0.05
    assert np.mean((p_gpu >= 0.5) == (p_cpu >= 0.5)) >= 0.97
    assert roc_auc_score(held_out[1], p_gpu) >= 0.95


def test_features_come_back_from_the_gpu(held_out) -> None:
    gpu = Predictor.load(None, engine="torch", device="cuda", precision="fp32")
    cpu = Predictor.load(None, engine="torch", device="cpu", precision="fp32")
    images = held_out[0][:16]
    g = gpu.infer(images, tta="none", features=True)
    c = cpu.infer(images, tta="none", features=True)
    assert g.features.shape == c.features.shape and g.features.dtype == np.float32
    np.testing.assert_allclose(g.features, c.features, atol=2e-2, rtol=2e-2)


def test_training_runs_on_the_gpu_in_bf16(tmp_path: Path) -> None:
    from histoscan.config import load_train_config
    from histoscan.train import fit

    data = write_separable_folder(tmp_path / "data", n_per_class=24)
    cfg = load_train_config(
        None,
        model="histocnn",
        epochs=4,
        batch_size=16,
        lr=3e-3,
        val_fraction=0.25,
        ema_decay=0.0,
        accelerator="gpu",
        precision="bf16",
        augment={"hed_sigma": 0.0, "hed_bias": 0.0, "shift_px": 0},
    )
    model_path = fit(open_source(data), cfg, tmp_path / "run", progress=False)
    card = Predictor.load(model_path, engine="torch", device="cpu").model_file.card
    assert card["val_auc_tta_d4"] > 0.95
    losses = [row["train_loss"] for row in card["history"]]
    assert losses[-1] < losses[0]
