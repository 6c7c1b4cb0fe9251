"""audit.html: one self-contained page on the report's base template (no scripts, no links out).

Every number on the page comes from the summary dict that is also written as audit.json.
Thumbnails are 96 px PNGs shown 2-3x enlarged with crisp pixels; the centre 32x32 box, which
alone decides the label, is drawn over them by CSS so it hides no pixel.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from histoscan.audit import features as af
from histoscan.audit import figures
from histoscan.report.blocks import Section, esc, fmt, p_value, table, tiles
from histoscan.report.blocks import render_page as render_base

if TYPE_CHECKING:
    from histoscan.audit.core import Audit

escape = esc
SECTIONS = {
    "about": "1. About the data",
    "distributions": "2. Distributions",
    "correlations": "3. Correlations",
    "outliers": "4. Outliers",
    "cleaning": "5. Cleaning",
}
NAV = {"about": "About", "distributions": "Distributions", "correlations": "Correlations",
       "outliers": "Outliers", "cleaning": "Cleaning"}  # fmt: skip


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return table(rows, head)


def _label(audit: Audit, i: int) -> str:
    return {0: "neg", 1: "pos"}.get(int(audit.source.labels[i]), "unl")


def _pick(audit: Audit) -> dict[str, list[tuple[int, str]]]:
    """Which patches each thumbnail grid shows, with captions."""
    from histoscan.audit.core import RULE_SCORES, group_index

    cfg, scan, ids = audit.cfg, audit.scan, audit.source.ids
    groups = group_index(audit.source.labels)
    rng = np.random.default_rng(cfg.seed)
    items: dict[str, list[tuple[int, str]]] = {}
    for g, name in enumerate(af.GROUPS):
        pool = np.flatnonzero(scan.readable & (groups == g))
        pick = np.sort(rng.choice(pool, min(cfg.samples, len(pool)), replace=False))
        items[name] = [(i, f"{ids[i][:12]}") for i in pick]
    for rule, (name, low_is_bad) in RULE_SCORES.items():
        score = audit.colour if name == "colour_score" else scan.feature(name)
        order = np.argsort(np.where(np.isfinite(score), score, np.nan) * (1 if low_is_bad else -1))
        order = order[scan.readable[order]]
        hit = audit.flags[rule][order]
        items[rule] = [
            (i, f"{fmt(float(score[i]))} {_label(audit, i)}") for i in order[hit][: cfg.worst]
        ]
        near = order[audit.keep[order]][: cfg.worst // 2]
        items[f"{rule}_kept"] = [(i, f"{fmt(float(score[i]))} {_label(audit, i)}") for i in near]
    items["exact"] = [
        (i, f"{'kept' if audit.keep[i] else 'dropped'} {_label(audit, i)}")
        for group in audit.dups.exact_groups[:6]
        for i in group[:3]
    ]
    order = np.argsort(audit.dups.near_bits, kind="stable")[:6]
    items["near"] = [
        (int(i), f"{audit.dups.near_bits[k]} bits {_label(audit, i)}")
        for k in order
        for i in audit.dups.near_pairs[k]
    ]
    return items


FEATURE_HEAD = [
    "feature",
    "what",
    "mean neg",
    "mean pos",
    "point-biserial r",
    "p",
    "AUC",
]
RULE_TITLES = {
    "unreadable": "Unreadable",
    "near_black": "Near-black",
    "near_white": "Near-white",
    "background": "Background only",
    "blurred": "Blurred",
    "colour_outlier": "Colour outliers",
    "exact_duplicate": "Exact duplicates",
    "label_conflict": "Duplicates with conflicting labels",
    "near_duplicate": "Near-duplicates",
}


def _classes(counts: dict) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in counts.items() if v)


def _cards(s: dict) -> str:
    about, clean = s["about"], s["cleaning"]
    dup = s["outliers"]["duplicates"]
    base = s["correlations"].get("baseline", {}).get("all")
    pos = about["positive_fraction"]
    cards = [
        (f"{about['patches']:,}", "patches"),
        ("–" if pos is None else f"{100 * pos:.1f} %", "positive (of labelled)"),
        (f"{len(about['unreadable']):,}", "unreadable"),
        (f"{clean['removed_total']:,}", f"removed by cleaning ({_pct(s)})"),
        (f"{clean.get('review_total', 0):,}", "kept, marked review"),
        (f"{dup['exact_extra_copies']:,} / {dup['near_pairs']:,}", "exact copies / near pairs"),
        ("–" if base is None else f"{base['auc_mean']:.3f}", "feature-baseline CV AUC"),
    ]
    inner = "".join(f'<div class="card"><b>{a}</b><span>{b}</span></div>' for a, b in cards)
    return f'<div class="cards">{inner}</div>'


def _pct(s: dict) -> str:
    return f"{100 * s['cleaning']['removed_total'] / max(s['about']['patches'], 1):.2f} %"


def _findings(s: dict) -> str:
    """One sentence: what cleaning removes, rule by rule, and what it only marks for review."""
    c = s["cleaning"]
    review_rules = set(c.get("review_rules", []))
    hits = {r: sum(v.values()) for r, v in c["hits"].items() if r not in review_rules}
    parts = [
        f"{RULE_TITLES[r].lower()} {n:,}" for r, n in sorted(hits.items(), key=lambda x: -x[1]) if n
    ]
    review = (
        f" A further <b>{c['review_total']:,}</b> are kept but marked <b>review</b> "
        "(colour outliers: see 4. Outliers)."
        if c.get("review_total")
        else ""
    )
    return (
        f'<p class="found">Cleaning removes <b>{c["removed_total"]:,}</b> patches '
        f"({_pct(s)}): {', '.join(parts) or 'none'} (a patch can hit several rules).{review}</p>"
    )


def _id_text(a: dict) -> str:
    ids = a["ids"]
    if not ids["checked"]:
        return f"Not applicable: {escape(ids['why'])}."
    first = ", ".join(map(escape, ids["mismatched"][:5]))
    return (
        f"{ids['match']:,} of {a['readable']:,} readable patches have an id equal to the SHA-1 "
        f"of their raw pixels; {ids['mismatch']:,} do not"
        + (f" (first: {first})." if first else ".")
    )


def _about_html(s: dict, tiles: Any) -> str:
    a = s["about"]
    rows = [[k, *v.values()] for k, v in a["by_split"].items()]
    bad = [[u["id"], u["location"], u["reason"]] for u in a["unreadable"][:100]]
    parts = [
        _cards(s),
        _findings(s),
        '<div class="three"><div><h3>Counts per split and class</h3>',
        _table(["split", *af.GROUPS, "total"], rows),
        "</div><div><h3>File formats</h3>",
        _table(["format", "patches"], list(a["formats"].items())),
        "</div><div><h3>Decoded images</h3>",
        _table(["size and mode", "patches"], list(a["images"].items())),
        '</div></div><div class="two"><div><h3>Ids checked against pixel hashes</h3>',
        f"<p>{_id_text(a)}</p></div><div>",
        "<h3>Could not be read (listed, excluded from everything else)</h3>",
        _table(["id", "location", "reason"], bad) if bad else '<p class="small">none</p>',
        "</div></div>",
    ]
    if a["indexing_problems"]:
        items = "".join(f"<li>{escape(p)}</li>" for p in a["indexing_problems"])
        parts.append(
            f"<details><summary>{a['indexing_problem_count']:,} indexing problems (labels "
            f"without images, images without labels, ...)</summary><ul>{items}</ul></details>"
        )
    for group in af.GROUPS:
        if a["by_class"][group]:
            parts.append(f"<h3>Random {group} patches (centre 32x32 outlined)</h3>")
            parts.append(tiles(group, 3))
    return "".join(parts)


def _distributions_html(s: dict, audit: Audit) -> str:
    d = s["distributions"]
    cb = [
        [g, q, v["centre"], v["border"], v["centre"] - v["border"]]
        for g, table in d["centre_vs_border"].items()
        for q, v in table.items()
    ]
    rgb = [[g, r, *v[r]] for g, v in d["mean_rgb"].items() for r in v]
    return "".join(
        [
            "<h3>Label balance</h3>",
            figures.balance_figure(s["about"]),
            "<h3>RGB, HSV and H&amp;E (rgb2hed) per class, whole patch</h3>",
            f'<p class="small">Pixel densities from {d["histogram_pixels"]}.</p>',
            figures.hist_figure(d, by_region=False),
            "<h3>Centre 32x32 (solid) versus border (dashed)</h3>",
            figures.hist_figure(d, by_region=True),
            _table(["class", "mean of", "centre", "border", "centre - border"], cb),
            "<h3>Mean images per class</h3>",
            figures.mean_figure(audit),
            _table(["class", "region", "red", "green", "blue"], rgb),
        ]
    )


def _correlations_html(s: dict, audit: Audit) -> str:
    c = s["correlations"]
    if "skipped" in c:
        return f'<p class="small">No label analysis: {escape(str(c["skipped"]))}.</p>'
    base = c["baseline"]["all"]
    rows = [
        [f["feature"], f["description"], f["mean_negative"], f["mean_positive"],
         f["point_biserial_r"], p_value(f["p_value"]), f["auc"]]
        for f in c["features"]
    ]  # fmt: skip
    kept = c["baseline"].get("kept")
    kept_text = (
        f" On the patches that cleaning keeps: {kept['auc_mean']:.3f} ± {kept['auc_sd']:.3f} "
        f"(n = {kept['n']:,})."
        if kept
        else ""
    )
    folds = ", ".join(f"{v:.3f}" for v in base["fold_auc"])
    return "".join(
        [
            "<h3>Simple per-patch features against the label</h3>",
            _table(FEATURE_HEAD, rows),
            '<p class="small">AUC above 0.5: the feature is higher in positives; each feature '
            "alone. The colour means are strongly correlated with one another (right), so the "
            "logistic regression's coefficients would split their weight arbitrarily and can "
            "take the opposite sign to a feature's own AUC: they are not shown.</p>",
            '<div class="two"><div><h3>Baseline: logistic regression on these features</h3>',
            f"<p>Standardised features, {base['folds']}-fold stratified cross-validation on "
            f"{base['n']:,} labelled patches: <b>AUC {base['auc_mean']:.3f} ± "
            f"{base['auc_sd']:.3f}</b> (mean ± sd over folds: {folds}).{kept_text}</p>"
            "<p>This is the floor a CNN must clear. Folds are random: patches from one slide "
            "can fall on both sides, so the number is somewhat optimistic.</p>",
            figures.roc_figure(audit, base),
            "</div><div><h3>Feature correlations</h3>",
            figures.corr_figure(c["feature_correlation"]),
            "</div></div>",
        ]
    )


def _shown(n_shown: int, n_all: int, order: str) -> str:
    if n_all == 0:
        return ""
    if n_shown >= n_all:
        return f"All {n_all:,} shown, {order}."
    return f"{n_shown:,} of {n_all:,} shown, {order}; every id is in clean_manifest.csv."


def _evidence_html(o: dict) -> str:
    """The colour rule's evidence: which colour features make each flagged patch stand out."""
    rows = [
        [e["id"][:16], {0: "negative", 1: "positive"}.get(e["label"], "unlabelled"),
         f"{e['score']:.1f}", ", ".join(f"{k} {v:+.1f}" for k, v in e["z"].items())]
        for e in o["colour_outlier"].get("evidence", [])[:12]
    ]  # fmt: skip
    if not rows:
        return ""
    return (
        "<p class='small'>Evidence: the colour score is the distance to the patch's k-th nearest "
        "neighbour in colour-feature space over the median such distance. Below, the three "
        "colour features furthest from the median, as robust z-scores (|z| &gt; 3 is "
        "unusual). These patches are marked <b>review</b> in the manifest, not removed: the "
        "rule also catches ordinary dense lymphoid tissue.</p>"
        + _table(["id", "label", "score", "what stands out (z)"], rows)
    )


