"""Shared fixtures: the real sample beside the repo, and tiny generated patches in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_patch, require_real_data, write_labels, write_patches


@pytest.fixture(scope="session")
def real_root() -> Path:
    """../shared/data/pcam-real: 10,000 labelled and 564 unlabelled real Kaggle patches.

    Missing data fails the test under CI=true and skips it locally (helpers.require_real_data).
    """
    return require_real_data()


@pytest.fixture
def tiny_kaggle(tmp_path: Path) -> Path:
    """A Kaggle-layout root with 8 labelled train patches (4 per class) and 3 test patches."""
    root = tmp_path / "kaggle"
    images = [make_patch(i) for i in range(8)]
    ids = write_patches(root / "train", images, ".tif")
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    test_ids = write_patches(root / "test", [make_patch(100 + i) for i in range(3)], ".tif")
    write_labels(root / "sample_submission.csv", [(k, 0) for k in test_ids])
    return root


@pytest.fixture(scope="session")
def untrained_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A histocnn model file with random weights: fast, for plumbing tests."""
    import torch

    from histoscan.models.bundle import memory_model_file, save_model_file
    from histoscan.models.registry import create_model, model_spec

    torch.manual_seed(0)
    spec = model_spec("histocnn")
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    save_model_file(
        path,
        memory_model_file(spec, create_model("histocnn").eval(), card={"name": "untrained-test"}),
    )
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped test fails (with its reason): CI must run everything it can.

    Only tests marked ``gpu`` (CI has no GPU) or ``privileged`` (a sandbox may forbid mounting
    a tmpfs even as root) may skip there.
    """
    from helpers import in_ci

    outcome = yield
    report = outcome.get_result()
    allowed = any(item.get_closest_marker(name) for name in ("gpu", "privileged"))
    if in_ci() and report.skipped and not allowed:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"
