"""ONNX graphs written by hand, whose logits a test can compute in numpy (mutation-test helpers).

``weighted_sum_graph`` maps uint8 patches (N, S, S, 3) to ``logit = scale * sum(W * x) + bias``
and, optionally, ``features = sum over H, W of (W * x)`` (N, 3), with ``W`` a fixed asymmetric
(S, S, 3) weight map: every dihedral view of a patch gets its own logit, and the arithmetic is a
few lines of numpy (``expected_logits``). No torch export: building a graph takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from histoscan.models.modelfile import ONNX_META_KEY, ModelMeta
from histoscan.models.registry import ModelSpec

SIZE = 6  # patch side the graph accepts


def weight_map(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(S, S, 3) float32 weights, asymmetric under every flip and rotation."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1.0, 1.0, (size, size, 3)) / (size * size * 3 * 32.0)).astype(np.float32)


def expected_logits(
    images: np.ndarray, weights: np.ndarray, scale: float, bias: float
) -> np.ndarray:
    """(N,) float64: the graph's logit, by hand."""
    x = images.astype(np.float64)
    return scale * (x * weights.astype(np.float64)).sum(axis=(1, 2, 3)) + bias


def expected_features(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, 3): the graph's features output, by hand."""
    return (images.astype(np.float64) * weights.astype(np.float64)).sum(axis=(1, 2))


def weighted_sum_graph(
    meta: ModelMeta | None,
    weights: np.ndarray,
    scale: float = 1.0,
    bias: float = 0.0,
    features: bool = True,
    precision: str | None = "fp32",
    extra_props: dict[str, str] | None = None,
) -> bytes:
    """The serialized graph; ``meta`` (and ``precision``) go into its ``histoscan`` metadata."""
    size = weights.shape[0]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "w"], ["p"]),
        helper.make_node("ReduceSum", ["p", "axes_all"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "bias"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"])]
    if features:
        nodes.append(helper.make_node("ReduceSum", ["p", "axes_hw"], ["features"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3]))
    inits = [
        numpy_helper.from_array(weights[None].astype(np.float32), "w"),  # (1, S, S, 3)
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes_all"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes_hw"),
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array(bias, np.float32), "bias"),
    ]
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", size, size, 3])
    graph = helper.make_graph(nodes, "weighted_sum", [images], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    props = dict(extra_props or {})
    if meta is not None:
        data = meta.to_json()
        if precision is not None:
            data["precision"] = precision
        props[ONNX_META_KEY] = json.dumps(data)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_graph(path: Path, *args: object, **kwargs: object) -> Path:
    """``weighted_sum_graph`` written to ``path``."""
    path.write_bytes(weighted_sum_graph(*args, **kwargs))  # type: ignore[arg-type]
    return path


def small_meta(**changes: object) -> ModelMeta:
    """Metadata of a 6-pixel model: temperature 2, threshold 0.4, eight validation logits."""
    fields: dict[str, object] = {
        "spec": ModelSpec(name="histocnn", patch_px=SIZE, input_px=SIZE),
        "temperature": 2.0,
        "threshold": 0.4,
        "val_logits": np.array([-3.0, -1.0, -0.2, 0.4, 0.8, 1.6, 2.4, 4.0]),
        "val_labels": np.array([0, 0, 1, 0, 1, 1, 1, 1]),
        "card": {"name": "handmade", "version": "3.1"},
        "calibrated_on": "onnx",
    }
    fields.update(changes)
    return ModelMeta(**fields)  # type: ignore[arg-type]


def patches(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(N, S, S, 3) uint8 random patches."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
