"""The Predictor on hand-made ONNX graphs: every number is worked out in numpy here.

Written to kill the mutants of ``histoscan/predict.py`` (scripts/mutants.py): loading and engine
choice, sibling files, the TTA arithmetic, batching, reading a source, thresholds, ``describe``,
and the submission CSV. The graphs (``handmade_onnx``) compute ``scale * sum(W * x) + bias``, so
each dihedral view has its own logit and no torch export is needed.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import histoscan.predict as predict_module
from handmade_onnx import (
    expected_features,
    expected_logits,
    patches,
    small_meta,
    weight_map,
    write_graph,
)
from helpers import RecordedBars
from histoscan.errors import DataError, ModelError
from histoscan.models.bundle import save_model_file
from histoscan.models.registry import ModelSpec, create_model
from histoscan.predict import Inference, Predictor, file_sha1, write_predictions

W = weight_map(3)
SCALE, BIAS, T = 40.0, 0.3, 2.0


def views(images: np.ndarray, tta: str) -> list[np.ndarray]:
    """The identity first; flip adds the width mirror; d4 all 4 rotations of both."""
    mirror = images[:, :, ::-1]
    if tta == "none":
        return [images]
    if tta == "flip":
        return [images, mirror]
    return [np.rot90(im, k, axes=(1, 2)) for im in (images, mirror) for k in range(4)]


def view_logits(images: np.ndarray, tta: str) -> np.ndarray:
    """(N, V) by hand."""
    return np.stack([expected_logits(v, W, SCALE, BIAS) for v in views(images, tta)], axis=1)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    return write_graph(tmp_path / "hand.onnx", small_meta(), W, SCALE, BIAS)


@pytest.fixture
def predictor(graph: Path) -> Predictor:
    return Predictor.load(graph, batch_size=3)


class Source:
    """A patch source in memory that records which indices each read asked for."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.reads: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.images)

    def read_many(self, indices: np.ndarray) -> np.ndarray:
        self.reads.append([int(i) for i in indices])
        return self.images[np.asarray(indices, dtype=np.int64)]


@pytest.mark.parametrize("tta", ["none", "flip", "d4"])
def test_each_view_logit_and_the_calibrated_mean(predictor: Predictor, tta: str) -> None:
    images = patches(7, seed=1)  # batches of 3, 3 and 1
    per_view = view_logits(images, tta)
    assert np.ptp(per_view, axis=1).min() > 0.01 or tta == "none"  # the views really differ
    run = predictor.infer(images, tta)
    assert run.logits.shape == (7, len(views(images, tta)))
    assert run.logits.dtype == np.float64
    np.testing.assert_allclose(run.logits[:, 0], per_view[:, 0], atol=1e-4)  # identity first
    np.testing.assert_allclose(np.sort(run.logits, 1), np.sort(per_view, 1), atol=1e-4)
    assert run.features.shape == (7, 0)
    mean = per_view.mean(axis=1)
    np.testing.assert_allclose(predictor.logits(images, tta), mean, atol=1e-4)
    np.testing.assert_allclose(predictor.predict_proba(images, tta), sigmoid(mean / T), atol=1e-5)
    np.testing.assert_allclose(run.probs(T), sigmoid(mean / T), atol=1e-5)
    np.testing.assert_allclose(run.probs(T, tta=False), sigmoid(per_view[:, 0] / T), atol=1e-5)
    np.testing.assert_allclose(run.mean_logits(False), per_view[:, 0], atol=1e-4)


def test_default_tta_is_d4(predictor: Predictor) -> None:
    images = patches(4, seed=2)
    np.testing.assert_allclose(
        predictor.predict_proba(images), sigmoid(view_logits(images, "d4").mean(1) / T), atol=1e-5
    )
    assert predictor.infer(images).logits.shape == (4, 8)
    np.testing.assert_allclose(
        predictor.logits(images), view_logits(images, "d4").mean(1), atol=1e-4
    )
    assert Predictor(predictor.model_file, predictor.engine).batch_size == 256


