"""Grad-CAM, overlays, features, 2-D maps, clusters and the explain/embed commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from helpers import make_patch, write_labels, write_patches
from histoscan.errors import DataError, ModelError
from histoscan.explain import (
    GradCAM,
    centre_fraction,
    map_embedding,
    mislabel_candidates,
    overlay,
    project_2d,
)
from histoscan.explain.gradcam import centre_box, with_centre_box
from histoscan.explain.runs import select_cases
from histoscan.models.bundle import load_model_file, memory_model_file
from histoscan.models.registry import ModelSpec, create_model, list_models, model_spec


def torch_predictor(mf, batch_size: int = 256):  # type: ignore[no-untyped-def]
    """A Predictor on the torch engine for an in-memory model file."""
    from histoscan.models.torch_engine import TorchEngine
    from histoscan.predict import Predictor

    return Predictor(mf, TorchEngine(mf.inference_net(), "cpu", "fp32"), batch_size)


def patches(n: int, seed: int = 0) -> np.ndarray:
    return np.stack([make_patch(seed + i) for i in range(n)])  # (N, 96, 96, 3) uint8


def check_maps(maps: np.ndarray, n: int) -> None:
    assert maps.shape == (n, 96, 96)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_gradcam_maps_have_patch_shape_and_lie_in_unit_interval(untrained_model_file: Path):
    maps = GradCAM(load_model_file(untrained_model_file), batch_size=2).explain(patches(3))
    check_maps(maps, 3)


@pytest.mark.parametrize("name", list_models())
def test_gradcam_and_features_work_for_every_registered_architecture(name: str):
    torch.manual_seed(0)
    mf = memory_model_file(model_spec(name), create_model(name).eval())
    images = patches(2)
    check_maps(GradCAM(mf).explain(images), 2)
    features = torch_predictor(mf).infer(images, "none", features=True).features
    assert features.shape[0] == 2 and features.ndim == 2
    assert features.dtype == np.float32 and np.isfinite(features).all()


def test_gradcam_resizes_maps_when_the_network_input_differs_from_the_patch():
    torch.manual_seed(0)
    mf = memory_model_file(model_spec("histocnn", input_px=64), create_model("histocnn").eval())
    check_maps(GradCAM(mf).explain(patches(2)), 2)


class Mask(nn.Module):
    """Zero every feature outside the centre cells, so only the centre can change the logit."""

    def __init__(self, cells: int, centre_cells: int) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, cells, cells)
        lo = (cells - centre_cells) // 2
        mask[..., lo : lo + centre_cells, lo : lo + centre_cells] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class CentreOnlyNet(nn.Module):
    """A logit that depends on the centre 32x32 pixels only: features pooled 8x, then masked."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 0.05)
        nn.init.constant_(self.conv.bias, 3.0)  # positive activations for any input
        self.pool = nn.AvgPool2d(8)  # (B, 4, 96, 96) -> (B, 4, 12, 12)
        self.mask = Mask(12, 4)  # 4 cells of 8 px = the centre 32 px
        self.fc = nn.Linear(4, 1)
        nn.init.constant_(self.fc.weight, 1.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask(self.pool(torch.relu(self.conv(x))))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))  # (B, 4)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_gradcam_of_a_centre_only_model_peaks_in_the_centre():
    mf = memory_model_file(ModelSpec(name="centre-only", target_layer="mask"), CentreOnlyNet())
    maps = GradCAM(mf).explain(patches(4))
    check_maps(maps, 4)
    lo, hi = centre_box(96)
    for cam in maps:
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        assert lo <= y < hi and lo <= x < hi
    assert (centre_fraction(maps) > 0.8).all()
    assert maps[:, : lo - 8, :].max() == 0.0  # well outside the centre: nothing


def test_gradcam_rejects_a_target_layer_the_model_lacks():
    spec = ModelSpec(name="centre-only", target_layer="no.such.layer")
    with pytest.raises(ModelError, match="no layer"):
        GradCAM(memory_model_file(spec, CentreOnlyNet()))


