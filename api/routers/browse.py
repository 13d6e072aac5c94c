"""What the review page reads beyond the core contract: a dataset's audits and the images
behind a confusion-matrix cell."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api import schemas
from api.deps import Reader, SessionDep, SettingsDep, ensure_dataset
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from api.routers.audits import visible_audit
from auditor.services.browse import confusion_cell, dataset_audits

router = APIRouter(prefix=API_PREFIX, tags=["review page"], responses=ERROR_RESPONSES)
Id = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
Classes = Annotated[list[schemas.Name], Query(min_length=1, max_length=1000)]


@router.get("/datasets/{dataset_id}/audits", response_model=schemas.AuditList)
def get_dataset_audits(dataset_id: Id, principal: Reader, session: SessionDep):
    """The dataset's audits, newest first (at most 100)."""
    ensure_dataset(principal, dataset_id)
    return {"items": dataset_audits(session, dataset_id)}


@router.get("/audits/{audit_id}/confusion/cell", response_model=schemas.ConfusionCellOut)
def get_confusion_cell(
    audit_id: Id,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    given: Classes,
    predicted: Classes,
    limit: Annotated[int, Query(ge=1, le=500)] = 60,
):
    """Images labeled one of `given` and predicted as one of `predicted` (repeat a parameter
    for a collapsed group of classes), grouped by given label."""
    visible_audit(session, principal, audit_id)
    return confusion_cell(
        session, settings, audit_id, given, predicted, limit=limit, vendor=principal.vendor
    )
