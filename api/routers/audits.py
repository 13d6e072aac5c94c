"""Audits: status, cancellation, findings, analyses, vendors and exports."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api import schemas
from api.deps import Admin, FactoryDep, Reader, SessionDep, ensure_dataset
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from auditor.auth import Principal
from auditor.export import export_audit
from auditor.pipeline.jobs import cancel_audit
from auditor.services import Invalid
from auditor.services.audits import analysis, audit_dict, class_table, get_audit
from auditor.services.diff import audit_diff
from auditor.services.findings import FindingFilters, list_findings
from auditor.services.vendors import vendor_report
from auditor.vendors import vendor_chart, vendor_csv

router = APIRouter(prefix=f"{API_PREFIX}/audits", tags=["audits"], responses=ERROR_RESPONSES)
AuditId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
FilterText = Annotated[str, Query(max_length=200, pattern=schemas.NO_NUL)]


def visible_audit(session, principal: Principal, audit_id: int):
    audit = get_audit(session, audit_id)
    ensure_dataset(principal, audit.dataset_id, "audit")
    return audit


@router.get("/{audit_id}", response_model=schemas.AuditOut)
def get_one_audit(audit_id: AuditId, principal: Reader, session: SessionDep):
    return audit_dict(session, visible_audit(session, principal, audit_id))


@router.post("/{audit_id}/cancel", response_model=schemas.AuditOut)
def cancel(audit_id: AuditId, principal: Admin, session: SessionDep, factory: FactoryDep):
    """Cancel a queued or running audit (its worker stops at the next batch); a finished audit
    is returned unchanged."""
    visible_audit(session, principal, audit_id)
    cancel_audit(factory, audit_id)
    session.expire_all()
    return audit_dict(session, get_audit(session, audit_id))


@router.get("/{audit_id}/findings", response_model=schemas.FindingList)
def get_findings(
    audit_id: AuditId,
    principal: Reader,
    session: SessionDep,
    kind: Annotated[list[schemas.Name] | None, Query()] = None,
    status: Annotated[
        list[Literal["open", "confirmed", "dismissed", "relabeled"]] | None, Query()
    ] = None,
    label: FilterText | None = None,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    vendor: FilterText | None = None,
    batch: Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)] = None,
    is_issue: bool | None = None,
    sort: Literal["-score", "score"] = "-score",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
):
    """Findings by score (highest first by default), with keyset pagination: pass
    `next_cursor` back as `cursor`. A vendor key sees only its own images' findings."""
    visible_audit(session, principal, audit_id)
    if principal.vendor is not None:
        if vendor not in (None, principal.vendor):
            raise Invalid("a vendor key can filter by its own vendor only")
        vendor = principal.vendor
    filters = FindingFilters(
        kinds=list(kind or []),
        statuses=list(status or []),
        label=label,
        min_score=min_score,
        vendor=vendor,
        batch_id=batch,
        is_issue=is_issue,
    )
    page = list_findings(
        session, audit_id, filters, limit=limit, cursor=cursor, ascending=sort == "score"
    )
    return {"items": page.items, "next_cursor": page.next_cursor, "counts": page.counts}


@router.get("/{audit_id}/classes", response_model=schemas.ClassesOut)
def get_classes(audit_id: AuditId, principal: Reader, session: SessionDep):
    visible_audit(session, principal, audit_id)
    return class_table(session, audit_id)


@router.get("/{audit_id}/confusion", response_model=schemas.ConfusionOut)
def get_confusion(audit_id: AuditId, principal: Reader, session: SessionDep):
    visible_audit(session, principal, audit_id)
    return analysis(session, audit_id, "confusion")


@router.get("/{audit_id}/hierarchy", response_model=schemas.HierarchyOut)
def get_hierarchy(audit_id: AuditId, principal: Reader, session: SessionDep):
    visible_audit(session, principal, audit_id)
    return analysis(session, audit_id, "hierarchy")


@router.get("/{audit_id}/layers", response_model=schemas.LayersOut)
def get_layers(audit_id: AuditId, principal: Reader, session: SessionDep):
    visible_audit(session, principal, audit_id)
    return analysis(session, audit_id, "layers")


VENDOR_CONTENT = {
    200: {
        "description": "The vendor report",
        "content": {"text/csv": {"schema": {"type": "string"}}, "image/png": {}},
    }
}


@router.get("/{audit_id}/vendors", response_model=schemas.VendorsOut, responses=VENDOR_CONTENT)
def get_vendors(
    audit_id: AuditId,
    principal: Reader,
    session: SessionDep,
    format: Literal["json", "csv", "png"] = "json",
):
    """Estimated label error rates per vendor, batch and vendor-and-class (95 % intervals),
    rates confirmed by reviews so far, agreement where vendors overlap, and the trend across
    audits. `format=csv` or `png` for the report file or chart. A vendor key sees its own."""
    visible_audit(session, principal, audit_id)
    report = vendor_report(session, audit_id, principal.vendor)
    if format == "csv":
        return Response(
            vendor_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="audit-{audit_id}-vendors.csv"'},
        )
    if format == "png":
        return Response(vendor_chart(report), media_type="image/png")
    return report


@router.get("/{audit_id}/diff", response_model=schemas.DiffOut)
def get_diff(
    audit_id: AuditId,
    principal: Reader,
    session: SessionDep,
    limit: Annotated[int, Query(ge=0, le=100_000)] = 1000,
):
    """New, persisting and resolved findings against the dataset's previous completed audit
    (resolved ids are that audit's findings), and the review decisions carried over."""
    visible_audit(session, principal, audit_id)
    if principal.vendor is not None:
        raise Invalid("the diff covers the whole dataset; a vendor key cannot read it")
    return audit_diff(session, audit_id, limit)


EXPORT_CONTENT = {
    200: {
        "description": "The export file",
        "content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {}},
    }
}


@router.get("/{audit_id}/export", response_class=Response, responses=EXPORT_CONTENT)
def export(
    audit_id: AuditId,
    principal: Reader,
    session: SessionDep,
    format: Literal["csv", "json", "labelstudio", "manifest", "fiftyone"] = "csv",
):
    """Findings as CSV/JSON, Label Studio tasks, a corrected manifest (action per image), or a
    FiftyOne CSVDataset labels file."""
    visible_audit(session, principal, audit_id)
    if principal.vendor is not None:
        raise Invalid("exports cover the whole dataset; a vendor key cannot export")
    result = export_audit(session, audit_id, format)
    return Response(
        result.content,
        media_type=result.media_type,
        headers={"Content-Disposition": f'attachment; filename="{result.filename}"'},
    )
