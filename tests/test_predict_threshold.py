"""predict --threshold: a prediction column (1 = tumour) beside Kaggle's probability."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from histoscan.cli import app
from histoscan.models.modelfile import load_model_file

runner = CliRunner()


def test_threshold_adds_a_prediction_column_and_none_keeps_kaggles_two(
    real_root: Path, tmp_path: Path
):
    folder = tmp_path / "p"
    folder.mkdir()
    for f in sorted((real_root / "test").iterdir())[:12]:
        (folder / f.name).symlink_to(f)
    base = ["predict", str(folder), "--tta", "none", "--quiet", "--out"]
    assert runner.invoke(app, [*base, str(tmp_path / "plain.csv")]).exit_code == 0
    with open(tmp_path / "plain.csv") as fh:
        assert next(csv.reader(fh)) == ["id", "label"]
    stored = load_model_file(None).threshold
    for rule, cut in (("0.3", 0.3), ("model", stored)):
        out = tmp_path / f"{rule}.csv"
        result = runner.invoke(app, [*base, str(out), "--threshold", rule])
        assert result.exit_code == 0, result.output
        with open(out) as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 12
        for r in rows:
            assert r["prediction"] == ("1" if float(r["label"]) >= cut else "0")
    bad = runner.invoke(app, [*base, str(tmp_path / "x.csv"), "--threshold", "often"])
    assert bad.exit_code == 2 and not (tmp_path / "x.csv").exists()
