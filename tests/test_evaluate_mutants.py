"""``evaluate_model`` end to end on a hand-made graph: every number worked out here.

Written to kill the mutants of ``histoscan/evaluate.py`` (scripts/mutants.py). The model is a
weighted pixel sum (``handmade_onnx``), so each patch's logit, probability, call and metric is a
few lines of numpy; the plots are checked for what a reader sees in them (curves, legends, counts).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_curve

from handmade_onnx import expected_logits, small_meta, weight_map, write_graph
from histoscan.data.sources import PatchSource
from histoscan.errors import DataError, HistoscanError
from histoscan.evaluate import (
    bootstrap_auc_ci,
    compute_metrics,
    evaluate_model,
    expected_calibration_error,
    reliability_bins,
    split_seen,
    write_misclassified,
)
from histoscan.predict import Predictor

matplotlib.use("Agg")
W = weight_map(7, size=96) + np.float32(1 / (96 * 96 * 3 * 64))  # sum(W * x) ~ mean(x) / 64
SCALE, BIAS, T = 2.0, -4.0, 2.0
LABELS = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0])


class Memory(PatchSource):
    kind = "memory"

    def __init__(self, root: Path, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(root, [f"p{i:02d}" for i in range(len(images))], labels)
        self.images = images

    def read_raw(self, i: int) -> np.ndarray:
        return self.images[i]

    def locate(self, i: int) -> str:
        return f"memory[{i}]"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_images(n: int = 12, seed: int = 0) -> np.ndarray:
    """Patches of one brightness each (the weights lean positive, so brighter = more tumour),
    with noise; one tumour patch is dark (a miss) and one normal patch bright (a false call)."""
    levels = np.array([40, 200, 90, 150, 60, 170, 110, 230, 30, 120, 190, 140])[:n]
    rng = np.random.default_rng(seed)
    noise = rng.integers(-15, 16, (n, 96, 96, 3))
    return np.clip(levels[:, None, None, None] + noise, 0, 255).astype(np.uint8)


def flip_logits(images: np.ndarray) -> np.ndarray:
    """Mean logit over the identity and the width mirror, by hand."""
    return 0.5 * (
        expected_logits(images, W, SCALE, BIAS)
        + expected_logits(images[:, :, ::-1], W, SCALE, BIAS)
    )


def auc_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    images = make_images()
    meta = small_meta(
        spec=small_meta().spec.__class__(name="histocnn"),
        card={"name": "hand96", "val_ids": ["p01", "p02", "p03", "elsewhere"]},
    )
    predictor = Predictor.load(write_graph(tmp_path / "hand.onnx", meta, W, SCALE, BIAS))
    return predictor, Memory(tmp_path / "data", images, LABELS), images


def axes_facts(ax) -> dict:  # type: ignore[no-untyped-def]
    """What a reader sees in one panel, and how each mark is drawn."""
    from matplotlib.colors import to_hex

    legend = ax.get_legend()
    return {
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
        "ylabel": ax.get_ylabel(),
        "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
        "legend_style": (legend._loc, legend.get_texts()[0].get_fontsize()) if legend else None,
        "lines": [(ln.get_xdata(), ln.get_ydata()) for ln in ax.get_lines()],
        "line_style": [
            (
                ln.get_linestyle(),
                to_hex(ln.get_color()),
                ln.get_linewidth(),
                ln.get_marker(),
                ln.get_markersize(),
            )
            for ln in ax.get_lines()
        ],
        "texts": [t.get_text() for t in ax.texts],
        "text_style": [
            (t.get_position(), t.get_ha(), t.get_va(), t.get_fontsize(), to_hex(t.get_color()))
            for t in ax.texts
        ],
        "bars": [
            [(p.get_x(), p.get_height(), p.get_width()) for p in group] for group in ax.containers
        ],
        "yscale": ax.get_yscale(),
        "margins": ax.margins(),
        "images": [im.get_cmap().name for im in ax.images],
        "xticks": list(ax.get_xticks()),
        "yticks": list(ax.get_yticks()),
        "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
        "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
        "height": round(ax.get_position().height, 3),
        "shares_x": len(ax.get_shared_x_axes().get_siblings(ax)),
    }


class Figures:
    """Records what each saved figure shows: titles, labels, legends, lines, texts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from matplotlib.figure import Figure

        self.saved: dict[str, dict] = {}
        real = Figure.savefig

        def savefig(fig, path, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.saved[Path(path).stem] = {
                "dpi": kwargs.get("dpi"),
                "size": tuple(np.round(fig.get_size_inches(), 3)),
                "axes": [axes_facts(ax) for ax in fig.axes],
            }
            return real(fig, path, *args, **kwargs)

        monkeypatch.setattr(Figure, "savefig", savefig)


def test_evaluate_model_by_hand(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    predictor, source, images = setup
    figures = Figures(monkeypatch)
    out = tmp_path / "eval"
    result = evaluate_model(predictor, source, None, out, tta="flip", progress=False, n_boot=200)

    z = flip_logits(images)
    probs, raw = sigmoid(z / T), sigmoid(z)
    assert np.ptp(probs) > 0.3 and len(set(np.round(probs, 6))) == 12
    np.testing.assert_allclose(result["logits"], z, atol=1e-4)
    np.testing.assert_allclose(result["probs"], probs, atol=1e-5)
    assert result["labels"].tolist() == LABELS.tolist()
    assert result["indices"].tolist() == list(range(12))

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("probs", "labels", "logits", "indices"):
        assert key not in metrics
    assert metrics["model"] == "hand96"
    assert metrics["inference"] == predictor.describe()
    assert metrics["data"] == f"memory at {tmp_path / 'data'} (12 patches, 6 positive, 6 negative)"
    assert (metrics["n_evaluated"], metrics["n_seen_in_training"], metrics["tta"]) == (
        12,
        0,
        "flip",
    )
    assert (metrics["temperature"], metrics["threshold_rule"]) == (2.0, "stored")
    assert metrics["n_evaluated_in_threshold_fit"] == 0
    for name, p in (("calibrated", probs), ("uncalibrated", raw)):
        m = metrics[name]
        call = p >= 0.4
        tp, fp = int((call & (LABELS == 1)).sum()), int((call & (LABELS == 0)).sum())
        fn, tn = int((~call & (LABELS == 1)).sum()), int((~call & (LABELS == 0)).sum())
        assert m["confusion"] == [[tn, fp], [fn, tp]]
        assert (m["n"], m["positives"], m["threshold"]) == (12, 6, 0.4)
        assert m["accuracy"] == pytest.approx((tp + tn) / 12)
        assert m["brier"] == pytest.approx(np.mean((p - LABELS) ** 2), abs=1e-5)
        assert m["roc_auc"] == pytest.approx(auc_by_pairs(LABELS, z), abs=1e-9)
    assert metrics["calibrated"]["confusion"] != metrics["uncalibrated"]["confusion"] or (
        metrics["calibrated"]["brier"] != metrics["uncalibrated"]["brier"]
    )
    # the caller's 200 draws, not the default 1,000 (temperature keeps the order: same interval)
    interval = hand_bootstrap(LABELS, z, 200, 0, 0.95)
    assert interval != pytest.approx(hand_bootstrap(LABELS, z, 1000, 0, 0.95))
    for name in ("calibrated", "uncalibrated"):
        assert metrics[name]["roc_auc_ci95"] == pytest.approx(interval)

    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == source.ids
    np.testing.assert_allclose([float(r["label"]) for r in rows], probs, atol=2e-6)
    assert [int(r["true_label"]) for r in rows] == LABELS.tolist()

    wrong = int(((probs >= 0.4) != LABELS).sum())
    assert metrics["n_misclassified"] == wrong > 0
    with open(out / "misclassified" / "misclassified.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == wrong

    names = ("roc", "pr", "reliability", "confusion")
    assert metrics["plots"] == {n: str(out / f"{n}.png") for n in names}
    for n in names:
        assert (out / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figures.saved[n]["dpi"] == 110
    check_figures(figures.saved, metrics["calibrated"], probs, raw)


def check_figures(saved: dict, m: dict, probs: np.ndarray, raw: np.ndarray) -> None:
    (roc,) = saved["roc"]["axes"]
    fpr, tpr, _ = roc_curve(LABELS, probs)
    np.testing.assert_allclose(roc["lines"][0][0], fpr)
    np.testing.assert_allclose(roc["lines"][0][1], tpr)
    assert list(roc["lines"][1][0]) == [0, 1] and list(roc["lines"][1][1]) == [0, 1]
    lo, hi = m["roc_auc_ci95"]
    assert roc["legend"] == [f"AUC {m['roc_auc']:.4f} (95% CI {lo:.4f}-{hi:.4f})"]
    assert (roc["title"], roc["xlabel"], roc["ylabel"]) == (
        "ROC curve",
        "1 - specificity",
        "sensitivity",
    )

    (pr,) = saved["pr"]["axes"]
    assert pr["legend"] == [f"AP {average_precision_score(LABELS, probs):.4f}", "prevalence"]
    assert list(pr["lines"][1][1]) == [0.5, 0.5]  # the prevalence line
    assert (pr["title"], pr["xlabel"], pr["ylabel"]) == (
        "Precision-recall",
        "recall (sensitivity)",
        "precision",
    )

    diagram, counts = saved["reliability"]["axes"]
    ece_raw = hand_ece(LABELS, raw, 15)
    ece_cal = hand_ece(LABELS, probs, 15)
    assert diagram["legend"] == [
        f"before (T=1), ECE {ece_raw:.3f}",
        f"after temperature scaling, ECE {ece_cal:.3f}",
    ]
    assert diagram["title"] == "Reliability diagram (10 bins)"
    assert diagram["ylabel"] == "observed tumour fraction"
    assert (counts["xlabel"], counts["ylabel"], counts["yscale"]) == (
        "predicted probability",
        "patches per bin",
        "log",
    )
    bins = np.clip((probs * 10).astype(int), 0, 9)
    per_bin = [int((bins == b).sum()) for b in range(10) if (bins == b).any()]
    assert counts["texts"] == [f"{n:,}" for n in per_bin]  # counts of the calibrated bars
    np.testing.assert_allclose(
        diagram["lines"][1][0],
        [probs[bins == b].mean() for b in range(10) if (bins == b).any()],
        atol=1e-5,
    )
    assert counts["legend"] == []

    (cm,) = saved["confusion"]["axes"]
    flat = [str(v) for row in m["confusion"] for v in row]
    assert cm["texts"] == flat
    assert cm["title"] == "Confusion at threshold 0.40"
    assert (cm["xlabel"], cm["ylabel"]) == ("predicted", "true")
    assert cm["xticklabels"] == ["normal", "tumour"] and cm["yticklabels"] == ["normal", "tumour"]
    assert cm["xticks"] == [0, 1] and cm["yticks"] == [0, 1] and cm["images"] == ["Blues"]
    check_styles(saved, raw, probs)


def check_styles(saved: dict, raw: np.ndarray, probs: np.ndarray) -> None:
    """Sizes, the dashed grey chance lines, markers, bar widths, legends where they are put."""
    chance = ("--", "#808080", 0.8, "None", 6.0)
    assert {k: v["size"] for k, v in saved.items()} == {
        "roc": (4.6, 4.2),
        "pr": (4.6, 4.2),
        "reliability": (4.6, 5.4),
        "confusion": (3.8, 3.4),
    }
    (roc,) = saved["roc"]["axes"]
    assert roc["line_style"][1] == chance and roc["legend_style"] == (4, 8.0)  # lower right
    (pr,) = saved["pr"]["axes"]
    assert pr["line_style"][1] == chance and pr["legend_style"] == (3, 8.0)  # lower left
    diagram, counts = saved["reliability"]["axes"]
    assert [s[3:] for s in diagram["line_style"][:2]] == [("o", 3.0), ("o", 3.0)]
    assert diagram["line_style"][2] == chance and diagram["legend_style"] == (2, 8.0)  # upper left
    for panel, i in ((roc, 1), (diagram, 2)):  # the chance / perfect-calibration diagonal
        assert [list(xy) for xy in panel["lines"][i]] == [[0, 1], [0, 1]]
    assert diagram["shares_x"] == 2 and round(diagram["height"] / counts["height"], 1) == 2.7
    assert counts["margins"][1] == 0.35
    w = 0.042
    for k, (group, p) in enumerate(zip(counts["bars"], (raw, probs), strict=True)):
        centres, sizes = hand_bins(p)  # before (T = 1) left of each centre, after right of it
        np.testing.assert_allclose([b[0] for b in group], centres + (k - 1) * w, atol=1e-5)
        assert [b[1] for b in group] == sizes and all(b[2] == pytest.approx(w) for b in group)
    centres, sizes = hand_bins((raw, probs)[1])
    for (pos, ha, va, size, _), x, n in zip(counts["text_style"], centres, sizes, strict=True):
        assert pos == pytest.approx((x + w / 2, n))  # on top of the calibrated bar
        assert (ha, va, size) == ("center", "bottom", 6.0)


def hand_bins(p: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Mean probability and count of each non-empty tenth."""
    which = np.minimum((p * 10).astype(int), 9)
    full = [b for b in range(10) if (which == b).any()]
    return np.array([p[which == b].mean() for b in full]), [int((which == b).sum()) for b in full]


def hand_ece(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """Equal-width bins, each weighted by its share: |observed fraction - mean probability|."""
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return total


def test_a_subset_with_training_patches_leaves_them_out(
    setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    predictor, source, images = setup
    predictor.model_file = predictor.model_file.with_meta(train_digest=frozenset({"p00", "p05"}))
    idx = [0, 1, 2, 3, 5, 6]
    with caplog.at_level(logging.WARNING):
        result = evaluate_model(
            predictor, source, idx, tmp_path / "e", tta="none", progress=False, n_boot=50
        )
    assert caplog.messages == [
        "warning: 2 of 6 patches were used to train this model; evaluating the 4 held-out "
        "patches only"
    ]
    assert result["indices"].tolist() == [1, 2, 3, 6]
    assert result["n_seen_in_training"] == 2 and result["n_evaluated"] == 4
    assert result["tta"] == "none"
    z = expected_logits(images[[1, 2, 3, 6]], W, SCALE, BIAS)
    np.testing.assert_allclose(result["logits"], z, atol=1e-4)
    assert result["labels"].tolist() == LABELS[[1, 2, 3, 6]].tolist()


def test_split_seen_cases(setup, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    predictor, source, _ = setup
    idx = np.array([0, 4, 7])
    assert split_seen(predictor, source, idx)[1] == 0
    assert split_seen(predictor, source, idx)[0] is idx
    predictor.model_file = predictor.model_file.with_meta(
        train_digest=frozenset({"p00", "p04", "p07"})
    )
    with caplog.at_level(logging.WARNING):
        kept, n = split_seen(predictor, source, idx)
    assert kept.tolist() == [0, 4, 7] and n == 3
    assert caplog.messages == [
        "warning: all 3 patches were used to train this model; metrics will be optimistic"
    ]


def test_a_fitted_rule_counts_the_validation_patches_it_saw(
    setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    predictor, source, _ = setup
    with caplog.at_level(logging.WARNING):
        result = evaluate_model(
            predictor, source, None, tmp_path / "e", "none", " Youden ", False, n_boot=20
        )
    assert result["n_evaluated_in_threshold_fit"] == 3
    assert result["threshold_rule"] == " Youden "
    assert caplog.messages == [
        "warning: the youden threshold was fitted on 3 of the 12 evaluated patches (the model's "
        "validation split); sensitivity and specificity at it are optimistic"
    ]
    expected = predictor.threshold("youden")
    assert result["calibrated"]["threshold"] == expected != 0.4


def test_evaluation_needs_labels_and_both_classes(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    predictor, source, images = setup
    root = tmp_path / "data"
    with pytest.raises(DataError, match=rf"^{root}: evaluation needs labels for every patch$"):
        evaluate_model(predictor, source, [], tmp_path / "e", progress=False)
    unlabelled = Memory(root, images, np.r_[LABELS[:-1], -1])
    with pytest.raises(DataError, match="needs labels for every patch"):
        evaluate_model(predictor, unlabelled, None, tmp_path / "e", progress=False)
    with pytest.raises(
        DataError,
        match=rf"^{root}: all 3 patches are tumour \(1\); ROC AUC, sensitivity and specificity",
    ):
        evaluate_model(predictor, source, [1, 3, 4], tmp_path / "e", progress=False)
    predictor.model_file = predictor.model_file.with_meta(train_digest=frozenset({"p01"}))
    with pytest.raises(DataError, match=r"all 2 held-out patches are normal \(0\)"):
        evaluate_model(predictor, source, [0, 1, 2], tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_output_folder_rules(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    predictor, source, _ = setup
    out = tmp_path / "e"
    evaluate_model(predictor, source, None, out, "none", progress=False, n_boot=10)
    with pytest.raises(HistoscanError):
        evaluate_model(predictor, source, None, out, "none", progress=False, n_boot=10)
    evaluate_model(predictor, source, None, out, "none", progress=False, n_boot=10, overwrite=True)
    assert (out / "metrics.json").is_file()
    source.root.mkdir(parents=True)  # empty, so only the input rule can refuse it
    with pytest.raises(HistoscanError, match="is the input; choose an output folder outside"):
        evaluate_model(
            predictor, source, None, source.root, "none", progress=False, n_boot=10, overwrite=True
        )


def test_default_tta_and_bootstrap(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import histoscan.evaluate as evaluate_module

    calls: list[tuple] = []
    real = evaluate_module.bootstrap_auc_ci

    def recording(labels, scores, n_boot=1000, seed=0, level=0.95):  # type: ignore[no-untyped-def]
        calls.append((n_boot, seed, level))
        return real(labels, scores, 5, seed, level)

    monkeypatch.setattr(evaluate_module, "bootstrap_auc_ci", recording)
    predictor, source, _ = setup
    result = evaluate_model(predictor, source, None, tmp_path / "e", progress=False)
    assert result["tta"] == "d4"
    assert calls == [(1000, 0, 0.95), (1000, 0, 0.95)]


def hand_bootstrap(labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, level: float):  # type: ignore[no-untyped-def]
    """The percentile bootstrap written out: resample with replacement, skip one-class draws."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if len(set(labels[idx].tolist())) == 2:
            aucs.append(auc_by_pairs(labels[idx], scores[idx]))
    tail = (1 - level) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1 - tail))


def test_bootstrap_by_hand_with_one_class_draws() -> None:
    labels = np.array([1, 0, 0, 0, 0, 0, 1])  # small: many draws hold one class only
    scores = np.array([0.9, 0.1, 0.4, 0.35, 0.8, 0.2, 0.3])
    for seed, level in ((0, 0.95), (3, 0.8)):
        expected = hand_bootstrap(labels, scores, 150, seed, level)
        assert bootstrap_auc_ci(labels, scores, 150, seed, level) == pytest.approx(expected)
    assert bootstrap_auc_ci(labels, scores, 300) == pytest.approx(
        hand_bootstrap(labels, scores, 300, 0, 0.95)
    )


def test_reliability_bins_by_hand() -> None:
    probs = np.array([0.0, 0.05, 0.1, 0.15, 0.55, 0.95, 1.0])
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    centres, observed, counts = reliability_bins(labels, probs)
    # bins [0, .1) [.1, .2) [.5, .6) [.9, 1]: a value on an edge goes up, 1.0 stays in the last
    np.testing.assert_allclose(centres, [0.025, 0.125, 0.55, 0.975])
    np.testing.assert_allclose(observed, [0.5, 0.5, 1.0, 0.5])
    assert counts.tolist() == [2, 2, 1, 2]
    centres, _, counts = reliability_bins(labels, probs, bins=2)
    assert counts.tolist() == [4, 3]
    # 0.12 and 0.19 share the tenth [0.1, 0.2): ten bins by default
    _, _, counts = reliability_bins(np.array([1, 0]), np.array([0.12, 0.19]))
    assert counts.tolist() == [2]


def test_ece_by_hand() -> None:
    probs = np.array([0.1, 0.2, 0.7, 0.9, 1.0])
    labels = np.array([0, 1, 1, 1, 0])
    # 15 bins: 0.1 and 0.2 alone in theirs? 0.1 -> bin 1, 0.2 -> bin 3, 0.7 -> 10, 0.9 -> 13,
    # 1.0 -> 14 (clipped): each alone, so ECE = mean |label - p|
    assert expected_calibration_error(labels, probs) == pytest.approx(
        np.mean(np.abs(labels - probs))
    )
    # 2 bins: [0.1, 0.2] -> |0.5 - 0.15|, [0.7, 0.9, 1.0] -> |2/3 - 0.8667|
    two = 0.4 * abs(0.5 - 0.15) + 0.6 * abs(2 / 3 - 2.6 / 3)
    assert expected_calibration_error(labels, probs, bins=2) == pytest.approx(two)
    assert hand_ece(labels, probs, 15) == pytest.approx(np.mean(np.abs(labels - probs)))
    # 0.47 and 0.52 share the 15-bin [7/15, 8/15) but not a 16-bin: 15 is the default
    assert expected_calibration_error(np.array([1, 0]), np.array([0.47, 0.52])) == pytest.approx(
        abs(0.5 - 0.495)
    )


def test_compute_metrics_every_key_by_hand() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 1])
    probs = np.array([0.9, 0.7, 0.3, 0.6, 0.1, 0.2, 0.0, 1.0, 0.45, 0.45])
    m = compute_metrics(labels, probs, threshold=0.45, n_boot=40, seed=3)
    # at 0.45 (a score equal to it counts as tumour): TP 0.9 0.7 1.0 0.45; FN 0.3;
    # FP 0.6 0.45; TN 0.1 0.2 0.0
    assert m["confusion"] == [[3, 2], [1, 4]]
    assert (m["n"], m["positives"], m["threshold"]) == (10, 5, 0.45)
    assert m["accuracy"] == pytest.approx(0.7)
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(0.8), pytest.approx(0.6))
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * (4 / 6) * 0.8 / (4 / 6 + 0.8))
    p = np.clip(probs, 1e-7, 1 - 1e-7)  # 0 and 1 would make the log loss infinite
    nll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert m["nll"] == pytest.approx(nll) and np.isfinite(m["nll"])
    assert m["brier"] == pytest.approx(np.mean((p - labels) ** 2))
    assert m["ece"] == pytest.approx(hand_ece(labels, p, 15))
    assert m["roc_auc"] == pytest.approx(auc_by_pairs(labels, probs))
    assert m["roc_auc_ci95"] == pytest.approx(list(hand_bootstrap(labels, p, 40, 3, 0.95)))
    assert set(m) == {
        "n", "positives", "threshold", "roc_auc", "roc_auc_ci95", "accuracy", "sensitivity",
        "specificity", "precision", "f1", "nll", "brier", "ece", "confusion",
    }  # fmt: skip
    defaults = compute_metrics(labels, probs, n_boot=30)
    assert defaults["threshold"] == 0.5
    assert defaults["roc_auc_ci95"] == pytest.approx(list(hand_bootstrap(labels, p, 30, 0, 0.95)))


