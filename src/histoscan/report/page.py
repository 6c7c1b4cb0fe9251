"""The report page: one HTML string with inline CSS and PNG data URIs, so it opens offline.

Each section is one short function that turns ``ReportData`` into prose, tables and figures.
"""

from __future__ import annotations

import time
from typing import Any

from histoscan.report.blocks import Section, esc, img, pct, plural, render_page, table, wilson
from histoscan.report.build import ReportData

SECTIONS = {
    "summary": "Summary",
    "training": "What was trained, on what",
    "metrics": "How good it is",
    "calibration": "Are the probabilities honest?",
    "gradcam": "Where it looks and where it fails",
    "embedding": "What the model sees",
    "mislabels": "Mislabel candidates",
    "audit": "Data audit",
}
NAV = (
    "Summary",
    "Training",
    "Metrics",
    "Calibration",
    "Grad-CAM",
    "Embedding",
    "Mislabels",
    "Audit",
)
TTA_WORDS = {
    "none": "one view",
    "flip": "2 views (identity and flip)",
    "d4": "8 views (rotations and flips)",
}


def render(d: ReportData) -> str:
    """The whole page as one HTML string, on the base template shared with the audit page."""
    from histoscan import __version__

    card = d.mf.card
    name = card.get("name") or card.get("model") or d.mf.spec.name
    run = d.inference
    subtitle = (
        f"{esc(d.mf.path)} &middot; evaluated on {esc(d.source.describe())} "
        f"&middot; engine {esc(run['engine'])} ({esc(run['precision'])} on {esc(run['device'])}) "
        f"&middot; generated {time.strftime('%Y-%m-%d %H:%M')}"
    )
    bodies = [
        _summary(d),
        _training(d),
        _metrics(d),
        _calibration(d),
        _gradcam(d),
        _embedding(d),
        _mislabels(d),
        _audit(d),
    ]
    sections = [
        Section(key, nav, SECTIONS[key], body)
        for key, nav, body in zip(SECTIONS, NAV, bodies, strict=True)
    ]
    footer = f"histoscan {esc(__version__)}. Reproduce: <code>{esc(_command(d))}</code>"
    return render_page(f"{name}: model report", f"Model report: {name}", subtitle, sections, footer)


def _command(d: ReportData) -> str:
    """The command that made this page, as recorded by the CLI (else rebuilt from the data)."""
    if d.command:
        return d.command
    return f"histoscan report {d.source.root} --model {d.mf.path} --out report.html"


def _section(key: str, body: str) -> str:
    """A section's body (the base template adds the anchor and the heading)."""
    return body


def _summary(d: ReportData) -> str:
    m, card = d.metrics, d.mf.card
    lo, hi = m["roc_auc_ci95"]
    auc = "n/a" if lo is None else f"{m['roc_auc']:.3f}"
    ci = "" if lo is None else f", 95% CI {lo:.3f}&ndash;{hi:.3f}"
    (_, fp), (fn, _) = m["confusion"]
    cards = [
        (auc, f"ROC AUC{ci}"),
        (pct(m["sensitivity"]), "sensitivity: tumour patches found"),
        (pct(m["specificity"]), "specificity: normal patches cleared"),
        (f"{m['n']:,}", f"patches evaluated, {m['positives']:,} with tumour"),
    ]
    boxes = "".join(f"<div class=card><b>{v}</b><span>{t}</span></div>" for v, t in cards)
    where = (
        f"{m['n']:,} patches the model held out for validation while training"
        if d.on_val_ids
        else f"all {m['n']:,} labelled patches given"
    )
    text = (
        f"<p>This is {_what(d)} trained for "
        f"{plural(card.get('epochs_run', '?'), 'epoch')} on {card.get('n_train', '?')} patches of "
        f"{esc(card.get('data', 'unrecorded data'))}. It reads a 96&times;96 pixel H&amp;E patch "
        "of a lymph node and gives the probability that the <b>centre 32&times;32 pixels</b> hold "
        "tumour (the PCam label: tumour elsewhere in the patch does not count).</p>"
        f"<p>On {where}, it ranks a random tumour patch above a random normal one "
        f"with probability {auc} (the ROC AUC). At its decision threshold {m['threshold']:.2f} "
        f"it finds {pct(m['sensitivity'])} of tumour patches and clears "
        f"{pct(m['specificity'])} of normal ones: {fn} missed tumour "
        f"patch{'' if fn == 1 else 'es'} and {plural(fp, 'false alarm')}.</p>"
    )
    if not d.on_val_ids:
        text += (
            "<p class=note>None of the model's validation patches are in this data (or the "
            "model file lists none), so the metrics use all labelled patches. If the model "
            "was trained on some of them, the numbers are optimistic.</p>"
        )
    return _section("summary", f"<div class=cards>{boxes}</div>{text}")


