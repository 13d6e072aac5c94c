"""Register a dataset: list the source, decode new or changed files in parallel, write images and
labels in batches, then run the ingest-stage checks. Re-running on the same source is incremental."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from auditor.checks import CheckInputs, run_checks
from auditor.checks.base import ImageTable
from auditor.config import Settings
from auditor.db.findings import save_findings
from auditor.db.models import Batch, Class, Dataset, Image, ImageStatus, Label, utcnow
from auditor.hierarchy.given import parse_hierarchy
from auditor.hierarchy.tree import HierarchyError
from auditor.ingest.decode import DecodeOutcome, decode_chunk
from auditor.ingest.sources import (
    Delivery,
    PathRefused,
    Source,
    SourceEntry,
    SourceError,
    apply_labels_file,
    delivery_entries,
    normalise_member_path,
    open_source,
)
from auditor.parallel import map_chunks

WRITE_BATCH = 2000
LABEL_SOURCE = "source"

ProgressCallback = Callable[[int, int], None]


@dataclass
class IngestResult:
    dataset_id: int
    images: int
    decoded: int
    skipped_unchanged: int
    findings: dict[str, int] = field(default_factory=dict)
    duplicate_rows: int = 0


def decode_all(
    source: Source,
    paths: list[str],
    settings: Settings,
    progress: ProgressCallback | None,
) -> Iterator[DecodeOutcome]:
    """Decode in worker processes (or inline for one worker); yields outcomes in order."""
    yield from map_chunks(
        decode_chunk,
        paths,
        settings.worker_count(),
        source,
        settings.max_image_pixels,
        settings.max_file_bytes,
        progress=progress,
    )


@dataclass
class PlannedEntry:
    """One image path the source names, after path validation and duplicate-row folding."""

    path: str
    entry: SourceEntry
    refused: str | None = None
    labels: list[tuple[str | None, str, str | None]] = field(default_factory=list)
    conflict: str | None = None


def plan_entries(entries: Iterable[SourceEntry]) -> tuple[dict[str, PlannedEntry], int]:
    """Validate paths and fold repeated rows: identical rows count once, one label per vendor,
    and rows that disagree about the same vendor's label are recorded as a conflict."""
    planned: dict[str, PlannedEntry] = {}
    duplicate_rows = 0
    for entry in entries:
        try:
            path = normalise_member_path(entry.path)
            refused = None
        except PathRefused as exc:
            path, refused = entry.path, str(exc)
        item = planned.get(path)
        if item is None:
            item = planned[path] = PlannedEntry(path=path, entry=entry, refused=refused)
        else:
            duplicate_rows += 1
        vendor = entry.vendor or LABEL_SOURCE
        label_row = (entry.label, vendor, entry.batch)
        same_vendor = [lab for lab in item.labels if lab[1] == vendor]
        if not same_vendor:
            item.labels.append(label_row)
        elif same_vendor[0][0] != entry.label:
            item.conflict = (
                f"manifest rows disagree about this image's label "
                f"({same_vendor[0][0]!r} vs {entry.label!r}); the first row was kept"
            )
    return planned, duplicate_rows


def read_taxonomy(classes_file: Path | None) -> list[str] | None:
    """A class list: one name per line (blank lines and '#' comments ignored)."""
    if classes_file is None:
        return None
    if not classes_file.is_file():
        raise SourceError(f"class list not found: {classes_file}")
    names = []
    for line in classes_file.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in names:
            names.append(line)
    if not names:
        raise SourceError(f"class list {classes_file} names no classes")
    return names


def read_hierarchy(
    hierarchy_file: Path | None, taxonomy: list[str] | None, planned: dict[str, PlannedEntry]
) -> dict | None:
    """A curator's class tree (JSON tree or `class,parent` CSV), validated against the classes."""
    if hierarchy_file is None:
        return None
    if not hierarchy_file.is_file():
        raise SourceError(f"hierarchy file not found: {hierarchy_file}")
    class_names = taxonomy or sorted(
        {label for item in planned.values() for label, _, _ in item.labels if label is not None}
    )
    try:
        return parse_hierarchy(hierarchy_file, class_names)
    except HierarchyError as exc:
        raise SourceError(f"invalid hierarchy {hierarchy_file.name}: {exc}") from exc


