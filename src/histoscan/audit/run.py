"""``run_audit``: audit a source into a new folder (audit.html, audit.json, clean_manifest.csv)."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from histoscan.audit.core import Audit, AuditConfig, audit_source
from histoscan.audit.page import render_page
from histoscan.audit.summary import summarise
from histoscan.data.sources import PatchSource
from histoscan.io import atomic_dir, prepare_out_dir

log = logging.getLogger(__name__)


def run_audit(
    source: PatchSource,
    out: Path,
    cfg: AuditConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Audit:
    """Audit ``source`` into a new folder ``out``: audit.html, audit.json, clean_manifest.csv.

    ``command`` (the command line that ran it) is written into the report.
    """
    started = time.perf_counter()
    cfg = cfg or AuditConfig()
    out = Path(out)
    prepare_out_dir(out, overwrite, [source.root])  # refuse before the work, not after it
    audit = audit_source(source, cfg, progress)
    audit.command = command
    with atomic_dir(out, overwrite, inputs=[source.root], what="audit") as folder:
        write_report(folder, audit, started)
    log.info(
        "audit of %d patches written to %s in %.1f s", len(source), out, audit.seconds["total"]
    )
    return audit


def write_report(folder: Path, audit: Audit, started: float) -> dict:
    """Write clean_manifest.csv, audit.html, then audit.json with the time taken.

    ``started`` is the ``time.perf_counter()`` when the audit began.
    """
    t0 = time.perf_counter()
    write_manifest(folder / "clean_manifest.csv", audit)
    summary = summarise(audit)
    (folder / "audit.html").write_text(render_page(summary, audit), encoding="utf-8")
    audit.seconds["report"] = time.perf_counter() - t0
    audit.seconds["total"] = time.perf_counter() - started
    summary["seconds"] = dict(audit.seconds)
    (folder / "audit.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_manifest(path: Path, audit: Audit) -> None:
    """One row per patch: id, label (empty if unlabelled), keep, reason (the rules hit).

    keep is 1 (clean), 0 (removed) or ``review`` (only a review rule hit, e.g. a colour outlier:
    ``prepare``/``train --manifest`` leave it out until a person sets it to 1).
    """
    flagged = {int(i): audit.reasons(i) for i in np.flatnonzero(~audit.keep | audit.review)}
    labels = audit.source.labels.tolist()
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "keep", "reason"])
        for i, key in enumerate(audit.source.ids):
            label = "" if labels[i] < 0 else labels[i]
            keep = "review" if audit.review[i] else 1 if audit.keep[i] else 0
            writer.writerow([key, label, keep, flagged.get(i, "")])