def _what(d: ReportData) -> str:
    """'a <b>histocnn</b> network', or 'an ensemble of 2 <b>histocnn</b> networks, each'."""
    members = d.mf.card.get("members") or []
    if members:
        arch = members[0].get("model", d.mf.spec.name)
        return f"an ensemble of {len(members)} <b>{esc(arch)}</b> networks, each"
    return f"a <b>{esc(d.mf.spec.name)}</b> network"


def _training(d: ReportData) -> str:
    card, spec = d.mf.card, d.mf.spec
    n_params = d.n_params
    secs = card.get("train_seconds")
    cfg = card.get("config") or {}
    recipe = ", ".join(
        f"{k} {cfg[k]}"
        for k in ("batch_size", "lr", "weight_decay", "label_smoothing", "precision", "seed")
        if k in cfg and not (k == "seed" and card.get("members"))  # members list their seeds
    )
    rows = [
        ["architecture", f"{spec.name}: {n_params:,} parameters, input {spec.input_px} px"],
        ["training data", card.get("data", "not recorded")],
        ["validation split", card.get("split", "not recorded")],
        ["patches (train / validation)", f"{card.get('n_train', '?')} / {card.get('n_val', '?')}"],
        ["epochs run", str(card.get("epochs_run", "?"))],
        ["training time", "not recorded" if secs is None else f"{secs / 60:.1f} min"],
        ["recipe", recipe or "not recorded"],
        ["validation AUC while training (8 views)", str(card.get("val_auc_tta_d4", "?"))],
        [
            "temperature / threshold",
            f"{d.mf.temperature:.3f} (fitted on the {d.inference['calibrated_on']} engine's "
            f"validation logits) / {d.mf.threshold:.2f}",
        ],
        ["trained", card.get("trained", "?")],
    ]
    members = card.get("members") or []
    if members:
        rows.insert(1, ["ensemble", _members_text(members)])
    rows += [[key, str(card[key])] for key in ("command", "machine") if card.get(key)]
    flat = []
    for key, value in cfg.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        flat += [[f"{key}.{sub}" if sub else key, str(v)] for sub, v in items]
    full = f"<details><summary>full configuration</summary>{table(flat, cls='kv')}</details>"
    curves = d.images.get("curves")
    text = (
        (
            "<p>As logged while training. A validation loss that rises while the training loss "
            "falls means overfitting; a curve still climbing at the end means more epochs would "
            "help.</p>" + img(curves, "training curves")
        )
        if curves
        else ("<p><i>The model file holds no per-epoch history.</i></p>")
    )
    return _section("training", table(rows, cls="kv") + full + "<h3>Training curves</h3>" + text)


def _members_text(members: list[dict[str, Any]]) -> str:
    """'mean logit of 2 networks: seed 1, 18 epochs, validation AUC 0.97; ...'."""
    parts = []
    for m in members:
        seed = (m.get("config") or {}).get("seed", "?")
        parts.append(
            f"seed {seed}, {m.get('epochs_run', '?')} epochs, "
            f"validation AUC {m.get('val_auc_tta_d4', '?')}"
        )
    return f"mean logit of {len(members)} networks: " + "; ".join(parts)


