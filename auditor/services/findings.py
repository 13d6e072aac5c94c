"""Reading findings: filters, keyset pagination and per-kind counts.

Pages are ordered by (score, id), and the cursor is the last row's (score, id). A review changes a
finding's status and version but never its score, so a cursor stays valid while curators work:
rows inserted or reviewed between two page requests neither repeat nor disappear from the walk
(a new row shows up if it sorts after the cursor, and is skipped, not duplicated, otherwise).

Pages use the (audit_id, score, id) index, or (audit_id, kind, score) with a kind filter, so a
page deep in a million findings costs as much as the first. The per-kind counts of a first page
read every finding of the audit (an index-only scan, ~0.2 s per million on one core), so they are
kept per process for completed audits under filters a review cannot change.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Select, and_, exists, func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from auditor.db.models import Audit, AuditStatus, Finding, FindingImage, Image, Label
from auditor.services import Invalid, NotFound

MAX_PAGE = 500
KIND_COUNTS_CACHED = 1024  # (audit, filters) entries kept per database


@dataclass
class FindingFilters:
    kinds: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    label: str | None = None
    min_score: float | None = None
    vendor: str | None = None
    batch_id: int | None = None
    is_issue: bool | None = None


@dataclass
class FindingPage:
    items: list[dict[str, Any]]
    next_cursor: str | None
    counts: dict[str, int] | None


def encode_cursor(score: float, finding_id: int) -> str:
    raw = json.dumps([score, finding_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, finding_id = json.loads(raw)
        score, finding_id = float(score), int(finding_id)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise Invalid("malformed cursor") from exc
    if not math.isfinite(score):
        raise Invalid("malformed cursor")
    return score, finding_id


def member_label_exists(condition):
    """True for findings with an image whose current label satisfies `condition`."""
    return exists(
        select(1)
        .select_from(FindingImage)
        .join(Label, Label.image_id == FindingImage.image_id)
        .where(FindingImage.finding_id == Finding.id, Label.is_current.is_(True), condition)
    )


def filtered(query: Select, filters: FindingFilters, *, with_kind: bool = True) -> Select:
    if with_kind and filters.kinds:
        query = query.where(Finding.kind.in_(filters.kinds))
    if filters.statuses:
        query = query.where(Finding.status.in_(filters.statuses))
    if filters.label is not None:
        query = query.where(
            (Finding.given_label == filters.label) | (Finding.suggested_label == filters.label)
        )
    if filters.min_score is not None:
        query = query.where(Finding.score >= filters.min_score)
    if filters.is_issue is not None:
        query = query.where(Finding.is_issue.is_(filters.is_issue))
    if filters.vendor is not None:
        query = query.where(member_label_exists(Label.source == filters.vendor))
    if filters.batch_id is not None:
        query = query.where(member_label_exists(Label.batch_id == filters.batch_id))
    return query


def image_paths(session: Session, image_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    return dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())


def finding_dict(finding: Finding, paths: dict[int, str]) -> dict[str, Any]:
    image_ids = [member.image_id for member in finding.members]
    return {
        "id": finding.id,
        "dataset_id": finding.dataset_id,
        "audit_id": finding.audit_id,
        "kind": finding.kind,
        "image_ids": image_ids,
        "images": [paths.get(image_id, "") for image_id in image_ids],
        "given_label": finding.given_label,
        "suggested_label": finding.suggested_label,
        "score": finding.score,
        "is_issue": finding.is_issue,
        "severity": finding.severity,
        "status": finding.status,
        "reviewer": finding.reviewer,
        "version": finding.version,
        "evidence": finding.evidence or {},
        "created_at": finding.created_at,
        "updated_at": finding.updated_at,
    }


def findings_as_dicts(session: Session, findings: list[Finding]) -> list[dict[str, Any]]:
    paths = image_paths(session, (m.image_id for f in findings for m in f.members))
    return [finding_dict(finding, paths) for finding in findings]


def list_findings(
    session: Session,
    audit_id: int,
    filters: FindingFilters,
    *,
    limit: int = 50,
    cursor: str | None = None,
    ascending: bool = False,
) -> FindingPage:
    """One page of an audit's findings by score (highest first unless `ascending`); the first
    page (no cursor) also carries the count per kind under the same filters."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    query = filtered(select(Finding).where(Finding.audit_id == audit_id), filters)
    key = tuple_(Finding.score, Finding.id)
    if cursor is not None:
        after = tuple_(*decode_cursor(cursor))
        query = query.where(key > after if ascending else key < after)
    order = (
        (Finding.score.asc(), Finding.id.asc())
        if ascending
        else (Finding.score.desc(), Finding.id.desc())
    )
    rows = list(
        session.scalars(
            query.order_by(*order).limit(limit + 1).options(selectinload(Finding.members))
        )
    )
    next_cursor = (
        encode_cursor(rows[limit - 1].score, rows[limit - 1].id) if len(rows) > limit else None
    )
    counts = None if cursor is not None else kind_counts(session, audit_id, filters)
    return FindingPage(findings_as_dicts(session, rows[:limit]), next_cursor, counts)


