"""The inference door: TTA semantics, calibration arithmetic, engines, the CSV, and bad input.

Expected values are computed here from first principles (the eight dihedral views written out,
``sigmoid(mean_logit / T)`` by hand), never through the Predictor under test.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from helpers import RecordedBars, write_separable_folder
from histoscan.cli import app
from histoscan.errors import DataError, ModelError
from histoscan.models.bundle import load_model_file, memory_model_file
from histoscan.models.export import export_onnx, quantize_onnx, recalibrate
from histoscan.models.registry import ModelSpec, model_spec
from histoscan.models.torch_engine import TorchEngine
from histoscan.predict import Predictor

runner = CliRunner()
MEAN, STD = np.array(model_spec("histocnn").mean), np.array(model_spec("histocnn").std)


class ColourMean(nn.Module):
    """Logit = w . mean colour of the normalised input + b: invariant under every dihedral view."""

    def __init__(self, weight: tuple[float, float, float] = (1.0, 0.0, 0.0), bias: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(3, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([weight]))
            self.fc.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # (B, 1)


class LeftHalf(nn.Module):
    """Logit = mean normalised red of the left half minus the right half: NOT view-invariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return (x[:, 0, :, :w].mean(dim=(1, 2)) - x[:, 0, :, w:].mean(dim=(1, 2)))[:, None]


def torch_predictor(net: nn.Module, temperature: float = 1.0, batch_size: int = 256) -> Predictor:
    mf = memory_model_file(ModelSpec(name="histocnn"), net.eval(), temperature=temperature)
    return Predictor(mf, TorchEngine(mf.inference_net(), "cpu", "fp32"), batch_size)


def rng_patches(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def normalised_red(images: np.ndarray) -> np.ndarray:
    """(N, H, W): the red channel as the network sees it, (x/255 - mean) / std."""
    return (images[..., 0].astype(np.float64) / 255.0 - MEAN[0]) / STD[0]


def test_probability_is_sigmoid_of_mean_view_logit_over_temperature() -> None:
    images = rng_patches(6)
    predictor = torch_predictor(ColourMean(bias=0.25), temperature=2.0, batch_size=4)
    logit = normalised_red(images).mean(axis=(1, 2)) + 0.25  # by hand
    expected = 1.0 / (1.0 + np.exp(-logit / 2.0))
    np.testing.assert_allclose(predictor.logits(images, "none"), logit, atol=1e-5)
    np.testing.assert_allclose(predictor.predict_proba(images, "d4"), expected, atol=1e-5)


def test_d4_is_the_mean_over_the_eight_distinct_dihedral_views() -> None:
    images = rng_patches(3, seed=1)
    predictor = torch_predictor(LeftHalf(), batch_size=2)
    red = normalised_red(images)  # (N, H, W)
    views = []
    for k in range(8):  # flip the width axis for k >= 4, then k % 4 quarter turns
        v = red[:, :, ::-1] if k >= 4 else red
        views.append(np.rot90(v, k % 4, axes=(1, 2)))
    assert len({v.tobytes() for v in views}) == 8
    per_view = np.stack(
        [v[:, :, :48].mean(axis=(1, 2)) - v[:, :, 48:].mean(axis=(1, 2)) for v in views], 1
    )
    result = predictor.infer(images, "d4")
    assert result.logits.shape == (3, 8)
    np.testing.assert_allclose(result.logits, per_view, atol=1e-5)
    np.testing.assert_allclose(
        predictor.logits(images, "flip"), per_view[:, [0, 4]].mean(1), atol=1e-5
    )
    np.testing.assert_allclose(predictor.logits(images, "none"), per_view[:, 0], atol=1e-5)


def test_tta_of_a_view_invariant_model_changes_nothing() -> None:
    images = rng_patches(5)
    predictor = torch_predictor(ColourMean(weight=(0.3, -0.2, 0.5)))
    none = predictor.predict_proba(images, tta="none")
    np.testing.assert_allclose(predictor.predict_proba(images, tta="flip"), none, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(images, tta="d4"), none, atol=1e-6)


def test_bad_inputs_to_the_door_are_refused() -> None:
    predictor = torch_predictor(ColourMean())
    with pytest.raises(DataError):
        predictor.infer(np.zeros((2, 96, 96), np.uint8), "none")
    with pytest.raises(DataError):
        predictor.infer(np.zeros((2, 96, 96, 3), np.float32), "none")
    with pytest.raises(ValueError, match="TTA"):
        predictor.infer(rng_patches(1), "d8")
    with pytest.raises(ModelError, match="batch-size"):
        Predictor(predictor.model_file, predictor.engine, batch_size=0)
    with pytest.raises(ModelError, match="engine"):
        Predictor.load(engine="tensorrt")
    with pytest.raises(ModelError, match="device"):
        Predictor.load(device="tpu")


def test_onnx_engine_matches_torch_logits_and_features(
    untrained_model_file: Path, real_root: Path, tmp_path: Path
) -> None:
    from histoscan.data.sources import open_source

    images = open_source(real_root / "train").read_many(range(64))
    onnx_path = tmp_path / "m.onnx"
    export_onnx(load_model_file(untrained_model_file), onnx_path)
    torch_fp32 = Predictor.load(untrained_model_file, engine="torch", precision="fp32")
    torch_run = torch_fp32.infer(images, "flip", True)
    onnx = Predictor.load(onnx_path)
    assert onnx.describe()["engine"] == "onnx"
    onnx_run = onnx.infer(images, "flip", True)
    np.testing.assert_allclose(onnx_run.logits, torch_run.logits, atol=1e-4)
    np.testing.assert_allclose(onnx_run.features, torch_run.features, atol=1e-4)
    assert onnx_run.features.shape == (64, 256)


def test_int8_sibling_is_auto_on_cpu_with_its_own_calibration(
    untrained_model_file: Path, tmp_path: Path, real_root: Path
) -> None:
    from histoscan.data.sources import open_source

    model = tmp_path / "m.pt"
    model.write_bytes(untrained_model_file.read_bytes())
    assert Predictor.load(model).describe()["engine"] == "torch"
    source = open_source(real_root / "train")
    images = source.read_many(range(96))
    labels = source.labels[:96]
    int8_bytes = recalibrate(
        quantize_onnx(export_onnx(load_model_file(model)), images), images, labels
    )
    (tmp_path / "m.int8.onnx").write_bytes(int8_bytes)
    int8 = Predictor.load(model)
    run = int8.describe()
    assert (run["engine"], run["precision"], run["calibrated_on"]) == (
        "onnx-int8",
        "int8",
        "onnx-int8",
    )
    # the stored validation logits are the int8 engine's own, and T minimises their NLL
    np.testing.assert_allclose(
        int8.model_file.meta.val_logits, int8.logits(images, "d4"), atol=1e-9
    )
    z, y, t = int8.model_file.meta.val_logits, labels.astype(float), int8.temperature

    def nll(temp: float) -> float:
        s = z / temp
        return float(np.mean(np.logaddexp(0, s) - y * s))

    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1))
    assert int8.torch_model_file().kind == "pt"  # Grad-CAM still has torch weights
    torch_probs = Predictor.load(model, engine="torch", precision="fp32").predict_proba(images)
    assert np.abs(int8.predict_proba(images) - torch_probs).max() < 0.1