def _metrics(d: ReportData) -> str:
    m = d.metrics
    (tn, fp), (fn, tp) = m["confusion"]
    lo, hi = m["roc_auc_ci95"]

    def prop(k: int, n: int) -> str:
        return "n/a" if n == 0 else "{} to {}".format(*map(pct, wilson(k, n)))

    rows = [
        [
            "ROC AUC",
            f"{m['roc_auc']:.4f}",
            "n/a" if lo is None else f"{lo:.4f} to {hi:.4f}",
            "ranking quality over all thresholds",
        ],
        ["sensitivity", pct(m["sensitivity"]), prop(tp, tp + fn), "tumour patches called tumour"],
        ["specificity", pct(m["specificity"]), prop(tn, tn + fp), "normal patches called normal"],
        ["precision", pct(m["precision"]), prop(tp, tp + fp), "tumour calls that are right"],
        ["accuracy", pct(m["accuracy"]), prop(tp + tn, m["n"]), "all calls that are right"],
        ["F1", f"{m['f1']:.3f}", "", "balance of precision and sensitivity"],
    ]
    body = (
        f"<p>{m['n']:,} patches ({m['positives']:,} tumour), decision threshold "
        f"{m['threshold']:.2f}, probabilities averaged over {TTA_WORDS.get(d.tta, d.tta)}. "
        "95% intervals: bootstrap over patches for the AUC, Wilson for proportions. Patches from "
        "one slide are alike, so with few slides the true uncertainty is wider.</p>"
        "<div class=row><div>"
        + table(rows, ["metric", "value", "95% CI", "meaning"])
        + "</div>"
        + img(d.images.get("confusion"), "confusion matrix")
        + "</div>"
        "<div class=row>"
        + img(d.images.get("roc"), "ROC curve", "half")
        + img(d.images.get("pr"), "precision-recall curve", "half")
        + "</div>"
    )
    return _section("metrics", body)


def _calibration(d: ReportData) -> str:
    m, raw = d.metrics, d.metrics_raw
    names = {"nll": "log loss (NLL)", "brier": "Brier score", "ece": "calibration error (ECE)"}
    rows = [[names[k], f"{raw[k]:.4f}", f"{m[k]:.4f}"] for k in names]
    note = (
        "<p class=note>T was fitted on these same validation patches, so the calibration "
        "after scaling is measured in-sample and is somewhat optimistic.</p>"
        if d.on_val_ids
        else ""
    )
    text = (
        f"<p>A calibrated model's 0.8 means tumour 8 times in 10. Temperature scaling "
        f"divides the logits by T = {d.mf.temperature:.3f}, fitted on the validation split; "
        "it changes the probabilities, never the ranking. Lower is better for all three "
        "numbers. In the diagram, points on the diagonal are calibrated.</p>"
        + table(rows, ["", "before (T = 1)", "after scaling"])
        + note
    )
    body = (
        f"<div class=row><div class=half>{text}</div>"
        + img(d.images.get("reliability"), "reliability diagram", "half")
        + "</div>"
    )
    return _section("calibration", body)


def _gradcam(d: ReportData) -> str:
    share = "; ".join(
        f"{g} {pct(v)}" if v is not None else f"{g}: no tumour evidence" for g, v in d.cases.items()
    )
    where = (
        "on the 6&times;6 map before the network's last pooling, one cell per 16&times;16 pixels"
        if d.mf.spec.name.startswith("histocnn")
        else f"at layer <code>{esc(d.mf.spec.target_layer)}</code>"
    )
    values = [v for v in d.cases.values() if v is not None]
    verdict = (
        ""
        if not values
        else " The shares sit near that even 11%: the maps do not single out the centre, so "
        "read them as where the evidence lies in the whole patch, not as proof that the model "
        "looks where the label is."
        if max(values) < 0.2
        else " Where a share is well above 11%, the model's evidence is concentrated in the "
        "labelled centre."
    )
    body = (
        "<p>The most confident correct and wrong calls among the evaluated patches. Above each "
        "patch: the probability of tumour and the true label. Below it, Grad-CAM "
        f"({where}) colours red the regions that raised the tumour logit most and blue those "
        "that did not (colour bar under the figure); a patch with no evidence for tumour "
        "anywhere is all blue. The green square is the centre region the label refers to. Its "
        "confident errors show what fools the model, for example dense lymphocytes, folds, odd "
        "staining, or tumour just outside the centre.</p>"
        f"<p>Mean share of the Grad-CAM weight inside the centre square (1/9 of the patch, 11% "
        f"if spread evenly): {esc(share) or 'n/a'}.{verdict}</p>"
        + img(d.images.get("gradcam"), "Grad-CAM")
    )
    return _section("gradcam", body)


