"""Exports of one audit: findings (CSV, JSON), Label Studio tasks, a corrected manifest, and a
FiftyOne CSVDataset labels file. The CSV has one row per finding and image, so a duplicate group
gives one row per member sharing `finding_id`, and `image` is the path as given in the source."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from auditor.db.models import (
    Class,
    Finding,
    Image,
    ImageStatus,
    Label,
    ReviewStatus,
)
from auditor.services import Invalid
from auditor.services.audits import get_audit
from auditor.services.findings import findings_as_dicts

FINDING_COLUMNS = [
    "finding_id",
    "kind",
    "image",
    "image_id",
    "given_label",
    "suggested_label",
    "score",
    "is_issue",
    "severity",
    "status",
]
MANIFEST_COLUMNS = ["path", "label", "action", "original_label", "finding_ids"]
REMOVE_WHEN_CONFIRMED = {"unreadable", "image_quality"}
DUPLICATE_KINDS = {"exact_duplicate", "near_duplicate"}
CHUNK = 2000


@dataclass
class Export:
    content: bytes
    media_type: str
    filename: str


def audit_findings(session: Session, audit_id: int) -> Iterator[Finding]:
    """All findings of the audit in id order, fetched in chunks so a large audit streams."""
    last = 0
    while True:
        chunk = list(
            session.scalars(
                select(Finding)
                .where(Finding.audit_id == audit_id, Finding.id > last)
                .order_by(Finding.id)
                .limit(CHUNK)
                .options(selectinload(Finding.members))
            )
        )
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].id


def finding_records(session: Session, audit_id: int) -> Iterator[dict[str, Any]]:
    batch: list[Finding] = []
    for finding in audit_findings(session, audit_id):
        batch.append(finding)
        if len(batch) >= CHUNK:
            yield from findings_as_dicts(session, batch)
            batch = []
    yield from findings_as_dicts(session, batch)


def findings_csv(session: Session, audit_id: int) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FINDING_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in finding_records(session, audit_id):
        for image_id, path in zip(record["image_ids"], record["images"], strict=True):
            writer.writerow(
                {
                    "finding_id": record["id"],
                    "kind": record["kind"],
                    "image": path,
                    "image_id": image_id,
                    "given_label": record["given_label"] or "",
                    "suggested_label": record["suggested_label"] or "",
                    "score": record["score"],
                    "is_issue": str(record["is_issue"]).lower(),
                    "severity": record["severity"],
                    "status": record["status"],
                }
            )
    return buffer.getvalue()


def findings_json(session: Session, audit_id: int) -> str:
    records = [
        {k: v for k, v in r.items() if k not in ("created_at", "updated_at")}
        for r in finding_records(session, audit_id)
    ]
    return json.dumps({"audit_id": audit_id, "findings": records}, indent=1)


def current_labels(session: Session, dataset_id: int) -> dict[int, dict[str, str]]:
    """image id -> {source: label} for current labels."""
    rows = session.execute(
        select(Label.image_id, Label.source, Class.name)
        .join(Class, Class.id == Label.class_id)
        .join(Image, Image.id == Label.image_id)
        .where(Image.dataset_id == dataset_id, Label.is_current.is_(True))
        .order_by(Label.id)
    )
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    for image_id, source, name in rows:
        labels[image_id][source] = name
    return labels


def effective_label(labels: dict[str, str]) -> str | None:
    """What a training run would use: a reviewer's label first, else the latest other one."""
    if "review" in labels:
        return labels["review"]
    return next(reversed(labels.values()), None) if labels else None


