"""Checks: one plugin per issue kind, inputs in, findings out. See `base.py` for the interface."""

from auditor.checks.base import (
    REGISTRY,
    Check,
    CheckInputs,
    FindingDraft,
    checks_for_stage,
    register,
    run_checks,
)

# Importing the plugin modules registers them.
from auditor.checks import ambiguous, duplicates, ingest_checks, mislabel, outlier  # noqa: E402,F401  isort: skip

__all__ = [
    "REGISTRY",
    "Check",
    "CheckInputs",
    "FindingDraft",
    "checks_for_stage",
    "register",
    "run_checks",
]