def _outliers_html(s: dict, tiles: Any, counts: dict[str, int]) -> str:
    o, rules = s["outliers"], s["cleaning"]["rules"]
    parts = [
        '<p class="small">Where each threshold (red dashes) falls in the distribution of its '
        "score; y axis: patches per bin (log scale).</p>"
    ]
    parts.append(s["_rules_figure"])
    for rule in ("near_black", "near_white", "background", "blurred", "colour_outlier"):
        r = o[rule]
        review = " (marked review, not removed)" if rule == "colour_outlier" else ""
        parts += [
            f"<h3>{RULE_TITLES[rule]}: {r['count']:,}{review}</h3>",
            f'<p class="small">{escape(rules[rule])}. By class: '
            f"{_classes(r['by_class']) or 'none'}. Caption: {r['score']} and label. "
            f"{_shown(counts[rule], r['count'], 'most extreme first')}</p>",
            tiles(rule, 2),
            "<p class='small'>Kept (by every rule), closest to this threshold:</p>",
            tiles(f"{rule}_kept", 2),
        ]
        if rule == "colour_outlier":
            parts.append(_evidence_html(o))
    d = o["duplicates"]
    parts += [
        f"<h3>Exact duplicates: {d['exact_groups']:,} groups, {d['exact_extra_copies']:,} extra "
        f"copies, {d['exact_label_conflict_groups']:,} with conflicting labels</h3>",
        tiles("exact", 2),
        f"<h3>Near-duplicates: {d['near_pairs']:,} pairs in {d['near_groups']:,} groups "
        f"(pHash within {d['near_max_bits']} bits), {d['near_label_conflict_groups']:,} groups "
        "with conflicting labels</h3>",
        '<p class="small">64-bit perceptual hash (DCT of the grey image), confirmed by 8x8 grey '
        "thumbnails; searched among patches with tissue (blank patches hash to noise).</p>",
        tiles("near", 2),
    ]
    if len(s["about"]["by_split"]) > 1:
        parts.append(
            f"<h3>Across splits (leakage): {d['exact_groups_across_splits']:,} exact and "
            f"{d['near_groups_across_splits']:,} near-duplicate groups</h3>"
        )
    return "".join(parts)