def image_actions(session: Session, audit_id: int) -> list[dict[str, Any]]:
    """One row per image of the dataset: keep, relabel, remove, or review (an open issue)."""
    audit = get_audit(session, audit_id)
    labels = current_labels(session, audit.dataset_id)
    by_image: dict[int, list[Finding]] = defaultdict(list)
    position: dict[tuple[int, int], int] = {}
    for finding in audit_findings(session, audit_id):
        for member in finding.members:
            by_image[member.image_id].append(finding)
            position[(finding.id, member.image_id)] = member.position
    rows = []
    images = session.execute(
        select(Image.id, Image.path, Image.status)
        .where(Image.dataset_id == audit.dataset_id)
        .order_by(Image.id)
    )
    for image_id, path, status in images:
        image_labels = labels.get(image_id, {})
        original = next((v for k, v in image_labels.items() if k != "review"), None)
        label, action = effective_label(image_labels), "keep"
        findings = by_image.get(image_id, [])
        for finding in findings:
            confirmed = finding.status == ReviewStatus.CONFIRMED
            if confirmed and finding.kind in REMOVE_WHEN_CONFIRMED:
                action = "remove"
            elif confirmed and finding.kind in DUPLICATE_KINDS:
                if position[(finding.id, image_id)] > 0:
                    action = "remove"
            elif confirmed and finding.kind == "mislabel" and finding.suggested_label:
                label, action = finding.suggested_label, "relabel"
        if "review" in image_labels and action == "keep" and image_labels["review"] != original:
            action = "relabel"
        if action == "keep" and any(f.is_issue and f.status == ReviewStatus.OPEN for f in findings):
            action = "review"
        if status != ImageStatus.OK:
            action = "remove"
        rows.append(
            {
                "path": path,
                "image_id": image_id,
                "label": label or "",
                "action": action,
                "original_label": original or "",
                "finding_ids": " ".join(str(f.id) for f in findings),
            }
        )
    return rows


def corrected_manifest(session: Session, audit_id: int) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(image_actions(session, audit_id))
    return buffer.getvalue()


def fiftyone_csv(session: Session, audit_id: int) -> str:
    """A labels.csv for `fiftyone.types.CSVDataset` (a `filepath` column relative to the dataset
    directory, other columns become string fields)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filepath", "ground_truth", "corrected", "action", "finding_ids"])
    for row in image_actions(session, audit_id):
        writer.writerow(
            [row["path"], row["original_label"], row["label"], row["action"], row["finding_ids"]]
        )
    return buffer.getvalue()


def labelstudio_tasks(session: Session, audit_id: int, image_url: Callable[[int], str]) -> str:
    """Label Studio tasks, one per image with findings, each with a prediction whose score is
    the label quality (1 - the mislabel score) and whose choice is the suggested label."""
    tasks: dict[int, dict[str, Any]] = {}
    for record in finding_records(session, audit_id):
        for image_id, path in zip(record["image_ids"], record["images"], strict=True):
            task = tasks.setdefault(
                image_id,
                {
                    "data": {"image": image_url(image_id), "image_id": image_id, "path": path},
                    "predictions": [],
                    "meta": {"findings": []},
                },
            )
            task["meta"]["findings"].append(
                {"id": record["id"], "kind": record["kind"], "score": record["score"]}
            )
            if record["kind"] == "mislabel" and not task["predictions"]:
                choice = record["suggested_label"] or record["given_label"]
                task["predictions"].append(
                    {
                        "model_version": f"auditor-audit-{audit_id}",
                        "score": round(1.0 - float(record["score"]), 6),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [choice]},
                            }
                        ],
                    }
                )
            task["data"].setdefault("given_label", record["given_label"])
    return json.dumps(list(tasks.values()), indent=1)


EXPORT_FORMATS = ("csv", "json", "labelstudio", "manifest", "fiftyone")


def export_audit(
    session: Session,
    audit_id: int,
    fmt: str,
    image_url: Callable[[int], str] = lambda image_id: f"/api/v1/images/{image_id}",
) -> Export:
    get_audit(session, audit_id)
    name = f"audit-{audit_id}"
    if fmt == "csv":
        return Export(findings_csv(session, audit_id).encode(), "text/csv", f"{name}-findings.csv")
    if fmt == "json":
        return Export(
            findings_json(session, audit_id).encode(), "application/json", f"{name}-findings.json"
        )
    if fmt == "labelstudio":
        content = labelstudio_tasks(session, audit_id, image_url).encode()
        return Export(content, "application/json", f"{name}-labelstudio.json")
    if fmt == "manifest":
        content = corrected_manifest(session, audit_id).encode()
        return Export(content, "text/csv", f"{name}-manifest.csv")
    if fmt == "fiftyone":
        return Export(fiftyone_csv(session, audit_id).encode(), "text/csv", f"{name}-labels.csv")
    raise Invalid(f"format must be one of {', '.join(EXPORT_FORMATS)}")
