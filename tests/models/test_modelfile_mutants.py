"""The model format (``histoscan/models/modelfile.py``): metadata values, round trips, damage.

Written to kill the mutants of modelfile.py (scripts/mutants.py). Expected values are written out
here (digests by hand, sigmoid by hand, the JSON a file must hold), never read back through the
function under test alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from handmade_onnx import small_meta, weight_map, write_graph
from histoscan.errors import ModelError
from histoscan.models.bundle import save_model_file
from histoscan.models.modelfile import (
    BUNDLED_NAME,
    DIGEST_HEX,
    FORMAT,
    ModelFile,
    ModelMeta,
    bundled_model_path,
    id_digest,
    load_model_file,
    onnx_meta_from_props,
    read_onnx_meta,
    sibling,
)
from histoscan.models.registry import ModelSpec, create_model

SPEC = ModelSpec(name="histocnn", patch_px=6, input_px=6)
W = weight_map(2)


def test_constants_of_the_format() -> None:
    assert FORMAT == "histoscan-model/1"
    assert DIGEST_HEX == 12
    assert BUNDLED_NAME == "histocnn-pcam.pt"
    path = bundled_model_path()
    assert path.name == "histocnn-pcam.pt" and path.parent.name == "weights"
    assert path.is_file() and path.with_name("histocnn-pcam.int8.onnx").is_file()


def test_id_digest_keeps_lower_case_prefixes() -> None:
    sha = hashlib.sha1(b"patch").hexdigest()
    assert id_digest([sha.upper(), "Short"]) == frozenset({sha[:12], "short"})
    assert id_digest([]) == frozenset()


def test_seen_in_training_matches_on_the_prefix() -> None:
    a, b = hashlib.sha1(b"a").hexdigest(), hashlib.sha1(b"b").hexdigest()
    meta = ModelMeta(spec=SPEC, train_digest=frozenset({a[:12], "x1"}))
    seen = meta.seen_in_training([a, a.upper(), b, "X1", a[:11]])
    assert seen.dtype == bool
    assert seen.tolist() == [True, True, False, True, False]
    none = meta.seen_in_training([])
    assert none.shape == (0,) and none.dtype == bool  # a mask even when empty


def test_defaults_of_new_metadata() -> None:
    meta = ModelMeta(spec=SPEC)
    assert meta.temperature == 1.0 and meta.threshold == 0.5
    assert meta.val_logits.shape == (0,) and meta.val_labels.shape == (0,)
    assert meta.val_labels.dtype == np.int64
    assert meta.card == {} and meta.train_digest == frozenset()
    assert meta.calibrated_on == "torch"


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_a_positive_number(temperature: float) -> None:
    with pytest.raises(ModelError, match=r"^temperature must be a positive number, not"):
        ModelMeta(spec=SPEC, temperature=temperature)


def test_tiny_positive_temperature_is_valid() -> None:
    assert ModelMeta(spec=SPEC, temperature=1e-6).temperature == 1e-6


def test_validation_logits_and_labels_must_pair_up() -> None:
    with pytest.raises(ModelError, match=r"^validation logits and labels differ in length$"):
        ModelMeta(spec=SPEC, val_logits=np.zeros(3), val_labels=np.zeros(2, np.int64))


def test_validation_probabilities_are_calibrated() -> None:
    meta = small_meta()
    z = np.array([-3.0, -1.0, -0.2, 0.4, 0.8, 1.6, 2.4, 4.0])
    np.testing.assert_allclose(meta.val_probs, 1 / (1 + np.exp(-z / 2.0)), rtol=1e-12)
    assert meta.val_probs.dtype == np.float64


def test_to_json_is_plain_values() -> None:
    meta = small_meta(
        card={"name": "m", "when": Path("/x")},
        train_digest=frozenset({"bb", "aa"}),
    )
    data = meta.to_json()
    assert data == {
        "format": "histoscan-model/1",
        "spec": SPEC.to_dict(),
        "temperature": 2.0,
        "threshold": 0.4,
        "val_logits": [-3.0, -1.0, -0.2, 0.4, 0.8, 1.6, 2.4, 4.0],
        "val_labels": [0, 0, 1, 0, 1, 1, 1, 1],
        "card": {"name": "m", "when": "/x"},
        "train_digest": ["aa", "bb"],
        "calibrated_on": "onnx",
    }
    json.dumps(data)  # plain JSON all the way down
    assert all(type(v) is float for v in data["val_logits"])
    assert all(type(v) is int for v in data["val_labels"])


def test_from_json_round_trip_and_old_files() -> None:
    meta = small_meta(train_digest=frozenset({"aa"}))
    back = ModelMeta.from_json(json.loads(json.dumps(meta.to_json())), "m.pt")
    assert back.spec == SPEC and back.temperature == 2.0 and back.threshold == 0.4
    np.testing.assert_array_equal(back.val_logits, meta.val_logits)
    assert back.val_logits.dtype == np.float64 and back.val_labels.dtype == np.int64
    np.testing.assert_array_equal(back.val_labels, meta.val_labels)
    assert back.card == {"name": "handmade", "version": "3.1"}
    assert back.train_digest == frozenset({"aa"}) and back.calibrated_on == "onnx"
    ints = ModelMeta.from_json(
        {"spec": SPEC.to_dict(), "val_logits": [1, -2], "val_labels": [1, 0]}, "m.pt"
    )
    assert ints.val_logits.dtype == np.float64 and ints.val_labels.dtype == np.int64
    old = ModelMeta.from_json({"spec": SPEC.to_dict(), "val_logits": None, "card": None}, "old")
    assert old.val_logits.dtype == np.float64 and old.val_labels.dtype == np.int64
    assert (old.temperature, old.threshold, old.calibrated_on) == (1.0, 0.5, "torch")
    assert old.val_logits.shape == (0,) and old.card == {} and old.train_digest == frozenset()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, "KeyError"),
        ({"spec": {"name": "histocnn"}}, "KeyError"),
        ({"spec": SPEC.to_dict(), "temperature": "warm"}, "ValueError"),
        ({"spec": SPEC.to_dict(), "temperature": None}, "TypeError"),
    ],
)
def test_damaged_metadata_is_named(data: dict, error: str) -> None:
    with pytest.raises(ModelError, match=rf"^m\.pt: damaged model metadata \({error}: "):
        ModelMeta.from_json(data, "m.pt")


def test_unpaired_validation_values_in_a_file() -> None:
    data = {"spec": SPEC.to_dict(), "val_logits": [1.0], "val_labels": []}
    with pytest.raises(ModelError, match=r"^validation logits and labels differ in length$"):
        ModelMeta.from_json(data, "m.pt")


def test_model_file_properties(tmp_path: Path) -> None:
    mf = ModelFile(meta=small_meta(threshold=0.3), path=tmp_path / "x.onnx", kind="onnx")
    assert mf.precision == "fp32"
    assert (mf.spec, mf.temperature, mf.threshold) == (SPEC, 2.0, 0.3)
    assert mf.card == {"name": "handmade", "version": "3.1"} and mf.name == "handmade"
    assert mf.with_meta(card={}).name == "histocnn"
    assert mf.with_meta(card={"name": ""}).name == "histocnn"
    changed = mf.with_meta(temperature=3.0)
    assert changed.temperature == 3.0 and mf.temperature == 2.0
    assert (changed.path, changed.kind, changed.spec) == (mf.path, "onnx", SPEC)
    with pytest.raises(ModelError, match=r"x\.onnx: an ONNX file has no torch weights; use the"):
        mf.torch_net()
    with pytest.raises(ModelError, match="no torch weights"):
        _ = mf.net


def test_pt_file_loads_its_weights_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.manual_seed(1)
    net = create_model("histocnn").eval()
    path = tmp_path / "m.pt"
    save_model_file(path, small_meta(spec=ModelSpec(name="histocnn")), net)
    import histoscan.models.bundle as bundle

    reads: list[Path] = []
    real = bundle.load_torch_weights
    monkeypatch.setattr(
        bundle, "load_torch_weights", lambda p, spec: reads.append(p) or real(p, spec)
    )
    mf = load_model_file(path)
    mf.torch_net()
    assert reads == []  # the weights came with the metadata: the file is read once
    assert (mf.kind, mf.path, mf.precision) == ("pt", path, "fp32")
    assert mf.temperature == 2.0 and mf.card["version"] == "3.1"
    assert mf.torch_net() is mf.torch_net() is mf.net
    lazy = ModelFile(meta=mf.meta, path=path, kind="pt")
    loaded = lazy.torch_net()
    assert reads == [path]
    assert lazy.torch_net() is loaded
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # the inference net takes uint8 NHWC and normalises with the spec's mean and std
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    mean, std = np.array(mf.spec.mean), np.array(mf.spec.std)
    x = (images / 255.0 - mean) / std
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2)).float())[:, 0]
    inference = mf.inference_net()
    assert not inference.training
    got = inference(torch.from_numpy(images))
    np.testing.assert_allclose(
        got.detach().numpy().reshape(-1), expected.detach().numpy(), atol=1e-4
    )


def test_sibling_paths() -> None:
    pt = Path("/m/best.model.pt")
    assert sibling(pt, "onnx-int8") == Path("/m/best.model.int8.onnx")
    assert sibling(pt, "onnx") == Path("/m/best.model.onnx")
    with pytest.raises(ValueError, match=r"^no sibling file for engine 'torch'$"):
        sibling(pt, "torch")


def test_load_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nothing\.pt: no such model file$"):
        load_model_file(tmp_path / "nothing.pt")
    with pytest.raises(ModelError, match="no such model file"):
        load_model_file(tmp_path)  # a folder is not a file


def test_bundled_model_loads_by_default() -> None:
    mf = load_model_file()
    assert mf.path == bundled_model_path() and mf.kind == "pt"


def test_onnx_file_metadata(tmp_path: Path) -> None:
    path = write_graph(tmp_path / "g.ONNX", small_meta(), W, precision="int8")
    mf = load_model_file(path)
    assert (mf.kind, mf.precision, mf.path) == ("onnx", "int8", path)
    assert mf.temperature == 2.0 and mf.threshold == 0.4 and mf.spec == SPEC
    assert read_onnx_meta(path)[1] == "int8"


def test_damaged_onnx_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"bad\.onnx: not an ONNX model onnxruntime can load \("):
        read_onnx_meta(bad)
    foreign = write_graph(tmp_path / "foreign.onnx", None, W)
    with pytest.raises(ModelError, match=r"foreign\.onnx: not exported by histoscan \(no prepro"):
        load_model_file(foreign)


def test_precision_from_props_or_from_the_name() -> None:
    data = small_meta().to_json()
    props = {"histoscan": json.dumps(data)}
    assert onnx_meta_from_props(props, "m.onnx")[1] == "fp32"
    assert onnx_meta_from_props(props, "m.int8.onnx")[1] == "int8"  # older files: by name
    with_precision = {"histoscan": json.dumps({**data, "precision": "int8"})}
    meta, precision = onnx_meta_from_props(with_precision, "m.onnx")
    assert precision == "int8" and meta.temperature == 2.0
    with pytest.raises(ModelError, match=r"^m\.onnx: damaged histoscan metadata \("):
        onnx_meta_from_props({"histoscan": "{not json"}, "m.onnx")
    with pytest.raises(ModelError, match=r"^m\.onnx: damaged model metadata"):
        onnx_meta_from_props({"histoscan": "{}"}, "m.onnx")


def test_graph_metadata_is_read_unoptimised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    levels: list[object] = []
    real = ort.InferenceSession

    def recording(model, options, providers):  # type: ignore[no-untyped-def]
        levels.append(options.graph_optimization_level)
        assert providers == ["CPUExecutionProvider"]
        return real(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    read_onnx_meta(write_graph(tmp_path / "g.onnx", small_meta(), W))
    assert levels == [ort.GraphOptimizationLevel.ORT_DISABLE_ALL]