def get_or_create_dataset(session: Session, name: str, source: Source) -> Dataset:
    """The dataset row, keeping its source as an absolute path: the worker, the API's image
    endpoints and the report read images from it, and none of them runs in the directory a
    relative path was given in."""
    location = str(Path(source.uri).resolve())
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, source_uri=location, source_kind=source.kind)
        session.add(dataset)
        session.flush()
    elif str(Path(dataset.source_uri).resolve()) != location:
        raise SourceError(
            f"dataset {name!r} was added from {dataset.source_uri}; "
            f"add new images to it as a batch, or choose another name"
        )
    dataset.source_uri = location
    return dataset


class ClassRegistry:
    """Class rows by name, created on first use; unknown names are kept but marked."""

    def __init__(self, session: Session, dataset_id: int, taxonomy: list[str] | None) -> None:
        self.session = session
        self.dataset_id = dataset_id
        self.taxonomy = set(taxonomy) if taxonomy is not None else None
        self.by_name = {
            c.name: c for c in session.scalars(select(Class).where(Class.dataset_id == dataset_id))
        }
        for name in taxonomy or []:
            self.get(name)

    def get(self, name: str) -> Class:
        cls = self.by_name.get(name)
        if cls is None:
            in_taxonomy = self.taxonomy is None or name in self.taxonomy
            cls = Class(dataset_id=self.dataset_id, name=name, in_taxonomy=in_taxonomy)
            self.session.add(cls)
            self.session.flush()
            self.by_name[name] = cls
        return cls


class BatchRegistry:
    def __init__(self, session: Session, dataset_id: int) -> None:
        self.session = session
        self.dataset_id = dataset_id
        self.by_key = {
            (b.vendor, b.name): b
            for b in session.scalars(select(Batch).where(Batch.dataset_id == dataset_id))
        }

    def get(self, vendor: str, name: str | None) -> Batch | None:
        if vendor == LABEL_SOURCE and name is None:
            return None
        key = ("" if vendor == LABEL_SOURCE else vendor, name or "default")
        batch = self.by_key.get(key)
        if batch is None:
            batch = Batch(dataset_id=self.dataset_id, vendor=key[0], name=key[1])
            self.session.add(batch)
            self.session.flush()
            self.by_key[key] = batch
        return batch


def apply_outcome(image: Image, outcome: DecodeOutcome) -> None:
    image.status = outcome.status
    image.error = outcome.error
    image.source_stamp = outcome.stamp
    described = outcome.description or {}
    for column in ("sha256", "phash", "width", "height", "mode", "format", "n_bytes"):
        setattr(image, column, described.get(column))
    image.stats = described.get("stats", {})


def write_labels(
    session: Session,
    images: dict[str, Image],
    planned: dict[str, PlannedEntry],
    classes: ClassRegistry,
    batches: BatchRegistry,
) -> None:
    """Add a label row where an image's current label from that source differs or is missing."""
    current: dict[tuple[int, str], Label] = {}
    image_ids = [img.id for img in images.values()]
    for start in range(0, len(image_ids), WRITE_BATCH):
        chunk = image_ids[start : start + WRITE_BATCH]
        for label in session.scalars(
            select(Label).where(Label.image_id.in_(chunk), Label.is_current.is_(True))
        ):
            current[(label.image_id, label.source)] = label
    class_names = {c.id: n for n, c in classes.by_name.items()}
    pending = 0
    for path, item in planned.items():
        image = images[path]
        for label_name, vendor, batch_name in item.labels:
            if label_name is None:
                continue
            cls = classes.get(label_name)
            existing = current.get((image.id, vendor))
            if existing is not None and class_names.get(existing.class_id) == label_name:
                continue
            class_names[cls.id] = label_name
            if existing is not None:
                existing.is_current = False
            batch = batches.get(vendor, batch_name)
            session.add(
                Label(
                    image_id=image.id,
                    class_id=cls.id,
                    source=vendor,
                    batch_id=batch.id if batch else None,
                    is_current=True,
                )
            )
            pending += 1
            if pending >= WRITE_BATCH:
                session.flush()
                pending = 0
    session.flush()


def load_image_table(session: Session, dataset_id: int) -> ImageTable:
    """Images with their current label (the most recent current label across sources)."""
    rows = session.execute(
        select(Image).where(Image.dataset_id == dataset_id).order_by(Image.id)
    ).scalars()
    images = list(rows)
    label_rows = session.execute(
        select(Label.image_id, Class.name)
        .join(Class, Class.id == Label.class_id)
        .join(Image, Image.id == Label.image_id)
        .where(Image.dataset_id == dataset_id, Label.is_current.is_(True))
        .order_by(Label.id)
    )
    label_of = {image_id: name for image_id, name in label_rows}
    return ImageTable(
        ids=np.array([img.id for img in images], dtype=np.int64),
        paths=[img.path for img in images],
        status=[img.status for img in images],
        errors=[img.error for img in images],
        sha256=[img.sha256 for img in images],
        phash=[img.phash for img in images],
        width=np.array([img.width or 0 for img in images], dtype=np.int64),
        height=np.array([img.height or 0 for img in images], dtype=np.int64),
        stats=[img.stats or {} for img in images],
        labels=[label_of.get(img.id) for img in images],
        splits=[img.split for img in images],
    )