def _embedding(d: ReportData) -> str:
    e = d.embedding
    method = {"umap": "UMAP", "tsne": "t-SNE"}.get(e.method, e.method.upper())
    rows = [
        [
            c["cluster"],
            c["size"],
            "?" if c["tumour_fraction"] is None else f"{c['tumour_fraction']:.2f}",
            f"{c['mean_prob']:.2f}",
            c.get("n_seen_in_training", 0),
            "?"
            if c.get("tumour_fraction_held_out") is None
            else f"{c['tumour_fraction_held_out']:.2f}",
        ]
        for c in e.clusters
    ]
    seen = d.n_seen_mapped
    trained = (
        f"<p class=note>{seen:,} of these {d.n_mapped:,} patches were used to train the model "
        "(grey crosses in the maps; counted per cluster below). On them the features separate "
        "the classes by construction: judge the map and the clusters by the held-out patches "
        "only.</p>"
        if seen
        else ""
    )
    body = (
        trained + f"<p>Each dot is one of {d.n_mapped:,} patches, placed by {method} so that "
        "patches the network represents alike (its features before the last layer) lie close "
        "together. Where the colours of the left map mix, the model cannot tell the classes "
        "apart. Probabilities here come from one view.</p><div class=row>"
        + img(d.images.get("umap_label"), "map coloured by label", "half")
        + img(d.images.get("umap_prob"), "map coloured by probability", "half")
        + "</div>"
        f"<h3>Clusters</h3><p>k-means on the same features; each strip shows the patches nearest "
        f"the cluster's centre. {_cluster_notes(e.clusters, bool(seen))}</p><div class=row><div>"
        + table(
            rows,
            [
                "cluster",
                "patches",
                "tumour fraction",
                "mean P(tumour)",
                "trained on",
                "tumour fraction, held-out",
            ],
        )
        + "</div>"
        + img(d.images.get("clusters"), "cluster exemplars")
        + "</div>"
    )
    return _section("embedding", body)


def _cluster_notes(clusters: list[dict[str, Any]], held_out_only: bool = False) -> str:
    """Which clusters are pure, which mixed, and where probabilities stray from the labels.

    With training patches among the mapped ones, purity is judged on the held-out ones only.
    """
    if held_out_only:
        clusters = [{**c, "tumour_fraction": c.get("tumour_fraction_held_out")} for c in clusters]
    known = [c for c in clusters if c["tumour_fraction"] is not None]
    if not known:
        return "No labelled held-out patches, so only the mean probability is known."
    pure = [c for c in known if not 0.1 <= c["tumour_fraction"] <= 0.9]
    mixed = [c for c in known if 0.1 <= c["tumour_fraction"] <= 0.9]
    notes = [
        f"{len(pure)} of {len(known)} clusters are nearly pure (under 10% or over 90% "
        f"tumour{' among held-out patches' if held_out_only else ''}): there the features alone "
        "separate the classes."
    ]
    if mixed:
        listed = ", ".join(
            f"cluster {c['cluster']} ({c['size']:,} patches, {c['tumour_fraction']:.0%} tumour)"
            for c in mixed
        )
        notes.append(
            f"Mixed clusters, where tissue that looks alike to the model carries both "
            f"labels: {listed}. Look at their strips to see what that tissue is."
        )
    worst = max(known, key=lambda c: abs(c["tumour_fraction"] - c["mean_prob"]))
    if abs(worst["tumour_fraction"] - worst["mean_prob"]) > 0.1:
        notes.append(
            f"In cluster {worst['cluster']} the mean probability "
            f"({worst['mean_prob']:.2f}) is far from the tumour fraction "
            f"({worst['tumour_fraction']:.2f}): the model misjudges that tissue."
        )
    return " ".join(notes)