def test_features_come_from_the_identity_view_only(predictor: Predictor) -> None:
    images = patches(5, seed=4)
    run = predictor.infer(images, "d4", features=True)
    assert run.features.dtype == np.float32
    np.testing.assert_allclose(run.features, expected_features(images, W), atol=1e-5)
    mirrored = expected_features(images[:, :, ::-1], W)
    assert np.abs(mirrored - expected_features(images, W)).max() > 1e-3  # a wrong view shows


def test_empty_input_gives_empty_arrays(predictor: Predictor) -> None:
    run = predictor.infer(np.zeros((0, 6, 6, 3), np.uint8), "flip")
    assert run.logits.shape == (0, 2) and run.features.shape == (0, 0)
    assert run.features.dtype == np.float32
    empty = Source(np.zeros((0, 6, 6, 3), np.uint8))
    assert predictor.predict_source(empty, "d4").shape == (0,)
    assert empty.reads == []  # nothing to read: no read at all


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 6, 6), np.uint8),
        np.zeros((6, 6, 3), np.uint8),
        np.zeros((2, 6, 6, 3), np.float32),
        np.zeros((2, 6, 6, 4), np.uint8),
    ],
)
def test_patches_must_be_uint8_n_h_w_3(predictor: Predictor, bad: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"expected uint8 patches \(N, H, W, 3\), got"):
        predictor.infer(bad, "none")


