"""Prediction: ``Predictor.load(path)`` gives calibrated tumour probabilities with TTA.

Two engines compute the same function: ``torch`` (eager, channels_last) and ``onnx``
(onnxruntime on an exported graph that includes the preprocessing). Probabilities are
``sigmoid(mean_view_logit / T)`` with T the temperature fitted on the validation split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.calibration import resolve_threshold, sigmoid
from histoscan.data.sources import PatchSource
from histoscan.data.transforms import tta_views
from histoscan.errors import ModelError
from histoscan.io import atomic_write
from histoscan.models.bundle import ModelFile, load_model_file
from histoscan.models.registry import ModelSpec
from histoscan.progress import progress_bar

log = logging.getLogger(__name__)
ENGINES = ("torch", "onnx", "onnx-int8")
ONNX_META_KEY = "histoscan"


def _rot_hwc(images: np.ndarray, k: int) -> np.ndarray:
    """Dihedral view ``k`` of (N, H, W, 3) patches, matching transforms.dihedral on CHW."""
    if k >= 4:
        images = images[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(images, k % 4, axes=(1, 2)))


class Predictor:
    """Calibrated probabilities for uint8 patches (N, 96, 96, 3), batched, with TTA."""

    def __init__(
        self,
        mf: ModelFile,
        engine: str = "torch",
        batch_size: int = 256,
        onnx_path: Path | None = None,
        label: str | None = None,
    ) -> None:
        if engine not in ("torch", "onnx"):
            raise ModelError(f"unknown engine {engine!r}")
        self.model_file = mf
        self.engine = label or engine  # what ran: torch, onnx or onnx-int8
        self.batch_size = batch_size
        self._net: Any = None
        self._session: Any = None
        if engine == "torch":
            import torch

            self._net = mf.inference_net().to(memory_format=torch.channels_last)
        else:
            self._session = _onnx_session(onnx_path, mf)

    @classmethod
    def load(
        cls, path: str | Path | None = None, engine: str | None = None, batch_size: int = 256
    ) -> Predictor:
        """Load a .pt model file or an exported .onnx file.

        Engines: ``torch``; ``onnx`` (fp32, the exported sibling ``<stem>.onnx`` or an
        in-memory export); ``onnx-int8`` (the sibling ``<stem>.int8.onnx``); ``auto`` (the
        default: the int8 sibling where it exists, 2.6x faster than eager torch on a 2-core CPU,
        else the fp32 sibling, else torch).
        """
        engine = engine or "auto"
        if engine not in (*ENGINES, "auto"):
            raise ModelError(f"unknown engine {engine!r}; choose from auto, {', '.join(ENGINES)}")
        path = Path(path) if path is not None else None
        if path is not None and path.suffix == ".onnx":
            mf = load_onnx_model_file(path)
            return cls(mf, engine="onnx", batch_size=batch_size, onnx_path=path)
        mf = load_model_file(path)
        assert mf.path is not None
        int8 = mf.path.with_name(mf.path.stem + ".int8.onnx")
        fp32 = mf.path.with_suffix(".onnx")
        if engine == "auto":
            engine = "onnx-int8" if int8.is_file() else "onnx" if fp32.is_file() else "torch"
        if engine == "onnx-int8":
            if not int8.is_file():
                raise ModelError(
                    f"{int8}: no int8 model; make one with "
                    "`histoscan export-onnx --int8 --calibration DATA`"
                )
            return cls(mf, engine="onnx", batch_size=batch_size, onnx_path=int8, label="onnx-int8")
        onnx_path = fp32 if engine == "onnx" and fp32.is_file() else None
        return cls(mf, engine=engine, batch_size=batch_size, onnx_path=onnx_path)

    @property
    def spec(self) -> ModelSpec:
        return self.model_file.spec

    @property
    def temperature(self) -> float:
        return self.model_file.temperature

    @property
    def name(self) -> str:
        return self.model_file.card.get("name") or self.spec.name

    @property
    def version(self) -> str:
        return str(self.model_file.card.get("version", "0"))

    def threshold(self, rule: str | float | None = None) -> float:
        """The decision threshold: the stored one, or a rule resolved on validation data."""
        if rule is None:
            return self.model_file.threshold
        mf = self.model_file
        probs = None if mf.val_logits is None else sigmoid(mf.val_logits / mf.temperature)
        try:
            return resolve_threshold(rule, probs, mf.val_labels)
        except ValueError as exc:
            raise ModelError(str(exc)) from exc

    def _forward(self, images: np.ndarray) -> np.ndarray:
        """Raw logits (N,) of one view."""
        if self._session is not None:
            return self._session.run(None, {"images": images})[0].astype(np.float64)
        import torch

        with torch.inference_mode():
            return self._net(torch.from_numpy(images)).double().numpy()

    def logits(self, images: np.ndarray, tta: str = "d4") -> np.ndarray:
        """Mean logit over the TTA views, (N,), before temperature scaling."""
        views = tta_views(tta)
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.uint8)
            total = sum(self._forward(_rot_hwc(batch, k) if k else batch) for k in views)
            out[start : start + len(batch)] = total / len(views)
        return out

    def predict_proba(self, images: np.ndarray, tta: str = "d4") -> np.ndarray:
        """Calibrated probability of tumour in the centre region, (N,)."""
        return sigmoid(self.logits(images, tta) / self.temperature)

    def logits_source(
        self,
        source: PatchSource,
        tta: str = "d4",
        indices: Sequence[int] | None = None,
        progress: bool = True,
        label: str = "predict",
    ) -> np.ndarray:
        """Mean TTA logits for (a subset of) a source, read in chunks with a progress bar."""
        idx = np.arange(len(source)) if indices is None else np.asarray(indices)
        logits = np.empty(len(idx), dtype=np.float64)
        chunk = self.batch_size * 4
        with progress_bar(label, total=len(idx), show=progress, unit="patches") as bar:
            for start in range(0, len(idx), chunk):
                images = source.read_many(idx[start : start + chunk])
                logits[start : start + len(images)] = self.logits(images, tta)
                bar.advance(len(images))
        return logits

    def predict_source(
        self,
        source: PatchSource,
        tta: str = "d4",
        indices: Sequence[int] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Calibrated probabilities for (a subset of) a source."""
        return sigmoid(self.logits_source(source, tta, indices, progress) / self.temperature)


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


