"""`histoscan audit`: the report is complete and self-contained, planted defects are caught."""

from __future__ import annotations

import base64
import csv
import inspect
import io
import json
import random
from dataclasses import fields
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2hed, rgb2hsv
from typer.testing import CliRunner

from helpers import make_patch, pixel_id, write_labels, write_patches
from histoscan.audit import AuditConfig, open_audit_source, run_audit
from histoscan.audit import features as af
from histoscan.audit import run as audit_run
from histoscan.audit.summary import summarise
from histoscan.cli import audit_cmd
from histoscan.cli.app import app
from histoscan.data.sources import open_source
from histoscan.data.store import write_store
from histoscan.errors import DataError
from histoscan.io import MARKER

runner = CliRunner()
SECTIONS = ["About the data", "Distributions", "Correlations", "Outliers", "Cleaning"]


def tissue(seed: int, colour: tuple[int, int, int] = (200, 120, 180)) -> np.ndarray:
    """A textured, stained-looking patch: sharp, saturated, of the given base colour."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, float) + rng.normal(0, 8, 3)
    texture = rng.normal(0, 28, (96, 96, 1)) * np.array([1.0, 1.3, 0.9])
    return np.clip(base + texture, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A folder of 30 normal patches and one of each defect, with a labels CSV."""
    root = tmp_path_factory.mktemp("planted")
    folder = root / "patches"
    normal = [tissue(i) for i in range(30)]
    ids = write_patches(folder, normal)
    rng = np.random.default_rng(99)
    near = normal[3].copy()
    near[rng.integers(0, 96, 4), rng.integers(0, 96, 4)] = 255  # four pixels changed
    defects = {
        "near_black": np.full((96, 96, 3), 12, np.uint8),
        "near_white": np.full((96, 96, 3), 250, np.uint8),
        "blurred": gaussian_filter(tissue(50), sigma=(4, 4, 0)),
        "colour_outlier": tissue(60, colour=(90, 200, 90)),
        "near_duplicate": near,
    }
    planted_ids = dict(zip(defects, write_patches(folder, list(defects.values())), strict=True))
    # an exact copy must be saved under another name: the first copy's name is its hash
    Image.fromarray(normal[5]).save(folder / "copy_of_5.png")
    planted_ids["exact_duplicate"] = "copy_of_5"
    rows = [(key, i % 2) for i, key in enumerate(ids)] + [(k, 0) for k in planted_ids.values()]
    rows[-1] = ("copy_of_5", 1)  # the same label as its original
    write_labels(root / "labels.csv", rows)
    out = root / "audit"
    result = runner.invoke(
        app, ["audit", str(folder), "--labels", str(root / "labels.csv"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return {"out": out, "ids": ids, "planted": planted_ids, "n": len(rows)}


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_html_is_one_self_contained_page_with_every_section(planted: dict) -> None:
    text = (planted["out"] / "audit.html").read_text()
    page = Page()
    page.feed(text)
    for number, title in enumerate(SECTIONS, 1):
        assert f"{number}. {title}" in page.h2
    assert not {"script", "link", "iframe"} & page.tags
    assert "http://" not in text and "https://" not in text
    assert len(page.images) > 30
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            img.verify()
            assert img.format == "PNG"


def test_json_has_the_numbers(planted: dict) -> None:
    s = json.loads((planted["out"] / "audit.json").read_text())
    about = s["about"]
    assert about["patches"] == about["readable"] == planted["n"]
    assert about["by_class"] == {"negative": 20, "positive": 16, "unlabelled": 0}
    assert about["formats"] == {".png": planted["n"]}
    assert about["ids"]["mismatch"] == 1 and about["ids"]["mismatched"] == ["copy_of_5"]
    assert len(s["correlations"]["features"]) == len(af.FEATURES)
    base = s["correlations"]["baseline"]["all"]
    assert base["n"] == planted["n"] and len(base["fold_auc"]) == 5
    assert 0 <= base["auc_mean"] <= 1 and base["auc_sd"] >= 0
    hist = s["distributions"]["histograms"]["positive"]["centre"]["haematoxylin"]
    assert len(hist) == af.HIST_BINS and sum(hist) > 0
    assert s["cleaning"]["removed_total"] + s["cleaning"]["kept_total"] == planted["n"]
    assert s["config"]["min_tissue"] == AuditConfig().min_tissue
    assert {"read", "features", "hashes", "baseline", "report", "total"} <= set(s["seconds"])


def test_planted_defects_are_flagged_and_clean_patches_kept(planted: dict) -> None:
    rows = read_manifest(planted["out"] / "clean_manifest.csv")
    assert len(rows) == planted["n"] and len({r["id"] for r in rows}) == planted["n"]
    by_id = {r["id"]: r for r in rows}
    for rule, key in planted["planted"].items():
        # the colour rule marks for review (dense lymphoid tissue trips it too), others remove
        assert by_id[key]["keep"] == ("review" if rule == "colour_outlier" else "0"), rule
        assert rule in by_id[key]["reason"].split(";"), (rule, by_id[key]["reason"])
    # the originals of the copies are kept; so is every other normal patch
    assert all(by_id[key]["keep"] == "1" and by_id[key]["reason"] == "" for key in planted["ids"])
    s = json.loads((planted["out"] / "audit.json").read_text())
    assert s["outliers"]["duplicates"]["exact_groups"] == 1
    assert s["outliers"]["duplicates"]["near_pairs"] == 1
    assert s["outliers"]["blurred"]["count"] == 1  # a blank patch is not also "blurred"


def test_conflicting_exact_copies_are_all_dropped(tmp_path: Path) -> None:
    images = [tissue(i) for i in range(12)]
    ids = write_patches(tmp_path / "p", images)
    Image.fromarray(images[0]).save(tmp_path / "p" / "copy.png")
    write_labels(tmp_path / "labels.csv", [(k, i % 2) for i, k in enumerate(ids)] + [("copy", 1)])
    source = open_source(tmp_path / "p", labels=tmp_path / "labels.csv")
    audit = run_audit(source, tmp_path / "out", progress=False)
    conflict = audit.flags["label_conflict"]
    assert sorted(np.asarray(source.ids)[conflict]) == sorted([ids[0], "copy"])
    assert not audit.keep[conflict].any()


def test_unreadable_files_are_listed_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    write_patches(folder, [tissue(i) for i in range(10)])
    (folder / "broken.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((96, 96, 4), np.uint8)).save(folder / "rgba.png")
    audit = run_audit(open_source(folder), tmp_path / "out", progress=False)
    s = json.loads((tmp_path / "out" / "audit.json").read_text())
    bad = {u["id"]: u["reason"] for u in s["about"]["unreadable"]}
    assert set(bad) == {"broken", "rgba"} and "RGBA" in bad["rgba"]
    assert s["about"]["readable"] == 10 and s["correlations"]["skipped"]  # no labels
    rows = {r["id"]: r for r in read_manifest(tmp_path / "out" / "clean_manifest.csv")}
    assert rows["broken"]["keep"] == "0" and rows["broken"]["reason"] == "unreadable"
    assert rows["broken"]["label"] == ""
    assert audit.keep.sum() == 10


def test_nonexistent_path_exits_2_with_one_line_and_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["audit", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "no such file" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_out_is_kept_unless_overwrite(tmp_path: Path) -> None:
    write_patches(tmp_path / "p", [tissue(i) for i in range(6)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["audit", str(tmp_path / "p"), "--out", str(out), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "already exists" in result.output
    assert (out / "mine.txt").exists()
    result = runner.invoke(app, [*args, "--overwrite"])  # not made by histoscan: never deleted
    assert result.exit_code == 2 and "not made by histoscan" in result.output
    assert (out / "mine.txt").exists()
    (out / "mine.txt").unlink()
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0  # an audit: replaced
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == [
        "audit.html",
        "audit.json",
        "clean_manifest.csv",
    ]


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    write_patches(tmp_path / "p", [tissue(i) for i in range(6)])

    def broken(*args: object) -> str:
        raise DataError("simulated failure")

    monkeypatch.setattr(audit_run, "render_page", broken)
    with pytest.raises(DataError, match="simulated"):
        run_audit(open_source(tmp_path / "p"), tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_several_splits_are_audited_together_and_leaks_found(
    tiny_kaggle: Path, tmp_path: Path
) -> None:
    (leaked,) = write_patches(tiny_kaggle / "test", [make_patch(0)])  # a train patch in test
    source = open_audit_source(tiny_kaggle, None, "train,test")
    assert len(source) == 12
    audit = run_audit(source, tmp_path / "out", progress=False)
    s = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert s["about"]["by_split"]["train"]["total"] == 8
    assert s["about"]["by_split"]["test"] == {
        "negative": 0,
        "positive": 0,
        "unlabelled": 4,
        "total": 4,
    }
    assert s["outliers"]["duplicates"]["exact_groups_across_splits"] == 1
    copies = np.flatnonzero(np.asarray(source.ids) == leaked)
    assert audit.keep[copies].tolist() == [True, False]  # the train copy comes first


def test_a_packed_store_is_audited_and_ids_checked_only_if_hashes(
    tiny_kaggle: Path, tmp_path: Path
) -> None:
    store = write_store(open_source(tiny_kaggle), tmp_path / "store", progress=False)
    audit = run_audit(open_source(store.root), tmp_path / "out", progress=False)
    s = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert s["about"]["formats"] == {"packed store": 8}
    assert s["about"]["ids"] == {"checked": True, "match": 8, "mismatch": 0, "mismatched": []}
    audit.source.id_is_hash = False  # as for PCam HDF5, whose ids are split/index
    ids = summarise(audit)["about"]["ids"]
    assert ids["checked"] is False and "not pixel hashes" in ids["why"]


def test_colour_conversions_match_skimage() -> None:
    block = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    assert np.allclose(af.rgb_to_hed(block), rgb2hed(block), atol=1e-5)
    hue, sat, val = af.hsv_planes(np.ascontiguousarray(np.moveaxis(block, -1, 1)))
    ref = rgb2hsv(block)
    for ours, k in ((hue, 0), (sat, 1), (val, 2)):
        assert np.allclose(ours, ref[..., k], atol=1e-5)


def test_features_of_a_flat_patch() -> None:
    block = np.full((1, 96, 96, 3), (200, 100, 150), np.uint8)
    row = dict(zip(af.FEATURES, af.patch_features(af.PixelMaps.of(block, 0.07))[0], strict=True))
    assert row["red_mean"] == pytest.approx(200) and row["red_std"] == pytest.approx(0, abs=1e-3)
    assert row["saturation"] == pytest.approx(0.5) and row["tissue_fraction"] == 1
    assert row["sharpness"] == pytest.approx(0, abs=1e-3)
    assert row["centre_brightness_diff"] == pytest.approx(0, abs=1e-3)


def test_hamming_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 500, dtype=np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[9] = hashes[3]
    for bits in (0, 3, 6):
        pairs, dist = af.hamming_pairs(hashes, bits, max_step=97)
        d = af.popcount((hashes[:, None] ^ hashes[None, :]).ravel()).reshape(500, 500)
        i, j = np.triu_indices(500, 1)
        close = d[i, j] <= bits
        assert pairs.tolist() == np.stack([i[close], j[close]], 1).tolist()
        assert dist.tolist() == d[i, j][close].tolist()


def test_cli_defaults_are_the_config_defaults() -> None:
    params = inspect.signature(audit_cmd.audit).parameters
    for f in fields(AuditConfig):
        if f.name in params:
            assert params[f.name].default == f.default, f.name


def test_real_sample_subset(real_root: Path, tmp_path: Path) -> None:
    """2,000 real patches through the CLI: ids match their pixels, the baseline beats chance."""
    files = sorted((real_root / "train").iterdir())
    chosen = random.Random(0).sample(files, 2000)
    folder = tmp_path / "train"
    folder.mkdir()
    for f in chosen:
        (folder / f.name).symlink_to(f)
    labels = dict(csv.reader((real_root / "train_labels.csv").read_text().splitlines()))
    write_labels(tmp_path / "labels.csv", [(f.stem, labels[f.stem]) for f in chosen])
    out = tmp_path / "out"
    args = ["audit", str(folder), "--labels", str(tmp_path / "labels.csv"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    s = json.loads((out / "audit.json").read_text())
    assert s["about"]["ids"]["match"] == 2000
    assert s["about"]["by_class"]["positive"] == sum(labels[f.stem] == "1" for f in chosen)
    assert 0.75 < s["correlations"]["baseline"]["all"]["auc_mean"] < 0.95
    assert s["cleaning"]["removed_total"] < 100  # about 1.3 % on the whole sample
    assert len(read_manifest(out / "clean_manifest.csv")) == 2000
    assert pixel_id(np.asarray(Image.open(chosen[0]))) == chosen[0].stem


def test_colour_outliers_are_marked_for_review_with_their_evidence(planted: dict) -> None:
    s = json.loads((planted["out"] / "audit.json").read_text())
    green = planted["planted"]["colour_outlier"]
    cleaning = s["cleaning"]
    assert cleaning["review_total"] == 1 and cleaning["review_rules"] == ["colour_outlier"]
    # a review patch is kept, not removed: 5 removing defects, the rest kept
    assert cleaning["removed_total"] == len(planted["planted"]) - 1
    assert cleaning["kept_total"] == planted["n"] - cleaning["removed_total"]
    evidence = {e["id"]: e for e in s["outliers"]["colour_outlier"]["evidence"]}[green]
    # planted as (90, 200, 90) among (200, 120, 180) tissue: far too green, far too little red
    assert evidence["z"].get("red_mean", 0) < -3 and len(evidence["z"]) == 3
    text = (planted["out"] / "audit.html").read_text()
    assert "marked review, not removed" in text and "what stands out" in text


def test_page_is_on_the_shared_template_and_reads_plainly(planted: dict) -> None:
    import re

    from histoscan.audit.page import _shown
    from histoscan.report.blocks import stylesheet

    text = (planted["out"] / "audit.html").read_text()
    assert stylesheet() in text  # the one stylesheet the model report uses too
    visible = re.sub(r'src="data:[^"]+"', "", text)
    assert not re.search(r"\d\.?\d*e[+-]\d", visible), "a number in scientific notation"
    assert "LR coef" not in visible
    assert _shown(12, 35, "most extreme first").startswith("12 of 35 shown")
    assert _shown(3, 3, "most extreme first").startswith("All 3 shown")
