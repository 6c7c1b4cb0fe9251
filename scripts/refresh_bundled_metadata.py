"""Bring the bundled model file up to the current format without retraining.

Adds the digest of its training ids (the sample's labelled ids minus the recorded validation ids:
the bundled members trained on all the others, no manifest) and re-exports the int8 ONNX sibling
with its own temperature, fitted on its own validation logits. Run from the repository root:

    .venv/bin/python scripts/refresh_bundled_metadata.py ../shared/data/pcam-real/train
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from histoscan.data.sources import open_source
from histoscan.models.bundle import load_model_file, save_model_file
from histoscan.models.modelfile import bundled_model_path, id_digest


def main(data: str) -> None:
    path = bundled_model_path()
    mf = load_model_file(path)
    source = open_source(Path(data))
    val = set(mf.card["val_ids"])
    train_ids = [k for k in source.ids if k not in val]
    assert len(train_ids) == mf.card.get("n_train", len(train_ids)), "not the training data"
    meta = replace(mf.meta, train_digest=id_digest(train_ids), calibrated_on="torch")
    save_model_file(path, meta, mf.torch_net())
    print(f"{path}: {len(train_ids)} training ids recorded")
    int8 = path.with_name(path.stem + ".int8.onnx")
    histoscan = str(Path(sys.executable).with_name("histoscan"))
    cmd = [histoscan, "export-onnx", "-m", str(path), "--int8", "--calibration", data]
    subprocess.run([*cmd, "--out", str(int8)], check=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/pcam-real/train")