def export_onnx(mf: ModelFile, path: Path | None = None) -> bytes:
    """Export uint8 (B, 96, 96, 3) -> logits (B,) with the model's metadata; write if ``path``."""
    import onnx
    import torch

    net = mf.inference_net().float()
    example = torch.zeros(2, mf.spec.patch_px, mf.spec.patch_px, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (example,),
        buf,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    model = onnx.load_from_string(buf.getvalue())
    meta = {
        "spec": mf.spec.to_dict(),
        "temperature": mf.temperature,
        "threshold": mf.threshold,
        "val_logits": None if mf.val_logits is None else [float(v) for v in mf.val_logits],
        "val_labels": None if mf.val_labels is None else [int(v) for v in mf.val_labels],
        "card": mf.card,
    }
    entry = model.metadata_props.add()
    entry.key = ONNX_META_KEY
    entry.value = json.dumps(meta)
    data = model.SerializeToString()
    if path is not None:
        atomic_write(path, data)
    return data


def quantize_onnx(fp32_model: bytes, calibration_images: np.ndarray) -> bytes:
    """Static int8 (QDQ, per-channel weights) quantization, calibrated on real uint8 patches.

    The histoscan metadata (preprocessing, temperature) is carried over.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            batches = [
                calibration_images[i : i + 32] for i in range(0, len(calibration_images), 32)
            ]
            self._it = iter([{"images": np.ascontiguousarray(b, dtype=np.uint8)} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32_model)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        model = onnx.load(str(out))
    meta = {p.key: p.value for p in onnx.load_from_string(fp32_model).metadata_props}
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def load_onnx_model_file(path: Path) -> ModelFile:
    """The ModelFile fields stored in an exported ONNX file (no torch weights)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX file ({type(exc).__name__})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_META_KEY not in props:
        raise ModelError(f"{path}: not exported by histoscan (no preprocessing metadata)")
    meta = json.loads(props[ONNX_META_KEY])
    return ModelFile(
        spec=ModelSpec.from_dict(meta["spec"]),
        net=None,  # type: ignore[arg-type]
        temperature=meta["temperature"],
        threshold=meta["threshold"],
        val_logits=None if meta["val_logits"] is None else np.asarray(meta["val_logits"]),
        val_labels=None if meta["val_labels"] is None else np.asarray(meta["val_labels"]),
        card=meta.get("card") or {},
        path=path,
    )


def _onnx_session(path: Path | None, mf: ModelFile) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source: Any = str(path) if path is not None else export_onnx(mf)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path or 'exported model'}: onnxruntime cannot load it ({exc})") from exc
