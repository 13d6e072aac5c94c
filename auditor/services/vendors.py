"""The vendor report of an audit: the estimates stored by the pipeline, beside the error rates
curators have confirmed so far (these change with every review, so they are computed here), and
each vendor's estimates in the dataset's earlier audits."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from auditor.db.models import (
    Audit,
    AuditAnalysis,
    AuditStatus,
    Finding,
    FindingImage,
    Image,
    Label,
    ReviewStatus,
)
from auditor.db.queries import NON_VENDOR_SOURCES
from auditor.services.audits import get_audit
from auditor.vendors import caution

CONFIRMED = (ReviewStatus.CONFIRMED, ReviewStatus.RELABELED)
REVIEWED = (*CONFIRMED, ReviewStatus.DISMISSED)


def reviewed_counts(
    session: Session, audit: Audit, statuses: tuple[str, ...]
) -> dict[tuple[str, int | None], int]:
    """Per (vendor, batch id): images whose mislabel finding in this audit has one of
    `statuses`."""
    query = (
        select(Label.source, Label.batch_id, func.count(distinct(Label.image_id)))
        .join(Image, Image.id == Label.image_id)
        .join(FindingImage, FindingImage.image_id == Label.image_id)
        .join(Finding, Finding.id == FindingImage.finding_id)
        .where(
            Image.dataset_id == audit.dataset_id,
            Label.is_current.is_(True),
            Label.source.not_in(NON_VENDOR_SOURCES),
            Finding.audit_id == audit.id,
            Finding.kind == "mislabel",
            Finding.is_issue.is_(True),
            Finding.status.in_(statuses),
        )
        .group_by(Label.source, Label.batch_id)
    )
    return {(vendor, batch_id): count for vendor, batch_id, count in session.execute(query)}


def with_reviews(row: dict[str, Any], confirmed: int, reviewed: int) -> dict[str, Any]:
    """Confirmed errors over all the group's images: a lower bound on the true rate that rises
    towards it as curators work through the flagged images."""
    return {
        **row,
        "reviewed": reviewed,
        "confirmed": confirmed,
        "confirmed_error_rate": round(confirmed / row["images"], 6)
        if reviewed and row["images"]
        else None,
    }


def stored_estimates(session: Session, audit_id: int) -> dict[str, Any]:
    row = session.get(AuditAnalysis, (audit_id, "vendors"))
    return row.payload if row is not None else {}


def vendor_trend(session: Session, audit: Audit) -> dict[str, list[dict[str, Any]]]:
    """Each vendor's estimate in this and the dataset's earlier completed audits, oldest first."""
    rows = session.execute(
        select(Audit.id, Audit.finished_at, AuditAnalysis.payload)
        .join(AuditAnalysis, AuditAnalysis.audit_id == Audit.id)
        .where(
            Audit.dataset_id == audit.dataset_id,
            Audit.status == AuditStatus.COMPLETED,
            Audit.id <= audit.id,
            AuditAnalysis.name == "vendors",
        )
        .order_by(Audit.id)
    )
    trend: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for audit_id, finished_at, payload in rows:
        for item in payload.get("vendors", []):
            trend[item["vendor"]].append(
                {
                    "audit_id": audit_id,
                    "finished_at": finished_at.isoformat() if finished_at else None,
                    "images": item["images"],
                    "estimated_error_rate": item["estimated_error_rate"],
                    "ci_low": item["ci_low"],
                    "ci_high": item["ci_high"],
                }
            )
    return dict(trend)


def vendor_report(
    session: Session, audit_id: int, only_vendor: str | None = None
) -> dict[str, Any]:
    """Per vendor, batch and vendor-and-class: estimated error rate with a 95 % interval, the
    confirmed rate from reviews, pairwise agreement, and the trend across audits. A vendor key
    (`only_vendor`) sees its own rows only."""
    audit = get_audit(session, audit_id)
    stored = stored_estimates(session, audit.id)
    confirmed = reviewed_counts(session, audit, CONFIRMED)
    reviewed = reviewed_counts(session, audit, REVIEWED)

    def summed(counts: dict, vendor: str, batch_id: int | None = None) -> int:
        return sum(n for (v, b), n in counts.items() if v == vendor and batch_id in (None, b))

    def visible(row: dict[str, Any]) -> bool:
        return only_vendor is None or row.get("vendor") == only_vendor

    vendors = [
        with_reviews(row, summed(confirmed, row["vendor"]), summed(reviewed, row["vendor"]))
        for row in stored.get("vendors", [])
        if visible(row)
    ]
    batches = [
        with_reviews(
            row,
            confirmed.get((row["vendor"], row["batch_id"]), 0),
            reviewed.get((row["vendor"], row["batch_id"]), 0),
        )
        for row in stored.get("batches", [])
        if visible(row)
    ]
    trend = vendor_trend(session, audit)
    return {
        "audit_id": audit.id,
        "method": stored.get("method"),
        "sharpness": stored.get("sharpness"),
        "sharpness_fitted": stored.get("sharpness_fitted"),
        "held_out_share": stored.get("held_out_share"),
        "held_out_training_labels": stored.get("held_out_training_labels"),
        "caution": caution(stored),
        "confidence_strata": stored.get("confidence_strata"),
        "noise_model_bic": stored.get("noise_model_bic"),
        "items": vendors,
        "batches": batches,
        "classes": [row for row in stored.get("vendor_classes", []) if visible(row)],
        "agreement": [
            row
            for row in stored.get("agreement", [])
            if only_vendor is None or only_vendor in (row["vendor_a"], row["vendor_b"])
        ],
        "trend": {v: points for v, points in trend.items() if only_vendor in (None, v)},
    }
