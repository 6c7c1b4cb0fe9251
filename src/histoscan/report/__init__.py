"""One self-contained HTML report of a trained model: what, on what, how good, where it fails.

``build`` predicts once and computes every number and figure; ``page`` writes them as HTML
from the building blocks in ``blocks``.
"""

from histoscan.report.build import ReportData, build_report, report_indices, resolve_model_path
from histoscan.report.page import SECTIONS, render

__all__ = [
    "SECTIONS",
    "ReportData",
    "build_report",
    "render",
    "report_indices",
    "resolve_model_path",
]
