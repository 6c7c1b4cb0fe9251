"""slide-eval on generated slides whose tumour regions are known, and FROC against hand counts.

The slides are drawn at the model's resolution: blue "tumour" blocks and pink "normal" tissue on
glass. A stand-in model scores a tile by its share of blue pixels, so every tile's probability is
known (1 on a block, 0 elsewhere) and so are the candidates lesions.csv will hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histoscan.cli import slide_eval_cmd  # noqa: F401  (registers `histoscan slide-eval`)
from histoscan.cli.app import app
from histoscan.slide.annotations import read_annotations
from histoscan.slide.batch import run_slides
from histoscan.slide.evaluation import SlideEval, froc, lesion_mask
from histoscan.slide.run import SlideSettings

from .conftest import MODEL_MPP, write_pyramid

TILE = 96
BLUE, PINK = (60, 60, 170), (225, 150, 195)
runner = CliRunner()


class BlueModel:
    """p_tumor = share of blue pixels in the tile."""

    spec = type("Spec", (), {"mpp": MODEL_MPP, "patch_px": TILE, "name": "blue"})()
    name, version = "blue-model", "1"

    def threshold(self, rule: object = None) -> float:
        return 0.5 if rule is None else float(rule)

    def describe(self) -> dict[str, str]:
        return {"model": self.name, "model_sha1": "blue", "engine": "numpy", "precision": "fp64"}

    def predict_proba(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        blue = (images[..., 2] > 150) & (images[..., 0] < 100)  # (N, H, W)
        return blue.mean(axis=(1, 2)).astype(np.float64)


def draw_slide(path: Path, blocks: list[tuple[int, int, int]]) -> Path:
    """12 x 12 tiles: pink tissue in tiles 1..10, blue blocks (row, col, side) in tiles."""
    image = np.full((12 * TILE, 12 * TILE, 3), 245, dtype=np.uint8)
    image[TILE : 11 * TILE, TILE : 11 * TILE] = PINK
    for row, col, side in blocks:
        image[row * TILE : (row + side) * TILE, col * TILE : (col + side) * TILE] = BLUE
    return write_pyramid(path, image, upscale=1, mpp0=MODEL_MPP, levels=1)


def square(row: int, col: int, side: int) -> list[list[float]]:
    x0, y0, x1, y1 = col * TILE, row * TILE, (col + side) * TILE, (row + side) * TILE
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def asap_xml(polygons: list[list[list[float]]]) -> str:
    parts = []
    for k, ring in enumerate(polygons):
        coords = "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(ring[:-1])
        )
        parts.append(
            f'<Annotation Name="_{k}" Type="Polygon" PartOfGroup="_0">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    return f"<ASAP_Annotations><Annotations>{''.join(parts)}</Annotations></ASAP_Annotations>"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """t1: lesion A (blue, found) and lesion B (annotated but pink: missed); n1: a blue block
    nobody annotated (a false positive); n2: all pink."""
    root = tmp_path_factory.mktemp("eval")
    slides = [
        draw_slide(root / "t1.tif", [(2, 2, 3)]),
        draw_slide(root / "n1.tif", [(6, 6, 2)]),
        draw_slide(root / "n2.tif", []),
    ]
    out = root / "out"
    run_slides(slides, out, BlueModel(), SlideSettings(), progress=False)
    notes = root / "annotations"
    notes.mkdir()
    (notes / "t1.xml").write_text(asap_xml([square(2, 2, 3), square(7, 7, 3)]))
    return out, notes


def test_slide_eval_gives_the_counted_auc_and_froc(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    out, notes = results
    result = runner.invoke(app, ["slide-eval", str(out), "--annotations", str(notes)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "slide-eval" / "metrics.json").read_text())
    assert (out / "slide-eval" / "froc.png").stat().st_size > 0
    # scores: t1 1.0, n1 1.0 (its false block), n2 0.0; one tumour slide:
    # pairs (t1, n1) tie -> 1/2, (t1, n2) -> 1: AUC 0.75
    assert metrics["slide_auc"] == pytest.approx(0.75)
    # 2 lesions, 3 slides; at confidence 1.0: A found, 1 false positive -> (1/3 FP, 1/2 sens);
    # with (0, 0): sens at 1/4 = 0.5 * (1/4) / (1/3) = 0.375, then 0.5 at 1/2..8
    assert metrics["froc"]["lesions"] == 2
    assert metrics["froc"]["score"] == pytest.approx((0.375 + 5 * 0.5) / 6, abs=1e-6)
    per_slide = {s["slide"]: s for s in metrics["per_slide"]}
    assert per_slide["t1"]["detected"] == 1 and per_slide["n1"]["false_positives"] == 1
    assert "FROC 0.4792" in result.output


def test_labels_csv_overrides_and_geojson_reads_like_xml(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    out, notes = results
    geo = tmp_path / "notes"
    geo.mkdir()
    polygons = [square(2, 2, 3), square(7, 7, 3)]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [[p] for p in polygons]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        }
    ]
    (geo / "t1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    xml, gj = read_annotations(notes / "t1.xml"), read_annotations(geo / "t1.geojson")
    assert [r.tolist() for r in xml.tumour] == [np.asarray(p)[:-1].tolist() for p in polygons]
    assert [r[:-1].tolist() for r in gj.tumour] == [r.tolist() for r in xml.tumour]
    # calling n1 a tumour slide (with no polygons) is refused; calling t1 normal is allowed
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label\nt1.tif,normal\nn1.tif,normal\nn2.tif,0\n")
    result = runner.invoke(
        app,
        [
            "slide-eval",
            str(out),
            "--annotations",
            str(geo),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert result.exit_code == 0 and "AUC n/a" in result.output, result.output
    labels.write_text("slide,label\nn1.tif,tumor\n")
    result = runner.invoke(
        app,
        [
            "slide-eval",
            str(out),
            "--annotations",
            str(geo),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert result.exit_code == 2 and "labelled tumour" in result.output


def test_froc_by_hand_and_isolated_tumour_cells_count_neither_way() -> None:
    # 4 lesions over 2 slides; hits 0.9, 0.6, missed, 0.3; false positives 0.8, 0.5
    slides = [
        SlideEval("a", 1, 0.9, 2, [0.9, 0.6], [0.8]),
        SlideEval("b", 1, 0.5, 2, [-np.inf, 0.3], [0.5]),
    ]
    curve = froc(slides)
    # thresholds 0.9 .. 0.3: (FP/slide, sens) = (0, 1/4) (1/2, 1/4) (1/2, 2/4) (1, 2/4) (1, 3/4)
    assert curve["curve"] == {"fp_per_slide": [0.0, 0.5, 1.0], "sensitivity": [0.25, 0.5, 0.75]}
    expected = [0.25 + 0.25 * 0.5, 0.5, 0.75, 0.75, 0.75, 0.75]  # at 1/4 interpolated
    assert curve["score"] == pytest.approx(np.mean(expected))
    # a 100 um lesion (ITC, < 275 um even dilated by 75 um) is left out; a 600 um one counts
    from histoscan.slide.annotations import Annotations

    um = 1 / 0.5  # level-0 px per um at 0.5 um/px
    small = np.array([[1000, 1000], [1000 + 100 * um, 1000], [1000 + 100 * um, 1100], [1000, 1100]])
    big = np.array([[6000, 6000], [6000 + 600 * um, 6000], [6000 + 600 * um, 6400], [6000, 6400]])
    labels, itc, _ = lesion_mask(Annotations(tumour=[small, big]), 10000, 10000, 0.5)
    assert labels.max() == 2 and len(itc) == 1