def test_a_stale_sibling_is_refused(untrained_model_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(untrained_model_file.read_bytes())
    export_onnx(load_model_file(model), tmp_path / "m.onnx")
    assert Predictor.load(model, engine="onnx").describe()["engine"] == "onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # the .pt changed after export
    with pytest.raises(ModelError, match="another version"):
        Predictor.load(model, engine="onnx")


def test_threshold_rules_use_validation_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = labels * 2.0 + rng.normal(0, 1, 200)
    mf = memory_model_file(
        ModelSpec(name="histocnn"), ColourMean(), val_logits=logits, val_labels=labels
    )
    predictor = Predictor(mf, TorchEngine(mf.inference_net(), "cpu", "fp32"))
    assert predictor.threshold() == 0.5
    probs = 1 / (1 + np.exp(-logits))
    sens = predictor.threshold("sens:0.95")
    # the highest threshold keeping sensitivity >= 0.95: one step higher loses it
    assert (probs[labels == 1] >= sens).mean() >= 0.95
    assert (probs[labels == 1] > sens).mean() < 0.95
    youden = predictor.threshold("youden")
    j = [(probs[labels == 1] >= c).mean() - (probs[labels == 0] >= c).mean() for c in probs]
    assert (probs[labels == 1] >= youden).mean() - (probs[labels == 0] >= youden).mean() == max(j)


def test_predict_cli_writes_a_kaggle_submission(real_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    result = runner.invoke(
        app, ["predict", str(real_root / "test"), "--out", str(out), "--tta", "flip", "--quiet"]
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


@pytest.mark.parametrize("case", ["not-a-model", "empty-folder", "missing-data", "bad-device"])
def test_bad_input_exits_2_with_one_line(
    case: str, tmp_path: Path, untrained_model_file: Path
) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=2)
    model = untrained_model_file
    extra: list[str] = []
    if case == "not-a-model":
        model = tmp_path / "model.pt"
        model.write_text("hello")
    elif case == "empty-folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "missing-data":
        data = tmp_path / "nowhere"
    else:
        extra = ["--device", "cuda:7"]
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(data), "-o", str(out), "-m", str(model), *extra])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_progress_moves_per_batch_and_decoding_overlaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar advances once per engine batch (not once per read chunk or at the end)."""
    import histoscan.predict as predict_module
    from histoscan.data.sources import PatchSource

    bars = RecordedBars()
    monkeypatch.setattr(predict_module, "progress_bar", bars)
    advances = bars.advances
    images = rng_patches(11, seed=3)

    class Memory(PatchSource):
        def read_raw(self, i: int) -> np.ndarray:
            return images[i]

        def locate(self, i: int) -> str:
            return f"memory[{i}]"

    source = Memory(Path("memory"), [str(i) for i in range(11)], np.zeros(11))
    predictor = torch_predictor(ColourMean(), batch_size=3)
    got = predictor.logits_source(source, "none", progress=True)
    assert advances == [3, 3, 3, 2]  # one read of up to 12 patches, scored 3 at a time
    np.testing.assert_allclose(got, normalised_red(images).mean(axis=(1, 2)), atol=1e-5)


def test_torch_engine_makes_the_views_on_its_device_as_numpy_does(untrained_model_file) -> None:
    from histoscan.data.views import dihedral_hwc
    from histoscan.models.modelfile import load_model_file

    engine = TorchEngine(load_model_file(untrained_model_file).inference_net(), "cpu", "fp32")
    images = rng_patches(5, seed=3)
    logits, feats = engine.run_views(images, [0, 2, 5, 7], features=True)
    assert logits.shape == (5, 4) and logits.dtype == np.float64
    for j, k in enumerate((0, 2, 5, 7)):
        np.testing.assert_allclose(logits[:, j], engine.run(dihedral_hwc(images, k))[0], atol=1e-5)
    np.testing.assert_allclose(feats, engine.run(images, features=True)[1], atol=1e-5)
    assert engine.run_views(images, [3])[1].shape == (5, 0)
