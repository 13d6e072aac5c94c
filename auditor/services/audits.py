"""Audits over the API: queueing, status, the stored analyses and per-vendor error rates."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from auditor.db.models import (
    Audit,
    AuditAnalysis,
    AuditStatus,
    Dataset,
    Finding,
    FindingImage,
    Image,
    Label,
    ReviewStatus,
)
from auditor.pipeline.stages import DEFAULT_PARAMETERS
from auditor.services import Invalid, NotFound
from auditor.services.findings import issue_counts

ANALYSES = ("hierarchy", "confusion", "layers", "comparison")
NON_VENDOR_SOURCES = ("source", "review")
WILSON_Z = 1.959964  # 95 %


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


def queue_audit(session: Session, dataset_id: int, parameters: dict[str, Any]) -> Audit:
    """A queued audit row; a worker claims it. Unknown parameters are refused here rather than
    failing the audit minutes later in a worker."""
    if session.get(Dataset, dataset_id) is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    unknown = sorted(set(parameters) - set(DEFAULT_PARAMETERS))
    if unknown:
        raise Invalid(f"unknown audit parameters: {', '.join(unknown)}")
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


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval: unlike the normal one it stays inside [0, 1] and is sensible
    for the small counts and zero rates a small vendor batch produces."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def vendor_rates(session: Session, audit_id: int, only_vendor: str | None = None) -> list[dict]:
    """Per vendor: images it labeled (current labels), the share the audit flagged as mislabeled
    with a 95 % Wilson interval, and the share curators confirmed (confirmed or relabeled), a
    lower bound that firms up as reviews accumulate."""
    audit = get_audit(session, audit_id)
    vendor_labels = (
        select(Label.source.label("vendor"), Label.image_id)
        .join(Image, Image.id == Label.image_id)
        .where(
            Image.dataset_id == audit.dataset_id,
            Label.is_current.is_(True),
            Label.source.not_in(NON_VENDOR_SOURCES),
        )
    )
    if only_vendor is not None:
        vendor_labels = vendor_labels.where(Label.source == only_vendor)
    vendor_labels = vendor_labels.subquery()
    images = dict(
        session.execute(
            select(vendor_labels.c.vendor, func.count(distinct(vendor_labels.c.image_id))).group_by(
                vendor_labels.c.vendor
            )
        ).all()
    )

    def flagged(*statuses: str) -> dict[str, int]:
        query = (
            select(vendor_labels.c.vendor, func.count(distinct(vendor_labels.c.image_id)))
            .join(FindingImage, FindingImage.image_id == vendor_labels.c.image_id)
            .join(Finding, Finding.id == FindingImage.finding_id)
            .where(
                Finding.audit_id == audit_id,
                Finding.kind == "mislabel",
                Finding.is_issue.is_(True),
            )
            .group_by(vendor_labels.c.vendor)
        )
        if statuses:
            query = query.where(Finding.status.in_(statuses))
        return dict(session.execute(query).all())

    estimated = flagged()
    confirmed = flagged(ReviewStatus.CONFIRMED, ReviewStatus.RELABELED)
    reviewed = flagged(ReviewStatus.CONFIRMED, ReviewStatus.RELABELED, ReviewStatus.DISMISSED)
    items = []
    for vendor in sorted(images):
        total, errors = images[vendor], estimated.get(vendor, 0)
        low, high = wilson_interval(errors, total)
        items.append(
            {
                "vendor": vendor,
                "images": total,
                "flagged": errors,
                "estimated_error_rate": round(errors / total, 6) if total else 0.0,
                "ci_low": round(low, 6),
                "ci_high": round(high, 6),
                "reviewed": reviewed.get(vendor, 0),
                "confirmed": confirmed.get(vendor, 0),
                "confirmed_error_rate": round(confirmed.get(vendor, 0) / total, 6)
                if reviewed.get(vendor)
                else None,
            }
        )
    return items
