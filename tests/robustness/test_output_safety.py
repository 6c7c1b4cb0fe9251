"""Nothing lost: --overwrite replaces only what histoscan made, never the input; kills leave no
half-written output, and the next run clears what a kill -9 left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from histoscan.errors import HistoscanError
from histoscan.io import MARKER, OutputError, atomic_dir, atomic_write, prepare_out_dir
from robustness.common import (
    assert_one_line_error,
    cli,
    hidden_leftovers,
    kaggle_folder,
    python_process,
    tree,
)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "X"
    kaggle_folder(root)
    return root


def test_out_on_the_input_images_is_refused(data: Path) -> None:
    before = tree(data)
    args = ["prepare", data / "train", "--labels", data / "train_labels.csv", "--quiet"]
    result = cli(*args, "--out", data / "train", "--overwrite")
    assert_one_line_error(result, 2, "is the input")
    assert tree(data) == before


def test_out_on_a_folder_containing_the_input_is_refused(data: Path) -> None:
    before = tree(data)
    result = cli("prepare", data / "train", "--labels", data / "train_labels.csv", "--quiet",
                 "--out", data, "--overwrite")  # fmt: skip
    assert_one_line_error(result, 2, "contains the input")
    assert tree(data) == before


def test_overwrite_never_deletes_a_folder_histoscan_did_not_make(
    data: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    result = cli("prepare", data, "--out", mine, "--overwrite", "--quiet")
    assert_one_line_error(result, 2, "not made by histoscan")
    assert (mine / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]


def test_overwrite_replaces_what_histoscan_made(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    assert cli("prepare", data, "--out", out, "--quiet").exit_code == 0
    assert json.loads((out / MARKER).read_text())["made_by"] == "histoscan"
    assert_one_line_error(cli("prepare", data, "--out", out, "--quiet"), 2, "already exists")
    assert cli("prepare", data, "--out", out, "--quiet", "--overwrite").exit_code == 0
    assert hidden_leftovers(tmp_path) == []


def test_an_empty_existing_folder_may_be_overwritten(data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (
        cli("prepare", data, "--out", tmp_path / "empty", "--overwrite", "--quiet").exit_code == 0
    )


def test_out_that_is_a_file(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = cli("prepare", data, "--out", target, "--overwrite", "--quiet")
    assert_one_line_error(result, 2, "not a folder")
    assert target.read_text() == "keep me"


def test_out_below_a_file(data: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert_one_line_error(
        cli("prepare", data, "--out", tmp_path / "f" / "s", "--quiet"), 2, "is a file"
    )


@pytest.mark.privileged
def test_read_only_output_folder(data: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)])
        if mounted.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        ro.chmod(0o555)
    try:
        result = cli("prepare", data, "--out", ro / "store", "--quiet")
        assert_one_line_error(result, 2, str(ro))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        ro.chmod(0o755)


def test_library_policy_matches_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    (folder / "b").mkdir(parents=True)
    with pytest.raises(OutputError, match="contains the input"):
        prepare_out_dir(folder, overwrite=True, inputs=[folder / "b" / "c.csv"])
    with pytest.raises(OutputError, match="is the input"):
        prepare_out_dir(folder, overwrite=True, inputs=[folder])
    prepare_out_dir(tmp_path / "new", overwrite=False, inputs=[folder, None])
    assert issubclass(OutputError, HistoscanError)


def test_failed_write_leaves_nothing_and_keeps_the_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("crash half-way")
    assert (out / "a.txt").read_text() == "old"
    assert hidden_leftovers(tmp_path) == []


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_leftovers_of_killed_runs_are_removed_by_the_next(tmp_path: Path) -> None:
    pid = dead_pid()
    stale_dir = tmp_path / f".out.partial-{pid}-abc123"
    stale_dir.mkdir()
    (stale_dir / "images.npy").write_bytes(b"\0" * 1000)
    stale_file = tmp_path / f".m.csv.partial-{pid}-xyz.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".out.partial-{os.getppid()}-live"  # a running process: left alone
    live.mkdir()
    other = tmp_path / f".other.partial-{pid}-abc"  # another target's: not ours to judge now
    other.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    atomic_write(tmp_path / "m.csv", "id,label\n")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and other.exists()


SLOW_PREPARE = """
import sys, time
from histoscan.data.sources import FileSource
from histoscan.cli.app import app
import histoscan.cli  # noqa
original = FileSource.read_raw
def slow(self, i):
    time.sleep(0.05)
    return original(self, i)
FileSource.read_raw = slow
sys.argv = ["histoscan", "prepare", sys.argv[1], "--out", sys.argv[2], "--quiet"]
app()
"""


def start_slow_prepare(data: Path, out: Path) -> subprocess.Popen:
    proc = python_process(SLOW_PREPARE.replace("sys.argv[1]", repr(str(data))).replace(
        "sys.argv[2]", repr(str(out))), stderr=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 30
    while not hidden_leftovers(out.parent):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.02)
    return proc


@pytest.fixture
def big_data(tmp_path: Path) -> Path:
    root = tmp_path / "X"
    kaggle_folder(root, n=120)
    return root


def test_kill_9_during_prepare_leaves_no_store_and_the_next_run_cleans_up(
    big_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    proc = start_slow_prepare(big_data, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not out.exists()
    assert hidden_leftovers(tmp_path), "a kill -9 cannot clean up; the next run must"
    assert cli("prepare", big_data, "--out", out, "--quiet").exit_code == 0
    assert hidden_leftovers(tmp_path) == []
    from histoscan.data.store import PatchStore

    assert len(PatchStore(out)) == 120


def test_sigterm_during_prepare_removes_the_partial_store(big_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    proc = start_slow_prepare(big_data, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    assert not out.exists() and hidden_leftovers(tmp_path) == []
