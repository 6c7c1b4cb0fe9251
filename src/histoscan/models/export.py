"""Export a ``.pt`` model to ONNX (fp32 or static int8), each graph with its own calibration.

The graph maps uint8 (B, H, W, 3) to ``logits`` (B,) and ``features`` (B, D) (the pooled
pre-logit features the embedding maps use), with the preprocessing inside. The histoscan metadata
rides in the graph's ``metadata_props``. Quantization changes the logits a little, so an exported
graph refits its temperature on its own validation logits when the validation patches are at
hand (``recalibrate``), and records which engine fitted it (``calibrated_on``).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from histoscan.calibration import fit_temperature
from histoscan.models.modelfile import ONNX_META_KEY, ModelFile, ModelMeta

log = logging.getLogger(__name__)


def _with_meta(model_bytes: bytes, meta: ModelMeta, precision: str) -> bytes:
    """The graph with its ``histoscan`` metadata entry replaced."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != ONNX_META_KEY]
    del model.metadata_props[:]
    for key, value in [
        *kept,
        (ONNX_META_KEY, json.dumps({**meta.to_json(), "precision": precision})),
    ]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def read_meta(model_bytes: bytes) -> tuple[ModelMeta, str]:
    """The metadata and precision of a graph held in memory."""
    import onnx

    from histoscan.models.modelfile import onnx_meta_from_props

    props = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    return onnx_meta_from_props(props, "exported model")


def export_onnx(mf: ModelFile, path: Path | None = None) -> bytes:
    """fp32 graph of a ``.pt`` model with its metadata (calibration as fitted on torch)."""
    import torch

    from histoscan.io import atomic_write
    from histoscan.models.bundle import WithFeatures

    net = WithFeatures(mf.inference_net().float())
    example = torch.zeros(2, mf.spec.patch_px, mf.spec.patch_px, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the tracer warns about Python bools in the preprocessing; the graph is checked in tests
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the legacy exporter
        torch.onnx.export(
            net,
            (example,),
            buf,
            input_names=["images"],
            output_names=["logits", "features"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )
    card = dict(mf.card)
    if mf.path.is_file():
        from histoscan.predict import file_sha1

        card["exported_from_sha1"] = file_sha1(mf.path)
    data = _with_meta(buf.getvalue(), replace(mf.meta, card=card), "fp32")
    if path is not None:
        atomic_write(path, data)
    return data


def quantize_onnx(fp32_model: bytes, calibration_images: np.ndarray) -> bytes:
    """Static int8 (QDQ, per-channel weights) graph calibrated on real uint8 patches.

    The metadata is carried over with precision ``int8``; its temperature is still the fp32
    one until ``recalibrate`` refits it.
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
        model = onnx.load(str(out)).SerializeToString()
    meta, _ = read_meta(fp32_model)
    return _with_meta(model, meta, "int8")


def recalibrate(model_bytes: bytes, images: np.ndarray, labels: np.ndarray) -> bytes:
    """Refit the graph's temperature on its own D4-TTA logits of the validation patches.

    ``images`` (V, H, W, 3) uint8 and ``labels`` (V,) must be the model's validation split, so
    the temperature is fitted where the torch one was, on the engine that will apply it.
    """
    from histoscan.models.engines import OnnxEngine
    from histoscan.predict import Predictor

    meta, precision = read_meta(model_bytes)
    name = "onnx-int8" if precision == "int8" else "onnx"
    model_file = ModelFile(meta=meta, path=Path("<memory>"), kind="onnx", precision=precision)
    predictor = Predictor(model_file, OnnxEngine(model_bytes, name, precision))
    logits = predictor.logits(images, "d4")
    labels = np.asarray(labels, dtype=np.int64)
    from sklearn.metrics import roc_auc_score

    temperature = fit_temperature(logits, labels)
    auc = float(roc_auc_score(labels, logits))
    log.info("%s: validation AUC %.4f, temperature %.4f on its own logits", name, auc, temperature)
    card = {**meta.card, "temperature": round(temperature, 4), "val_auc_tta_d4": round(auc, 5)}
    new = replace(
        meta,
        temperature=temperature,
        val_logits=logits,
        val_labels=labels,
        card=card,
        calibrated_on=name,
    )
    return _with_meta(model_bytes, new, precision)