def ingest(
    factory: sessionmaker[Session],
    name: str,
    source_uri: str | Path,
    settings: Settings,
    labels_file: Path | None = None,
    classes_file: Path | None = None,
    progress: ProgressCallback | None = None,
    hierarchy_file: Path | None = None,
    delivery: Delivery | None = None,
) -> IngestResult:
    """Register or refresh dataset `name` from `source_uri`; raises SourceError for a bad source,
    class list or hierarchy, before anything is written. With a `delivery`, only the images its
    manifest names are touched: new ones are decoded, known unchanged ones only get the labels."""
    source = open_source(source_uri)
    taxonomy = read_taxonomy(classes_file)
    entries: Iterable[SourceEntry]
    if delivery is not None:
        entries = delivery_entries(delivery)
    else:
        entries = source.entries()
        if labels_file is not None:
            entries = apply_labels_file(entries, labels_file)
    planned, duplicate_rows = plan_entries(entries)
    if not planned:
        raise SourceError(f"no images found in {source_uri}{source.why_empty()}")
    hierarchy = read_hierarchy(hierarchy_file, taxonomy, planned)

    with factory() as session, session.begin():
        dataset = get_or_create_dataset(session, name, source)
        dataset_id = dataset.id
        if taxonomy is not None:
            dataset.class_list = taxonomy
        if hierarchy is not None:
            dataset.hierarchy = hierarchy
        taxonomy = dataset.class_list
        known = {
            img.path: img
            for img in session.scalars(select(Image).where(Image.dataset_id == dataset_id))
        }

    to_decode, unchanged = [], 0
    for path, item in planned.items():
        if item.refused:
            continue
        image = known.get(path)
        if image is not None and image.source_stamp is not None:
            try:
                if source.stamp(path) == image.source_stamp:
                    unchanged += 1
                    continue
            except (PathRefused, OSError):
                pass
        to_decode.append(path)

    outcomes = {o.path: o for o in decode_all(source, to_decode, settings, progress)}

    with factory() as session, session.begin():
        images: dict[str, Image] = {
            img.path: img
            for img in session.scalars(select(Image).where(Image.dataset_id == dataset_id))
        }
        for count, (path, item) in enumerate(planned.items(), start=1):
            image = images.get(path)
            if image is None:
                image = images[path] = Image(dataset_id=dataset_id, path=path)
                session.add(image)
            if delivery is None or item.entry.split is not None:
                image.split = item.entry.split
            if item.refused:
                apply_outcome(image, DecodeOutcome(path, None, ImageStatus.REFUSED, item.refused))
            elif path in outcomes:
                apply_outcome(image, outcomes[path])
            if count % WRITE_BATCH == 0:
                session.flush()
        session.flush()
        classes = ClassRegistry(session, dataset_id, taxonomy)
        write_labels(session, images, planned, classes, BatchRegistry(session, dataset_id))
        row_problems = {
            images[path].id: {"reason": item.conflict, "rows_labels": [x[0] for x in item.labels]}
            for path, item in planned.items()
            if item.conflict
        }
        findings = run_ingest_checks(session, dataset_id, taxonomy, row_problems)
        total = len(images)
        session.get(Dataset, dataset_id).updated_at = utcnow()

    return IngestResult(
        dataset_id=dataset_id,
        images=total,
        decoded=len(to_decode),
        skipped_unchanged=unchanged,
        findings=dict(findings),
        duplicate_rows=duplicate_rows,
    )


def run_ingest_checks(
    session: Session, dataset_id: int, taxonomy: list[str] | None, row_problems: dict
) -> Counter:
    table = load_image_table(session, dataset_id)
    inputs = CheckInputs(
        dataset_id=dataset_id,
        images=table,
        class_names=sorted({lab for lab in table.labels if lab}),
        taxonomy=set(taxonomy) if taxonomy is not None else None,
        extra={"row_problems": row_problems},
    )
    drafts, kinds = run_checks(inputs, "ingest")
    return save_findings(session, dataset_id, None, drafts, kinds)
