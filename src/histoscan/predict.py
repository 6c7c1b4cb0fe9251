"""The one inference door: ``Predictor.load(path)`` runs a model on uint8 patches, with TTA.

Every command that runs the network (predict, evaluate, calibration, explain, embed, report,
slide, serve) goes through a ``Predictor``; an ``Engine`` (``models/engines.py``) does the
arithmetic. Probabilities are ``sigmoid(mean_view_logit / T)``, with T the temperature fitted on
the validation logits of the same engine (``describe()["calibrated_on"]`` names it).

Nothing here imports torch: on the CPU the default engine is the int8 ONNX sibling of the model
file, which needs only onnxruntime.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.calibration import resolve_threshold, sigmoid
from histoscan.data.sources import PatchSource
from histoscan.data.views import tta_views
from histoscan.errors import DataError, ModelError
from histoscan.io import atomic_write
from histoscan.models.engines import ENGINES, Engine, OnnxEngine, resolve_device
from histoscan.models.modelfile import (
    ModelFile,
    bundled_model_path,
    load_model_file,
    onnx_meta_from_props,
    sibling,
)
from histoscan.models.registry import ModelSpec
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)
READ_AHEAD_BATCHES = 4  # patches decoded per read, in batches: the next read overlaps the model


@dataclass
class Inference:
    """Raw logits per TTA view and, when asked, the identity view's pre-logit features."""

    logits: np.ndarray  # (N, V) float64, before temperature scaling; view 0 is the identity
    features: np.ndarray  # (N, D) float32; D = 0 when features were not asked for

    def mean_logits(self, tta: bool = True) -> np.ndarray:
        """(N,): the mean over views, or the identity view only."""
        return self.logits.mean(axis=1) if tta else self.logits[:, 0]

    def probs(self, temperature: float, tta: bool = True) -> np.ndarray:
        """Calibrated tumour probabilities (N,)."""
        return sigmoid(self.mean_logits(tta) / temperature)


