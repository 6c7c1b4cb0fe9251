"""The HTML report: one self-contained page with every section, and images that decode."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import make_patch, write_labels, write_patches
from histoscan.data.sources import open_source
from histoscan.models.bundle import memory_model_file, save_model_file
from histoscan.models.registry import create_model, model_spec
from histoscan.report import SECTIONS, build_report, report_indices


class PageParser(HTMLParser):
    """Collects section ids, image sources and whether anything refers outside the page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "section":
            self.sections.append(attr.get("id") or "")
        if tag == "img":
            self.images.append(attr.get("src") or "")
        if tag in ("script", "link") or (
            tag == "img" and not (attr.get("src") or "").startswith("data:")
        ):
            self.external.append(tag)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def assert_images_decode(srcs: list[str]) -> None:
    assert srcs
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """24 labelled random patches in the Kaggle layout."""
    root = tmp_path / "data"
    ids = write_patches(root / "train", [make_patch(i) for i in range(24)], ".png")
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    return root


@pytest.fixture
def carded_model(tmp_path: Path, tiny_data: Path) -> Path:
    """An untrained histocnn whose card names 12 of the tiny patches as its validation set."""
    torch.manual_seed(0)
    ids = [p.stem for p in sorted((tiny_data / "train").iterdir())]
    card = {
        "name": "test-model",
        "model": "histocnn",
        "data": "24 random patches",
        "split": "stratified random, 50% validation, seed 0",
        "n_train": 12,
        "n_val": 12,
        "config": {"epochs": 2, "lr": 0.003, "batch_size": 8, "augment": {"dihedral": True}},
        "epochs_run": 2,
        "train_seconds": 4.2,
        "val_auc_tta_d4": 0.5,
        "val_ids": ids[:12],
        "history": [
            {"epoch": 0, "train_loss": 0.70, "val_loss": 0.69, "val_auc": 0.50},
            {"epoch": 1, "train_loss": 0.65, "val_loss": 0.68, "val_auc": 0.55},
        ],
    }
    path = tmp_path / "run" / "model.pt"
    save_model_file(
        path,
        memory_model_file(
            model_spec("histocnn"),
            create_model("histocnn").eval(),
            temperature=1.5,
            card=card,
        ),
    )
    return path


def test_report_has_every_section_and_every_image_decodes(
    carded_model: Path, tiny_data: Path, tmp_path: Path
):
    audit = tmp_path / "audit.json"
    audit.write_text(
        json.dumps({"n_patches": 24, "duplicates": {"exact": 1, "near": 2}, "rules": ["a", "b"]})
    )
    out = tmp_path / "out" / "report.html"
    summary = build_report(
        carded_model.parent, open_source(tiny_data), out, audit=audit, progress=False
    )
    page = parse_page(out)
    assert page.sections == list(SECTIONS)
    assert not page.external  # opens offline: no scripts, stylesheets or remote images
    assert_images_decode(page.images)
    text = out.read_text()
    for phrase in (
        "ROC AUC",
        "95% CI",
        "Training curves",
        "Grad-CAM",
        "id by id",  # a bare audit.json (no clean_manifest.csv) cannot be matched
        "Mislabel candidates",
        "before (T = 1)",
    ):
        assert phrase in text
    assert "None of the model's validation patches" not in text
    assert summary["n_eval"] == 12 and summary["n_mapped"] == 24
    assert set(summary["seconds"]) == {"predict", "metrics", "gradcam", "embedding", "html"}
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # nothing half-written


def test_report_without_validation_ids_uses_all_labelled_patches_and_says_so(
    untrained_model_file: Path, tiny_data: Path, tmp_path: Path
):
    out = tmp_path / "report.html"
    summary = build_report(
        untrained_model_file, open_source(tiny_data), out, limit=10, tta="none", progress=False
    )
    assert summary["n_eval"] == 10 and summary["n_mapped"] == 10
    text = out.read_text()
    assert "None of the model's validation patches" in text
    assert "no per-epoch history" in text
    assert_images_decode(parse_page(out).images)


def test_report_indices_prefer_validation_ids_and_respect_the_limit(tiny_data: Path):
    source = open_source(tiny_data)
    val = source.ids[:6]
    eval_idx, all_idx, on_val = report_indices(source, val)
    assert on_val and eval_idx.tolist() == list(range(6)) and len(all_idx) == 24
    eval_idx, all_idx, on_val = report_indices(source, val, limit=10)
    assert len(eval_idx) == 6 and len(all_idx) == 10 and set(eval_idx) <= set(all_idx)
    eval_idx, all_idx, on_val = report_indices(source, ["not-here"], limit=4)
    assert not on_val and len(eval_idx) == 4 and np.array_equal(eval_idx, all_idx)