def _mislabels(d: ReportData) -> str:
    n = len(d.embedding.mislabels)
    shown = f" The {min(n, 24)} most confident are shown." if n else ""
    n_trained = sum(row[4] == "yes" for row in d.mislabel_rows)
    if n_trained:
        shown += (
            f" {n_trained:,} of them were trained on (captioned 'trained on'): the model "
            "disagrees with a label it was taught, the stronger hint of a wrong label."
        )
    body = (
        f"<p>{n:,} labelled patch{'' if n == 1 else 'es'} where the model is confident and "
        "the label disagrees (label 0 with P &gt; 0.9, or label 1 with P &lt; 0.1). Some are model "
        "errors, some wrong labels, some tumour lying just outside the centre; worth a "
        f"pathologist's look before the next training run.{shown}</p>"
    ) + img(d.images.get("mislabels"), "mislabel candidates")
    if d.mislabel_rows:
        body += (
            "<details><summary>ids of the first 100</summary>"
            + table(d.mislabel_rows[:100], ["id", "label", "P(tumour)", "cluster", "trained on"])
            + "</details>"
        )
    return _section("mislabels", body)


def _audit(d: ReportData) -> str:
    if d.audit is None:
        return _section(
            "audit",
            "<p><i>No audit given: run <code>histoscan audit DATA --out AUDIT</code> "
            "and pass <code>--audit AUDIT/audit.json</code> to include one.</i></p>",
        )
    return _section("audit", audit_summary_html(d.audit))


def audit_summary_html(audit: dict[str, Any]) -> str:
    """The audit's findings in words and one table, and whether it covers this report's data."""
    about = audit.get("about", {})
    clean = audit.get("cleaning", {})
    dups = audit.get("outliers", {}).get("duplicates", {})
    base = (audit.get("correlations", {}).get("baseline") or {}).get("all")
    cov = audit.get("coverage") or {}
    n, audited = cov.get("patches"), cov.get("audited")
    if audited is None:
        match = (
            "<p class=note>The audit has no clean_manifest.csv beside it, so it cannot be "
            "matched to this report's patches id by id.</p>"
        )
    elif audited < n:
        match = (
            f"<p class=note>The audit covers only {audited:,} of the {n:,} patches in this "
            "report: its numbers describe other data, at least in part.</p>"
        )
    else:
        match = f"<p>The audit covers all {n:,} patches of this report.</p>"
    hits = {rule: sum(by_class.values()) for rule, by_class in (clean.get("hits") or {}).items()}
    rules = ", ".join(
        f"{rule.replace('_', ' ')} {count:,}"
        for rule, count in sorted(hits.items(), key=lambda x: -x[1])
        if count
    )
    pos = about.get("positive_fraction")
    rows = [
        ["data", esc((audit.get("source") or {}).get("description", "?"))],
        ["patches (readable)", f"{about.get('patches', 0):,} ({about.get('readable', 0):,})"],
        ["tumour share", "?" if pos is None else pct(pos)],
        ["removed by cleaning", f"{clean.get('removed_total', 0):,}"],
        ["kept but marked review", f"{clean.get('review_total', 0):,}"],
        ["rule hits", rules or "none"],
        [
            "exact / near duplicates",
            f"{dups.get('exact_extra_copies', 0):,} copies / {dups.get('near_pairs', 0):,} pairs",
        ],
        [
            "colour-feature baseline",
            "not fitted"
            if not base
            else f"logistic regression, {base['folds']}-fold CV AUC {base['auc_mean']:.3f} "
            f"&plusmn; {base['auc_sd']:.3f}: the floor a CNN must clear",
        ],
    ]
    if cov.get("audited"):
        rows.append(
            [
                "of this report's patches",
                f"{cov['removed']:,} removed by the audit, {cov['review']:,} marked review",
            ]
        )
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    command = audit.get("command")
    again = f"<p class=small>Made by <code>{esc(command)}</code>.</p>" if command else ""
    return match + f"<table class=kv>{body}</table>" + again
