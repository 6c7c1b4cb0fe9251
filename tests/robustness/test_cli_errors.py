"""Unexpected failures are one line plus where the traceback went (exit 1); file-system errors
name the file (exit 2); neither shows a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from robustness.common import assert_one_line_error, cli, kaggle_folder


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kaggle_folder(tmp_path / "X")
    return tmp_path / "X"


def test_a_bug_is_one_line_and_a_logged_traceback(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import histoscan.data.store as store

    def broken(*args: object, **kw: object) -> None:
        raise ZeroDivisionError("the bug we did not foresee")

    monkeypatch.setattr(store, "write_store", broken)
    result = cli("prepare", data, "--out", tmp_path / "s", "--quiet")
    line = assert_one_line_error(result, 1, "unexpected ZeroDivisionError", "the bug we did not")
    logs = list((tmp_path / "state" / "histoscan" / "logs").glob("histoscan-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    text = logs[0].read_text()
    assert "Traceback" in text and "ZeroDivisionError" in text and "def broken" not in line


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npy"), 2, "disk full"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/in/a.png"), 2, "/data/in/a.png"),
        (MemoryError(), 1, "out of memory"),
    ],
)
def test_os_and_memory_errors_are_one_line(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    code: int,
    words: str,
) -> None:
    import histoscan.data.store as store

    def failing(*args: object, **kw: object) -> None:
        raise exc

    monkeypatch.setattr(store, "write_store", failing)
    assert_one_line_error(cli("prepare", data, "--out", tmp_path / "s", "--quiet"), code, words)


def test_missing_data_path(tmp_path: Path) -> None:
    assert_one_line_error(cli("verify", tmp_path / "nope"), 2, "no such file")
