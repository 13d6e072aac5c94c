"""What changed since the previous audit of the same dataset: new, persisting and resolved
problems, matched by subject (the same kind on the same images), and the decisions carried over.

A finding counts as raised when its check deems it an issue and no decision settled it (dismissed,
or relabeled by a curator), so a problem a curator dismissed in audit 1 and that audit 2 carried
over appears in neither list, and one confirmed and then fixed by a new delivery is resolved.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.findings import SETTLED_STATUSES
from auditor.db.models import Audit, AuditStatus, Finding, ReviewStatus
from auditor.services import Conflict
from auditor.services.audits import get_audit

CHANGES = ("new", "persisting", "resolved")


def previous_audit(session: Session, audit: Audit) -> Audit | None:
    return session.scalar(
        select(Audit)
        .where(
            Audit.dataset_id == audit.dataset_id,
            Audit.status == AuditStatus.COMPLETED,
            Audit.id < audit.id,
        )
        .order_by(Audit.id.desc())
        .limit(1)
    )


def raised_subjects(session: Session, audit_id: int) -> dict[str, tuple[int, str]]:
    """subject -> (finding id, kind) of the audit's raised findings."""
    rows = session.execute(
        select(Finding.subject, Finding.id, Finding.kind).where(
            Finding.audit_id == audit_id,
            Finding.is_issue.is_(True),
            Finding.status.not_in(SETTLED_STATUSES),
        )
    )
    return {subject: (finding_id, kind) for subject, finding_id, kind in rows}


def carried_reviews(session: Session, audit_id: int) -> dict[str, int]:
    decided = session.scalars(
        select(Finding.evidence).where(
            Finding.audit_id == audit_id, Finding.status != ReviewStatus.OPEN
        )
    )
    counts = Counter(
        evidence["carried_review"]["status"]
        for evidence in decided
        if isinstance(evidence, dict) and "carried_review" in evidence
    )
    return dict(sorted(counts.items()))


def audit_diff(session: Session, audit_id: int, limit: int = 1000) -> dict[str, Any]:
    """Counts per kind of each change and up to `limit` finding ids per change (resolved ones
    are the previous audit's findings)."""
    audit = get_audit(session, audit_id)
    if audit.status != AuditStatus.COMPLETED:
        raise Conflict(f"audit {audit.id} is {audit.status}; a diff needs a completed audit")
    previous = previous_audit(session, audit)
    current = raised_subjects(session, audit.id)
    before = raised_subjects(session, previous.id) if previous is not None else {}
    changes = {
        "new": [current[s] for s in current.keys() - before.keys()],
        "persisting": [current[s] for s in current.keys() & before.keys()],
        "resolved": [before[s] for s in before.keys() - current.keys()],
    }
    return {
        "audit_id": audit.id,
        "previous_audit_id": previous.id if previous is not None else None,
        "counts": {
            change: dict(sorted(Counter(kind for _, kind in rows).items()))
            for change, rows in changes.items()
        },
        "finding_ids": {
            change: sorted(finding_id for finding_id, _ in rows)[:limit]
            for change, rows in changes.items()
        },
        "carried_reviews": carried_reviews(session, audit.id),
    }
