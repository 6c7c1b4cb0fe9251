"""A test needing the real sample fails loudly under CI and skips only on a developer machine."""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers


@pytest.fixture
def no_real_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "shared" / "data" / "pcam-real"
    monkeypatch.setattr(helpers, "find_real_root", lambda: missing)
    return missing


def test_missing_data_fails_under_ci(monkeypatch: pytest.MonkeyPatch, no_real_data: Path) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide the real data") as info:
        helpers.require_real_data()
    assert str(no_real_data) in str(info.value)


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_missing_data_skips_locally(
    monkeypatch: pytest.MonkeyPatch, no_real_data: Path, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="real sample not found"):
        helpers.require_real_data()


def test_the_sample_is_found_upward_from_a_nested_copy(tmp_path: Path) -> None:
    data = tmp_path / "work" / "shared" / "data" / "pcam-real"
    data.mkdir(parents=True)
    (data / "train_labels.csv").write_text("id,label\n")
    project = tmp_path / "work" / "project"
    assert helpers.find_real_root(project / "tests" / "helpers.py") == data
    assert helpers.find_real_root(project / "mutants" / "tests" / "helpers.py") == data  # mutmut
    assert helpers.find_real_root(tmp_path / "other" / "tests" / "helpers.py") != data