class Predictor:
    """Calibrated tumour probabilities for uint8 patches (N, H, W, 3), batched, with TTA.

    Args:
        model_file: the model's metadata (temperature, threshold, spec) and where it lives.
        engine: what runs the network; its calibration must be the model file's.
        batch_size: patches per engine call (per TTA view).
    """

    def __init__(
        self,
        model_file: ModelFile,
        engine: Engine,
        batch_size: int = 256,
        torch_path: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ModelError(f"--batch-size must be at least 1, not {batch_size}")
        self.model_file = model_file
        self.engine = engine
        self.batch_size = batch_size
        # the .pt file behind an exported sibling: Grad-CAM needs its torch weights
        self.torch_path = torch_path or (model_file.path if model_file.kind == "pt" else None)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        engine: str | None = "auto",
        device: str = "auto",
        batch_size: int = 256,
        precision: str = "auto",
    ) -> Predictor:
        """Open a model file (``.pt`` or exported ``.onnx``; None = the bundled model).

        Engines: ``torch``; ``onnx`` (the fp32 sibling ``<stem>.onnx``, or an in-memory
        export); ``onnx-int8`` (the sibling ``<stem>.int8.onnx``); ``auto``: on a GPU the torch
        engine (bf16, channels_last), on the CPU the int8 sibling where it exists (2.9x eager
        torch on a 2-core Xeon), else the fp32 sibling, else torch.
        """
        engine = engine or "auto"
        if engine not in (*ENGINES, "auto"):
            raise ModelError(f"unknown engine {engine!r}; choose from auto, {', '.join(ENGINES)}")
        path = Path(path) if path is not None else bundled_model_path()
        onnx_asked = engine.startswith("onnx") or path.suffix.lower() == ".onnx"
        # onnxruntime runs here on the CPU: "auto" means the CPU for an ONNX engine
        device = "cpu" if onnx_asked and device == "auto" else resolve_device(device)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        if path.suffix.lower() == ".onnx":
            if engine == "torch":
                raise ModelError(f"{path}: an ONNX file runs on onnx engines, not torch")
            return cls._from_onnx(path, device, batch_size, expect=engine)
        if engine == "auto":
            engine = _auto_engine(path, device)
        if engine != "torch":
            graph = sibling(path, engine)
            if graph.is_file():
                return cls._from_onnx(graph, device, batch_size, expect=engine, source=path)
            if engine == "onnx-int8":
                raise ModelError(
                    f"{graph}: no int8 model; make one with "
                    f"`histoscan export-onnx --model {path} --int8 --calibration DATA`"
                )
        return cls._from_pt(path, engine, device, batch_size, precision)

    @classmethod
    def _from_onnx(
        cls, graph: Path, device: str, batch_size: int, expect: str, source: Path | None = None
    ) -> Predictor:
        if device != "cpu":
            raise ModelError(
                f"{graph}: ONNX engines run on the CPU; use --engine torch on {device}"
            )
        probe = OnnxEngine(graph, "onnx", "fp32")
        meta, precision = onnx_meta_from_props(
            dict(probe.session.get_modelmeta().custom_metadata_map), str(graph)
        )
        name = "onnx-int8" if precision == "int8" else "onnx"
        if expect not in ("auto", name):
            raise ModelError(f"{graph}: holds a {precision} graph, not what --engine {expect} runs")
        if source is not None:
            _check_sibling(graph, source, meta.card)
        probe.name, probe.precision = name, precision
        model_file = ModelFile(meta=meta, path=graph, kind="onnx", precision=precision)
        return cls(model_file, probe, batch_size, torch_path=source)

    @classmethod
    def _from_pt(
        cls, path: Path, engine: str, device: str, batch_size: int, precision: str
    ) -> Predictor:
        try:
            model_file = load_model_file(path)
            if engine == "onnx":  # no exported sibling: export in memory, same calibration
                from histoscan.models.export import export_onnx

                return cls(
                    model_file, OnnxEngine(export_onnx(model_file), "onnx", "fp32"), batch_size
                )
            from histoscan.models.torch_engine import TorchEngine

            net = model_file.inference_net()
        except ImportError as exc:
            raise ModelError(
                f"{path}: the {engine} engine needs torch (pip install 'histoscan[train]'); "
                "the default engine runs the int8 ONNX sibling without it"
            ) from exc
        return cls(model_file, TorchEngine(net, device, precision), batch_size)

    # --- what the model is -------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self.model_file.spec

    @property
    def temperature(self) -> float:
        return self.model_file.temperature

    @property
    def name(self) -> str:
        return self.model_file.name

    @property
    def version(self) -> str:
        return str(self.model_file.card.get("version", "0"))

    def describe(self) -> dict[str, Any]:
        """What ran: record it beside every number (metrics.json, summary.json, reports)."""
        return {
            "model": self.name,
            "model_file": self.model_file.path.name,
            "engine": self.engine.name,
            "precision": self.engine.precision,
            "device": self.engine.device,
            "calibrated_on": self.model_file.meta.calibrated_on,
            "temperature": round(float(self.temperature), 6),
            "batch_size": self.batch_size,
        }

    def threshold(self, rule: str | float | None = None) -> float:
        """The decision threshold: the stored one, or a rule resolved on validation data."""
        if rule is None:
            return self.model_file.threshold
        meta = self.model_file.meta
        has_val = len(meta.val_labels) > 0
        try:
            return resolve_threshold(
                rule, meta.val_probs if has_val else None, meta.val_labels if has_val else None
            )
        except ValueError as exc:
            raise ModelError(str(exc)) from exc

    def torch_model_file(self) -> ModelFile:
        """The ``.pt`` model file with torch weights (Grad-CAM needs gradients, so torch)."""
        if self.model_file.kind == "pt":
            return self.model_file
        if self.torch_path is None:
            raise ModelError(
                f"{self.model_file.path}: Grad-CAM needs the torch model file (.pt) beside it"
            )
        try:
            return load_model_file(self.torch_path)
        except ImportError as exc:
            raise ModelError(
                "Grad-CAM needs torch: install the train extra (pip install 'histoscan[train]')"
            ) from exc

    # --- running it --------------------------------------------------------------------------
    def infer(self, images: np.ndarray, tta: str = "d4", features: bool = False) -> Inference:
        """Logits of every TTA view (N, V) and, when asked, identity-view features (N, D)."""
        parts = list(self._batches(check_images(images), tta, features))
        return _concat(parts, len(tta_views(tta)))

    def _batches(self, images: np.ndarray, tta: str, features: bool) -> Iterator[Inference]:
        views = tta_views(tta)
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.uint8)
            logits, feats = self.engine.run_views(batch, views, features)
            yield Inference(logits=logits, features=feats)

    def logits(self, images: np.ndarray, tta: str = "d4") -> np.ndarray:
        """Mean logit over the TTA views, (N,), before temperature scaling."""
        return self.infer(images, tta).mean_logits()

    def predict_proba(self, images: np.ndarray, tta: str = "d4") -> np.ndarray:
        """Calibrated probability of tumour in the centre region, (N,)."""
        return sigmoid(self.logits(images, tta) / self.temperature)

    def infer_source(
        self,
        source: PatchSource,
        tta: str = "d4",
        indices: Sequence[int] | None = None,
        features: bool = False,
        progress: bool = True,
        label: str = "predict",
    ) -> Inference:
        """``infer`` over (a subset of) a source: the next patches decode in a thread while the
        engine runs (onnxruntime and torch release the GIL), and the bar moves per batch."""
        idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        tta_views(tta)  # a bad mode fails before any reading
        chunk = self.batch_size * READ_AHEAD_BATCHES
        starts = range(0, len(idx), chunk)
        parts: list[Inference] = []
        with (
            progress_bar(label, total=len(idx), show=progress, unit="patches") as bar,
            ThreadPoolExecutor(1, thread_name_prefix="decode") as pool,
        ):
            pending = pool.submit(source.read_many, idx[:chunk]) if len(idx) else None
            for start in starts:
                assert pending is not None
                images = pending.result()
                after = start + chunk
                if after < len(idx):
                    pending = pool.submit(source.read_many, idx[after : after + chunk])
                for part in self._batches(images, tta, features):
                    parts.append(part)
                    bar.advance(len(part.logits))
        return _concat(parts, len(tta_views(tta)))

    def logits_source(
        self,
        source: PatchSource,
        tta: str = "d4",
        indices: Sequence[int] | None = None,
        progress: bool = True,
        label: str = "predict",
    ) -> np.ndarray:
        """Mean TTA logits (N,) for (a subset of) a source."""
        return self.infer_source(source, tta, indices, False, progress, label).mean_logits()

    def predict_source(
        self,
        source: PatchSource,
        tta: str = "d4",
        indices: Sequence[int] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Calibrated probabilities (N,) for (a subset of) a source."""
        return sigmoid(self.logits_source(source, tta, indices, progress) / self.temperature)


def _auto_engine(path: Path, device: str) -> str:
    if device != "cpu":
        return "torch"
    for engine in ("onnx-int8", "onnx"):
        if sibling(path, engine).is_file():
            return engine
    return "torch"


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sibling(graph: Path, source: Path, card: dict[str, Any]) -> None:
    """An exported sibling must come from this very .pt file, not an older one."""
    recorded = card.get("exported_from_sha1")
    if recorded and recorded != file_sha1(source):
        raise ModelError(
            f"{graph}: exported from another version of {source.name}; re-export it with "
            f"`histoscan export-onnx --model {source}` or delete it"
        )


def check_images(images: np.ndarray) -> np.ndarray:
    """Raise DataError unless ``images`` is uint8 (N, H, W, 3); return it as an array."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"expected uint8 patches (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _concat(parts: list[Inference], n_views: int) -> Inference:
    if not parts:
        return Inference(np.zeros((0, n_views)), np.zeros((0, 0), dtype=np.float32))
    return Inference(
        logits=np.concatenate([p.logits for p in parts]),
        features=np.concatenate([p.features for p in parts]),
    )


def write_predictions(
    path: Path, ids: Sequence[str], probs: np.ndarray, extra: dict[str, Sequence[Any]] | None = None
) -> None:
    """Kaggle submission format ``id,label`` (label = probability), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = extra or {}
    writer.writerow(["id", "label", *extra])
    for i, (key, p) in enumerate(zip(ids, probs, strict=True)):
        writer.writerow([key, f"{p:.6f}", *(col[i] for col in extra.values())])
    atomic_write(path, buf.getvalue())
