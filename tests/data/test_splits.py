"""Validation splits: disjoint, complete, stratified, grouped, reproducible; bad input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histoscan.data.splits import read_groups, split_indices
from histoscan.errors import DataError


def check_partition(train: np.ndarray, val: np.ndarray, n: int) -> None:
    assert len(set(train.tolist())) == len(train) and len(set(val.tolist())) == len(val)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted([*train.tolist(), *val.tolist()]) == list(range(n))
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "fraction"), [(40, 60, 0.2), (13, 29, 0.25), (5, 5, 0.4)]
)
def test_stratified_split_is_a_partition_with_each_class_in_proportion(n_pos, n_neg, fraction):
    labels = np.array([1] * n_pos + [0] * n_neg)
    np.random.default_rng(0).shuffle(labels)
    train, val = split_indices(labels, fraction, seed=3)
    check_partition(train, val, len(labels))
    n = len(labels)
    assert abs(len(val) - fraction * n) <= 1
    for c, n_c in ((1, n_pos), (0, n_neg)):
        assert abs((labels[val] == c).sum() - fraction * n_c) <= 1


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    labels = np.array([0, 1] * 50)
    a = split_indices(labels, 0.2, seed=42)
    b = split_indices(labels, 0.2, seed=42)
    c = split_indices(labels, 0.2, seed=43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_grouped_split_is_a_partition_with_whole_groups() -> None:
    labels = np.array([0, 1, 1, 0] * 15)
    groups = np.repeat([f"slide{i}" for i in range(12)], 5)
    train, val = split_indices(labels, 0.25, seed=1, groups=groups)
    check_partition(train, val, len(labels))
    assert not set(groups[train]) & set(groups[val])
    # 1 / 0.25 = 4 folds of 12 slides: 3 slides, 15 patches, in validation
    assert len(set(groups[val])) == 3 and len(val) == 15


def test_grouped_split_is_reproducible_and_works_with_just_enough_groups() -> None:
    labels = np.array([0, 1] * 30)
    groups = np.repeat(np.arange(12), 5)
    same = [split_indices(labels, 0.25, seed=7, groups=groups)[1] for _ in range(2)]
    assert np.array_equal(*same)
    others = {tuple(split_indices(labels, 0.25, seed=s, groups=groups)[1]) for s in range(6)}
    assert len(others) > 1  # the seed is used
    four = np.repeat(np.arange(4), 5)  # exactly the 4 groups a 25 % split needs
    train, val = split_indices(np.array([0, 1] * 10), 0.25, seed=0, groups=four)
    check_partition(train, val, 20)
    assert len(set(four[val])) == 1


def test_bad_fractions_and_too_few_groups_are_refused() -> None:
    labels = np.array([0, 1] * 10)
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"^val_fraction must lie in \(0, 1\)$"):
            split_indices(labels, fraction, seed=0)
    with pytest.raises(DataError, match="need at least 5 groups for a 20% grouped split"):
        split_indices(labels, 0.2, seed=0, groups=np.repeat(np.arange(4), 5))
    with pytest.raises(DataError, match="need at least 2 groups"):
        split_indices(labels, 0.9, seed=0, groups=np.zeros(20))


def test_read_groups_in_id_order_and_names_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "slides.csv"
    path.write_text("id,slide,other\nb,s2,x\na,s1,y\nc,s1,z\n")
    assert read_groups(path, "slide", ["a", "b", "c"]).tolist() == ["s1", "s2", "s1"]
    with pytest.raises(DataError, match=r"no 'slide' for id d \(1 missing\)"):
        read_groups(path, "slide", ["a", "d"])
    with pytest.raises(DataError, match="no column 'patient'"):
        read_groups(path, "patient", ["a"])
