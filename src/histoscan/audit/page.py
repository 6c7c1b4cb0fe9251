"""audit.html: one self-contained page (figures and thumbnails as base64 PNG, no scripts).

Every number on the page comes from the summary dict that is also written as audit.json.
Thumbnails are 96 px PNGs shown 2-3x enlarged with crisp pixels; the centre 32x32 box, which
alone decides the label, is drawn over them by CSS so it hides no pixel.
"""

from __future__ import annotations

import base64
import io
import time
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from histoscan.audit import features as af
from histoscan.audit import figures

if TYPE_CHECKING:
    from histoscan.audit.core import Audit

SECTIONS = {
    "about": "1. About the data",
    "distributions": "2. Distributions",
    "correlations": "3. Correlations",
    "outliers": "4. Outliers",
    "cleaning": "5. Cleaning",
}
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d22;
  margin:0;background:#eef0f3}
main{max-width:1190px;margin:0 auto;padding:22px 30px 60px;background:#fff}
h1{font-size:25px;margin:0 0 2px}h2{font-size:21px;margin:38px 0 10px;padding-bottom:4px;
  border-bottom:2px solid #e2e4ea}h3{font-size:16px;margin:22px 0 6px}
.meta,.note{color:#5d6270;font-size:13px}nav{margin:10px 0 4px;font-size:14px}
nav a{margin-right:16px;color:#2c5fb6;text-decoration:none}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:10px;margin:14px 0 6px}
.card{border:1px solid #e2e4ea;border-radius:8px;padding:8px 12px;background:#fafbfc}
.card b{display:block;font-size:22px}.card span{color:#5d6270;font-size:12.5px}
table{border-collapse:collapse;font-size:13.5px;margin:6px 0 10px}
th,td{padding:3px 10px;border-bottom:1px solid #eceef2;text-align:right;vertical-align:top}
th{background:#f5f6f8;font-weight:600}th:first-child,td:first-child{text-align:left}
th.l,td.l{text-align:left}img.plot{max-width:100%;height:auto;display:block}
.grid{display:flex;flex-wrap:wrap;gap:8px 6px;margin:4px 0 8px}
figure{margin:0;font-size:11.5px;color:#5d6270;font-family:ui-monospace,monospace}
.tile{position:relative;width:calc(96px*var(--s));height:calc(96px*var(--s))}
.tile img{width:100%;height:100%;image-rendering:pixelated;display:block}
.tile:after{content:"";position:absolute;left:33.333%;top:33.333%;width:33.333%;
  height:33.333%;box-sizing:border-box;border:2px solid #00e5ff;
  box-shadow:0 0 0 1px rgba(0,0,0,.55)}
.pair{display:flex;gap:3px;padding:4px;border:1px solid #e2e4ea;border-radius:6px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.three{display:grid;grid-template-columns:auto auto auto;gap:28px;justify-content:start}
.found{margin:4px 0 8px;font-size:14.5px}
details{margin:6px 0}summary{cursor:pointer;color:#2c5fb6}
"""


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(head: list[str], rows: list[list[Any]]) -> str:
    """Text columns (judged by the first row) align left, numbers right."""
    left = [isinstance(v, str) for v in rows[0]] if rows else [False] * len(head)
    cls = [' class="l"' if a else "" for a in left]
    cells = "".join(f"<th{c}>{escape(str(h))}</th>" for h, c in zip(head, cls, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{c}>{_fmt(v)}</td>" for v, c in zip(row, cls, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not np.isfinite(v):
            return "–"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}" if abs(v) >= 1 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "–" if v is None else escape(str(v))


def _tiles(audit: Audit, items: list[tuple[int, str]], scale: int, images: dict) -> str:
    if not items:
        return '<p class="note">none</p>'
    figs = [
        f'<figure><div class="tile" style="--s:{scale}"><img src="{_png(images[i])}" '
        f'alt="{escape(audit.source.ids[i])}"></div><figcaption>{escape(text)}</figcaption></figure>'
        for i, text in items
    ]
    return '<div class="grid">' + "".join(figs) + "</div>"


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
        items[rule] = [(i, f"{score[i]:.3g} {_label(audit, i)}") for i in order[hit][: cfg.worst]]
        near = order[audit.keep[order]][: cfg.worst // 2]
        items[f"{rule}_kept"] = [(i, f"{score[i]:.3g} {_label(audit, i)}") for i in near]
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
    "LR coef",
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
        (f"{dup['exact_extra_copies']:,} / {dup['near_pairs']:,}", "exact copies / near pairs"),
        ("–" if base is None else f"{base['auc_mean']:.3f}", "feature-baseline CV AUC"),
    ]
    inner = "".join(f'<div class="card"><b>{a}</b><span>{b}</span></div>' for a, b in cards)
    return f'<div class="cards">{inner}</div>'


def _pct(s: dict) -> str:
    return f"{100 * s['cleaning']['removed_total'] / max(s['about']['patches'], 1):.2f} %"


def _findings(s: dict) -> str:
    """One sentence: what cleaning removes, rule by rule."""
    hits = {r: sum(v.values()) for r, v in s["cleaning"]["hits"].items()}
    parts = [
        f"{RULE_TITLES[r].lower()} {n:,}" for r, n in sorted(hits.items(), key=lambda x: -x[1])
    ]
    return (
        f'<p class="found">Cleaning removes <b>{s["cleaning"]["removed_total"]:,}</b> patches '
        f"({_pct(s)}): {', '.join(p for p in parts if not p.endswith(' 0')) or 'none'} "
        "(a patch can hit several rules).</p>"
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
        _table(["id", "location", "reason"], bad) if bad else '<p class="note">none</p>',
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
            f'<p class="note">Pixel densities from {d["histogram_pixels"]}.</p>',
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
        return f'<p class="note">No label analysis: {escape(str(c["skipped"]))}.</p>'
    base = c["baseline"]["all"]
    coef = base["standardised_coefficients"]
    rows = [
        [f["feature"], f["description"], f["mean_negative"], f["mean_positive"],
         f["point_biserial_r"], f["p_value"], f["auc"], coef[f["feature"]]]
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
            '<p class="note">AUC above 0.5: the feature is higher in positives. LR coef: '
            "standardised logistic-regression coefficient (all features together).</p>",
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


def _outliers_html(s: dict, tiles: Any) -> str:
    o, rules = s["outliers"], s["cleaning"]["rules"]
    parts = ['<p class="note">Where each threshold (red) falls in its distribution.</p>']
    parts.append(s["_rules_figure"])
    for rule in ("near_black", "near_white", "background", "blurred", "colour_outlier"):
        r = o[rule]
        parts += [
            f"<h3>{RULE_TITLES[rule]}: {r['count']:,}</h3>",
            f'<p class="note">{escape(rules[rule])}. By class: '
            f"{_classes(r['by_class']) or 'none'}. Caption: {r['score']} and label.</p>",
            tiles(rule, 2),
            "<p class='note'>Kept (by every rule), closest to this threshold:</p>",
            tiles(f"{rule}_kept", 2),
        ]
    d = o["duplicates"]
    parts += [
        f"<h3>Exact duplicates: {d['exact_groups']:,} groups, {d['exact_extra_copies']:,} extra "
        f"copies, {d['exact_label_conflict_groups']:,} with conflicting labels</h3>",
        tiles("exact", 2),
        f"<h3>Near-duplicates: {d['near_pairs']:,} pairs in {d['near_groups']:,} groups "
        f"(pHash within {d['near_max_bits']} bits), {d['near_label_conflict_groups']:,} groups "
        "with conflicting labels</h3>",
        '<p class="note">64-bit perceptual hash (DCT of the grey image), confirmed by 8x8 grey '
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
        [RULE_TITLES[rule], text, *(c["hits"][rule][g] for g in groups)]
        for rule, text in c["rules"].items()
    ]
    rows.append(["Removed (any rule)", "", *(c["removed"][g] for g in groups)])
    rows.append(["Kept", "", *(c["kept"][g] for g in groups)])
    return "".join(
        [
            _table(["rule", "removes", *groups], rows),
            f"<p>{c['removed_total']:,} of {s['about']['patches']:,} patches removed "
            f"({_pct(s)}); {c['kept_total']:,} kept. A patch can hit several rules. Of each "
            "duplicate group the first patch that no other rule removes is kept; exact copies "
            "with different labels are all dropped. Thresholds are options of "
            "<code>histoscan audit</code>; each can be switched off.</p>",
            "<p><code>clean_manifest.csv</code> has one row per patch: <code>id,label,keep,"
            "reason</code> (keep 1/0, reason: the rules hit). Train on the kept ones with "
            "<code>histoscan train DATA --manifest clean_manifest.csv</code>.</p>",
        ]
    )


def render_page(s: dict, audit: Audit) -> str:
    """The whole audit.html."""
    started = time.perf_counter()
    items = _pick(audit)
    wanted = sorted({i for group in items.values() for i, _ in group})
    images = dict(zip(wanted, audit.source.read_many(wanted), strict=True)) if wanted else {}

    def tiles(key: str, scale: int) -> str:
        return _tiles(audit, items[key], scale, images)

    s = {**s, "_rules_figure": figures.rules_figure(audit)}
    body = {
        "about": _about_html(s, tiles),
        "distributions": _distributions_html(s, audit),
        "correlations": _correlations_html(s, audit),
        "outliers": _outliers_html(s, tiles),
        "cleaning": _cleaning_html(s),
    }
    nav = "".join(f'<a href="#{k}">{escape(v)}</a>' for k, v in SECTIONS.items())
    sections = "".join(
        f'<section id="{k}"><h2>{escape(SECTIONS[k])}</h2>{html}</section>'
        for k, html in body.items()
    )
    seconds = {**s["seconds"], "plots and HTML": time.perf_counter() - started}
    seconds = [[k, v] for k, v in seconds.items()]
    command = f"<code>{escape(s['command'])}</code>" if s.get("command") else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Data audit: {escape(s['source']['root'])}</title><style>{CSS}</style></head>"
        f"<body><main><h1>Data audit</h1>"
        f'<p class="meta">{escape(s["source"]["description"])}<br>histoscan '
        f"{escape(s['histoscan_version'])} {command}</p><nav>{nav}</nav>{sections}"
        f"<h2>Run</h2>{_table(['stage', 'seconds'], seconds)}</main></body></html>"
    )
