"""Training end to end on tiny data and on the real sample; resume after a kill; DDP on CPU."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_separable_folder
from histoscan.config import load_train_config
from histoscan.data.sources import open_source
from histoscan.errors import DataError
from histoscan.predict import Predictor
from histoscan.train import fit

FAST = dict(
    model="histocnn",
    batch_size=16,
    lr=3e-3,
    val_fraction=0.25,
    ema_decay=0.0,
    threads=1,
    augment={"hed_sigma": 0.0, "hed_bias": 0.0, "shift_px": 0},
)


def test_training_learns_a_separable_task(tmp_path: Path) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=24)
    cfg = load_train_config(None, epochs=4, **FAST)
    model_path = fit(open_source(data), cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "split.csv", "metrics.csv", "training_curves.png", "model.pt"):
        assert (run / name).is_file(), name
    predictor = Predictor.load(model_path)
    card = predictor.model_file.card
    assert card["val_auc_tta_d4"] > 0.95
    assert len(card["val_ids"]) == 12 and len(card["history"]) == 4
    losses = [row["train_loss"] for row in card["history"]]
    assert losses[-1] < losses[0]


def test_a_few_steps_on_real_patches_lower_the_loss(real_root: Path, tmp_path: Path) -> None:
    source = open_source(real_root / "train")
    cfg = load_train_config(
        None,
        epochs=3,
        limit_train_batches=6,
        limit_val_batches=1,
        **{**FAST, "batch_size": 32, "val_fraction": 0.02},
    )
    fit(source, cfg, tmp_path / "run", progress=False)
    history = Predictor.load(tmp_path / "run" / "model.pt").model_file.card["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_killed_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=12)
    source = open_source(data)
    run = tmp_path / "run"
    fit(source, load_train_config(None, epochs=1, **FAST), run, progress=False)
    (run / "model.pt").unlink()  # as if killed after the first epoch's checkpoint
    with pytest.raises(DataError, match="nothing to resume"):
        fit(source, load_train_config(None, epochs=2, **FAST), tmp_path / "other", resume=True)
    fit(source, load_train_config(None, epochs=2, **FAST), run, resume=True, progress=False)
    history = Predictor.load(run / "model.pt").model_file.card["history"]
    assert [row["epoch"] for row in history] == [0, 1]


def test_finished_run_is_not_overwritten(tmp_path: Path) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=8)
    fit(
        open_source(data),
        load_train_config(None, epochs=1, **FAST),
        tmp_path / "run",
        progress=False,
    )
    with pytest.raises(DataError, match="finished run"):
        fit(open_source(data), load_train_config(None, epochs=1, **FAST), tmp_path / "run")


def read_split_csv(run: Path) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) as the run recorded them in split.csv."""
    with open(run / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["split"] for r in rows} <= {"train", "val"}
    return [r["id"] for r in rows if r["split"] == "train"], [
        r["id"] for r in rows if r["split"] == "val"
    ]


@pytest.mark.parametrize("how", ["stratified", "grouped", "manifest"])
def test_train_and_validation_ids_are_disjoint_and_cover_the_kept_set(
    tmp_path: Path, how: str
) -> None:
    from histoscan.models.modelfile import load_model_file

    data = write_separable_folder(tmp_path / "data", n_per_class=12)
    source = open_source(data)
    kept = set(source.ids)
    options: dict = {}
    settings = dict(FAST)
    slide = {key: f"slide{i % 8}" for i, key in enumerate(source.ids)}  # 8 slides of 3
    if how == "grouped":
        groups = tmp_path / "slides.csv"
        groups.write_text("id,slide\n" + "".join(f"{k},{v}\n" for k, v in slide.items()))
        options["groups_csv"] = groups
        settings["group_col"] = "slide"
    if how == "manifest":
        kept = set(source.ids[::4]) | set(source.ids[1::4]) | set(source.ids[2::4])  # 18 of 24
        manifest = tmp_path / "clean.csv"
        rows = "".join(f"{k},{int(k in kept)}\n" for k in source.ids)
        manifest.write_text("id,keep\n" + rows)
        options["manifest"] = manifest
    cfg = load_train_config(None, epochs=1, limit_train_batches=1, **settings)

    fit(source, cfg, tmp_path / "run", progress=False, **options)

    train, val = read_split_csv(tmp_path / "run")
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert set(train) | set(val) == kept
    label = dict(zip(source.ids, source.labels.tolist(), strict=True))
    assert {label[k] for k in val} == {0, 1}  # both classes validated
    if how == "grouped":
        assert not {slide[k] for k in train} & {slide[k] for k in val}
    else:  # stratified: 25 % of each class, rounded, in validation
        for c in (0, 1):
            n_c = sum(label[k] == c for k in kept)
            assert abs(sum(label[k] == c for k in val) - 0.25 * n_c) <= 1
    mf = load_model_file(tmp_path / "run" / "model.pt")
    assert sorted(mf.card["val_ids"]) == sorted(val)
    assert mf.meta.seen_in_training(train).all()
    assert not mf.meta.seen_in_training(val).any()


