"""Datasets, their batches, audits started on them and the labeling-tool check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from api import schemas
from api.deps import Admin, FactoryDep, Reader, SessionDep, SettingsDep, ensure_dataset
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from auditor.check_image import check_image
from auditor.services import Invalid
from auditor.services.audits import audit_dict, check_parameters, queue_audit
from auditor.services.datasets import (
    add_batch,
    dataset_dict,
    get_dataset,
    list_batches,
    list_datasets,
    register_dataset,
)

router = APIRouter(prefix=f"{API_PREFIX}/datasets", tags=["datasets"], responses=ERROR_RESPONSES)
DatasetId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


def ingest_out(result) -> dict:
    return {
        "dataset_id": result.dataset_id,
        "images": result.images,
        "decoded": result.decoded,
        "skipped_unchanged": result.skipped_unchanged,
        "findings": result.findings,
    }


@router.post("", status_code=201, response_model=schemas.DatasetCreated)
def create_dataset(
    body: schemas.DatasetCreate,
    request: Request,
    principal: Admin,
    factory: FactoryDep,
    settings: SettingsDep,
    session: SessionDep,
):
    """Register and ingest a dataset from a server path (synchronous: it decodes every image)."""
    if principal.dataset_id is not None:
        raise Invalid("a key limited to one dataset cannot create datasets")
    result = register_dataset(
        factory,
        settings,
        request.app.state.source_roots,
        body.name,
        body.source_uri,
        body.labels_uri,
        body.classes_uri,
    )
    return {
        "dataset": dataset_dict(session, get_dataset(session, result.dataset_id)),
        "ingest": ingest_out(result),
    }


@router.get("", response_model=schemas.DatasetList)
def get_datasets(principal: Reader, session: SessionDep):
    datasets = list_datasets(session, only=principal.dataset_id)
    return {"items": [dataset_dict(session, d) for d in datasets]}


@router.get("/{dataset_id}", response_model=schemas.DatasetOut)
def get_one_dataset(dataset_id: DatasetId, principal: Reader, session: SessionDep):
    ensure_dataset(principal, dataset_id)
    return dataset_dict(session, get_dataset(session, dataset_id))


@router.get("/{dataset_id}/batches", response_model=list[schemas.BatchOut])
def get_batches(dataset_id: DatasetId, principal: Reader, session: SessionDep):
    ensure_dataset(principal, dataset_id)
    get_dataset(session, dataset_id)
    return [vars_of(b) for b in list_batches(session, dataset_id, principal.vendor)]


@router.post("/{dataset_id}/batches", status_code=201, response_model=schemas.BatchesOut)
def create_batch(
    dataset_id: DatasetId,
    body: schemas.BatchCreate,
    request: Request,
    principal: Admin,
    factory: FactoryDep,
    settings: SettingsDep,
    session: SessionDep,
):
    """Ingest a delivery (new images and/or new labels, with vendor and batch), or refresh the
    dataset from its source; optionally queue an audit of the result."""
    ensure_dataset(principal, dataset_id)
    if body.audit:
        check_parameters(body.parameters)
    result = add_batch(
        factory,
        settings,
        request.app.state.source_roots,
        dataset_id,
        body.labels_uri,
        body.vendor,
        body.batch,
    )
    audit_id = None
    if body.audit:
        audit_id = queue_audit(session, dataset_id, body.parameters).id
        session.commit()
    return {
        "ingest": ingest_out(result),
        "items": [vars_of(b) for b in list_batches(session, dataset_id)],
        "audit_id": audit_id,
    }


def vars_of(batch) -> dict:
    return {
        "id": batch.id,
        "vendor": batch.vendor,
        "name": batch.name,
        "created_at": batch.created_at,
    }


@router.post("/{dataset_id}/audits", status_code=202, response_model=schemas.AuditOut)
def create_audit(
    dataset_id: DatasetId, body: schemas.AuditCreate, principal: Admin, session: SessionDep
):
    """Queue an audit; a worker runs it. Poll `GET /audits/{id}` for progress."""
    ensure_dataset(principal, dataset_id)
    audit = queue_audit(session, dataset_id, body.parameters)
    session.commit()
    return audit_dict(session, audit)


@router.post("/{dataset_id}/check", response_model=schemas.CheckOut)
async def check(
    dataset_id: DatasetId,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    label: Annotated[schemas.Name, Form(description="The proposed label")],
    file: Annotated[UploadFile | None, File(description="The image to check")] = None,
    image_id: Annotated[int | None, Form(ge=1, le=schemas.MAX_ID)] = None,
):
    """Label quality, suggested label, nearest images and duplicates for an upload or a stored
    image, from the dataset's latest completed audit."""
    ensure_dataset(principal, dataset_id)
    get_dataset(session, dataset_id)
    data = None
    if file is not None:
        data = await file.read(settings.max_file_bytes + 1)
        if len(data) > settings.max_file_bytes:
            raise Invalid(f"the upload is larger than {settings.max_file_bytes} bytes")
    return await run_in_threadpool(
        check_image, session, settings, dataset_id, label, image_id=image_id, data=data
    )
