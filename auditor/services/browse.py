"""Read-only views the review page needs beyond the core contract: a dataset's audits, and the
images behind a confusion-matrix cell (the Blocks sample viewer)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.check_image import load_audit_model
from auditor.config import Settings
from auditor.db.models import Audit, Dataset, Image, Label
from auditor.services import Invalid, NotFound
from auditor.services.audits import audit_dict, get_audit

MAX_AUDITS = 100


def dataset_audits(session: Session, dataset_id: int) -> list[dict[str, Any]]:
    """The dataset's most recent audits, newest first."""
    if session.get(Dataset, dataset_id) is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    audits = session.scalars(
        select(Audit)
        .where(Audit.dataset_id == dataset_id)
        .order_by(Audit.id.desc())
        .limit(MAX_AUDITS)
    )
    return [audit_dict(session, audit) for audit in audits]


def confusion_cell(
    session: Session,
    settings: Settings,
    audit_id: int,
    given: list[str],
    predicted: list[str],
    *,
    limit: int = 60,
    vendor: str | None = None,
) -> dict[str, Any]:
    """Images whose label (as audited) is in `given` and whose predicted class is in
    `predicted`, grouped by given label in the order asked, most confident prediction first;
    each group holds at most `limit` images and reports its full `count`. Several classes per
    side cover a collapsed node of the hierarchy. A vendor sees only images it labeled."""
    get_audit(session, audit_id)
    model = load_audit_model(settings, audit_id)
    if model is None:
        raise NotFound(f"audit {audit_id} has no stored predictions")
    names = model.class_names
    unknown = sorted((set(given) | set(predicted)) - set(names))
    if unknown:
        raise Invalid(f"unknown classes: {', '.join(unknown)}")
    labels, probabilities = np.asarray(model.labels), np.asarray(model.probabilities)
    guess = probabilities.argmax(axis=1)
    wanted_predictions = np.isin(guess, [names.index(name) for name in predicted])
    rows_by_label = {
        name: np.flatnonzero((labels == names.index(name)) & wanted_predictions) for name in given
    }
    allowed = None
    if vendor is not None:
        every_id = [int(model.image_ids[r]) for rows in rows_by_label.values() for r in rows]
        allowed = set(
            session.scalars(
                select(Label.image_id).where(
                    Label.image_id.in_(every_id), Label.source == vendor, Label.is_current.is_(True)
                )
            )
        )
    groups = []
    for name, rows in rows_by_label.items():
        if allowed is not None:
            rows = np.array([r for r in rows if int(model.image_ids[r]) in allowed], dtype=int)
        rows = rows[np.argsort(-probabilities[rows, guess[rows]], kind="stable")]
        groups.append({"label": name, "count": int(len(rows)), "rows": rows[:limit]})
    ids = [int(model.image_ids[r]) for group in groups for r in group["rows"]]
    paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    for group in groups:
        group["images"] = [
            {
                "image_id": int(model.image_ids[r]),
                "path": paths.get(int(model.image_ids[r]), ""),
                "predicted": names[int(guess[r])],
                "confidence": round(float(probabilities[r, guess[r]]), 4),
            }
            for r in group.pop("rows")
        ]
    return {"given": given, "predicted": predicted, "groups": groups}
