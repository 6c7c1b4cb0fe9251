"""Training: a LightningModule around any registered model, and ``fit`` that makes a run directory.

A run directory holds ``config.yaml`` (the resolved settings), ``split.csv`` (which id went where),
``metrics.csv`` and ``training_curves.png`` (per epoch), ``checkpoints/`` (best by validation AUC,
and last for ``--resume``) and ``model.pt``: the best weights with their preprocessing, the
temperature fitted on the validation split, and validation logits for threshold rules.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histoscan import run_dir as run_rules
from histoscan.calibration import sigmoid
from histoscan.config import TrainConfig, config_to_dict
from histoscan.data.pcam import PCamSource, open_pcam
from histoscan.data.sources import PatchSource
from histoscan.data.splits import read_groups, split_indices
from histoscan.data.store import select_manifest
from histoscan.data.transforms import Augment
from histoscan.errors import DataError
from histoscan.finalize import calibrate_and_save, describe_machine
from histoscan.io import atomic_write
from histoscan.models.bundle import InferenceNet
from histoscan.models.engines import cpu_has_bf16
from histoscan.models.registry import ModelSpec, create_model, model_spec

log = logging.getLogger(__name__)


# Lightning's warnings that say nothing to a user of this command: run_dir.py decides what
# happens to an existing run folder, and the pytree one is Lightning's own deprecation
QUIET_WARNINGS = (
    r"Experiment logs directory .* exists and is not empty",
    r".*isinstance\(treespec, LeafSpec\)",
    r"Precision .* is not supported by the model summary",
)


def _quiet_lightning() -> None:
    """Lightning's INFO lines (seed, GPU/TPU available, batch limits, a product tip) printed
    twice, by its own handler and by ours: keep its warnings only, once."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _epoch_bar() -> Any:
    """Lightning's rich progress bar, counting epochs from 1 ("Epoch 2/2" on the last)."""
    from lightning.pytorch.callbacks import RichProgressBar

    class EpochBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            text = f"Epoch {current_epoch + 1}"
            if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
                text += f"/{self.trainer.max_epochs}"
            return f"{text:{len(self.validation_description)}}"

    return EpochBar()


class PatchDataset(Dataset):
    """(uint8 (H, W, 3) tensor, float label) for the chosen indices of any source."""

    def __init__(self, source: PatchSource, indices: np.ndarray) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        image = np.ascontiguousarray(self.source.read(j))
        if not image.flags.writeable:  # a read-only memmap view: torch wants its own copy
            image = image.copy()
        image = torch.from_numpy(image)
        return image, torch.tensor(float(self.source.labels[j]))