def kind_counts(session: Session, audit_id: int, filters: FindingFilters) -> dict[str, int]:
    """Counts per kind under every filter but the kind one, so a UI can show all tabs at once."""
    key = kind_counts_key(session, audit_id, filters)
    cache = _kind_counts_cache(session.get_bind()) if key is not None else None
    if cache is not None:
        with _kind_counts_lock:
            if key in cache:
                cache.move_to_end(key)
                return dict(cache[key])
    query = filtered(
        select(Finding.kind, func.count()).where(Finding.audit_id == audit_id),
        filters,
        with_kind=False,
    ).group_by(Finding.kind)
    counts = {kind: count for kind, count in session.execute(query)}
    if cache is not None:
        with _kind_counts_lock:
            cache[key] = dict(counts)
            while len(cache) > KIND_COUNTS_CACHED:
                cache.popitem(last=False)
    return counts


_kind_counts_lock = threading.Lock()
_kind_counts_by_engine: weakref.WeakKeyDictionary[Engine, OrderedDict[Hashable, dict[str, int]]] = (
    weakref.WeakKeyDictionary()
)


def _kind_counts_cache(bind) -> OrderedDict[Hashable, dict[str, int]] | None:
    engine = getattr(bind, "engine", bind)
    if not isinstance(engine, Engine):
        return None
    with _kind_counts_lock:
        return _kind_counts_by_engine.setdefault(engine, OrderedDict())


def kind_counts_key(session: Session, audit_id: int, filters: FindingFilters) -> Hashable | None:
    """A cache key when the counts cannot change: the audit has completed (its findings were all
    written by its own run, and a re-run completes again with a new `finished_at`) and no filter
    reads what a review changes (status, or current labels for vendor and batch)."""
    if filters.statuses or filters.vendor is not None or filters.batch_id is not None:
        return None
    audit = session.get(Audit, audit_id)
    if audit is None or audit.status != AuditStatus.COMPLETED or audit.finished_at is None:
        return None
    return (
        audit_id,
        audit.finished_at.isoformat(),
        filters.label,
        filters.min_score,
        filters.is_issue,
    )


def issue_counts(session: Session, audit_id: int) -> dict[str, int]:
    query = (
        select(Finding.kind, func.count())
        .where(Finding.audit_id == audit_id, Finding.is_issue.is_(True))
        .group_by(Finding.kind)
    )
    return dict(sorted((kind, count) for kind, count in session.execute(query)))


def get_finding(session: Session, finding_id: int) -> Finding:
    finding = session.get(Finding, finding_id)
    if finding is None:
        raise NotFound(f"finding {finding_id} does not exist")
    return finding


def vendor_sees_finding(session: Session, finding_id: int, vendor: str) -> bool:
    query = select(Finding.id).where(
        Finding.id == finding_id, member_label_exists(and_(Label.source == vendor))
    )
    return session.scalar(query) is not None
