"""Turning trained weights into a shipped model file: TTA validation logits, temperature,
the card, and ensembles of members that share a validation split."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histoscan.calibration import fit_temperature
from histoscan.data.sources import PatchSource
from histoscan.errors import DataError
from histoscan.models.bundle import (
    InferenceNet,
    ModelFile,
    load_model_file,
    model_file_from_net,
    save_model_file,
)
from histoscan.models.modelfile import ModelMeta, id_digest
from histoscan.models.registry import ModelSpec, create_model, model_spec
from histoscan.models.torch_engine import TorchEngine

log = logging.getLogger(__name__)


def calibrate_and_save(
    net: nn.Module,
    spec: ModelSpec,
    val_source: PatchSource,
    val_indices: np.ndarray,
    card: dict[str, Any],
    out: Path,
    train_ids: list[str] | None = None,
) -> ModelFile:
    """D4-TTA logits on the validation split -> temperature, AUC in the card -> model file.

    The logits come from the torch engine in fp32 on the CPU, the engine a ``.pt`` file runs
    on; exported ONNX graphs refit their own temperature (``models/export.py``).
    """
    from sklearn.metrics import roc_auc_score

    from histoscan.predict import Predictor

    labels = val_source.labels[val_indices].astype(np.int64)
    meta = ModelMeta(spec=replace(spec), card=card)
    engine = TorchEngine(InferenceNet(net, spec), "cpu", precision="fp32")
    predictor = Predictor(model_file_from_net(meta, net), engine)
    logits = predictor.logits_source(val_source, "d4", val_indices, progress=False)
    both = len(np.unique(labels)) == 2
    temperature = fit_temperature(logits, labels) if both else 1.0
    auc = float(roc_auc_score(labels, logits)) if both else float("nan")
    card = {
        **card,
        "val_auc_tta_d4": round(auc, 5),
        "temperature": round(temperature, 4),
        "val_ids": [val_source.ids[i] for i in val_indices],
    }
    meta = ModelMeta(
        spec=replace(spec),
        temperature=temperature,
        threshold=0.5,
        val_logits=logits,
        val_labels=labels,
        card=card,
        train_digest=id_digest(train_ids or []),
        calibrated_on="torch",
    )
    save_model_file(out, meta, net)
    log.info("validation AUC (D4 TTA) %.4f, temperature %.3f -> %s", auc, temperature, out)
    return model_file_from_net(meta, net, out)


def build_ensemble(
    model_paths: list[Path],
    source: PatchSource,
    out: Path,
    extra_card: dict[str, Any] | None = None,
) -> ModelFile:
    """One model averaging the logits of histocnn members that share a validation split."""
    members = [load_model_file(p) for p in model_paths]
    names = {mf.spec.name for mf in members}
    if names != {"histocnn"}:
        raise DataError(f"ensembles combine histocnn members; got {', '.join(sorted(names))}")
    val_ids = [mf.card.get("val_ids") for mf in members]
    if not val_ids[0] or any(v != val_ids[0] for v in val_ids):
        raise DataError("ensemble members must share one recorded validation split")
    spec = replace(model_spec("histocnn_ensemble"), kwargs={"n_members": len(members)})
    net = create_model(spec.name, **spec.kwargs)
    for slot, mf in zip(net.members, members, strict=True):
        slot.load_state_dict(mf.torch_net().state_dict())
    position = {key: i for i, key in enumerate(source.ids)}
    missing = [k for k in val_ids[0] if k not in position]
    if missing:
        raise DataError(f"{source.root}: validation id {missing[0]} not found")
    indices = np.array([position[k] for k in val_ids[0]], dtype=np.int64)
    first = members[0].card
    card = {
        **{k: v for k, v in first.items() if k not in ("val_ids", "val_auc_tta_d4", "temperature")},
        "model": spec.name,
        "members": [
            {k: v for k, v in mf.card.items() if k not in ("val_ids", "history")} for mf in members
        ],
        "member_histories": [mf.card.get("history", []) for mf in members],
        "train_seconds": max(mf.card.get("train_seconds", 0) for mf in members),
        "machine": describe_machine(),
        **(extra_card or {}),
    }
    seen = np.any([mf.meta.seen_in_training(source.ids) for mf in members], axis=0)
    train_ids = [source.ids[i] for i in np.flatnonzero(seen)]
    return calibrate_and_save(net.eval(), spec, source, indices, card, out, train_ids)


def describe_machine() -> str:
    """CPU model and core count (and GPU, if any), for model cards and benchmarks."""
    import os
    import platform

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            names = (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
            cpu = next(names)
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"