class PatchClassifier(L.LightningModule):
    """Binary tumour classifier: BCE on logits, augmentation on the device, optional EMA weights."""

    def __init__(self, cfg: TrainConfig, spec: ModelSpec, steps_per_epoch: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.steps_per_epoch = steps_per_epoch
        self.net = create_model(spec.name, pretrained=cfg.pretrained, **spec.kwargs)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.prep = InferenceNet(nn.Identity(), spec)  # shares the inference preprocessing
        self.augment = Augment(cfg.augment)
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(self.net, multi_avg_fn=self._ema_update, use_buffers=True)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._epoch_start = 0.0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every checkpoint carries the preprocessing and settings needed to use it
        checkpoint["histoscan"] = {"spec": self.spec.to_dict(), "config": config_to_dict(self.cfg)}

    @torch.no_grad()
    def _ema_update(
        self, ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        # warm-up as in timm's ModelEmaV3: early on the average must not cling to the random init
        step = float(num_averaged)
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        if ema[0].is_floating_point():
            torch._foreach_lerp_(ema, current, 1 - decay)
        else:  # integer buffers such as BatchNorm's num_batches_tracked
            for e, c in zip(ema, current, strict=True):
                e.copy_(c)

    @property
    def eval_net(self) -> nn.Module:
        """The weights that are validated and shipped: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def _inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
        if train:
            x = self.augment(x)
        x = x.permute(0, 2, 3, 1) * 255.0  # back to (B, H, W, 3) for the shared preprocessing
        return self.prep.preprocess(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        images, labels = batch
        logits = self.net(self._inputs(images, train=True)).squeeze(1)  # (B,)
        eps = self.cfg.label_smoothing
        target = labels * (1 - eps) + 0.5 * eps
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.log("epoch_seconds", time.perf_counter() - self._epoch_start, sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        images, labels = batch
        logits = self.eval_net(self._inputs(images, train=False)).squeeze(1).float()
        self._val_logits.append(logits)
        self._val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        from sklearn.metrics import roc_auc_score

        logits = self.all_gather(torch.cat(self._val_logits)).reshape(-1).cpu().numpy()
        labels = self.all_gather(torch.cat(self._val_labels)).reshape(-1).cpu().numpy()
        self._val_logits.clear()
        self._val_labels.clear()
        both = len(np.unique(labels)) == 2
        auc = roc_auc_score(labels, logits) if both else float("nan")
        probs = sigmoid(logits)
        nll = float(
            np.mean(-(labels * np.log(probs + 1e-7) + (1 - labels) * np.log(1 - probs + 1e-7)))
        )
        acc = float(np.mean((probs >= 0.5) == labels))
        self.log_dict({"val_auc": auc, "val_loss": nll, "val_acc": acc}, prog_bar=True)

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        decay, no_decay = [], []
        for name, param in self.net.named_parameters():
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(total // 2, int(cfg.warmup_epochs * self.steps_per_epoch))

        budget_s = cfg.max_minutes * 60
        started = time.monotonic()

        def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            if budget_s:  # a time budget: the cosine ends when the time does
                progress = max(progress, (time.monotonic() - started) / budget_s)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


@dataclass
class SplitData:
    train: PatchDataset
    val: PatchDataset
    description: str


def make_split(
    source: PatchSource, cfg: TrainConfig, manifest: Path | None, groups_csv: Path | None
) -> SplitData:
    """Training and validation sets: PCam's official valid split, grouped, or stratified."""
    source.require_clean(need_labels=True)
    keep = select_manifest(source, manifest)
    if isinstance(source, PCamSource) and source.split == "train":
        valid = open_pcam(source.x_path.parent, "valid")
        valid.require_clean(need_labels=True)
        return SplitData(
            PatchDataset(source, keep),
            PatchDataset(valid, np.arange(len(valid))),
            "PCam official valid split",
        )
    groups = None
    if cfg.group_col:
        if groups_csv is None:
            raise DataError("--group-col needs a CSV with that column (--groups FILE)")
        groups = read_groups(groups_csv, cfg.group_col, [source.ids[i] for i in keep])
    tr, va = split_indices(source.labels[keep], cfg.val_fraction, cfg.split_seed, groups)
    how = f"grouped by {cfg.group_col}" if groups is not None else "stratified random"
    return SplitData(
        PatchDataset(source, keep[tr]),
        PatchDataset(source, keep[va]),
        f"{how}, {cfg.val_fraction:.0%} validation, seed {cfg.split_seed}",
    )


def _limit(value: float) -> float | int:
    return int(value) if value > 1 else float(value)


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return {"bf16": "bf16-mixed", "32": "32-true"}.get(cfg.precision, cfg.precision)
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def _write_split(path: Path, split: SplitData) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "split"])
        for name, ds in (("train", split.train), ("val", split.val)):
            for j in ds.indices:
                writer.writerow([ds.source.ids[j], int(ds.source.labels[j]), name])


