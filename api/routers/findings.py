"""A finding and its review history; review decisions with optimistic concurrency."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path

from api import schemas
from api.deps import Reader, Reviewer, SessionDep, ensure_dataset
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from auditor.auth import Principal
from auditor.services import Invalid, NotFound
from auditor.services.findings import findings_as_dicts, get_finding, vendor_sees_finding
from auditor.services.reviews import ReviewRequest, review_finding, review_history

router = APIRouter(prefix=f"{API_PREFIX}/findings", tags=["findings"], responses=ERROR_RESPONSES)
FindingId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


def visible_finding(session, principal: Principal, finding_id: int):
    finding = get_finding(session, finding_id)
    ensure_dataset(principal, finding.dataset_id, "finding")
    if principal.vendor is not None and not vendor_sees_finding(
        session, finding_id, principal.vendor
    ):
        raise NotFound("finding does not exist")
    return finding


def review_record(review) -> dict:
    return {
        "id": review.id,
        "action": review.action,
        "new_label": review.new_label,
        "comment": review.comment,
        "reviewer": review.reviewer,
        "created_at": review.created_at,
    }


@router.get("/{finding_id}", response_model=schemas.FindingDetail)
def get_one_finding(finding_id: FindingId, principal: Reader, session: SessionDep):
    finding = visible_finding(session, principal, finding_id)
    detail = findings_as_dicts(session, [finding])[0]
    detail["reviews"] = [review_record(r) for r in review_history(session, finding_id)]
    return detail


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or not 1 <= int(text) <= schemas.MAX_ID:
        raise Invalid("If-Match must be the finding's version number")
    return int(text)


@router.post("/{finding_id}/review", response_model=schemas.ReviewOut)
def review(
    finding_id: FindingId,
    body: schemas.ReviewIn,
    principal: Reviewer,
    session: SessionDep,
    if_match: Annotated[str | None, Header(max_length=40)] = None,
):
    """Confirm, dismiss, relabel, reopen or comment. Status changes need the version you saw
    (`version` in the body or `If-Match`); a stale one is refused with 409."""
    visible_finding(session, principal, finding_id)
    header_version = parse_if_match(if_match)
    if None not in (header_version, body.version) and header_version != body.version:
        raise Invalid("If-Match and version disagree")
    request = ReviewRequest(
        action=body.action,
        version=body.version or header_version,
        new_label=body.new_label,
        comment=body.comment,
        reviewer=body.reviewer or principal.name,
    )
    finding = review_finding(session, finding_id, request)
    latest = review_history(session, finding_id)[-1]
    session.commit()
    return {
        "finding": findings_as_dicts(session, [finding])[0],
        "review": review_record(latest),
    }