def _cleaning_html(s: dict) -> str:
    c = s["cleaning"]
    groups = [g for g in af.GROUPS if s["about"]["by_class"][g]]
    rows = [
        [RULE_TITLES[rule], text + (" (review)" if rule in c["review_rules"] else ""),
         *(c["hits"][rule][g] for g in groups)]
        for rule, text in c["rules"].items()
    ]  # fmt: skip
    rows.append(["Removed (any rule)", "", *(c["removed"][g] for g in groups)])
    rows.append(["Kept, to review", "", *(c["review"][g] for g in groups)])
    rows.append(["Kept (including review)", "", *(c["kept"][g] for g in groups)])
    return "".join(
        [
            _table(["rule", "removes", *groups], rows),
            f"<p>{c['removed_total']:,} of {s['about']['patches']:,} patches removed "
            f"({_pct(s)}); {c['kept_total']:,} kept, of which {c['review_total']:,} are marked "
            "<b>review</b> (colour outliers: unusual colour, often dense lymphoid tissue, "
            "worth a look rather than a silent drop). A patch can hit several rules. Of each "
            "duplicate group the first patch that no other rule removes is kept; exact copies "
            "with different labels are all dropped. Thresholds are options of "
            "<code>histoscan audit</code>; each can be switched off.</p>",
            "<p><code>clean_manifest.csv</code> has one row per patch: <code>id,label,keep,"
            "reason</code> (keep 1, 0 or review; reason: the rules hit). "
            "<code>histoscan train DATA --manifest clean_manifest.csv</code> trains on the "
            "rows with keep 1; set a review row to 1 to include it.</p>",
        ]
    )


