"""Run-folder safety for ``train``: what may happen to an existing run folder, and how
checkpoints reach the disk.

Rules (``check_run_dir``):

* a new or empty folder: a new run (the folder gets histoscan's marker, see ``histoscan.io``);
* a folder holding a run needs ``--resume`` (continue it) or ``--overwrite`` (start again);
* ``--overwrite`` deletes only a folder histoscan made, never one holding the training data;
* ``--resume`` needs ``checkpoints/last.ckpt``, refuses a finished run (its ``model.pt`` is
  final: resuming would refit its temperature), and refuses settings that differ from the
  run's ``config.yaml`` (showing each difference; only speed and stopping settings, see
  ``RESUME_FREE``, may change) or a validation split that differs from its ``split.csv``:
  either would let validation patches into training.

Checkpoints are written through ``histoscan.io.atomic_file`` (``AtomicCheckpointIO``): a kill or
a full disk leaves the previous ``best.ckpt``/``last.ckpt`` whole, never a truncated one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from histoscan.errors import DataError
from histoscan.io import MARKER, made_by_histoscan, prepare_out_dir, write_marker

# free to change on resume: speed (workers, threads) and when to stop (a killed run may be given
# more epochs or time); everything else, the split and the data above all, must stay the same
RESUME_FREE = frozenset({"num_workers", "threads", "epochs", "max_minutes", "patience"})


class RunError(DataError):
    """A run folder that cannot be started, resumed or replaced as asked."""


def check_run_dir(
    run_dir: str | Path,
    config: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    inputs: Iterable[str | Path | None] = (),
) -> str:
    """Apply the rules above before any work starts; returns ``new``, ``resume`` or ``overwrite``.

    With ``overwrite`` the old run is deleted here; with ``new`` the folder is created and marked.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other; choose one")
    has_run = run_dir.is_dir() and any(p.name != MARKER for p in run_dir.iterdir())
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir}: exists and is not a folder; choose a folder path for --out")
    if resume:
        _check_resume(run_dir, config)
        return "resume"
    if has_run and not overwrite:
        raise RunError(
            f"{run_dir}: holds a {_describe(run_dir)} run; use --resume to continue it or "
            "--overwrite to start again"
        )
    if has_run:
        prepare_out_dir(run_dir, overwrite=True, inputs=inputs)
        shutil.rmtree(run_dir)
    else:
        prepare_out_dir(run_dir, overwrite=True, inputs=inputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, "train run")
    return "overwrite" if has_run else "new"


def _describe(run_dir: Path) -> str:
    if (run_dir / "model.pt").exists():
        return "finished"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return "interrupted"
    return "started" if made_by_histoscan(run_dir) else "foreign (not histoscan's)"


def _check_resume(run_dir: Path, config: Mapping[str, Any]) -> None:
    if (run_dir / "model.pt").exists():
        raise RunError(
            f"{run_dir}: this run is finished (model.pt exists); there is nothing to resume. "
            "Use another --out, or --overwrite to train again"
        )
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise RunError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
    saved_path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"{saved_path}: unreadable, so the run cannot be resumed safely") from exc
    changes = config_differences(saved, config)
    if changes:
        shown = "; ".join(changes[:6]) + (
            f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
        )
        raise RunError(
            f"{run_dir}: --resume with different settings ({shown}); resume with the run's own "
            f"config ({saved_path}) or start a new run"
        )


def config_differences(
    saved: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """``['lr: 0.003 -> 0.01', ...]`` for every setting that differs (nested ones dotted)."""
    changes = []
    for key in sorted(set(saved) | set(new)):
        name = f"{prefix}{key}"
        if not prefix and key in RESUME_FREE:
            continue
        old, value = saved.get(key), new.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            changes += config_differences(old, value, f"{name}.")
        elif old != value and not (_number(old) and _number(value) and float(old) == float(value)):
            changes.append(f"{name}: {old!r} -> {value!r}")
    return changes


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_resume_split(run_dir: Path, rows: list[tuple[str, int, str]]) -> None:
    """Refuse to resume when the recomputed (id, label, split) rows differ from split.csv."""
    import csv

    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        saved = [(r["id"], int(r["label"]), r["split"]) for r in csv.DictReader(fh)]
    if saved == rows:
        return
    moved = {r[0] for r in rows} ^ {r[0] for r in saved}
    sides = {r[0]: r[2] for r in saved}
    moved |= {key for key, _, side in rows if sides.get(key, side) != side}
    example = f" (e.g. id {sorted(moved)[0]})" if moved else ""
    raise RunError(
        f"{path}: the data or split differs from the run being resumed: {len(moved)} patches "
        f"changed side or appeared{example}; resume on the same data, or start a new run"
    )


def atomic_checkpoint_io() -> Any:
    """A Lightning CheckpointIO that writes each checkpoint beside itself and renames it."""
    import torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from histoscan.io import atomic_file

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(
            self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
        ) -> None:
            with atomic_file(path) as tmp:
                torch.save(checkpoint, tmp)

    return AtomicCheckpointIO()


def split_rows(split: Any) -> list[tuple[str, int, str]]:
    """(id, label, train|val) for a ``train.SplitData``, in the order split.csv records them."""
    rows = []
    for name, ds in (("train", split.train), ("val", split.val)):
        rows += [(ds.source.ids[j], int(ds.source.labels[j]), name) for j in ds.indices]
    return rows


def is_primary_process() -> bool:
    """False in the other ranks of a DDP run (Lightning's launcher, torchrun, SLURM)."""
    import os

    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") in ("0", "") for name in ranks)


def check_accelerator(accelerator: str) -> None:
    """``gpu``/``cuda`` without a visible GPU is one clear line, not Lightning's traceback."""
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RunError(
                f"--accelerator {accelerator}: no GPU is visible to torch here; "
                "use --accelerator cpu (or auto)"
            )
