"""Moved to speccert.bounds.certify_result (the certify result sits below the renderers); this name is
kept for one release so imports of the old path keep working."""

from speccert.bounds.certify_result import QUANTILES, AuditSummary, CertifyReport, LayerRow

__all__ = ["QUANTILES", "AuditSummary", "CertifyReport", "LayerRow"]