def test_grouped_split_keeps_each_slide_on_one_side(tmp_path: Path) -> None:
    from histoscan.data.splits import split_indices

    labels = np.array([0, 1] * 20)
    groups = np.repeat(np.arange(10), 4)
    train, val = split_indices(labels, 0.2, seed=0, groups=groups)
    assert not set(groups[train]) & set(groups[val])
    assert len(train) + len(val) == 40


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_single_process(tmp_path: Path) -> None:
    """torchrun, 2 gloo processes: the model loads and predicts like a 1-process one."""
    data = write_separable_folder(tmp_path / "data", n_per_class=32)
    histoscan = shutil.which("histoscan", path=str(Path(sys.executable).parent))
    args = [
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
        "--quiet",
        "--accelerator",
        "cpu",
        "--config",
        str(tmp_path / "fast.yaml"),
    ]
    (tmp_path / "fast.yaml").write_text(
        "ema_decay: 0.0\nthreads: 1\naugment: {hed_sigma: 0.0, hed_bias: 0.0, shift_px: 0}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp_run = subprocess.run(
        [
            *torchrun,
            histoscan,
            "train",
            str(data),
            "--out",
            str(tmp_path / "ddp"),
            "--devices",
            "2",
            *args,
        ],
        env=env,
        timeout=600,
        capture_output=True,
        text=True,
    )
    # both ranks exit cleanly: no SIGABRT from a process group left alive at exit
    assert ddp_run.returncode == 0, ddp_run.stderr[-3000:]
    assert "terminate called" not in ddp_run.stderr, ddp_run.stderr[-3000:]
    subprocess.run(
        [histoscan, "train", str(data), "--out", str(tmp_path / "single"), *args],
        check=True,
        env=env,
        timeout=600,
    )
    source = open_source(data)
    images = source.read_many(range(len(source)))
    ddp = Predictor.load(tmp_path / "ddp" / "model.pt")
    single = Predictor.load(tmp_path / "single" / "model.pt")
    assert ddp.spec == single.spec
    assert ddp.model_file.card["val_ids"] == single.model_file.card["val_ids"]
    from sklearn.metrics import roc_auc_score

    p_ddp, p_single = ddp.predict_proba(images), single.predict_proba(images)
    assert roc_auc_score(source.labels, p_ddp) >= 0.95
    assert roc_auc_score(source.labels, p_single) >= 0.95
    assert np.corrcoef(p_ddp, p_single)[0, 1] > 0.8


def test_checkpoints_carry_the_preprocessing(tmp_path: Path) -> None:
    import torch

    data = write_separable_folder(tmp_path / "data", n_per_class=8)
    cfg = load_train_config(None, epochs=1, input_px=64, **FAST)
    fit(open_source(data), cfg, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["histoscan"]["spec"]["input_px"] == 64
    assert tuple(ckpt["histoscan"]["spec"]["mean"]) == (0.485, 0.456, 0.406)
    assert Predictor.load(tmp_path / "run" / "model.pt").spec.input_px == 64


def test_pcam_training_uses_the_official_valid_split(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("valid", 8)):
        y = np.array([i % 2 for i in range(n)], dtype=np.uint8)
        x = rng.integers(150, 230, (n, 96, 96, 3), dtype=np.uint8)
        x[y == 1, 32:64, 32:64] = 40
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f["x"] = x
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f["y"] = y.reshape(-1, 1, 1, 1)
    fit(
        open_source(tmp_path),
        load_train_config(None, epochs=1, **FAST),
        tmp_path / "run",
        progress=False,
    )
    card = Predictor.load(tmp_path / "run" / "model.pt").model_file.card
    assert card["split"] == "PCam official valid split"
    assert card["val_ids"] == [f"valid/{i}" for i in range(8)]