def fit(
    source: PatchSource,
    cfg: TrainConfig,
    run_dir: Path,
    manifest: Path | None = None,
    groups_csv: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train, keep the best checkpoint by validation AUC, calibrate, write ``run_dir/model.pt``."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    primary = run_rules.is_primary_process()
    run_rules.check_accelerator(cfg.accelerator)
    if primary:  # see run_dir.py: --resume/--overwrite rules, decided before any work
        inputs = [source.root, manifest, groups_csv]
        run_rules.check_run_dir(run_dir, config_to_dict(cfg), resume, overwrite, inputs)
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = model_spec(cfg.model, cfg.input_px)
    split = make_split(source, cfg, manifest, groups_csv)
    if resume and primary:
        run_rules.check_resume_split(run_dir, run_rules.split_rows(split))
    if primary:  # the other ranks write nothing before rank 0 has checked the folder
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        _write_split(run_dir / "split.csv", split)

    loader_kw = dict(
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    # a last batch of a few patches gives noisy BatchNorm statistics; drop it unless it is all
    drop_last = len(split.train) >= 2 * cfg.batch_size
    train_loader = DataLoader(split.train, shuffle=True, drop_last=drop_last, **loader_kw)
    val_loader = DataLoader(split.val, shuffle=False, **{**loader_kw, "batch_size": 256})
    steps = max(1, len(split.train) // (cfg.batch_size * cfg.devices * cfg.num_nodes))
    if len(split.train) < 2 or len(split.val) < 2:
        raise DataError(f"{source.root}: too few patches to train ({len(source)})")
    module = PatchClassifier(cfg, spec, steps)
    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val_auc", mode="max", save_last=True
    )
    callbacks: list[Any] = [best]
    if progress:
        callbacks.append(_epoch_bar())
    log.info(
        "training %s on %d patches, validating on %d; precision %s",
        spec.name,
        len(split.train),
        len(split.val),
        resolve_precision(cfg),
    )
    if cfg.patience:
        callbacks.append(EarlyStopping(monitor="val_auc", mode="max", patience=cfg.patience))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.epochs,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
        precision=resolve_precision(cfg),
        callbacks=callbacks,
        plugins=[run_rules.atomic_checkpoint_io()],  # no truncated .ckpt on a kill or full disk
        logger=CSVLogger(run_dir, name="", version=""),
        enable_progress_bar=progress,
        limit_train_batches=_limit(cfg.limit_train_batches),
        limit_val_batches=_limit(cfg.limit_val_batches),
        deterministic=False,
        log_every_n_steps=max(1, min(10, steps)),
        enable_model_summary=progress,
    )
    if resume and (run_dir / "metrics.csv").is_file():
        # Lightning's CSV logger starts metrics.csv afresh; keep the epochs before the kill
        (run_dir / "metrics.csv").replace(run_dir / "metrics-before-resume.csv")
    started = time.time()
    with warnings.catch_warnings():
        for text in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=text)
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    seconds = time.time() - started
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # tear down gloo/NCCL before any rank leaves: a rank exiting with the group alive
        # aborted at exit ("terminate called without an active exception", SIGABRT)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return run_dir / "model.pt"
    best_path = best.best_model_path or str(last)
    module = PatchClassifier.load_from_checkpoint(
        best_path, cfg=cfg, spec=spec, steps_per_epoch=steps, weights_only=False
    )
    finish_run(module, split, cfg, run_dir, seconds, trainer.current_epoch)
    return run_dir / "model.pt"


def finish_run(
    module: PatchClassifier,
    split: SplitData,
    cfg: TrainConfig,
    run_dir: Path,
    seconds: float,
    epochs: int,
) -> None:
    """Fit the temperature on TTA validation logits and write the model file and curves."""
    net = module.eval_net.float().eval().cpu()
    card = {
        "model": module.spec.name,
        "trained": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data": split.train.source.describe(),
        "split": split.description,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "config": config_to_dict(cfg),
        "epochs_run": epochs,
        "train_seconds": round(seconds, 1),
        "history": read_history(run_dir),
        "torch": str(torch.__version__),
        "machine": describe_machine(),
    }
    train_ids = [split.train.source.ids[int(i)] for i in split.train.indices]
    calibrate_and_save(
        net, module.spec, split.val.source, split.val.indices, card, run_dir / "model.pt", train_ids
    )
    atomic_write(
        run_dir / "summary.json",
        json.dumps({k: v for k, v in card.items() if k not in ("val_ids", "history")}, indent=2),
    )
    plot_training_curves(card["history"], run_dir / "training_curves.png")


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch rows of Lightning's metrics.csv (and the part before a resume), merged."""
    merged: dict[int, dict[str, float]] = {}
    for name in ("metrics-before-resume.csv", "metrics.csv"):
        if not (run_dir / name).is_file():
            continue
        with open(run_dir / name, newline="") as fh:
            for row in csv.DictReader(fh):
                epoch = int(row["epoch"])
                values = {
                    k: float(v) for k, v in row.items() if v not in (None, "") and k != "epoch"
                }
                merged.setdefault(epoch, {"epoch": epoch}).update(values)
    return [merged[e] for e in sorted(merged)]


def plot_training_curves(history: list[dict[str, float]], out_png: Path) -> None:
    """Loss and validation AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(row["epoch"], row[key]) for row in history if key in row]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation NLL")):
        ax1.plot(*series(key), marker="o", ms=3, label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(*series("val_auc"), marker="o", ms=3, color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation ROC AUC (no TTA)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
