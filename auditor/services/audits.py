"""Audits over the API: queueing, status and the stored analyses."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.models import (
    Audit,
    AuditAnalysis,
    AuditStatus,
    Dataset,
)
from auditor.pipeline.stages import DEFAULT_PARAMETERS
from auditor.services import Invalid, NotFound
from auditor.services.findings import issue_counts

ANALYSES = ("hierarchy", "confusion", "layers", "comparison")


def get_audit(session: Session, audit_id: int) -> Audit:
    audit = session.get(Audit, audit_id)
    if audit is None:
        raise NotFound(f"audit {audit_id} does not exist")
    return audit


def audit_dict(session: Session, audit: Audit) -> dict[str, Any]:
    findings = (audit.summary or {}).get("findings")
    if audit.status != AuditStatus.COMPLETED or findings is None:
        findings = issue_counts(session, audit.id)
    return {
        "id": audit.id,
        "dataset_id": audit.dataset_id,
        "status": audit.status,
        "stage": audit.stage,
        "progress": audit.progress,
        "findings": findings,
        "error": audit.error,
        "parameters": audit.parameters,
        "attempts": audit.attempts,
        "created_at": audit.created_at,
        "started_at": audit.started_at,
        "finished_at": audit.finished_at,
    }


def check_parameters(parameters: dict[str, Any]) -> None:
    unknown = sorted(set(parameters) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise Invalid(f"unknown audit parameters: {', '.join(unknown)}")


def queue_audit(session: Session, dataset_id: int, parameters: dict[str, Any]) -> Audit:
    """A queued audit row; a worker claims it. Unknown parameters are refused here rather than
    failing the audit minutes later in a worker."""
    if session.get(Dataset, dataset_id) is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    check_parameters(parameters)
    audit = Audit(dataset_id=dataset_id, parameters=parameters)
    session.add(audit)
    session.flush()
    return audit


def latest_completed_audit(session: Session, dataset_id: int) -> Audit | None:
    return session.scalar(
        select(Audit)
        .where(Audit.dataset_id == dataset_id, Audit.status == AuditStatus.COMPLETED)
        .order_by(Audit.finished_at.desc(), Audit.id.desc())
        .limit(1)
    )


def analysis(session: Session, audit_id: int, name: str) -> dict[str, Any]:
    get_audit(session, audit_id)
    row = session.get(AuditAnalysis, (audit_id, name))
    if row is None:
        raise NotFound(f"audit {audit_id} has no {name} analysis (not completed, or one class)")
    return row.payload


def class_table(session: Session, audit_id: int) -> dict[str, Any]:
    audit = get_audit(session, audit_id)
    summary = audit.summary or {}
    if "classes" not in summary:
        raise NotFound(f"audit {audit_id} has no class summary yet")
    return {
        "items": summary["classes"],
        "label_health": summary.get("label_health"),
        "health_score": summary.get("health_score"),
    }
