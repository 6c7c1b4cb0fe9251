"""Run-folder safety: a run is continued only with --resume and the same settings and data,
replaced only with --overwrite and only if histoscan made it; a kill -9 leaves whole checkpoints."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import write_separable_folder
from histoscan.config import config_to_dict, load_train_config
from histoscan.io import MARKER
from histoscan.run_dir import RunError, check_resume_split, check_run_dir
from robustness.common import assert_one_line_error, cli, python_process

CFG = config_to_dict(load_train_config(None, epochs=3))


def fake_run(folder: Path, finished: bool = False, cfg: dict = CFG) -> Path:
    """A run folder as train leaves it: marker, config, split, checkpoints (and model.pt)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / MARKER).write_text("{}")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    if finished:
        (folder / "model.pt").write_bytes(b"model")
    return folder


def test_interrupted_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    with pytest.raises(RunError, match=r"interrupted run; use --resume .* or --overwrite"):
        check_run_dir(run, CFG)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"ckpt"
    assert check_run_dir(run, CFG, resume=True) == "resume"
    assert check_run_dir(run, CFG, overwrite=True) == "overwrite"
    assert sorted(p.name for p in run.iterdir()) == [MARKER]


def test_resume_refuses_changed_settings_and_shows_them(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    changed = config_to_dict(load_train_config(None, epochs=3, lr=0.01, val_fraction=0.2))
    with pytest.raises(RunError) as info:
        check_run_dir(run, changed, resume=True)
    message = str(info.value)
    assert "lr: 0.003 -> 0.01" in message and "val_fraction: 0.1 -> 0.2" in message
    nested = config_to_dict(load_train_config(None, epochs=3, augment={"hue": 0.0}))
    with pytest.raises(RunError, match=r"augment\.hue: 0\.02 -> 0\.0"):
        check_run_dir(run, nested, resume=True)
    # more epochs, another worker count: a killed run may be given those
    longer = config_to_dict(load_train_config(None, epochs=9, num_workers=2))
    assert check_run_dir(run, longer, resume=True) == "resume"


def test_finished_run_is_not_resumed_or_refitted(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", finished=True)
    with pytest.raises(RunError, match="finished"):
        check_run_dir(run, CFG, resume=True)
    with pytest.raises(RunError, match="finished run"):
        check_run_dir(run, CFG)
    assert (run / "model.pt").read_bytes() == b"model"


def test_overwrite_never_deletes_a_foreign_folder_or_the_data(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep")
    with pytest.raises(Exception, match="not made by histoscan"):
        check_run_dir(mine, CFG, overwrite=True)
    assert (mine / "thesis.txt").read_text() == "keep"
    run = fake_run(tmp_path / "run")
    (run / "data").mkdir()
    with pytest.raises(Exception, match="contains the input"):
        check_run_dir(run, CFG, overwrite=True, inputs=[run / "data"])
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_resume_refuses_a_different_split(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.csv").write_text("id,label,split\na,0,train\nb,1,val\nc,1,train\n")
    check_resume_split(run, [("a", 0, "train"), ("b", 1, "val"), ("c", 1, "train")])
    with pytest.raises(RunError, match="2 patches changed side"):
        check_resume_split(run, [("a", 0, "train"), ("b", 1, "train"), ("c", 1, "val")])


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--val-fraction", "1"], "val_fraction"),
        (["--val-fraction", "0"], "val_fraction"),
        (["--batch-size", "0"], "batch_size"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "nan"], "lr"),
        (["--lr", "-1"], "lr"),
        (["--precision", "fp8"], "precision"),
    ],
)
def test_bad_training_settings_are_one_line(tmp_path: Path, flags: list[str], words: str) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=2)
    result = cli("train", data, "--out", tmp_path / "run", *flags)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and words in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("epochs: [1, 2\nlr: 0.1\n", "not valid YAML at line"),
        ("- just\n- a list\n", "mapping"),
        ("epoks: 3\n", "epoks"),
        ("lr: fast\n", "lr: expected a number"),
        ("augment:\n  hue: 2\n", "augment.hue"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path: Path, text: str, words: str) -> None:
    data = write_separable_folder(tmp_path / "data", n_per_class=2)
    (tmp_path / "c.yaml").write_text(text)
    result = cli("train", data, "--out", tmp_path / "run", "--config", tmp_path / "c.yaml")
    assert_one_line_error(result, 2, words, "c.yaml")


def test_gpu_accelerator_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = write_separable_folder(tmp_path / "data", n_per_class=2)
    result = cli("train", data, "--out", tmp_path / "run", "--accelerator", "gpu")
    assert_one_line_error(result, 2, "no GPU")


TRAIN = """
import sys
from histoscan.cli.app import app
import histoscan.cli  # noqa
sys.argv = ["histoscan", "train", DATA, "--out", RUN, "--epochs", "40", "--batch-size", "8",
            "--quiet"]
app()
"""


def test_kill_9_during_training_leaves_whole_checkpoints_and_resume_works(tmp_path: Path) -> None:
    import torch

    data = write_separable_folder(tmp_path / "data", n_per_class=16)
    run = tmp_path / "run"
    code = TRAIN.replace("DATA", repr(str(data))).replace("RUN", repr(str(run)))
    proc = python_process(code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # now in the middle of later epochs (and checkpoint writes)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (run / "model.pt").exists()
    for ckpt in (run / "checkpoints").glob("*.ckpt"):  # every one loads: none is truncated
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert "state_dict" in state
    again = cli("train", data, "--out", run, "--epochs", "40", "--batch-size", "8", "--quiet")
    assert_one_line_error(again, 2, "--resume")
    changed = cli("train", data, "--out", run, "--resume", "--lr", "0.1", "--quiet")
    assert_one_line_error(changed, 2, "lr: 0.003 -> 0.1")
