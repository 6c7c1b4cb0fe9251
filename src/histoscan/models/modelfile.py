"""The model format: metadata apart from weights, one typed object for ``.pt`` and ``.onnx``.

A model file is ``ModelMeta`` (spec with preprocessing, temperature, threshold, validation logits,
the card, a digest of the training ids, and which engine the calibration was fitted on) plus
weights: torch tensors in a ``.pt`` file, a graph in an ``.onnx`` file (the metadata rides in the
graph's ``metadata_props``). Reading the metadata never needs torch: an ``.onnx`` file is read with
onnxruntime, which the inference install has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from histoscan.errors import ModelError
from histoscan.models.registry import ModelSpec

FORMAT = "histoscan-model/1"
ONNX_META_KEY = "histoscan"
BUNDLED_NAME = "histocnn-pcam.pt"
DIGEST_HEX = 12  # SHA-1 prefix length kept per training id: 48 bits, no chance collisions at 1e6
Kind = Literal["pt", "onnx"]


def bundled_model_path() -> Path:
    """The model shipped inside the package (``.pt``; its int8 ONNX sibling lies beside it)."""
    return Path(str(resources.files("histoscan") / "weights" / BUNDLED_NAME))


def id_digest(ids: Iterable[str]) -> frozenset[str]:
    """Compact digest of patch ids: their first ``DIGEST_HEX`` characters, lower case.

    Patch ids are SHA-1s of the pixels (Kaggle, PCam through our store), so a prefix identifies
    a patch; other ids are kept whole.
    """
    return frozenset(i.lower()[:DIGEST_HEX] for i in ids)


@dataclass(frozen=True)
class ModelMeta:
    """Everything about a model but its weights."""

    spec: ModelSpec
    temperature: float = 1.0
    threshold: float = 0.5
    val_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (V,) D4-TTA logits
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (V,)
    card: dict[str, Any] = field(default_factory=dict)
    train_digest: frozenset[str] = frozenset()  # id_digest of the training ids
    calibrated_on: str = "torch"  # the engine whose validation logits fitted ``temperature``

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ModelError(f"temperature must be a positive number, not {self.temperature}")
        if len(self.val_logits) != len(self.val_labels):
            raise ModelError("validation logits and labels differ in length")

    @property
    def val_probs(self) -> np.ndarray:
        """Calibrated validation probabilities (V,), for threshold rules."""
        from histoscan.calibration import sigmoid

        return sigmoid(np.asarray(self.val_logits, dtype=np.float64) / self.temperature)

    def seen_in_training(self, ids: Iterable[str]) -> np.ndarray:
        """Bool (N,): which of these patch ids the model was trained on."""
        digest = self.train_digest
        return np.array([i.lower()[:DIGEST_HEX] in digest for i in ids], dtype=bool)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (the ONNX metadata and the ``.pt`` payload both hold this)."""
        return {
            "format": FORMAT,
            "spec": self.spec.to_dict(),
            "temperature": float(self.temperature),
            "threshold": float(self.threshold),
            "val_logits": [float(v) for v in self.val_logits],
            "val_labels": [int(v) for v in self.val_labels],
            "card": json.loads(json.dumps(self.card, default=str)),
            "train_digest": sorted(self.train_digest),
            "calibrated_on": self.calibrated_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> ModelMeta:
        """Metadata from ``to_json``'s dict (older files lack newer keys); ``where`` names it."""
        try:
            return cls(
                spec=ModelSpec.from_dict(data["spec"]),
                temperature=float(data.get("temperature", 1.0)),
                threshold=float(data.get("threshold", 0.5)),
                val_logits=np.asarray(data.get("val_logits") or [], dtype=np.float64),
                val_labels=np.asarray(data.get("val_labels") or [], dtype=np.int64),
                card=dict(data.get("card") or {}),
                train_digest=frozenset(data.get("train_digest") or ()),
                calibrated_on=str(data.get("calibrated_on", "torch")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"{where}: damaged model metadata ({type(exc).__name__}: {exc})"
            ) from exc


@dataclass
class ModelFile:
    """A model file on disk: its metadata, and what kind of weights it holds.

    Weights load lazily: ``torch_net()`` for a ``.pt`` file (needs the ``train`` extra), or the
    ONNX graph at ``path`` for onnxruntime.
    """

    meta: ModelMeta
    path: Path
    kind: Kind
    precision: str = "fp32"  # of the stored weights: fp32, or int8 for a quantized ONNX graph
    _net: Any = field(default=None, repr=False)

    # the metadata most callers want, without ``.meta``
    @property
    def spec(self) -> ModelSpec:
        return self.meta.spec

    @property
    def card(self) -> dict[str, Any]:
        return self.meta.card

    @property
    def temperature(self) -> float:
        return self.meta.temperature

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.spec.name)

    def torch_net(self) -> Any:
        """The plain torch network (logits (B, 1) of preprocessed input), loaded on first use."""
        if self._net is None:
            if self.kind != "pt":
                raise ModelError(
                    f"{self.path}: an ONNX file has no torch weights; use the .pt file"
                )
            from histoscan.models.bundle import load_torch_weights

            self._net = load_torch_weights(self.path, self.spec)
        return self._net

    @property
    def net(self) -> Any:
        """``torch_net()``: kept for Grad-CAM and ensembles, which need the torch modules."""
        return self.torch_net()

    def inference_net(self) -> Any:
        """uint8 (B, H, W, 3) -> logits (B,) torch module with the preprocessing inside."""
        from histoscan.models.bundle import InferenceNet

        return InferenceNet(self.torch_net(), self.spec).eval()

    def with_meta(self, **changes: Any) -> ModelFile:
        """A copy with some metadata fields replaced (weights shared)."""
        return replace(self, meta=replace(self.meta, **changes))


def sibling(path: Path, engine: str) -> Path:
    """Where the ``.pt`` model's exported graph for ``engine`` (onnx or onnx-int8) lives."""
    if engine == "onnx-int8":
        return path.with_name(path.stem + ".int8.onnx")
    if engine == "onnx":
        return path.with_suffix(".onnx")
    raise ValueError(f"no sibling file for engine {engine!r}")


def load_model_file(path: str | Path | None = None) -> ModelFile:
    """Load a model file's metadata (the bundled model when ``path`` is None).

    ``.onnx`` files are read with onnxruntime (no torch); anything else is read as a ``.pt``
    model file with ``torch.load(weights_only=True)``.
    """
    path = Path(path) if path is not None else bundled_model_path()
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.suffix.lower() == ".onnx":
        meta, precision = read_onnx_meta(path)
        return ModelFile(meta=meta, path=path, kind="onnx", precision=precision)
    from histoscan.models.bundle import load_pt

    meta, net = load_pt(path)
    return ModelFile(meta=meta, path=path, kind="pt", _net=net)


def read_onnx_meta(path: Path) -> tuple[ModelMeta, str]:
    """The histoscan metadata of an exported graph, and its weight precision (fp32 or int8)."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX model onnxruntime can load ({exc})") from exc
    props = session.get_modelmeta().custom_metadata_map
    return onnx_meta_from_props(props, str(path))


def onnx_meta_from_props(props: dict[str, str], where: str) -> tuple[ModelMeta, str]:
    """Parse the ``histoscan`` entry of an ONNX graph's metadata."""
    if ONNX_META_KEY not in props:
        raise ModelError(f"{where}: not exported by histoscan (no preprocessing metadata)")
    try:
        data = json.loads(props[ONNX_META_KEY])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{where}: damaged histoscan metadata ({exc})") from exc
    # files exported before the precision was recorded say it in their name only
    guess = "int8" if where.endswith(".int8.onnx") else "fp32"
    return ModelMeta.from_json(data, where), str(data.get("precision", guess))
