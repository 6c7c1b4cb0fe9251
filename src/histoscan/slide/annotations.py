"""Tumour annotations of a slide in level-0 pixels: QuPath GeoJSON or ASAP XML (CAMELYON16).

``read_annotations(path)`` returns ``Annotations``: tumour polygons, and exclusion polygons to
cut out of them (ASAP's group ``_2`` in CAMELYON16, or GeoJSON features classified as an
exclusion). ``find_annotation(folder, slide)`` finds ``<stem>.geojson``, ``.json`` or ``.xml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoscan.errors import DataError

SUFFIXES = (".geojson", ".json", ".xml")
EXCLUDED_CLASSES = {"exclusion", "ignore", "normal", "non-tumor", "non-tumour", "_2"}


@dataclass
class Annotations:
    """Polygons as (n, 2) float arrays of level-0 (x, y)."""

    tumour: list[np.ndarray] = field(default_factory=list)
    excluded: list[np.ndarray] = field(default_factory=list)


def find_annotation(folder: Path, slide: Path) -> Path | None:
    """The annotation file of ``slide`` in ``folder`` (matched by the name before any dot)."""
    stem = slide.name.split(".")[0]
    for suffix in SUFFIXES:
        for name in (stem + suffix, slide.stem + suffix):
            if (folder / name).is_file():
                return folder / name
    return None


def read_annotations(path: Path) -> Annotations:
    """Tumour and exclusion polygons from a QuPath GeoJSON or an ASAP XML file."""
    if path.suffix.lower() == ".xml":
        return _read_asap(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable GeoJSON file ({exc})") from exc
    features = _features(data)
    out = Annotations()
    for k, feature in enumerate(features):
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        if kind == "Polygon":
            polygons = [geometry.get("coordinates")]
        elif kind == "MultiPolygon":
            polygons = geometry.get("coordinates") or []
        else:
            continue  # points, lines: not regions
        target = out.excluded if _is_excluded(feature) else out.tumour
        for polygon in polygons:
            rings = [_ring(ring, path, f"feature {k}") for ring in polygon or []]
            if rings:
                target.append(rings[0])
                out.excluded.extend(rings[1:])  # holes are not tumour
    return out


def _features(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, list):
        return [f for f in data if isinstance(f, dict)]
    return []


def _is_excluded(feature: dict[str, Any]) -> bool:
    props = feature.get("properties") or {}
    cls = props.get("classification") or {}
    name = cls.get("name", "") if isinstance(cls, dict) else str(cls)
    return str(name).strip().lower() in EXCLUDED_CLASSES


def _ring(coords: Any, path: Path, where: str) -> np.ndarray:
    try:
        ring = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        ring = np.empty(0)
    if ring.ndim != 2 or ring.shape[0] < 3 or ring.shape[1] < 2:
        raise DataError(f"{path}: {where} has a ring that is not a list of [x, y] points")
    return ring[:, :2]


def _read_asap(path: Path) -> Annotations:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"{path}: not a readable ASAP XML file ({exc})") from exc
    out = Annotations()
    for k, annotation in enumerate(root.iter("Annotation")):
        if annotation.get("Type", "Polygon") not in ("Polygon", "Spline", "Rectangle"):
            continue
        points = sorted(annotation.iter("Coordinate"), key=lambda c: float(c.get("Order", 0) or 0))
        try:
            ring = np.array([[float(c.get("X")), float(c.get("Y"))] for c in points])
        except (TypeError, ValueError):
            raise DataError(f"{path}: annotation {k} has a coordinate that is not X, Y") from None
        if len(ring) < 3:
            continue
        group = (annotation.get("PartOfGroup") or "").strip().lower()
        (out.excluded if group in EXCLUDED_CLASSES else out.tumour).append(ring)
    return out
