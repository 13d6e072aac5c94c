"""Review decisions on findings, with optimistic concurrency.

The finding's `version` is compared and bumped in one conditional UPDATE, so of two curators who
loaded the same version only the first decision lands; the second gets a Conflict naming the
current version instead of silently overwriting it. Every decision is also kept in `reviews`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from auditor.db.findings import image_states, subject_state
from auditor.db.models import Class, Dataset, Finding, Label, Review, ReviewStatus, utcnow
from auditor.services import Conflict, Invalid, NotFound
from auditor.webhooks import enqueue_event

REVIEW_LABEL_SOURCE = "review"
STATUS_OF_ACTION = {
    "confirm": ReviewStatus.CONFIRMED,
    "dismiss": ReviewStatus.DISMISSED,
    "relabel": ReviewStatus.RELABELED,
    "reopen": ReviewStatus.OPEN,
}
ACTIONS = (*STATUS_OF_ACTION, "comment")


@dataclass
class ReviewRequest:
    action: str
    version: int | None = None
    new_label: str | None = None
    comment: str | None = None
    reviewer: str | None = None


def review_finding(session: Session, finding_id: int, request: ReviewRequest) -> Finding:
    """Apply one decision. A comment needs no version (it changes nothing a curator decided on);
    every status change does."""
    if request.action not in ACTIONS:
        raise Invalid(f"action must be one of {', '.join(ACTIONS)}")
    finding = session.get(Finding, finding_id)
    if finding is None:
        raise NotFound(f"finding {finding_id} does not exist")
    if request.action == "relabel" and not request.new_label:
        raise Invalid("relabel needs new_label")
    if request.action != "relabel" and request.new_label is not None:
        raise Invalid("new_label is only accepted with action relabel")
    if request.action == "comment":
        if not request.comment:
            raise Invalid("comment needs a comment")
    else:
        if request.version is None:
            raise Invalid("send the finding's version (body `version` or an If-Match header)")
        claim_version(session, finding, request)
    if request.action == "relabel":
        relabel_images(session, finding, request.new_label)
    review = Review(
        finding_id=finding.id,
        action=request.action,
        new_label=request.new_label,
        comment=request.comment,
        reviewer=request.reviewer,
    )
    session.add(review)
    session.flush()
    enqueue_event(
        session,
        "finding.reviewed",
        f"finding.reviewed:{review.id}",
        finding.dataset_id,
        {
            "finding_id": finding.id,
            "audit_id": finding.audit_id,
            "dataset_id": finding.dataset_id,
            "kind": finding.kind,
            "action": request.action,
            "status": finding.status,
            "new_label": request.new_label,
            "reviewer": request.reviewer,
            "version": finding.version,
        },
    )
    return finding


def claim_version(session: Session, finding: Finding, request: ReviewRequest) -> None:
    result = session.execute(
        update(Finding)
        .where(Finding.id == finding.id, Finding.version == request.version)
        .values(
            version=Finding.version + 1,
            status=STATUS_OF_ACTION[request.action],
            reviewer=request.reviewer,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(finding)
    if result.rowcount != 1:
        raise Conflict(
            f"finding {finding.id} is at version {finding.version}, not {request.version}; "
            "reload it and decide again"
        )


def relabel_images(session: Session, finding: Finding, new_label: str) -> None:
    """The review's label becomes each image's current label from source `review`; the labels it
    replaces stay as history."""
    dataset = session.get(Dataset, finding.dataset_id)
    if dataset.class_list is not None and new_label not in dataset.class_list:
        raise Invalid(f"{new_label!r} is not in the dataset's class list")
    cls = session.scalar(
        select(Class).where(Class.dataset_id == dataset.id, Class.name == new_label)
    )
    if cls is None:
        cls = Class(dataset_id=dataset.id, name=new_label, in_taxonomy=True)
        session.add(cls)
        session.flush()
    image_ids = [member.image_id for member in finding.members]
    session.execute(
        update(Label)
        .where(
            Label.image_id.in_(image_ids),
            Label.source == REVIEW_LABEL_SOURCE,
            Label.is_current.is_(True),
        )
        .values(is_current=False)
        .execution_options(synchronize_session=False)
    )
    for image_id in image_ids:
        session.add(
            Label(image_id=image_id, class_id=cls.id, source=REVIEW_LABEL_SOURCE, is_current=True)
        )
    session.flush()
    # The decision now covers the curator's label: a later audit that still disagrees with it
    # keeps the finding resolved rather than asking again.
    finding.subject_state = subject_state(image_ids, image_states(session, dataset.id, image_ids))


def review_history(session: Session, finding_id: int) -> list[Review]:
    return list(
        session.scalars(select(Review).where(Review.finding_id == finding_id).order_by(Review.id))
    )