def test_gradcam_rejects_images_that_are_not_uint8_rgb(untrained_model_file: Path):
    with pytest.raises(DataError):
        GradCAM(load_model_file(untrained_model_file)).explain(np.zeros((1, 96, 96), np.float32))


def test_overlay_is_uint8_rgb_and_zero_alpha_returns_the_image():
    image = make_patch(1)
    cam = np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)
    out = overlay(image, cam, 0.5)
    assert out.dtype == np.uint8 and out.shape == (96, 96, 3)
    np.testing.assert_array_equal(overlay(image, cam, 0.0), image)
    # jet: low values blue, high values red
    full = overlay(image, cam, 1.0)
    assert full[0, 0, 2] > full[0, 0, 0] and full[-1, -1, 0] > full[-1, -1, 2]


def test_centre_box_outline_is_drawn_on_the_enlarged_patch():
    big = with_centre_box(np.zeros((96, 96, 3), np.uint8), scale=2)
    assert big.shape == (192, 192, 3)
    assert (big[64, 64:128] == (0, 255, 0)).all()
    assert (big[0, 0] == 0).all() and (big[96, 96] == 0).all()


def test_infer_matches_predictor_logits_with_tta(untrained_model_file: Path):
    from histoscan.predict import Predictor

    predictor = Predictor.load(untrained_model_file, batch_size=2)
    images = patches(5)
    result = predictor.infer(images, "d4", features=True)
    assert result.logits.shape == (5, 8)
    np.testing.assert_allclose(
        result.logits.mean(axis=1), predictor.logits(images, "d4"), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        result.probs(predictor.temperature), predictor.predict_proba(images, "d4"), atol=1e-5
    )


def test_embedding_has_one_row_per_patch(untrained_model_file: Path):
    mf = load_model_file(untrained_model_file)
    features = torch_predictor(mf, batch_size=3).infer(patches(7), "none", features=True).features
    assert features.shape == (7, mf.net.num_features)
    for n in (2, 7):
        assert project_2d(features[:n]).shape == (n, 2)
    assert project_2d(features, method="tsne").shape == (7, 2)
    with pytest.raises(ValueError):
        project_2d(features, method="pca-3d")


def test_umap_map_clusters_and_summaries():
    rng = np.random.default_rng(0)
    # two well-separated blobs of 30 points
    features = np.concatenate([rng.normal(0, 1, (30, 16)), rng.normal(8, 1, (30, 16))])
    labels = np.repeat([0, 1], 30)
    probs = np.where(labels == 1, 0.8, 0.2)
    emap = map_embedding(features.astype(np.float32), labels, probs, n_clusters=2)
    assert emap.method == "umap" and emap.xy.shape == (60, 2) and np.isfinite(emap.xy).all()
    assert sorted(c["size"] for c in emap.clusters) == [30, 30]
    assert sorted(c["tumour_fraction"] for c in emap.clusters) == [0.0, 1.0]
    assert all(len(c["exemplars"]) == 6 for c in emap.clusters)
    assert len(emap.mislabels) == 0


def test_mislabel_candidates_are_confident_disagreements_most_confident_first():
    labels = np.array([0, 0, 1, 1, 0, -1])
    probs = np.array([0.95, 0.5, 0.02, 0.5, 0.99, 0.99])
    np.testing.assert_array_equal(mislabel_candidates(labels, probs), [4, 2, 0])


def test_select_cases_picks_the_most_confident_of_each_kind():
    labels = np.array([1, 1, 0, 0, 0, 1])
    probs = np.array([0.9, 0.6, 0.1, 0.7, 0.95, 0.2])
    pos, groups = select_cases(labels, probs, 0.5, n=1)
    assert groups == ["TP", "TN", "FP", "FN"]
    np.testing.assert_array_equal(pos, [0, 2, 4, 5])


# ---- the commands ---------------------------------------------------------------------------


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    """20 random patches in train/ with train_labels.csv (alternating labels)."""
    root = tmp_path / "data"
    ids = write_patches(root / "train", [make_patch(i) for i in range(20)], ".png")
    write_labels(root / "train_labels.csv", [(k, i % 2) for i, k in enumerate(ids)])
    return root


