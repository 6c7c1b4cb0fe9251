"""The audit's numbers (audit.json) and its page (audit.html): label analysis and summary.

``summarise`` collects every number into one dict; the page is rendered from that dict (by
``audit_page``), so the JSON and the HTML cannot disagree.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histoscan.audit import features as af
from histoscan.audit.stats import can_fit

if TYPE_CHECKING:
    from histoscan.audit.core import Audit


def _by_group(mask: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    return {g: int((mask & (groups == k)).sum()) for k, g in enumerate(af.GROUPS)}


def _formats(source: Any) -> dict[str, int]:
    """File suffixes of the patches (or the container, for stores and HDF5)."""
    parts = getattr(source, "parts", [source])
    counts: Counter[str] = Counter()
    for part in parts:
        files = getattr(part, "files", None)
        if files is None:
            counts[part.kind] += len(part)
        else:
            counts.update(f.suffix.lower() for f in files)
    return dict(counts)


def _about(audit: Audit, groups: np.ndarray) -> dict:
    from histoscan.audit.core import split_names

    source, scan = audit.source, audit.scan
    splits = split_names(source)
    counts = {}
    for name in dict.fromkeys(splits.tolist()):
        in_split = splits == name
        counts[name] = _by_group(in_split, groups) | {"total": int(in_split.sum())}
    images = Counter(reason for _, reason in scan.unreadable)
    ids: dict[str, Any] = {"checked": bool(source.id_is_hash)}
    if source.id_is_hash:
        hexes = [bytes(d).hex() for d in scan.digest]
        match = np.array([h == key.lower() for h, key in zip(hexes, source.ids, strict=True)])
        bad = np.flatnonzero(scan.readable & ~match)
        ids |= {"match": int((scan.readable & match).sum()), "mismatch": len(bad)}
        ids["mismatched"] = [source.ids[i] for i in bad[:50]]
    else:
        ids["why"] = f"ids of a {source.kind} are not pixel hashes"
    labelled = (groups < 2).sum()
    return {
        "patches": len(source),
        "readable": int(scan.readable.sum()),
        "by_class": _by_group(np.ones(len(source), bool), groups),
        "positive_fraction": float((groups == 1).sum() / labelled) if labelled else None,
        "by_split": counts,
        "formats": _formats(source),
        "images": {f"{af.PATCH_PX}x{af.PATCH_PX} RGB uint8": int(scan.readable.sum())}
        | dict(images),
        "ids": ids,
        "indexing_problems": [str(p) for p in source.problems[:200]],
        "indexing_problem_count": len(source.problems),
        "unreadable": [
            {"id": source.ids[i], "location": source.locate(i), "reason": reason}
            for i, reason in scan.unreadable
        ],
    }


def _distributions(audit: Audit) -> dict:
    stats = audit.scan.stats
    present = [k for k, g in enumerate(af.GROUPS) if stats.count[k]]
    hist = {
        af.GROUPS[g]: {
            region: {ch: stats.hist[g, r, c].tolist() for c, ch in enumerate(af.HIST_RANGES)}
            for r, region in enumerate(af.REGIONS)
        }
        for g in present
    }
    means = stats.mean_images()
    border = np.ones((af.PATCH_PX, af.PATCH_PX), bool)
    border[af.CENTRE] = False
    mean_rgb = {
        af.GROUPS[g]: {
            "centre": means[g][af.CENTRE].reshape(-1, 3).mean(0).tolist(),
            "border": means[g][border].mean(0).tolist(),
        }
        for g in present
    }
    # whole-patch mean and centre-minus-border difference give centre and border means
    f_centre = af.CENTRE_PX**2 / af.PATCH_PX**2
    groups = _groups(audit)
    centre_border = {}
    for g in present:
        rows = audit.scan.readable & (groups == g)
        table = {}
        for name in ("brightness", "saturation", "tissue_fraction", "haematoxylin", "eosin"):
            whole = float(np.mean(audit.scan.feature(name)[rows]))
            diff_name = f"centre_{name.removesuffix('_fraction')}_diff"
            diff = float(np.mean(audit.scan.feature(diff_name)[rows]))
            table[name] = {
                "centre": whole + (1 - f_centre) * diff,
                "border": whole - f_centre * diff,
            }
        centre_border[af.GROUPS[g]] = table
    return {
        "histogram_bins": af.HIST_BINS,
        "histogram_ranges": {ch: list(r) for ch, r in af.HIST_RANGES.items()},
        "histogram_pixels": "every 4th pixel in each direction",
        "histograms": hist,
        "mean_rgb": mean_rgb,
        "centre_vs_border": centre_border,
    }


def _groups(audit: Audit) -> np.ndarray:
    from histoscan.audit.core import group_index

    return group_index(audit.source.labels)


def _outliers(audit: Audit, groups: np.ndarray) -> dict:
    from histoscan.audit.core import RULE_SCORES

    out = {}
    for rule, (name, low_is_bad) in RULE_SCORES.items():
        hit = audit.flags[rule]
        score = audit.colour if name == "colour_score" else audit.scan.feature(name)
        worst = np.flatnonzero(hit)[np.argsort(score[hit] * (1 if low_is_bad else -1))]
        out[rule] = {
            "count": int(hit.sum()),
            "by_class": _by_group(hit, groups),
            "score": name,
            "worst": [{"id": audit.source.ids[i], "score": float(score[i])} for i in worst[:50]],
        }
    out["colour_outlier"]["evidence"] = colour_evidence(
        audit,
        np.flatnonzero(audit.flags["colour_outlier"])[
            np.argsort(-audit.colour[audit.flags["colour_outlier"]])
        ][:50],
    )
    from histoscan.audit.core import split_names

    dups, labels, splits = audit.dups, audit.source.labels, split_names(audit.source)
    conflicts = [g for g in dups.near_groups if {0, 1} <= set(labels[g].tolist())]
    members = {g[0]: g for g in dups.exact_groups}  # near groups hold first copies only

    def across(groups: list[np.ndarray]) -> int:  # groups with patches in two splits: leakage
        return sum(len(set(splits[np.concatenate([members.get(i, [i]) for i in g])])) > 1
                   for g in groups)  # fmt: skip

    out["duplicates"] = {
        "exact_groups": len(dups.exact_groups),
        "exact_extra_copies": int(sum(len(g) - 1 for g in dups.exact_groups)),
        "exact_label_conflict_groups": int(
            sum(audit.flags["label_conflict"][g[0]] for g in dups.exact_groups)
        ),
        "near_pairs": len(dups.near_pairs),
        "near_groups": len(dups.near_groups),
        "near_label_conflict_groups": len(conflicts),
        "near_max_bits": audit.cfg.near_dup_bits,
        "exact_groups_across_splits": across(dups.exact_groups),
        "near_groups_across_splits": across(dups.near_groups),
        "exact_examples": [[audit.source.ids[i] for i in g] for g in dups.exact_groups[:50]],
        "near_examples": [
            {"ids": [audit.source.ids[i] for i in p], "bits": int(b)}
            for p, b in zip(dups.near_pairs[:50], dups.near_bits[:50], strict=True)
        ],
    }
    return out


def _cleaning(audit: Audit, groups: np.ndarray) -> dict:
    """Counts per rule and class; "kept" includes the patches marked for review."""
    from histoscan.audit.core import REVIEW_RULES

    keep, review = audit.keep, audit.review
    return {
        "rules": audit.cfg.rules(),
        "review_rules": list(REVIEW_RULES),
        "hits": {rule: _by_group(hit, groups) for rule, hit in audit.flags.items()},
        "removed": _by_group(~keep, groups),
        "kept": _by_group(keep, groups),
        "review": _by_group(review, groups),
        "removed_total": int((~keep).sum()),
        "kept_total": int(keep.sum()),
        "review_total": int(review.sum()),
    }


def colour_evidence(audit: Audit, indices: np.ndarray) -> list[dict]:
    """Why the colour rule flagged each patch: its colour features as robust z-scores.

    z = (value - median) / (1.4826 x MAD) over the patches with tissue, so |z| > 3 is unusual;
    the three largest |z| name what makes the patch stand out.
    """
    ok = np.isfinite(audit.colour)
    out = []
    for i in indices:
        z = {}
        for name in af.COLOUR_FEATURES:
            x = audit.scan.feature(name)[ok].astype(np.float64)
            med = float(np.median(x))
            mad = float(np.median(np.abs(x - med))) * 1.4826 or 1.0
            z[name] = (float(audit.scan.feature(name)[i]) - med) / mad
        top = sorted(z, key=lambda k: -abs(z[k]))[:3]
        out.append(
            {
                "id": audit.source.ids[i],
                "score": float(audit.colour[i]),
                "label": int(audit.source.labels[i]),
                "z": {k: round(z[k], 2) for k in top},
            }
        )
    return out


def _correlations(audit: Audit) -> dict:
    if audit.features is None:
        labels = audit.source.labels[audit.scan.readable]
        return {"skipped": can_fit(labels[labels >= 0], audit.cfg.folds)}
    ok = audit.scan.readable & (audit.source.labels >= 0)
    x = np.column_stack([audit.scan.features[ok], audit.source.labels[ok]])
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    return {
        "features": audit.features,
        "feature_correlation": {"names": [*af.FEATURES, "label"], "matrix": corr.tolist()},
        "baseline": audit.baseline,
    }


def summarise(audit: Audit) -> dict:
    """Every number of the audit, JSON-ready (NaN becomes null)."""
    from dataclasses import asdict

    from histoscan import __version__

    groups = _groups(audit)
    source = audit.source
    result = {
        "histoscan_version": __version__,
        "command": audit.command,
        "source": {"description": source.describe(), "kind": source.kind, "root": str(source.root)},
        "config": asdict(audit.cfg),
        "about": _about(audit, groups),
        "distributions": _distributions(audit),
        "correlations": _correlations(audit),
        "outliers": _outliers(audit, groups),
        "cleaning": _cleaning(audit, groups),
        "seconds": audit.seconds,
    }
    return _jsonable(result)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def coverage(audit_json: Path, ids: list[str]) -> dict[str, Any]:
    """How much of a patch set an audit covers, from the clean_manifest.csv beside audit.json.

    Returns ``{"patches": len(ids), "audited": how many of them the manifest lists,
    "review": how many of those it marks review, "removed": how many it marks 0}``; without a
    manifest, ``audited`` is None (the audit cannot be matched to the data id by id).
    """
    import csv

    manifest = Path(audit_json).parent / "clean_manifest.csv"
    result: dict[str, Any] = {"patches": len(ids), "audited": None, "review": 0, "removed": 0}
    if not manifest.is_file():
        return result
    with open(manifest, newline="") as fh:
        keep = {row["id"]: row["keep"] for row in csv.DictReader(fh)}
    marks = [keep[i] for i in ids if i in keep]
    result |= {
        "audited": len(marks),
        "review": sum(m == "review" for m in marks),
        "removed": sum(m == "0" for m in marks),
    }
    return result
