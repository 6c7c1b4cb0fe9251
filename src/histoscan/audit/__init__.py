"""The data audit: what is in a patch set, what predicts the label, what to clean.

features  per-patch colour, stain, tissue, sharpness and hash features (numpy only)
stats     univariate statistics against the label and a logistic-regression baseline
core      scan a source, flag patches by rule, find duplicates -> ``Audit``
summary   every number of an ``Audit`` in one dict (audit.json)
figures   matplotlib figures of the summary
page      audit.html, on the report's base template
run       ``run_audit``: all of the above into one folder, atomically
"""

from histoscan.audit.core import Audit, AuditConfig, audit_source, open_audit_source
from histoscan.audit.run import run_audit

__all__ = ["Audit", "AuditConfig", "audit_source", "open_audit_source", "run_audit"]
