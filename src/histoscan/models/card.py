"""The model card: what a model was trained on, how, and how good it is, as Markdown."""

from __future__ import annotations

from typing import Any

from histoscan.models.bundle import ModelFile


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_card(mf: ModelFile, evaluation: dict[str, Any] | None = None) -> str:
    """Markdown for a model file; ``evaluation`` (evaluate's metrics.json) adds metrics with CIs."""
    card = mf.card
    cfg = card.get("config", {})
    lines = [
        f"# Model card: {card.get('name', mf.spec.name)}",
        "",
        f"- Architecture: `{mf.spec.name}` {mf.spec.kwargs or ''}; input {mf.spec.input_px} px "
        f"from {mf.spec.patch_px} px patches at {mf.spec.mpp} µm/px; "
        f"normalisation mean {mf.spec.mean}, std {mf.spec.std}",
        f"- Output: probability that the centre 32x32 region holds metastatic tumour, "
        f"calibrated by temperature T = {mf.temperature:.3f} (fitted on the validation split)",
        f"- Decision threshold stored: {mf.threshold}",
        f"- Training data: {card.get('data', '?')}",
        f"- Validation: {card.get('split', '?')} ({card.get('n_val', '?')} patches; "
        f"train {card.get('n_train', '?')})",
        f"- Trained: {card.get('trained', '?')}, {card.get('train_seconds', '?')} s wall clock, "
        f"torch {card.get('torch', '?')}",
        f"- Validation ROC AUC with 8-view D4 TTA: {_fmt(card.get('val_auc_tta_d4', '?'))}",
    ]
    if card.get("command"):
        lines.append(f"- Command: `{card['command']}`")
    if card.get("machine"):
        lines.append(f"- Machine: {card['machine']}")
    if cfg:
        recipe = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "augment")
        lines += ["", "## Recipe", "", recipe, "", f"Augmentation: {cfg.get('augment')}"]
    for i, member in enumerate(card.get("members", []), 1):
        lines.append(
            f"- Member {i}: seed {member.get('config', {}).get('seed')}, "
            f"{member.get('epochs_run')} epochs, {member.get('train_seconds')} s, "
            f"validation AUC (D4) {_fmt(member.get('val_auc_tta_d4'))}"
        )
    if evaluation:
        cal = evaluation["calibrated"]
        lo, hi = cal["roc_auc_ci95"]
        lines += [
            "",
            f"## Validation metrics ({cal['n']} patches, TTA {evaluation.get('tta')})",
            "",
            "| metric | calibrated | before temperature |",
            "|---|---|---|",
            f"| ROC AUC (95% bootstrap CI) | {cal['roc_auc']:.4f} ({lo:.4f}-{hi:.4f}) | same |",
        ]
        raw = evaluation["uncalibrated"]
        for key in (
            "accuracy",
            "sensitivity",
            "specificity",
            "precision",
            "f1",
            "nll",
            "brier",
            "ece",
        ):
            lines.append(f"| {key} | {cal[key]:.4f} | {raw[key]:.4f} |")
    for note in card.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"