def test_report_command_exit_codes(carded_model: Path, tiny_data: Path, tmp_path: Path):
    import histoscan.cli.explain_cmds  # noqa: F401  (registers the commands)
    from histoscan.cli.app import app

    out = tmp_path / "r.html"
    runner = CliRunner()
    bad = runner.invoke(
        app, ["report", str(tiny_data), "--model", str(tmp_path / "nothing"), "--out", str(out)]
    )
    assert bad.exit_code == 2 and "no such model file" in bad.output and not out.exists()
    unlabelled = tmp_path / "unlabelled"
    write_patches(unlabelled, [make_patch(i) for i in range(3)], ".png")
    bad = runner.invoke(
        app, ["report", str(unlabelled), "--model", str(carded_model), "--out", str(out), "--quiet"]
    )
    assert bad.exit_code == 2 and "labelled" in bad.output and not out.exists()
    ok = runner.invoke(
        app,
        [
            "report",
            str(tiny_data),
            "--model",
            str(carded_model),
            "--out",
            str(out),
            "--quiet",
            "--tta",
            "none",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert_images_decode(parse_page(out).images)
    # the Reproduce line is the command that ran, every option included
    text = out.read_text()
    assert f"histoscan report {tiny_data} --model {carded_model} --out {out} --tta none" in text


@pytest.mark.slow
def test_report_on_real_patches(real_root: Path, tmp_path: Path):
    """The bundled model on 200 real patches: the whole pipeline, UMAP included."""
    out = tmp_path / "report.html"
    summary = build_report(
        Path(__file__).resolve().parents[1] / "src/histoscan/weights/histocnn-pcam.pt",
        open_source(real_root / "train"),
        out,
        limit=200,
        progress=False,
    )
    assert summary["n_mapped"] == 200 and 0.5 < summary["roc_auc"] <= 1.0
    page = parse_page(out)
    assert page.sections == list(SECTIONS)
    assert_images_decode(page.images)
    assert "UMAP" in out.read_text()
    # the page says which engine made its numbers: the int8 sibling on this CPU
    assert "engine onnx-int8 (int8 on cpu)" in out.read_text()
    assert "fitted on the onnx-int8 engine" in out.read_text()


def test_training_curves_give_each_member_its_own_colour(monkeypatch):
    import histoscan.explain.figures as figures
    from histoscan.report.build import training_curves_png

    captured = []
    monkeypatch.setattr(figures, "png_bytes", lambda fig, dpi=100: captured.append(fig) or b"")
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1), "val_auc": 0.9}
            for e in range(3)]  # fmt: skip
    training_curves_png([rows, rows])
    loss_ax, auc_ax = captured[0].axes[:2]
    colour = {line.get_label(): line.get_color() for ax in (loss_ax, auc_ax) for line in ax.lines}
    members = [{c for label, c in colour.items() if label.endswith(f"member {k}")} for k in (1, 2)]
    assert len(members[0]) == 1 and len(members[1]) == 1 and members[0] != members[1]


def test_reliability_diagram_shows_how_many_patches_each_bin_holds(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from histoscan.evaluate import write_plots

    figures = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self),
                        real_savefig(self, *a, **k))[1])  # fmt: skip
    rng = np.random.default_rng(0)
    probs = rng.beta(0.5, 0.5, 400)
    labels = (rng.random(400) < probs).astype(int)
    metrics = {"roc_auc": 0.8, "roc_auc_ci95": (0.7, 0.9), "confusion": [[1, 2], [3, 4]],
               "threshold": 0.5}  # fmt: skip
    write_plots(tmp_path, labels, probs, probs, metrics)
    fig = next(f for f in figures if any("Reliability" in ax.get_title() for ax in f.axes))
    counts_ax = fig.axes[1]
    heights = sorted(round(p.get_height()) for p in counts_ax.patches)
    expected = np.bincount(np.clip((probs * 10).astype(int), 0, 9), minlength=10)
    assert heights == sorted([*expected[expected > 0]] * 2)  # before and after: same probs
    assert counts_ax.get_ylabel() == "patches per bin"


def test_audit_section_reads_as_words_and_checks_it_covers_the_data(tmp_path):
    from helpers import make_patch, write_labels, write_patches
    from histoscan.audit import AuditConfig, run_audit
    from histoscan.audit.summary import coverage
    from histoscan.report.page import audit_summary_html

    images = [make_patch(i) for i in range(12)] + [np.full((96, 96, 3), 250, np.uint8)]
    ids = write_patches(tmp_path / "p", images)
    write_labels(tmp_path / "labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    source = open_source(tmp_path / "p", labels=tmp_path / "labels.csv")
    run_audit(source, tmp_path / "audit", AuditConfig(folds=2), progress=False)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())

    audit["coverage"] = coverage(tmp_path / "audit" / "audit.json", ids)
    assert audit["coverage"] == {"patches": 13, "audited": 13, "review": 0, "removed": 1}
    text = audit_summary_html(audit)
    assert "covers all 13 patches" in text and "1 removed by the audit" in text
    assert "near white 1" in text and "seconds.read" not in text  # words, not a key dump

    other = [*ids[:5], "not-audited-1", "not-audited-2"]
    audit["coverage"] = coverage(tmp_path / "audit" / "audit.json", other)
    assert audit["coverage"]["audited"] == 5
    assert "covers only 5 of the 7 patches" in audit_summary_html(audit)


def test_cluster_purity_is_judged_on_held_out_patches_when_training_ones_are_mapped():
    from histoscan.report.page import _cluster_notes

    clusters = [  # pure on everything mapped, mixed on the held-out patches
        {"cluster": 0, "size": 100, "tumour_fraction": 0.98, "mean_prob": 0.95,
         "n_seen_in_training": 90, "tumour_fraction_held_out": 0.5},
        {"cluster": 1, "size": 100, "tumour_fraction": 0.02, "mean_prob": 0.05,
         "n_seen_in_training": 90, "tumour_fraction_held_out": 0.0},
    ]  # fmt: skip
    assert _cluster_notes(clusters).startswith("2 of 2 clusters are nearly pure")
    honest = _cluster_notes(clusters, held_out_only=True)
    assert honest.startswith("1 of 2 clusters are nearly pure (under 10% or over 90% tumour among")
    assert "cluster 0 (100 patches, 50% tumour)" in honest