def run_cli(*args: str):  # type: ignore[no-untyped-def]
    import histoscan.cli.explain_cmds  # noqa: F401  (registers the commands)
    from histoscan.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_explain_command_writes_gallery_patch_pngs_and_json(
    labelled_folder: Path, untrained_model_file: Path, tmp_path: Path
):
    out = tmp_path / "explained"
    result = run_cli(
        "explain",
        labelled_folder,
        "--model",
        untrained_model_file,
        "--out",
        out,
        "--n",
        "2",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "explain.json").read_text())
    assert 1 <= len(summary["patches"]) <= 8
    for row in summary["patches"]:
        assert (out / row["file"]).is_file() and row["case"] in ("TP", "TN", "FP", "FN")
    assert (out / "gradcam.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    # chosen ids; a rerun needs --overwrite, then replaces the previous output
    ids = [p.stem for p in sorted((labelled_folder / "train").iterdir())[:2]]
    args = ["explain", labelled_folder, "--model", untrained_model_file, "--out", out]
    args += ["--ids", ",".join(ids), "--quiet"]
    result = run_cli(*args)
    assert result.exit_code == 2 and "already exists" in result.output
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads((out / "explain.json").read_text())["patches"]] == ids


def test_embed_command_writes_one_row_per_patch(
    labelled_folder: Path, untrained_model_file: Path, tmp_path: Path
):
    out = tmp_path / "embedded"
    result = run_cli(
        "embed",
        labelled_folder,
        "--model",
        untrained_model_file,
        "--out",
        out,
        "--clusters",
        "3",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with open(out / "embedding.csv") as fh:
        rows = list(csv.DictReader(fh))
    columns = {"id", "x", "y", "label", "prob", "cluster", "seen_in_training"}
    assert len(rows) == 20 and set(rows[0]) == columns
    assert {r["seen_in_training"] for r in rows} == {"0"}  # an untrained model saw nothing
    for name in (
        "umap_label.png",
        "umap_prob.png",
        "clusters.png",
        "clusters.json",
        "mislabel_candidates.csv",
        "mislabel_candidates.png",
    ):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "clusters.json").read_text())["clusters"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ids", "nope"], "no patch with id nope"),
        (["--tta", "d7"], "unknown --tta"),
        (["--model", "missing.pt"], "no such model file"),
    ],
)
def test_explain_bad_input_exits_2_without_output(
    labelled_folder: Path, untrained_model_file: Path, tmp_path: Path, args: list[str], message: str
):
    out = tmp_path / "explained"
    model = [] if "--model" in args else ["--model", str(untrained_model_file)]
    result = run_cli("explain", labelled_folder, *model, "--out", out, "--quiet", *args)
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_commands_refuse_to_overwrite_an_unrelated_folder(
    labelled_folder: Path, untrained_model_file: Path, tmp_path: Path
):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for command in ("explain", "embed"):
        args = [command, labelled_folder, "--model", untrained_model_file, "--out", out, "--quiet"]
        result = run_cli(*args)
        assert result.exit_code == 2 and "already exists" in result.output
        result = run_cli(*args, "--overwrite")  # not even then: histoscan did not make it
        assert result.exit_code == 2 and "not made by histoscan" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_explain_unlabelled_data_needs_ids(untrained_model_file: Path, tmp_path: Path):
    folder = tmp_path / "unlabelled"
    write_patches(folder, [make_patch(i) for i in range(3)], ".png")
    result = run_cli(
        "explain", folder, "--model", untrained_model_file, "--out", tmp_path / "x", "--quiet"
    )
    assert result.exit_code == 2 and "pass --ids" in result.output