def render_page(s: dict, audit: Audit) -> str:
    """The whole audit.html."""
    started = time.perf_counter()
    items = _pick(audit)
    wanted = sorted({i for group in items.values() for i, _ in group})
    images = dict(zip(wanted, audit.source.read_many(wanted), strict=True)) if wanted else {}

    def grid(key: str, scale: int) -> str:
        return tiles([(images[i], audit.source.ids[i], text) for i, text in items[key]], scale)

    counts = {key: len(group) for key, group in items.items()}
    s = {**s, "_rules_figure": figures.rules_figure(audit)}
    body = {
        "about": _about_html(s, grid),
        "distributions": _distributions_html(s, audit),
        "correlations": _correlations_html(s, audit),
        "outliers": _outliers_html(s, grid, counts),
        "cleaning": _cleaning_html(s),
    }
    seconds = {**s["seconds"], "plots and HTML": time.perf_counter() - started}
    sections = [Section(k, NAV[k], SECTIONS[k], html) for k, html in body.items()]
    timing = _table(["stage", "seconds"], [[k, v] for k, v in seconds.items()])
    sections.append(Section("run", "Run", "Run", timing))
    command = f"<code>{escape(s['command'])}</code>" if s.get("command") else ""
    subtitle = (
        f"{escape(s['source']['description'])}<br>histoscan "
        f"{escape(s['histoscan_version'])} {command}"
    )
    return render_base(f"Data audit: {s['source']['root']}", "Data audit", subtitle, sections)