def test_compute_metrics_when_a_class_or_a_call_is_missing() -> None:
    none_called = compute_metrics([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.05], threshold=0.5, n_boot=5)
    assert np.isnan(none_called["precision"]) and none_called["f1"] == 0.0
    assert none_called["sensitivity"] == 0.0 and none_called["specificity"] == 1.0
    only_tumour = compute_metrics([1, 1, 1], [0.9, 0.2, 0.6], threshold=0.5, n_boot=5)
    assert np.isnan(only_tumour["roc_auc"]) and only_tumour["roc_auc_ci95"] == [None, None]
    assert np.isnan(only_tumour["specificity"])
    assert only_tumour["sensitivity"] == pytest.approx(2 / 3)
    assert only_tumour["confusion"] == [[0, 0], [1, 2]]
    only_normal = compute_metrics([0, 0], [0.9, 0.2], threshold=0.5, n_boot=5)
    assert np.isnan(only_normal["sensitivity"]) and only_normal["f1"] == 0.0
    assert only_normal["confusion"] == [[1, 1], [0, 0]]
    assert only_normal["specificity"] == 0.5  # tn == fp: still a number
    all_called = compute_metrics([1, 1], [0.9, 0.8], n_boot=5)
    assert all_called["confusion"] == [[0, 0], [0, 2]]  # a 2x2 matrix even with one class
    sure_and_wrong = compute_metrics([1, 0, 1, 0], [0.0, 1.0, 0.8, 0.3], n_boot=5)
    p = np.array([1e-7, 1 - 1e-7, 0.8, 0.3])  # certainties clipped to 1e-7 before the log
    y = np.array([1, 0, 1, 0])
    assert sure_and_wrong["nll"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    with pytest.raises(DataError, match=r"^no labelled patches to evaluate$"):
        compute_metrics([], [], n_boot=5)


class Named(Memory):
    """A memory source whose ids are given (PCam-style ids hold a slash)."""

    def __init__(self, root: Path, ids: list[str], images: np.ndarray, labels: np.ndarray) -> None:
        PatchSource.__init__(self, root, ids, labels)
        self.images = images


def test_misclassified_csv_and_pictures_exactly(tmp_path: Path) -> None:
    ids = ["train/12", "A b", "ok-1.x_Y", "n3", "n4", "n5"]
    images = make_images(6)
    labels = np.array([0, 1, 0, 1, 0, 1])
    # at 0.5: n0 FP (0.40 from the threshold), "A b" FN (0.30), "ok-1.x_Y" sits exactly on the
    # threshold (called tumour, so FP), n3 right, n4 right, n5 FN (0.05)
    probs = np.array([0.9, 0.2, 0.5, 0.75, 0.1, 0.45])
    source = Named(tmp_path / "data", ids, images, labels)
    picked = np.arange(6)
    n = write_misclassified(tmp_path / "err", source, picked, labels, probs, 0.5, max_images=2)
    assert n == 4
    text = (tmp_path / "err" / "misclassified.csv").read_bytes().decode()
    assert text == (
        "id,label,p_tumor,prediction,kind,image\n"
        "train/12,0,0.900000,1,FP,001_FP_train_12.png\n"
        "A b,1,0.200000,0,FN,002_FN_A_b.png\n"
        "n5,1,0.450000,0,FN,\n"
        "ok-1.x_Y,0,0.500000,1,FP,\n"
    )
    assert sorted(p.name for p in (tmp_path / "err").iterdir()) == [
        "001_FP_train_12.png",
        "002_FN_A_b.png",
        "misclassified.csv",
    ]
    for name, j in (("001_FP_train_12.png", 0), ("002_FN_A_b.png", 1)):
        big = np.asarray(Image.open(tmp_path / "err" / name))
        assert big.shape == (192, 192, 3)
        for dy in (0, 1):
            for dx in (0, 1):
                assert (big[dy::2, dx::2] == images[j]).all()


def test_misclassified_pictures_stop_at_200_by_default(tmp_path: Path) -> None:
    n = 203
    images = np.full((n, 96, 96, 3), 128, np.uint8)
    labels = np.zeros(n, np.int64)
    probs = np.linspace(0.99, 0.6, n)  # every one a false call, surest first already
    source = Named(tmp_path / "data", [f"q{i}" for i in range(n)], images, labels)
    assert write_misclassified(tmp_path / "err", source, np.arange(n), labels, probs, 0.5) == n
    with open(tmp_path / "err" / "misclassified.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows[198:]] == ["199_FP_q198.png", "200_FP_q199.png", "", "", ""]
    assert len(list((tmp_path / "err").glob("*.png"))) == 200


def test_the_bar_is_labelled_evaluate_and_the_folder_is_marked(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    predictor, source, _ = setup
    calls = []
    real = predictor.logits_source

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((args[3:], kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "logits_source", recording)
    out = tmp_path / "e"
    evaluate_model(predictor, source, None, out, "none", n_boot=10)  # progress by default
    evaluate_model(predictor, source, None, tmp_path / "q", "none", progress=False, n_boot=10)
    assert calls == [((True,), {"label": "evaluate"}), ((False,), {"label": "evaluate"})]
    marker = json.loads((out / ".histoscan").read_text())
    assert (marker["made_by"], marker["what"]) == ("histoscan", "evaluate")
    text = (out / "metrics.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2)  # indented for a person to read
    assert text.startswith('{\n  "model": "hand96",\n')


def test_equally_sure_wrong_calls_keep_their_order(tmp_path: Path) -> None:
    """Ties in distance from the threshold stay in data order (a stable sort), so two runs list
    the same patches in the same order; 300 calls with four distinct distances tie a lot."""
    n = 300
    probs = np.random.default_rng(0).choice([0.9, 0.8, 0.2, 0.1], n)
    labels = (probs < 0.5).astype(np.int64)  # every call wrong
    source = Named(
        tmp_path / "data", [f"q{i}" for i in range(n)], np.zeros((n, 96, 96, 3), np.uint8), labels
    )
    assert write_misclassified(tmp_path / "err", source, np.arange(n), labels, probs, 0.5, 0) == n
    with open(tmp_path / "err" / "misclassified.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = sorted(range(n), key=lambda i: -abs(probs[i] - 0.5))  # sorted() is stable
    assert [r["id"] for r in rows] == [f"q{i}" for i in expected]
    assert {r["image"] for r in rows} == {""}
    assert sorted(p.name for p in (tmp_path / "err").iterdir()) == ["misclassified.csv"]
