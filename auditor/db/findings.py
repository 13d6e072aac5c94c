"""Writing findings idempotently: a re-run upserts the same rows by key and keeps review state.

A curator's decision outlives the audit it was made in. Each finding records its `subject` (the
problem, whatever the audit) and a digest of what was decided on: the members' content hashes and
current labels. When a later audit raises the same subject and that digest is unchanged, the new
finding takes over the decision (dismissed stays dismissed, confirmed and relabeled stay resolved);
a changed image or label makes it a new question and it is raised open.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.checks.base import FindingDraft
from auditor.db.models import Class, Finding, FindingImage, Image, Label, ReviewStatus

# Decisions that say the finding is not, or no longer, a problem to raise.
SETTLED_STATUSES = (ReviewStatus.DISMISSED, ReviewStatus.RELABELED)


def finding_scope(audit_id: int | None) -> str:
    return "ingest" if audit_id is None else f"audit{audit_id}"


def finding_subject(draft: FindingDraft) -> str:
    subject = draft.subject
    if len(subject) > 200:
        subject = hashlib.sha256(subject.encode()).hexdigest()
    return f"{draft.kind}:{subject}"


def finding_key(scope: str, draft: FindingDraft) -> str:
    return f"{scope}:{finding_subject(draft)}"


def image_states(
    session: Session, dataset_id: int, image_ids: Iterable[int] | None = None
) -> dict[int, str]:
    """Per image: its content hash and every current label with its source."""
    images = select(Image.id, Image.sha256).where(Image.dataset_id == dataset_id)
    labels = (
        select(Label.image_id, Label.source, Class.name)
        .join(Class, Class.id == Label.class_id)
        .join(Image, Image.id == Label.image_id)
        .where(Image.dataset_id == dataset_id, Label.is_current.is_(True))
    )
    if image_ids is not None:
        wanted = list(image_ids)
        images = images.where(Image.id.in_(wanted))
        labels = labels.where(Label.image_id.in_(wanted))
    current: dict[int, list[str]] = defaultdict(list)
    for image_id, source, name in session.execute(labels):
        current[image_id].append(f"{source}={name}")
    return {
        image_id: f"{sha256}|{','.join(sorted(current[image_id]))}"
        for image_id, sha256 in session.execute(images)
    }


def subject_state(image_ids: Sequence[int], states: dict[int, str]) -> str:
    material = "\n".join(states.get(image_id, "") for image_id in image_ids)
    return hashlib.sha256(material.encode()).hexdigest()


def earlier_decisions(session: Session, dataset_id: int, audit_id: int | None) -> dict:
    """The latest decision on each subject outside this scope (ingest or an earlier audit)."""
    query = select(Finding).where(
        Finding.dataset_id == dataset_id,
        Finding.status != ReviewStatus.OPEN,
        Finding.subject.is_not(None),
    )
    if audit_id is not None:
        query = query.where((Finding.audit_id.is_(None)) | (Finding.audit_id < audit_id))
    else:
        query = query.where(Finding.audit_id.is_(None))
    decided = session.scalars(query.order_by(Finding.updated_at, Finding.id))
    return {finding.subject: finding for finding in decided}


def carry_decision(finding: Finding, earlier: Finding | None) -> None:
    """A new finding inherits the decision on its subject when nothing it concerns changed."""
    if earlier is None or earlier.subject_state != finding.subject_state:
        return
    finding.status = earlier.status
    finding.reviewer = earlier.reviewer
    finding.evidence = {
        **finding.evidence,
        "carried_review": {
            "finding_id": earlier.id,
            "audit_id": earlier.audit_id,
            "status": earlier.status,
            "reviewer": earlier.reviewer,
        },
    }


def save_findings(
    session: Session,
    dataset_id: int,
    audit_id: int | None,
    drafts: Iterable[FindingDraft],
    kinds: Iterable[str],
) -> Counter:
    """Upsert `drafts`; open findings of `kinds` in this scope that were not produced again are
    deleted (the problem is gone), reviewed ones stay as history. Returns the counts per kind of
    issues raised, which leaves out those an earlier decision settled."""
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
    states = image_states(session, dataset_id)
    decisions = earlier_decisions(session, dataset_id, audit_id)
    seen = set()
    counts: Counter = Counter()
    for draft in drafts:
        key = finding_key(scope, draft)
        if key in seen:
            continue
        seen.add(key)
        finding = existing.get(key)
        is_new = finding is None
        if is_new:
            finding = Finding(dataset_id=dataset_id, audit_id=audit_id, key=key, kind=draft.kind)
            session.add(finding)
        finding.subject = finding_subject(draft)
        finding.score = float(draft.score)
        finding.is_issue = draft.is_issue
        finding.severity = str(draft.severity)
        finding.given_label = draft.given_label
        finding.suggested_label = draft.suggested_label
        carried = (finding.evidence or {}).get("carried_review")
        finding.evidence = {**draft.evidence, **({"carried_review": carried} if carried else {})}
        if [m.image_id for m in finding.members] != draft.image_ids:
            finding.members = [
                FindingImage(image_id=image_id, position=position)
                for position, image_id in enumerate(draft.image_ids)
            ]
        if is_new or finding.status == ReviewStatus.OPEN:
            finding.subject_state = subject_state(draft.image_ids, states)
        if is_new:
            carry_decision(finding, decisions.get(finding.subject))
        if draft.is_issue and finding.status not in SETTLED_STATUSES:
            counts[draft.kind] += 1
    for key, finding in existing.items():
        if key not in seen and finding.status == ReviewStatus.OPEN:
            session.delete(finding)
    session.flush()
    return counts
