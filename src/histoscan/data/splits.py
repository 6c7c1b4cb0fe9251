"""Validation splits: stratified by label, grouped by slide when slide ids are known."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from histoscan.errors import DataError


def read_groups(path: Path, group_col: str, ids: list[str]) -> np.ndarray:
    """The ``group_col`` value of each id, from a CSV with an ``id`` column."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or group_col not in reader.fieldnames:
            raise DataError(f"{path}: no column {group_col!r} for grouping")
        table = {row["id"]: row[group_col] for row in reader}
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{path}: no {group_col!r} for id {missing[0]} ({len(missing)} missing)")
    return np.array([table[i] for i in ids])


def split_indices(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays: stratified, and with no group on both sides when grouped."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    idx = np.arange(len(labels))
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must lie in (0, 1)")
    if groups is None:
        train, val = train_test_split(
            idx, test_size=val_fraction, stratify=labels, random_state=seed
        )
        return np.sort(train), np.sort(val)
    n_splits = max(2, round(1 / val_fraction))
    if len(np.unique(groups)) < n_splits:
        raise DataError(f"need at least {n_splits} groups for a {val_fraction:.0%} grouped split")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, val = next(folds.split(idx, labels, groups))
    return np.sort(train), np.sort(val)
