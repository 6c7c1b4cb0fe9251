"""A full disk is one clear line on every writer, and leaves nothing half-written.

These mount a small tmpfs, so they run only as root (``id -u`` = 0) and are skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from histoscan.io import OutputError, atomic_dir, atomic_file, atomic_write
from robustness.common import assert_one_line_error, cli, kaggle_folder

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: room for ~35 patches."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_prepare_on_a_full_disk_is_one_line_not_a_bus_error(
    small_disk: Path, tmp_path: Path
) -> None:
    data = tmp_path / "X"
    kaggle_folder(data, n=60)  # 60 x 27,648 bytes = 1.6 MB > 1 MiB
    result = cli("prepare", data, "--out", small_disk / "store", "--quiet")
    assert_one_line_error(result, 2, "free space")
    assert list(small_disk.iterdir()) == []


def test_preallocation_catches_what_the_free_space_check_misses(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import histoscan.data.store as store

    monkeypatch.setattr(store, "ensure_free_space", lambda *a, **k: None)
    from histoscan.data.sources import open_source

    data = tmp_path / "X"
    kaggle_folder(data, n=60)
    with pytest.raises(OutputError, match="disk full"):
        store.write_store(open_source(data), small_disk / "store", progress=False)
    assert list(small_disk.iterdir()) == []


def test_atomic_file_and_dir_on_a_full_disk(small_disk: Path) -> None:
    big = b"\1" * (2 << 20)
    with pytest.raises(OutputError, match="disk full"):
        atomic_write(small_disk / "big.bin", big)
    with pytest.raises(OutputError, match="disk full"), atomic_file(small_disk / "m.pt") as tmp:
        tmp.write_bytes(big)
    with pytest.raises(OutputError, match="disk full"), atomic_dir(small_disk / "run") as tmp:
        (tmp / "a.bin").write_bytes(big)
    assert list(small_disk.iterdir()) == []
