"""Exactly 96x96: every other height or width is refused by check_patch, the readers and verify."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from helpers import make_patch, pixel_id, write_labels
from histoscan.data.sources import check_patch, open_source
from histoscan.data.verify import verify_source
from histoscan.errors import DataError

# (height, width): one side off by one either way, both off, much larger, a sliver
BAD_SHAPES = [(96, 95), (95, 96), (96, 97), (97, 96), (95, 95), (97, 97), (192, 96), (96, 1)]


def patch(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), BAD_SHAPES)
def test_check_patch_names_the_size(height: int, width: int) -> None:
    assert check_patch(patch(height, width)) == f"not 96x96 (got {width}x{height})"


def test_check_patch_accepts_exactly_96x96_uint8_rgb() -> None:
    assert check_patch(make_patch(0)) is None
    assert check_patch(patch(64, 64), patch_px=64) is None
    assert check_patch(patch(96, 96), patch_px=64) == "not 64x64 (got 96x96)"


@pytest.mark.parametrize(("height", "width"), BAD_SHAPES)
def test_file_reader_and_verify_refuse_the_shape(tmp_path: Path, height: int, width: int) -> None:
    good = make_patch(1)
    bad = patch(height, width, seed=2)
    folder = tmp_path / "data"
    folder.mkdir()
    ids = [pixel_id(good), pixel_id(bad)]
    Image.fromarray(good).save(folder / f"{ids[0]}.png")
    Image.fromarray(bad).save(folder / f"{ids[1]}.png")
    write_labels(tmp_path / "data_labels.csv", [(ids[0], 0), (ids[1], 1)])
    source = open_source(folder)
    i_bad = source.ids.index(ids[1])

    with pytest.raises(DataError, match=rf"{ids[1]}\.png: not 96x96 \(got {width}x{height}\)"):
        source.read(i_bad)
    np.testing.assert_array_equal(source.read(1 - i_bad), good)

    result = verify_source(source, check_hash=True, progress=False)
    assert [(p.id, p.kind) for p in result.problems] == [(ids[1], "not 96x96")]
    assert result.problems[0].detail == f"got {width}x{height}"


@pytest.mark.parametrize(("height", "width"), [(96, 95), (95, 96), (97, 97)])
def test_pcam_file_of_other_shape_is_refused(tmp_path: Path, height: int, width: int) -> None:
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f["x"] = np.zeros((4, height, width, 3), dtype=np.uint8)
    source = open_source(tmp_path)
    assert [p.kind for p in source.problems] == ["not 96x96x3"]
    assert f"{width}x{height}" in source.problems[0].detail
    with pytest.raises(DataError, match="not 96x96x3"):
        source.read(0)
    with pytest.raises(DataError, match="not 96x96x3"):
        source.read_many([0, 1])
    assert not verify_source(source, progress=False).ok
