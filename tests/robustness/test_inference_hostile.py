"""The inference commands under bad options, one-class data and kill -9: one line, exit 2, and no
half-written output folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_patch, write_labels, write_patches
from robustness.common import assert_one_line_error, cli

HISTOSCAN = Path(sys.executable).with_name("histoscan")


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """Six generated patches with labels of both classes (never seen by the bundled model)."""
    ids = write_patches(tmp_path / "p", [make_patch(i) for i in range(6)], ".png")
    write_labels(tmp_path / "labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    return tmp_path / "p", tmp_path / "labels.csv"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--threshold", "sens:1.5"], "sensitivity must be in (0, 1]"),
        (["--threshold", "sens:lots"], "sens: needs a number"),
        (["--threshold", "1.7"], "not a probability"),
        (["--threshold", "median"], "unknown threshold rule"),
        (["--engine", "tensorrt"], "unknown engine"),
        (["--device", "tpu"], "--device"),
        (["--device", "cuda:3"], "--device"),
    ],
)
def test_bad_inference_options_fail_before_any_output(
    folder: tuple[Path, Path], tmp_path: Path, args: list[str], words: str
) -> None:
    data, labels = folder
    out = tmp_path / "ev"
    result = cli("evaluate", data, "--labels", labels, "--out", out, "--quiet", *args)
    assert_one_line_error(result, 2, words)
    assert not out.exists()


def test_evaluate_on_one_class_is_one_line(tmp_path: Path) -> None:
    ids = write_patches(tmp_path / "p", [make_patch(i) for i in range(4)], ".png")
    write_labels(tmp_path / "labels.csv", [(k, 0) for k in ids])
    out = tmp_path / "ev"
    result = cli("evaluate", tmp_path / "p", "--labels", tmp_path / "labels.csv", "--out", out)
    assert_one_line_error(result, 2, "all 4 patches are normal (0)", "both classes")
    assert not out.exists()


def test_a_killed_evaluate_leaves_no_folder_and_the_next_run_cleans_up(
    folder: tuple[Path, Path], tmp_path: Path
) -> None:
    data, labels = folder
    out = tmp_path / "ev"
    cmd = [str(HISTOSCAN), "evaluate", str(data), "--labels", str(labels), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # wait until it has started writing (its partial folder exists), then kill it hard
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".ev.partial-") for p in tmp_path.iterdir()):
            break
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:  # finished before the kill: the folder is whole
        assert (out / "metrics.json").is_file() and (out / "predictions.csv").is_file()
        return
    assert not out.exists()  # never a folder with plots but no metrics.json
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "metrics.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
