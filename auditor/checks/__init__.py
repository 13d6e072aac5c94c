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
from auditor.checks import (  # noqa: E402,F401  isort: skip
    ambiguous,
    duplicates,
    ingest_checks,
    mislabel,
    outlier,
    taxonomy,
)

__all__ = [
    "REGISTRY",
    "Check",
    "CheckInputs",
    "FindingDraft",
    "checks_for_stage",
    "register",
    "run_checks",
]