def test_source_is_read_ahead_in_chunks_and_scored_per_batch(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = RecordedBars()
    bars, advances = recorded.calls, recorded.advances
    monkeypatch.setattr(predict_module, "progress_bar", recorded)
    images = patches(30, seed=5)
    source = Source(images)
    indices = [29, 0, 5, 5, 17, 3, 22, 8, 9, 10, 11, 12, 13, 14, 1]  # 15: chunks of 12 and 3
    expected = view_logits(images[indices], "flip")
    got = predictor.infer_source(source, "flip", indices=indices, features=True, label="embed")
    np.testing.assert_allclose(got.logits, expected, atol=1e-4)
    np.testing.assert_allclose(got.features, expected_features(images[indices], W), atol=1e-5)
    assert source.reads == [indices[:12], indices[12:]]  # batch 3 x 4 batches read ahead
    assert advances == [3, 3, 3, 3, 3]
    assert bars == [(("embed",), {"total": 15, "show": True, "unit": "patches"})]

    bars.clear()
    source.reads.clear()
    logits = predictor.logits_source(source, "none", progress=False)
    np.testing.assert_allclose(logits, view_logits(images, "none")[:, 0], atol=1e-4)
    assert source.reads == [list(range(12)), list(range(12, 24)), list(range(24, 30))]
    assert bars == [(("predict",), {"total": 30, "show": False, "unit": "patches"})]
    probs = predictor.predict_source(source, "d4", indices=[4, 2], progress=False)
    assert bars[-1] == (("predict",), {"total": 2, "show": False, "unit": "patches"})
    np.testing.assert_allclose(
        probs, sigmoid(view_logits(images[[4, 2]], "d4").mean(1) / T), atol=1e-5
    )
    defaults = predictor.infer_source(source)  # all patches, d4, no features
    assert defaults.logits.shape == (30, 8) and defaults.features.shape == (30, 0)
    assert bars[-1] == (("predict",), {"total": 30, "show": True, "unit": "patches"})
    np.testing.assert_allclose(
        predictor.logits_source(source, indices=[7]),
        view_logits(images[[7]], "d4").mean(1),
        atol=1e-4,
    )
    assert bars[-1] == (("predict",), {"total": 1, "show": True, "unit": "patches"})
    predictor.logits_source(source, "none", [1], False, label="evaluate")
    assert bars[-1] == (("evaluate",), {"total": 1, "show": False, "unit": "patches"})
    np.testing.assert_allclose(
        predictor.predict_source(source, indices=[3]),
        sigmoid(view_logits(images[[3]], "d4").mean(1) / T),
        atol=1e-5,
    )
    assert bars[-1] == (("predict",), {"total": 1, "show": True, "unit": "patches"})
    predictor.predict_source(source, "none", [3], True)
    assert bars[-1][1]["show"] is True
    source.reads.clear()
    predictor.infer_source(source, "none", indices=list(range(24)), progress=False)
    assert source.reads == [list(range(12)), list(range(12, 24))]  # no empty third read


def test_a_bad_tta_mode_fails_before_any_read(predictor: Predictor) -> None:
    source = Source(patches(3))
    with pytest.raises(ValueError, match="TTA"):
        predictor.infer_source(source, "d8")
    assert source.reads == []


def test_what_the_model_is_and_what_ran(predictor: Predictor, graph: Path) -> None:
    assert predictor.temperature == T
    assert predictor.name == "handmade"
    assert predictor.version == "3.1"
    assert predictor.spec.patch_px == 6
    assert predictor.describe() == {
        "model": "handmade",
        "model_file": "hand.onnx",
        "engine": "onnx",
        "precision": "fp32",
        "device": "cpu",
        "calibrated_on": "onnx",
        "temperature": 2.0,
        "batch_size": 3,
    }
    assert Predictor.load(graph).batch_size == 256
    assert predictor.model_file.kind == "onnx" and predictor.model_file.precision == "fp32"
    odd = write_graph(graph.with_name("odd.onnx"), small_meta(temperature=2.123456789), W)
    assert Predictor.load(odd).describe()["temperature"] == 2.123457
    plain = write_graph(graph.with_name("plain.onnx"), small_meta(card={}), W)
    assert Predictor.load(plain).version == "0"
    assert Predictor.load(plain).name == "histocnn"  # no card name: the architecture's


def test_thresholds_from_the_stored_validation_logits(predictor: Predictor, graph: Path) -> None:
    assert predictor.threshold() == 0.4
    assert predictor.threshold(0.7) == 0.7
    # every positive caught down to the lowest positive logit, -0.2: sigmoid(-0.2 / T)
    assert predictor.threshold("sens:0.95") == pytest.approx(1 / (1 + math.exp(0.1)), abs=1e-9)
    no_val = write_graph(
        graph.with_name("noval.onnx"),
        small_meta(val_logits=np.zeros(0), val_labels=np.zeros(0, np.int64)),
        W,
    )
    one = write_graph(
        graph.with_name("one.onnx"),
        small_meta(val_logits=np.array([0.4]), val_labels=np.array([1])),
        W,
    )
    with warnings.catch_warnings():  # sklearn: one class only, the false-positive rate is moot
        warnings.simplefilter("ignore")
        sens = Predictor.load(one).threshold("sens:0.95")
    assert sens == pytest.approx(1 / (1 + math.exp(-0.2)))  # one validation patch is enough
    bare = Predictor.load(no_val)
    assert bare.threshold(0.25) == 0.25
    with pytest.raises(
        ModelError, match=r"^threshold rule 'youden' needs validation predictions in the model"
    ):
        bare.threshold("youden")


def test_the_precision_in_the_graph_names_the_engine(tmp_path: Path) -> None:
    int8 = write_graph(tmp_path / "m.onnx", small_meta(), W, precision="int8")
    run = Predictor.load(int8).describe()
    assert (run["engine"], run["precision"]) == ("onnx-int8", "int8")
    assert Predictor.load(int8, engine="onnx-int8").engine.name == "onnx-int8"
    assert Predictor.load(int8).model_file.precision == "int8"
    with pytest.raises(ModelError, match="holds a int8 graph, not what --engine onnx runs"):
        Predictor.load(int8, engine="onnx")
    fp32 = write_graph(tmp_path / "f.onnx", small_meta(), W)
    with pytest.raises(ModelError, match="holds a fp32 graph, not what --engine onnx-int8"):
        Predictor.load(fp32, engine="onnx-int8")
    assert Predictor.load(fp32, engine=None).engine.name == "onnx"


def test_a_foreign_graph_is_named(tmp_path: Path) -> None:
    foreign = write_graph(tmp_path / "foreign.onnx", None, W)
    with pytest.raises(ModelError, match=r"foreign\.onnx: not exported by histoscan"):
        Predictor.load(foreign)


def test_load_refuses_what_it_cannot_run(
    graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelError, match=r"unknown engine 'trt'; choose from auto, torch, onnx,"):
        Predictor.load(graph, engine="trt")
    with pytest.raises(ModelError, match="no such model file"):
        Predictor.load(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="runs on onnx engines, not torch"):
        Predictor.load(graph, engine="torch")
    upper = graph.with_name("UP.ONNX")
    upper.write_bytes(graph.read_bytes())
    with pytest.raises(ModelError, match="not torch"):
        Predictor.load(upper, engine="torch")
    assert Predictor.load(upper).engine.name == "onnx"
    # a device beyond the CPU: ONNX engines refuse it by name
    monkeypatch.setattr(predict_module, "resolve_device", lambda device: device)
    with pytest.raises(
        ModelError, match="ONNX engines run on the CPU; use --engine torch on cuda:1"
    ):
        Predictor.load(graph, device="cuda:1")


def test_auto_device_of_an_onnx_engine_is_the_cpu(
    graph: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_module, "resolve_device", lambda device: "cuda:0")
    assert Predictor.load(graph).engine.device == "cpu"  # "auto" never asks for CUDA here


def test_batch_size_must_be_positive(predictor: Predictor) -> None:
    assert Predictor(predictor.model_file, predictor.engine, 1).batch_size == 1
    with pytest.raises(ModelError, match="--batch-size must be at least 1, not 0"):
        Predictor(predictor.model_file, predictor.engine, 0)


@pytest.fixture
def pt_model(tmp_path: Path) -> Path:
    path = tmp_path / "m.pt"
    meta = small_meta(spec=ModelSpec(name="histocnn"), calibrated_on="torch")  # 96 px patches
    save_model_file(path, meta, create_model("histocnn").eval())
    return path


def sibling_meta(pt: Path, **changes: object):  # type: ignore[no-untyped-def]
    card = {"name": "exported", "exported_from_sha1": hashlib.sha1(pt.read_bytes()).hexdigest()}
    return small_meta(card=card, **changes)


def test_siblings_of_a_pt_file_and_the_auto_choice(pt_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"m\.int8\.onnx: no int8 model; make one with"):
        Predictor.load(pt_model, engine="onnx-int8")
    assert Predictor.load(pt_model, device="cpu").engine.name == "torch"  # no sibling yet
    write_graph(tmp_path / "m.onnx", sibling_meta(pt_model), W, SCALE, BIAS)
    fp32 = Predictor.load(pt_model)
    assert (fp32.engine.name, fp32.model_file.path.name) == ("onnx", "m.onnx")
    assert fp32.torch_path == pt_model  # Grad-CAM still finds the torch weights
    assert fp32.torch_model_file().kind == "pt"
    assert fp32.torch_model_file().path == pt_model
    write_graph(
        tmp_path / "m.int8.onnx", sibling_meta(pt_model), W, 2 * SCALE, BIAS, precision="int8"
    )
    int8 = Predictor.load(pt_model)
    assert (int8.engine.name, int8.model_file.path.name) == ("onnx-int8", "m.int8.onnx")
    images = patches(3, seed=8)
    np.testing.assert_allclose(
        int8.logits(images, "none"), expected_logits(images, W, 2 * SCALE, BIAS), atol=1e-4
    )
    assert Predictor.load(pt_model, engine="onnx").engine.name == "onnx"
    torch_run = Predictor.load(pt_model, engine="torch", device="cpu", precision="fp32")
    assert torch_run.describe()["engine"] == "torch"
    assert torch_run.torch_path == pt_model and torch_run.torch_model_file() is torch_run.model_file


def test_a_sibling_from_another_pt_file_is_refused(pt_model: Path, tmp_path: Path) -> None:
    meta = small_meta(card={"exported_from_sha1": "0" * 40})
    write_graph(tmp_path / "m.onnx", meta, W)
    with pytest.raises(ModelError, match=r"m\.onnx: exported from another version of m\.pt"):
        Predictor.load(pt_model, engine="onnx")
    write_graph(tmp_path / "m.onnx", small_meta(card={}), W)  # nothing recorded: trusted
    assert Predictor.load(pt_model, engine="onnx").engine.name == "onnx"


def test_auto_on_a_gpu_is_torch(pt_model: Path, tmp_path: Path) -> None:
    write_graph(tmp_path / "m.int8.onnx", sibling_meta(pt_model), W, precision="int8")
    assert predict_module._auto_engine(pt_model, "cuda:0") == "torch"
    assert predict_module._auto_engine(pt_model, "cpu") == "onnx-int8"


def test_an_onnx_file_alone_has_no_torch_weights(predictor: Predictor) -> None:
    with pytest.raises(ModelError, match=r"hand\.onnx: Grad-CAM needs the torch model file"):
        predictor.torch_model_file()


def test_file_sha1_reads_every_block(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes((1 << 20) * 2 + 17)  # three blocks of 1 MiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha1(path) == hashlib.sha1(data).hexdigest()


def test_submission_csv_text(tmp_path: Path) -> None:
    out = tmp_path / "sub.csv"
    write_predictions(out, ["a", "b"], np.array([0.1234567, 1.0]))
    assert out.read_bytes() == b"id,label\na,0.123457\nb,1.000000\n"
    write_predictions(out, ["a", "b"], np.array([0.5, 0.25]), {"prediction": [1, 0], "x": "yz"})
    assert out.read_bytes() == b"id,label,prediction,x\na,0.500000,1,y\nb,0.250000,0,z\n"
    with pytest.raises(ValueError):
        write_predictions(out, ["a"], np.array([0.5, 0.25]))


def test_inference_views_and_mean() -> None:
    run = Inference(np.array([[1.0, 3.0], [-2.0, 0.0]]), np.zeros((2, 0), np.float32))
    np.testing.assert_allclose(run.mean_logits(), [2.0, -1.0])
    np.testing.assert_allclose(run.probs(2.0), sigmoid(np.array([1.0, -0.5])))


def test_onnx_engines_of_a_pt_file_stay_on_the_cpu(
    pt_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_graph(tmp_path / "m.onnx", sibling_meta(pt_model), W)
    write_graph(tmp_path / "m.int8.onnx", sibling_meta(pt_model), W, precision="int8")
    monkeypatch.setattr(predict_module, "resolve_device", lambda device: "cuda:0")
    assert Predictor.load(pt_model, engine="onnx").engine.device == "cpu"
    assert Predictor.load(pt_model, engine="onnx-int8").engine.device == "cpu"


def test_grad_cam_without_torch_says_what_to_install(
    pt_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_graph(tmp_path / "m.onnx", sibling_meta(pt_model), W)
    predictor = Predictor.load(pt_model, engine="onnx")

    def no_torch(path):  # type: ignore[no-untyped-def]
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(predict_module, "load_model_file", no_torch)
    with pytest.raises(
        ModelError,
        match=r"^Grad-CAM needs torch: install the train extra "
        r"\(pip install 'histoscan\[train\]'\)$",
    ):
        predictor.torch_model_file()


def test_torch_engine_keeps_the_asked_batch_and_precision(pt_model: Path) -> None:
    for precision in ("fp32", "bf16"):
        run = Predictor.load(pt_model, engine="torch", batch_size=7, precision=precision)
        assert (run.batch_size, run.describe()["precision"]) == (7, precision)


def test_the_torch_engine_needs_torch(pt_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch(path):  # type: ignore[no-untyped-def]
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(predict_module, "load_model_file", no_torch)
    with pytest.raises(
        ModelError,
        match=r"m\.pt: the torch engine needs torch \(pip install 'histoscan\[train\]'\); "
        r"the default engine runs the int8 ONNX sibling without it$",
    ):
        Predictor.load(pt_model, engine="torch")


def test_onnx_without_a_sibling_is_exported_in_memory(pt_model: Path) -> None:
    images = np.random.default_rng(9).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    onnx = Predictor.load(pt_model, engine="onnx", batch_size=5)
    run = onnx.describe()
    assert (run["engine"], run["precision"], run["batch_size"]) == ("onnx", "fp32", 5)
    assert onnx.model_file.path == pt_model and onnx.temperature == 2.0
    torch_run = Predictor.load(pt_model, engine="torch", precision="fp32")
    np.testing.assert_allclose(
        onnx.logits(images, "none"), torch_run.logits(images, "none"), atol=1e-4
    )
