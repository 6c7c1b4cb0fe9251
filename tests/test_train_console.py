"""train's console: one line per message, no advertisement or internal warnings, epochs from 1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import make_patch, write_labels, write_patches


def test_train_prints_each_message_once_and_counts_epochs_from_one(tmp_path: Path):
    ids = write_patches(tmp_path / "p", [make_patch(i) for i in range(40)])
    write_labels(tmp_path / "labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    histoscan = str(Path(sys.executable).with_name("histoscan"))
    run = subprocess.run(
        [histoscan, "train", str(tmp_path / "p"), "--labels", str(tmp_path / "labels.csv"),
         "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "8"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout + run.stderr
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    repeated = [line for line, n in Counter(lines).items() if n > 1 and "━" not in line]
    assert repeated == [], repeated
    for noise in ("Tip:", "litlogger", "UserWarning", "Experiment logs directory", "LeafSpec",
                  "Seed set to", "GPU available", "log_every_n_steps"):  # fmt: skip
        assert noise not in text, noise
    assert "Epoch 2/2" in text and "Epoch 1/1" not in text
    assert "model written to" in text