def test_explain_handles_ids_that_are_not_file_names(untrained_model_file: Path, tmp_path: Path):
    from histoscan.data.sources import PatchSource
    from histoscan.explain.runs import run_explain

    class InMemory(PatchSource):  # PCam-style ids: "<split>/<index>"
        def __init__(self, images: np.ndarray) -> None:
            super().__init__(tmp_path, [f"train/{i}" for i in range(len(images))], [0, 1, 0, 1])
            self.images = images

        def read_raw(self, i: int) -> np.ndarray:
            return self.images[i]

    from histoscan.predict import Predictor

    summary = run_explain(
        Predictor.load(untrained_model_file),
        InMemory(patches(4)),
        tmp_path / "out",
        ids=["train/1", "train/2"],
        progress=False,
    )
    assert [r["id"] for r in summary["patches"]] == ["train/1", "train/2"]
    assert all((tmp_path / "out" / r["file"]).is_file() for r in summary["patches"])


def test_histocnn_gradcam_looks_at_the_6x6_map_before_the_last_pooling():
    """Finer than the 3x3 output; the bundled ensemble's state_dict keys are unchanged."""
    import torch

    from histoscan.models.modelfile import load_model_file

    mf = load_model_file(None)  # the bundled ensemble loads its weights strictly
    cam = GradCAM(mf)
    assert len(cam.target_layers) == 2  # one per member
    assert cam.layer_name == "members.0.stages.3.act, members.1.stages.3.act"
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(o.shape)) for m in
             cam.target_layers]  # fmt: skip
    with torch.no_grad():
        mf.inference_net()(torch.from_numpy(patches(2)))
    for h in hooks:
        h.remove()
    assert [tuple(s[2:]) for s in shapes] == [(6, 6), (6, 6)]
    maps = cam.explain(patches(2))
    check_maps(maps, 2)


def real_mix(real_root: Path, folder: Path, n_val: int, n_train: int) -> tuple[set[str], Path]:
    """Real patches, some the bundled model held out and some it was trained on; labels CSV."""
    mf = load_model_file(None)
    val = sorted(mf.card["val_ids"])
    with open(real_root / "train_labels.csv") as fh:
        labels = dict(csv.reader(fh))
    held = set(val)
    trained = sorted(k for k in labels if k not in held and k != "id")[:n_train]
    chosen = val[:n_val] + trained
    folder.mkdir()
    for key in chosen:
        (folder / f"{key}.webp").symlink_to(real_root / "train" / f"{key}.webp")
    csv_path = folder.parent / "labels.csv"
    write_labels(csv_path, [(k, labels[k]) for k in chosen])
    return set(trained), csv_path


def test_embed_marks_the_patches_the_model_was_trained_on(real_root: Path, tmp_path: Path):
    trained, labels = real_mix(real_root, tmp_path / "p", 30, 20)  # the card lists held-out ids
    out = tmp_path / "emb"
    result = run_cli(
        "embed", tmp_path / "p", "--labels", labels, "--out", out, "--clusters", "3", "--quiet"
    )
    assert result.exit_code == 0, result.output
    with open(out / "embedding.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["id"] for r in rows if r["seen_in_training"] == "1"} == trained
    summary = json.loads((out / "clusters.json").read_text())
    assert summary["n_seen_in_training"] == 20
    assert sum(c["n_seen_in_training"] for c in summary["clusters"]) == 20
    for c in summary["clusters"]:  # tumour fraction among this cluster's held-out patches
        held = [r for r in rows if r["cluster"] == str(c["cluster"]) and r["id"] not in trained]
        want = np.mean([int(r["label"]) for r in held]) if held else None
        assert c["tumour_fraction_held_out"] == pytest.approx(want)
    with open(out / "mislabel_candidates.csv") as fh:
        for r in csv.DictReader(fh):
            assert r["seen_in_training"] == ("1" if r["id"] in trained else "0")


def test_explain_picks_cases_from_held_out_patches_and_marks_them(real_root: Path, tmp_path):
    trained, labels = real_mix(real_root, tmp_path / "p", 16, 16)
    out = tmp_path / "exp"
    result = run_cli("explain", tmp_path / "p", "--labels", labels, "--out", out, "--n", "2",
                     "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "explain.json").read_text())
    assert summary["patches"] and summary["n_seen_in_training"] == 0
    assert not {r["id"] for r in summary["patches"]} & trained
    assert all(r["seen_in_training"] is False for r in summary["patches"])
