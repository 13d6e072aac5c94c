"""Read-side queries shared by the CLI, reports and the API."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.models import Finding, FindingImage, Image


def found_paths_by_kind(
    session: Session, dataset_id: int, audit_id: int | None = None
) -> dict[str, list[list[str]]]:
    """For each finding kind, the image paths of each issue finding (one list per finding)."""
    rows = session.execute(
        select(Finding.id, Finding.kind, Image.path)
        .join(FindingImage, FindingImage.finding_id == Finding.id)
        .join(Image, Image.id == FindingImage.image_id)
        .where(
            Finding.dataset_id == dataset_id,
            Finding.audit_id.is_(None) if audit_id is None else Finding.audit_id == audit_id,
            Finding.is_issue.is_(True),
        )
        .order_by(Finding.id, FindingImage.position)
    )
    grouped: dict[int, tuple[str, list[str]]] = {}
    for finding_id, kind, path in rows:
        grouped.setdefault(finding_id, (kind, []))[1].append(path)
    result: dict[str, list[list[str]]] = {}
    for kind, paths in grouped.values():
        result.setdefault(kind, []).append(paths)
    return result
