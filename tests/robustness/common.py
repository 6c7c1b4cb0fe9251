"""Builders and checks shared by the robustness tests (generated data only, in tmp_path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from helpers import make_patch, write_labels, write_patches

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def cli(*args: object):
    """Run ``histoscan ARGS`` in-process; returns click's Result."""
    from histoscan.cli import app as _  # noqa: F401
    from histoscan.cli.app import app

    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int = 2, *words: str) -> str:
    """Exit ``code``, no traceback, and one ``error:`` line holding every word."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, output
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def kaggle_folder(root: Path, n: int = 8, suffix: str = ".png") -> list[str]:
    """``root/train`` + ``root/train_labels.csv`` with ``n`` patches, alternating labels."""
    ids = write_patches(root / "train", [make_patch(i) for i in range(n)], suffix)
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    return ids


def write_pcam(folder: Path, x: np.ndarray, y: np.ndarray | None, split: str = "train") -> Path:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    x_path = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=x)
    if y is not None:
        with h5py.File(folder / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=np.asarray(y).reshape(-1, 1, 1, 1))
    return x_path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: to prove nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and "partial" in p.name
    )


def python_process(code: str, **kw) -> subprocess.Popen:
    """A child Python running ``code`` with this repo's tests/ and src on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    return subprocess.Popen([sys.executable, "-c", code], env=env, **kw)
