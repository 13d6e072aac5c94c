"""Writing findings idempotently: a re-run upserts the same rows by key and keeps review state."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.checks.base import FindingDraft
from auditor.db.models import Finding, FindingImage, ReviewStatus


def finding_scope(audit_id: int | None) -> str:
    return "ingest" if audit_id is None else f"audit{audit_id}"


def finding_key(scope: str, draft: FindingDraft) -> str:
    subject = draft.subject
    if len(subject) > 200:
        subject = hashlib.sha256(subject.encode()).hexdigest()
    return f"{scope}:{draft.kind}:{subject}"


def save_findings(
    session: Session,
    dataset_id: int,
    audit_id: int | None,
    drafts: Iterable[FindingDraft],
    kinds: Iterable[str],
) -> Counter:
    """Upsert `drafts`; open findings of `kinds` in this scope that were not produced again are
    deleted (the problem is gone), reviewed ones stay as history. Returns issue counts per kind."""
    scope = finding_scope(audit_id)
    kinds = set(kinds)
    existing = {
        f.key: f
        for f in session.scalars(
            select(Finding).where(
                Finding.dataset_id == dataset_id,
                Finding.key.like(f"{scope}:%"),
                Finding.kind.in_(kinds),
            )
        )
    }
    seen = set()
    counts: Counter = Counter()
    for draft in drafts:
        key = finding_key(scope, draft)
        if key in seen:
            continue
        seen.add(key)
        finding = existing.get(key)
        if finding is None:
            finding = Finding(dataset_id=dataset_id, audit_id=audit_id, key=key, kind=draft.kind)
            session.add(finding)
        finding.score = float(draft.score)
        finding.is_issue = draft.is_issue
        finding.severity = str(draft.severity)
        finding.given_label = draft.given_label
        finding.suggested_label = draft.suggested_label
        finding.evidence = draft.evidence
        if [m.image_id for m in finding.members] != draft.image_ids:
            finding.members = [
                FindingImage(image_id=image_id, position=position)
                for position, image_id in enumerate(draft.image_ids)
            ]
        if draft.is_issue:
            counts[draft.kind] += 1
    for key, finding in existing.items():
        if key not in seen and finding.status == ReviewStatus.OPEN:
            session.delete(finding)
    session.flush()
    return counts
