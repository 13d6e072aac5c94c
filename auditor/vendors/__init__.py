"""Labeling vendors: error rates estimated from an audit, and their report (CSV, JSON, chart)."""

from auditor.vendors.estimate import VendorLabels, vendor_estimates, wilson_interval
from auditor.vendors.report import caution, method_line, vendor_chart, vendor_csv, vendor_json

__all__ = [
    "VendorLabels",
    "caution",
    "method_line",
    "vendor_chart",
    "vendor_csv",
    "vendor_estimates",
    "vendor_json",
    "wilson_interval",
]
