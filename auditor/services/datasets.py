"""Registering datasets and batches over the API.

A dataset's source is a path on the server, so the API accepts only paths under configured roots:
otherwise any caller with an admin key could make the server read (and serve) any folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.db.models import Batch, Class, Dataset, Image
from auditor.ingest.ingest import IngestResult, ingest
from auditor.ingest.sources import Delivery, SourceError
from auditor.services import Conflict, Forbidden, Invalid, NotFound


def allowed_path(uri: str, roots: list[Path]) -> Path:
    """`uri` resolved, if it lies under one of `roots`; Forbidden otherwise."""
    if "\x00" in uri:
        raise Invalid("NUL byte in path")
    path = Path(uri)
    if not path.is_absolute():
        raise Invalid("source paths must be absolute paths on the server")
    resolved = path.resolve()
    for root in roots:
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            return resolved
    raise Forbidden("the path is outside the folders this server may read sources from")


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def dataset_dict(session: Session, dataset: Dataset) -> dict[str, Any]:
    images = session.scalar(select(func.count()).where(Image.dataset_id == dataset.id))
    classes = session.scalars(
        select(Class.name).where(Class.dataset_id == dataset.id).order_by(Class.name)
    )
    return {
        "id": dataset.id,
        "name": dataset.name,
        "source_uri": dataset.source_uri,
        "source_kind": dataset.source_kind,
        "images": images or 0,
        "classes": list(classes),
        "class_list": dataset.class_list,
        "created_at": dataset.created_at,
        "updated_at": dataset.updated_at,
    }


def list_datasets(session: Session, only: int | None = None) -> list[Dataset]:
    query = select(Dataset).order_by(Dataset.id)
    if only is not None:
        query = query.where(Dataset.id == only)
    return list(session.scalars(query))


def register_dataset(
    factory: sessionmaker[Session],
    settings: Settings,
    roots: list[Path],
    name: str,
    source_uri: str,
    labels_uri: str | None = None,
    classes_uri: str | None = None,
) -> IngestResult:
    """Ingest a new dataset (synchronously, in the caller's worker thread)."""
    source = allowed_path(source_uri, roots)
    labels = allowed_path(labels_uri, roots) if labels_uri else None
    classes = allowed_path(classes_uri, roots) if classes_uri else None
    with factory() as session:
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise Conflict(f"a dataset named {name!r} exists; add batches to it instead")
    try:
        return ingest(factory, name, source, settings, labels, classes)
    except SourceError as exc:
        raise Invalid(str(exc)) from exc


def add_batch(
    factory: sessionmaker[Session],
    settings: Settings,
    roots: list[Path],
    dataset_id: int,
    manifest_uri: str | None,
    vendor: str | None = None,
    batch: str | None = None,
) -> IngestResult:
    """Ingest a vendor's delivery (only the images its manifest names: new ones are decoded,
    known unchanged ones keep their cached decode and features); without a manifest, refresh
    the dataset from its source. Each vendor/batch pair becomes a batch row."""
    with factory() as session:
        dataset = get_dataset(session, dataset_id)
        name, source = dataset.name, dataset.source_uri
    delivery = None
    if manifest_uri:
        delivery = Delivery(allowed_path(manifest_uri, roots), vendor, batch)
    elif vendor or batch:
        raise Invalid("vendor and batch describe a delivery: send its manifest as labels_uri")
    try:
        return ingest(factory, name, source, settings, delivery=delivery)
    except SourceError as exc:
        raise Invalid(str(exc)) from exc


def list_batches(session: Session, dataset_id: int, vendor: str | None = None) -> list[Batch]:
    query = select(Batch).where(Batch.dataset_id == dataset_id).order_by(Batch.id)
    if vendor is not None:
        query = query.where(Batch.vendor == vendor)
    return list(session.scalars(query))
