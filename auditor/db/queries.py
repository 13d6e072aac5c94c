"""Read-side queries shared by the CLI, reports and the API."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from auditor.db.models import Batch, Class, Finding, FindingImage, Image, Label

# Label sources that are not labeling vendors: the dataset's own labels and curators' relabels.
NON_VENDOR_SOURCES = ("source", "review")


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


def current_vendor_labels(
    session: Session, dataset_id: int
) -> list[tuple[int, str, str, str | None, int | None]]:
    """(image id, vendor, class name, batch name, batch id) of every vendor's current label."""
    rows = session.execute(
        select(Label.image_id, Label.source, Class.name, Batch.name, Label.batch_id)
        .join(Class, Class.id == Label.class_id)
        .join(Image, Image.id == Label.image_id)
        .outerjoin(Batch, Batch.id == Label.batch_id)
        .where(
            Image.dataset_id == dataset_id,
            Label.is_current.is_(True),
            Label.source.not_in(NON_VENDOR_SOURCES),
        )
        .order_by(Label.id)
    )
    return [tuple(row) for row in rows]


def flagged_image_ids(session: Session, audit_id: int, kind: str) -> set[int]:
    """Images in the audit's issue findings of one kind."""
    return set(
        session.scalars(
            select(FindingImage.image_id)
            .join(Finding, Finding.id == FindingImage.finding_id)
            .where(Finding.audit_id == audit_id, Finding.kind == kind, Finding.is_issue.is_(True))
        )
    )


def mislabel_flags_by_label(session: Session, audit_id: int) -> Counter[str]:
    """How many labels of each class the audit's mislabel check flagged."""
    rows = session.execute(
        select(Finding.given_label, func.count())
        .where(Finding.audit_id == audit_id, Finding.kind == "mislabel", Finding.is_issue.is_(True))
        .group_by(Finding.given_label)
    )
    return Counter({given: count for given, count in rows})
