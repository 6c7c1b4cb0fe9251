"""evaluate's export of misclassified patches: every wrong call in a CSV, the surest first."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import make_patch, write_patches
from histoscan.data.sources import open_source
from histoscan.evaluate import write_misclassified


def test_wrong_calls_are_listed_surest_first_with_2x_images(tmp_path: Path):
    images = [make_patch(i) for i in range(6)]
    ids = write_patches(tmp_path / "p", images)
    source = open_source(tmp_path / "p")
    order = [ids.index(k) for k in source.ids]  # source order -> written order
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([0.95, 0.2, 0.1, 0.7, 0.55, 0.49])
    # at 0.5: index 0 FP (0.45 from the threshold), 2 FN (0.40), 4 FP (0.05), 5 FN (0.01)
    n = write_misclassified(tmp_path / "err", source, np.arange(6), labels, probs, 0.5, 3)
    assert n == 4
    with open(tmp_path / "err" / "misclassified.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [source.ids[j] for j in (0, 2, 4, 5)]
    assert [r["kind"] for r in rows] == ["FP", "FN", "FP", "FN"]
    assert [r["prediction"] for r in rows] == ["1", "0", "1", "0"]
    assert rows[3]["image"] == ""  # only the first three get a picture
    for r, j in zip(rows[:3], (0, 2, 4), strict=True):
        big = np.asarray(Image.open(tmp_path / "err" / r["image"]))
        assert big.shape == (192, 192, 3)
        assert (big[::2, ::2] == images[order[j]]).all()


def test_a_fitted_threshold_rule_says_how_many_evaluated_patches_it_was_fitted_on(tmp_path):
    from types import SimpleNamespace

    from histoscan.evaluate import threshold_fit_overlap

    ids = write_patches(tmp_path / "p", [make_patch(i) for i in range(5)])
    source = open_source(tmp_path / "p")
    card = {"val_ids": [ids[0], ids[3], "elsewhere"]}
    predictor = SimpleNamespace(model_file=SimpleNamespace(card=card))
    everything = np.arange(5)
    assert threshold_fit_overlap(predictor, source, everything, "youden") == 2
    assert threshold_fit_overlap(predictor, source, everything, "sens:0.9") == 2
    assert threshold_fit_overlap(predictor, source, everything, 0.5) == 0  # not fitted
    assert threshold_fit_overlap(predictor, source, everything, None) == 0
    not_val = np.array([i for i, k in enumerate(source.ids) if k not in card["val_ids"]])
    assert threshold_fit_overlap(predictor, source, not_val, "youden") == 0
